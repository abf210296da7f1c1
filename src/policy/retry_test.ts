import assert from "node:assert/strict";
import fc from "fast-check";
import { ProxyError } from "../pipeline/errors.ts";
import {
  backoffMs,
  errorRetriable,
  methodRetriable,
  parseRetryAfter,
  replay,
  replayableBody,
  ReplayBytes,
  RetryBudget,
  type RetryPolicy,
  sharedBudget,
  statusRetriable,
} from "./retry.ts";
import { SharedArena } from "./shared_memory.ts";

const policy = (over: Partial<RetryPolicy> = {}): RetryPolicy => ({
  retries: 2,
  retryOn: new Set(["connect-failure", "gateway-error"]),
  statuses: new Set([409]),
  grpcStatuses: new Set(),
  baseMs: 25,
  maxMs: 250,
  nonIdempotent: false,
  maxBodyBytes: 16,
  maxRetryAfterMs: 1000,
  ...over,
});

Deno.test("only idempotent methods are retried unless the route opts in", () => {
  assert.equal(methodRetriable(policy(), "GET"), true);
  assert.equal(methodRetriable(policy(), "PUT"), true);
  assert.equal(methodRetriable(policy(), "POST"), false);
  assert.equal(methodRetriable(policy({ nonIdempotent: true }), "POST"), true);
});

Deno.test("retry_on decides which failures and statuses are retried", () => {
  const p = policy();
  assert.equal(errorRetriable(p, new ProxyError("upstream_connect_failure", "x")), true);
  assert.equal(errorRetriable(p, new ProxyError("upstream_reset", "x")), true, "gateway-error");
  assert.equal(
    errorRetriable(
      policy({ retryOn: new Set(["connect-failure"]) }),
      new ProxyError("upstream_reset", "x"),
    ),
    false,
  );
  assert.equal(errorRetriable(p, new ProxyError("no_route", "x")), false);
  assert.equal(statusRetriable(p, 503), true);
  assert.equal(statusRetriable(p, 500), false, "500 is not a gateway error");
  assert.equal(statusRetriable(policy({ retryOn: new Set(["5xx"]) }), 500), true);
  assert.equal(
    statusRetriable(policy({ retryOn: new Set(["retriable-status-codes"]) }), 409),
    true,
  );
  assert.equal(statusRetriable(p, 409), false);
});

Deno.test("property: backoff with full jitter stays within [0, min(max, base * 2^n)]", () => {
  fc.assert(fc.property(fc.nat(10), fc.double({ min: 0, max: 0.9999999, noNaN: true }), (n, r) => {
    const p = policy();
    const wait = backoffMs(p, n, () => r);
    assert.ok(wait >= 0 && wait <= Math.min(p.maxMs, p.baseMs * 2 ** n));
  }));
});

Deno.test("Retry-After is read as seconds or an HTTP date", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:05 GMT", now), 5000);
});

Deno.test("a small body is buffered for replay; a large one streams through once, intact", async () => {
  const enc = new TextEncoder();
  const small = await replayableBody(new Blob([enc.encode("hello")]).stream(), 16);
  assert.ok(small.replayable);
  if (small.replayable) {
    assert.equal(await new Response(replay(small.chunks)).text(), "hello");
    assert.equal(await new Response(replay(small.chunks)).text(), "hello", "replays twice");
  }
  const text = "x".repeat(100) + "end";
  const chunks = [
    enc.encode(text.slice(0, 10)),
    enc.encode(text.slice(10, 50)),
    enc.encode(text.slice(50)),
  ];
  let i = 0;
  const src = new ReadableStream<Uint8Array>({
    pull: (c) => i < chunks.length ? c.enqueue(chunks[i++]!) : c.close(),
  });
  const big = await replayableBody(src, 16);
  assert.equal(big.replayable, false);
  if (!big.replayable) assert.equal(await new Response(big.stream).text(), text);
});

Deno.test("the retry budget allows a share of active requests, never below the floor", () => {
  const b = new RetryBudget(20, 2);
  b.active = 100;
  let granted = 0;
  for (let i = 0; i < 50; i++) if (b.tryAcquire()) granted++;
  assert.equal(granted, 20);
  b.release();
  assert.equal(b.tryAcquire(), true);
  const idle = new RetryBudget(20, 2);
  assert.equal(idle.tryAcquire(), true);
  assert.equal(idle.tryAcquire(), true);
  assert.equal(idle.tryAcquire(), false, "floor of 2 with no traffic");
});

Deno.test("with workers, a cluster's requests, retries and per-endpoint attempts count for the process", () => {
  const main = new SharedArena(1 << 20, { workers: 2 });
  const [w0, w1] = [0, 1].map((index) => new SharedArena(main.buffer, { index }));
  const budgets = [w0!, w1!].map((w) =>
    new RetryBudget(50, 0, Number.POSITIVE_INFINITY, sharedBudget(w, "up {}", true))
  );
  const [a, b] = budgets as [RetryBudget, RetryBudget];
  assert.equal(a.enter(3), true);
  assert.equal(b.enter(3), true);
  assert.equal(b.enter(3), true);
  assert.equal(a.enter(3), false, "max_requests 3 for the process");
  assert.deepEqual([a.active, b.active], [1, 2], "each isolate's own, for /clusters");
  // 50 % of the 3 active: one retry in flight, whichever worker takes it.
  assert.equal(b.tryAcquire(), true);
  assert.equal(a.tryAcquire(), false);
  b.release();
  assert.equal(a.tryAcquire(), true);
  assert.equal(a.takeEndpoint("http://e:1", 0, 1), true);
  assert.equal(b.takeEndpoint("http://e:1", 0, 1), false, "max_requests_per_endpoint 1");
  a.endpointDone("http://e:1");
  assert.equal(b.takeEndpoint("http://e:1", 0, 1), true);
  a.leave();
  assert.equal(b.enter(3), true);
  // One isolate (no arena): the same rules on its own numbers.
  const local = new RetryBudget(50, 0);
  assert.equal(local.enter(1), true);
  assert.equal(local.enter(1), false);
  assert.equal(local.takeEndpoint("http://e:1", 1, 1), false);
  assert.equal(local.takeEndpoint("http://e:1", 0, 1), true);
});

Deno.test("with workers, the replay bound is the process's", () => {
  const main = new SharedArena(1 << 20, { workers: 2 });
  const [a, b] = [0, 1].map((index) => {
    const bound = new ReplayBytes(1000);
    bound.share(new SharedArena(main.buffer, { index }).counts("replay bytes", 1)!);
    return bound;
  }) as [ReplayBytes, ReplayBytes];
  assert.equal(a.tryHold(600), true);
  assert.equal(b.tryHold(600), false);
  assert.equal(b.tryHold(400), true);
  a.release(600);
  assert.equal(b.tryHold(600), true);
});
