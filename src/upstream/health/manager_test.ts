import assert from "node:assert/strict";
import { createBalancer } from "../balancers/mod.ts";
import { createEndpointState, type EndpointState } from "../balancers/types.ts";
import { EndpointHealth, type EndpointHealthOptions, type HealthEndpoint } from "./manager.ts";
import type { ProbeResult } from "./probe.ts";
import { FakeTimers } from "./testing.ts";

function endpoints(...weights: number[]): HealthEndpoint[] {
  return weights.map((weight, index) => ({ index, origin: `http://e${index}:80`, weight }));
}

function setup(weights: number[], opts: Omit<EndpointHealthOptions, "timers"> = {}) {
  const timers = new FakeTimers(0);
  const eps = endpoints(...weights);
  const states: EndpointState[] = eps.map((e) => createEndpointState(e.weight));
  const events: string[] = [];
  const health = new EndpointHealth(eps, states, {
    ...opts,
    timers,
    onEvent: (e) => events.push("index" in e ? `${e.type} ${e.index}` : e.type),
  });
  health.start();
  return {
    timers,
    eps,
    states,
    events,
    health,
    eligible: () => states.map((s) => s.eligible),
    weights: () => states.map((s) => s.effectiveWeight),
  };
}

/** Active checks whose probe answers `up[index]`, every 1 s, thresholds 1/1. */
function activeWith(up: boolean[]): EndpointHealthOptions["active"] {
  return {
    intervalMs: 1_000,
    timeoutMs: 100,
    jitterFraction: 0,
    healthyThreshold: 1,
    unhealthyThreshold: 1,
    probe: (t) =>
      Promise.resolve<ProbeResult>({
        ok: up[t.index]!,
        reason: up[t.index] ? "status 200" : "status 500",
      }),
  };
}

Deno.test("EndpointHealth: without checks all endpoints are eligible at full weight", async () => {
  const { eligible, weights, health, timers } = setup([1, 2, 3]);
  assert.deepEqual(eligible(), [true, true, true]);
  assert.deepEqual(weights(), [1, 2, 3]);
  assert.equal(health.panic, false);
  await health.close();
  assert.equal(timers.pending, 0);
});

Deno.test("EndpointHealth: outlier ejection clears eligible until the ejection ends", async () => {
  const { eligible, health, timers, events } = setup([1, 1, 1, 1], {
    outlier: { baseEjectionTimeMs: 30_000 },
  });
  for (let k = 0; k < 5; k++) health.record(2, "gateway");
  assert.deepEqual(eligible(), [true, true, false, true]);
  const snap = health.snapshot()[2]!;
  assert.equal(snap.ejected, true);
  assert.equal(snap.ejectedUntil, 30_000);
  assert.equal(snap.ejections, 1);
  assert.equal(snap.recentFailures, 5);
  await timers.advance(29_999);
  assert.equal(eligible()[2], false);
  await timers.advance(1); // the return timer fires with no traffic at all
  assert.deepEqual(eligible(), [true, true, true, true]);
  assert.deepEqual(events, ["ejected 2", "returned 2"]);
  await health.close();
});

Deno.test("EndpointHealth: without outlier options record() never ejects", async () => {
  const { eligible, health } = setup([1, 1]);
  for (let k = 0; k < 50; k++) health.record(0, "5xx");
  assert.deepEqual(eligible(), [true, true]);
  assert.equal(health.snapshot()[0]!.recentFailures, 50);
  await health.close();
});

Deno.test("EndpointHealth: below the panic threshold every endpoint becomes eligible", async () => {
  const up = [true, true, true, true];
  const { eligible, health, timers, events } = setup([1, 1, 1, 1], { active: activeWith(up) });
  await timers.advance(0);
  up[0] = up[1] = false; // 2 of 4 usable: exactly 50%, not below
  await timers.advance(1_000);
  assert.deepEqual(eligible(), [false, false, true, true]);
  assert.equal(health.panic, false);
  up[2] = false; // 1 of 4: panic
  await timers.advance(1_000);
  assert.deepEqual(eligible(), [true, true, true, true]);
  assert.equal(health.panic, true);
  assert.ok(health.snapshot().every((s) => s.panic && s.eligible));
  assert.deepEqual(health.snapshot().map((s) => s.healthy), [false, false, false, true]);
  up[0] = true; // 2 of 4 again: panic over
  await timers.advance(1_000);
  assert.deepEqual(eligible(), [true, false, false, true]);
  assert.equal(health.panic, false);
  assert.deepEqual(events, [
    "unhealthy 0",
    "unhealthy 1",
    "unhealthy 2",
    "panic",
    "healthy 0",
    "panic_over",
  ]);
  await health.close();
});

Deno.test("EndpointHealth: panic threshold 0 lets every endpoint go ineligible", async () => {
  const up = [false, false];
  const { eligible, health, timers } = setup([1, 1], {
    active: activeWith(up),
    panicThresholdPercent: 0,
  });
  await timers.advance(0);
  assert.deepEqual(eligible(), [false, false]);
  assert.equal(health.panic, false);
  await health.close();
});

Deno.test("EndpointHealth: ejections and failed checks count together toward panic", async () => {
  const up = [true, true, false];
  const { eligible, health, timers } = setup([1, 1, 1], {
    active: activeWith(up),
    outlier: { maxEjectionPercent: 100 },
  });
  await timers.advance(0);
  assert.deepEqual(eligible(), [true, true, false]); // 2 of 3 usable
  for (let k = 0; k < 5; k++) health.record(0, "connect-failure");
  assert.equal(health.panic, true); // 1 of 3 usable
  assert.deepEqual(eligible(), [true, true, true]);
  await health.close();
});

Deno.test("EndpointHealth: slow start ramps weight 10% -> 50% -> 100% of weight", async () => {
  const { weights, health, timers, states } = setup([4, 4], {
    outlier: { baseEjectionTimeMs: 1_000 },
    slowStart: { windowMs: 10_000 },
  });
  assert.deepEqual(weights(), [4, 4], "no ramp at startup unless asked");
  for (let k = 0; k < 5; k++) health.record(0, "5xx");
  assert.equal(states[0]!.eligible, false);
  await timers.advance(1_000); // returns at t = 1 s: the ramp starts (0% of the window)
  assert.equal(states[0]!.eligible, true);
  assert.ok(Math.abs(weights()[0]! - 0.4) < 1e-9, `0%: ${weights()[0]}`);
  await timers.advance(5_000); // 50%
  assert.ok(Math.abs(weights()[0]! - 2) < 1e-9, `50%: ${weights()[0]}`);
  await timers.advance(5_000); // 100%
  assert.equal(weights()[0], 4);
  assert.equal(weights()[1], 4);
  assert.equal(timers.pending, 0, "the ramp timer stops once no endpoint ramps");
  await health.close();
});

Deno.test("EndpointHealth: slow start on recovery from failed checks and at startup", async () => {
  const up = [true, false];
  const { weights, health, timers } = setup([10, 10], {
    active: activeWith(up),
    slowStart: { windowMs: 4_000, atStartup: true },
    tickMs: 500,
    panicThresholdPercent: 0,
  });
  assert.deepEqual(weights(), [1, 1]);
  await timers.advance(2_000);
  assert.ok(Math.abs(weights()[0]! - 5) < 1e-9, `startup ramp at 50%: ${weights()[0]}`);
  assert.equal(weights()[1], 10, "an unusable endpoint does not ramp");
  up[1] = true;
  await timers.advance(1_000); // endpoint 1 healthy at t = 3 s
  assert.equal(weights()[1], 1);
  await timers.advance(2_000);
  assert.equal(weights()[0], 10);
  assert.ok(Math.abs(weights()[1]! - 5) < 1e-9, `recovery ramp at 50%: ${weights()[1]}`);
  await timers.advance(2_000);
  assert.deepEqual(weights(), [10, 10]);
  await health.close();
});

Deno.test("EndpointHealth: a balancer over the same states follows health", async () => {
  const eps = endpoints(1, 1, 1, 1);
  const lb = createBalancer("round_robin", eps);
  const timers = new FakeTimers(0);
  const health = new EndpointHealth(eps, lb.states, {
    outlier: { maxEjectionPercent: 50 },
    timers,
  });
  for (let k = 0; k < 5; k++) health.record(1, "5xx");
  const picked = new Set(Array.from({ length: 40 }, () => lb.pick()!.index));
  assert.deepEqual([...picked].sort(), [0, 2, 3]);
  await health.close();
});

Deno.test("EndpointHealth: snapshot reports inFlight and close stops everything", async () => {
  const up = [true, true];
  const { health, timers, states } = setup([1, 1], {
    active: activeWith(up),
    outlier: {},
    slowStart: { windowMs: 10_000, atStartup: true },
  });
  await timers.advance(0);
  states[1]!.inFlight = 3; // the forwarder's field
  const s = health.snapshot()[1]!;
  assert.deepEqual(
    { ...s, effectiveWeight: Math.round(s.effectiveWeight * 10) / 10 },
    {
      index: 1,
      origin: "http://e1:80",
      weight: 1,
      healthy: true,
      ejected: false,
      ejectedUntil: undefined,
      ejections: 0,
      eligible: true,
      effectiveWeight: 0.1,
      inFlight: 3,
      recentFailures: 0,
      lastProbe: "status 200",
      panic: false,
    },
  );
  await health.close();
  assert.equal(timers.pending, 0);
  health.record(0, "5xx"); // a late record after close is ignored
});

Deno.test("EndpointHealth: rejects mismatched states and bad options", () => {
  const eps = endpoints(1, 1);
  assert.throws(() => new EndpointHealth(eps, [createEndpointState(1)]), /one entry per endpoint/);
  const states = eps.map((e) => createEndpointState(e.weight));
  assert.throws(
    () => new EndpointHealth(eps, states, { panicThresholdPercent: 120 }),
    /panicThresholdPercent/,
  );
  assert.throws(
    () => new EndpointHealth(eps, states, { outlier: { consecutive5xx: -1 } }),
    /consecutive5xx/,
  );
});
