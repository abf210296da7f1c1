/**
 * The cluster call on a fake transport (an `attempt` callback that answers from a script) and a
 * fake clock (a DeadlineQueue ticked by hand): retries, the retry budget, per-try timeouts, the
 * breaker, hash stickiness and cancellation during backoff.
 */
import assert from "node:assert/strict";
import {
  type Attempt,
  type AttemptOutcome,
  type CallPolicy,
  type CallRecord,
  pause,
  runCall,
} from "./call.ts";
import type { Endpoint } from "./cluster.ts";
import { createBalancer } from "./balancers/mod.ts";
import type { BalancerKind } from "./balancers/types.ts";
import { DeadlineQueue } from "../policy/deadlines.ts";
import { BreakerStore } from "../policy/circuit_breaker.ts";
import { RetryBudget, type RetryOn, retryPolicy } from "../policy/retry.ts";
import { FerryMetrics } from "../observability/metrics.ts";
import { attemptLayers } from "../pipeline/route_chain.ts";
import { breakerLayer, perTryTimeoutLayer } from "../policy/attempt_layers.ts";
import { ProxyError } from "../pipeline/errors.ts";
import type { Outcome } from "./health/outlier.ts";

function endpoints(n: number): Endpoint[] {
  return Array.from({ length: n }, (_, i) => {
    const url = new URL(`http://10.0.0.${i + 1}:80`);
    return { index: i, slot: i, origin: url.origin, url, wsOrigin: "", weight: 1 };
  });
}

/** A cluster of `n` endpoints on a fake clock; `health` collects recorded outcomes. */
function setup(o: {
  n?: number;
  lb?: BalancerKind;
  retryOn?: RetryOn[];
  retries?: number;
  budget?: RetryBudget;
  perTryTimeoutMs?: number;
  breaker?: BreakerStore;
  maxRequests?: number;
  backoff?: { base: number; max: number };
} = {}) {
  let now = 0;
  const clock = {
    now: () => now,
    deadlines: new DeadlineQueue({ now: () => now, autoTick: false }),
    /** Moves the fake clock on and fires what expired. */
    advance(ms: number) {
      now += ms;
      this.deadlines.tick();
    },
  };
  const eps = endpoints(o.n ?? 3);
  const states = eps.map(() => ({ inFlight: 0, effectiveWeight: 1, eligible: true }));
  const health: [number, Outcome][] = [];
  const metrics = new FerryMetrics();
  const policy: CallPolicy = {
    cluster: {
      name: "c",
      members: {
        endpoints: eps,
        balancer: createBalancer(o.lb ?? "round_robin", eps, { states }),
        states,
        health: { record: (i: number, out: Outcome) => void health.push([i, out]) },
      },
      retryBudget: o.budget ?? new RetryBudget(100, 10),
    },
    maxRequests: o.maxRequests ?? Infinity,
    maxRequestsPerEndpoint: Infinity,
    attemptLayers: attemptLayers({
      breaker: o.breaker && breakerLayer(o.breaker, false),
      perTryTimeout: o.perTryTimeoutMs
        ? perTryTimeoutLayer(o.perTryTimeoutMs, clock.deadlines)
        : undefined,
    }),
    retry: retryPolicy({
      retries: o.retries ?? 2,
      retry_on: o.retryOn ?? ["connect-failure", "reset", "gateway-error", "unavailable"],
      statuses: [],
      backoff: o.backoff ?? { base: 100, max: 1000 },
      non_idempotent: false,
      max_body_bytes: 1024,
      max_retry_after: 5000,
    }),
    deadlines: clock.deadlines,
    metrics: metrics.cluster("c"),
    random: () => 0.5,
  };
  return { policy, clock, eps, health, metrics };
}

/** A fake transport: each attempt answers with the next scripted outcome. */
function scripted(
  script: ((e: Endpoint) => AttemptOutcome<string> | Promise<AttemptOutcome<string>>)[],
  seen: string[] = [],
): Attempt<string> {
  let i = 0;
  return (e) => {
    seen.push(e.origin);
    const step = script[Math.min(i++, script.length - 1)]!;
    return Promise.resolve(step(e));
  };
}

const ok = (e: Endpoint): AttemptOutcome<string> => ({ value: `ok from ${e.origin}`, status: 200 });
const refused = (): AttemptOutcome<string> => ({
  error: new ProxyError("upstream_connect_failure", "refused"),
});
const status = (s: number) => (e: Endpoint): AttemptOutcome<string> => ({
  value: `${s} from ${e.origin}`,
  status: s,
});

/** Lets pending promise callbacks run (the fake clock never advances by itself). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
  await new Promise((r) => setTimeout(r, 0));
}

function request(signal = new AbortController().signal) {
  return {
    hashKey: undefined as string | undefined,
    retries: 2,
    signal,
    record: { attempts: 0 } as CallRecord,
  };
}

Deno.test("call: a connect failure is retried on another endpoint after the backoff", async () => {
  const { policy, clock, health } = setup();
  const seen: string[] = [];
  const req = request();
  const done = runCall(policy, req, scripted([refused, ok], seen));
  await settle();
  assert.equal(seen.length, 1);
  // Backoff with jitter 0.5: half of base (100 ms) = 50 ms; not before.
  clock.advance(40);
  await settle();
  assert.equal(seen.length, 1);
  clock.advance(30);
  const value = await done;
  assert.equal(seen.length, 2);
  assert.notEqual(seen[0], seen[1], "the retry goes to another endpoint");
  assert.equal(value, `ok from ${seen[1]}`);
  assert.equal(req.record.attempts, 2);
  assert.deepEqual(health.map(([, o]) => o), ["connect-failure", "success"]);
});

Deno.test("call: retries stop at the policy's count; the last answer is returned", async () => {
  const { policy, clock } = setup({ retries: 2 });
  const seen: string[] = [];
  const done = runCall(policy, request(), scripted([status(503)], seen));
  for (let i = 0; i < 10; i++) {
    await settle();
    clock.advance(1000);
  }
  assert.match(await done, /^503 from/);
  assert.equal(seen.length, 3);
});

Deno.test("call: a status the policy does not name is final at once", async () => {
  const { policy } = setup();
  const seen: string[] = [];
  assert.match(await runCall(policy, request(), scripted([status(500)], seen)), /^500/);
  assert.equal(seen.length, 1, "500 is not a gateway error");
});

Deno.test("call: a gRPC status named in retry_on is retried; another is not", async () => {
  const { policy, clock } = setup();
  const seen: string[] = [];
  const unavailable = (): AttemptOutcome<string> => ({ value: "u", status: 200, grpcStatus: 14 });
  const notFound = (): AttemptOutcome<string> => ({ value: "nf", status: 200, grpcStatus: 5 });
  const done = runCall(policy, request(), scripted([unavailable, notFound], seen));
  await settle();
  clock.advance(100);
  assert.equal(await done, "nf");
  assert.equal(seen.length, 2);
});

Deno.test("call: an empty retry budget refuses the retry and flags URX", async () => {
  const budget = new RetryBudget(0, 0);
  const { policy } = setup({ budget });
  const seen: string[] = [];
  const req = request();
  await assert.rejects(
    runCall(policy, req, scripted([refused, ok], seen)),
    (e: ProxyError) => e.kind === "upstream_connect_failure",
  );
  assert.equal(seen.length, 1);
  assert.equal(req.record.flags, "URX");
  assert.equal(budget.retrying, 0);
  assert.equal(budget.active, 0);
});

Deno.test("call: a retry slot is held until the retry has its answer, then given back", async () => {
  const budget = new RetryBudget(0, 1);
  const { policy, clock } = setup({ budget });
  let release!: () => void;
  const second = () =>
    new Promise<AttemptOutcome<string>>((r) => (release = () => r({ value: "ok", status: 200 })));
  const done = runCall(policy, request(), scripted([refused, second]));
  await settle();
  assert.equal(budget.retrying, 1, "taken for the retry");
  clock.advance(100);
  await settle();
  // A second call now cannot retry: the one slot is held by the first call's retry.
  const other = request();
  await assert.rejects(runCall(policy, other, scripted([refused])));
  assert.equal(other.record.flags, "URX");
  release();
  assert.equal(await done, "ok");
  assert.equal(budget.retrying, 0);
});

Deno.test("call: a per-try timeout aborts the attempt's signal and the next try goes on", async () => {
  const { policy, clock, health } = setup({ perTryTimeoutMs: 200 });
  const seen: string[] = [];
  let firstSignal: AbortSignal | undefined;
  const attempt: Attempt<string> = (e, a) => {
    seen.push(e.origin);
    if (a.attempt > 0) return Promise.resolve({ value: "second", status: 200 });
    firstSignal = a.signal;
    // Hangs until aborted, then fails as a transport does: upstream_timeout.
    return new Promise((resolve) =>
      a.signal.addEventListener(
        "abort",
        () =>
          resolve({ error: new ProxyError("upstream_timeout", String(a.signal.reason.message)) }),
      )
    );
  };
  const done = runCall(policy, request(), attempt);
  await settle();
  clock.advance(150);
  await settle();
  assert.equal(firstSignal?.aborted, false);
  clock.advance(60);
  await settle();
  assert.equal(firstSignal?.aborted, true);
  clock.advance(100);
  assert.equal(await done, "second");
  assert.equal(seen.length, 2);
  assert.deepEqual(health.map(([, o]) => o), ["gateway", "success"]);
});

Deno.test("call: an answer before the per-try timeout disarms it", async () => {
  const { policy, clock } = setup({ perTryTimeoutMs: 200 });
  let signal: AbortSignal | undefined;
  const v = await runCall(policy, request(), (_e, a) => {
    signal = a.signal;
    return Promise.resolve({ value: "fast", status: 200 });
  });
  assert.equal(v, "fast");
  clock.advance(1000);
  assert.equal(signal?.aborted, false, "the body may still stream on this signal");
  assert.equal(policy.deadlines.size, 0);
});

Deno.test("call: breaker failures open it; then the call is refused without an attempt", async () => {
  const breaker = new BreakerStore(1, { failureThreshold: 2, openTimeoutMs: 10_000 });
  const { policy } = setup({ n: 1, breaker, retries: 0 });
  const seen: string[] = [];
  for (let i = 0; i < 2; i++) {
    assert.match(await runCall(policy, request(), scripted([status(503)], seen)), /^503/);
  }
  await assert.rejects(
    runCall(policy, request(), scripted([ok], seen)),
    (e: ProxyError) => e.kind === "breaker_open" && e.flag === "UO",
  );
  assert.equal(seen.length, 2, "no attempt once open");
});

Deno.test("call: a retry skips an endpoint whose breaker is open", async () => {
  const breaker = new BreakerStore(2, { failureThreshold: 1, openTimeoutMs: 10_000 });
  const { policy, clock } = setup({ n: 2, breaker });
  const seen: string[] = [];
  const done = runCall(policy, request(), scripted([refused, ok], seen));
  await settle();
  clock.advance(100);
  await done;
  // The first endpoint's breaker is open now: every call goes to the other one.
  const next: string[] = [];
  for (let i = 0; i < 4; i++) await runCall(policy, request(), scripted([ok], next));
  assert.ok(next.every((o) => o === seen[1]), next.join());
});

Deno.test("call: the client's own failure is no mark against the endpoint", async () => {
  const breaker = new BreakerStore(1, { failureThreshold: 1, openTimeoutMs: 10_000 });
  const { policy, health } = setup({ n: 1, breaker });
  const gone = (): AttemptOutcome<string> => ({
    error: new ProxyError("client_closed", "gone"),
  });
  await assert.rejects(runCall(policy, request(), scripted([gone])));
  assert.deepEqual(health, []);
  assert.equal(await runCall(policy, request(), scripted([ok])), "ok from http://10.0.0.1");
});

Deno.test("call: ring_hash sends the same key to the same endpoint", async () => {
  const { policy } = setup({ n: 5, lb: "ring_hash" });
  for (const key of ["alice", "bob", "carol"]) {
    const seen: string[] = [];
    for (let i = 0; i < 6; i++) {
      await runCall(policy, { ...request(), hashKey: key }, scripted([ok], seen));
    }
    assert.equal(new Set(seen).size, 1, `${key}: ${seen.join()}`);
  }
  // And different keys do spread (50 keys on 5 endpoints never all land on one).
  const spread = new Set<string>();
  for (let i = 0; i < 50; i++) {
    await runCall(policy, { ...request(), hashKey: `k${i}` }, scripted([ok], [...[]]));
    const seen: string[] = [];
    await runCall(policy, { ...request(), hashKey: `k${i}` }, scripted([ok], seen));
    spread.add(seen[0]!);
  }
  assert.ok(spread.size > 1);
});

Deno.test("call: cancelled during the backoff, it ends at once and frees its slot", async () => {
  const { policy, clock } = setup({ backoff: { base: 60_000, max: 60_000 }, maxRequests: 1 });
  const seen: string[] = [];
  const ctl = new AbortController();
  const done = runCall(policy, request(ctl.signal), scripted([refused, ok], seen));
  await settle();
  assert.equal(policy.cluster.retryBudget.active, 1);
  ctl.abort(new ProxyError("client_closed", "the client cancelled"));
  await assert.rejects(done, (e: ProxyError) => e.kind === "client_closed");
  assert.equal(seen.length, 1, "no second attempt");
  assert.equal(policy.cluster.retryBudget.active, 0);
  assert.equal(policy.cluster.retryBudget.retrying, 0);
  assert.equal(policy.deadlines.size, 0, "the backoff timer is gone");
  clock.advance(60_000);
  assert.equal(seen.length, 1);
});

Deno.test("call: the cluster's max_requests refuses at once with overflow", async () => {
  const { policy } = setup({ maxRequests: 1 });
  let release!: () => void;
  const slow = runCall(
    policy,
    request(),
    () =>
      new Promise<AttemptOutcome<string>>((
        r,
      ) => (release = () => r({ value: "slow", status: 200 }))),
  );
  await settle();
  await assert.rejects(
    runCall(policy, request(), scripted([ok])),
    (e: ProxyError) => e.kind === "overflow",
  );
  release();
  assert.equal(await slow, "slow");
});

Deno.test("pause: ends early and throws when the signal aborts", async () => {
  const q = new DeadlineQueue({ now: () => 0, autoTick: false });
  const ctl = new AbortController();
  const p = pause(10_000, ctl.signal, q);
  ctl.abort();
  await assert.rejects(p, (e: ProxyError) => e.kind === "client_closed");
  assert.equal(q.size, 0);
});
