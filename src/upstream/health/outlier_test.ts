import assert from "node:assert/strict";
import {
  type Outcome,
  outcomeOfError,
  outcomeOfStatus,
  OutlierDetector,
  type OutlierOptions,
} from "./outlier.ts";

function setup(size: number, opts: Omit<OutlierOptions, "now"> = {}) {
  let t = 0;
  const events: string[] = [];
  const d = new OutlierDetector(size, {
    ...opts,
    now: () => t,
    onEject: (i, until, reason) => events.push(`eject ${i} until ${until} (${reason})`),
    onReturn: (i) => events.push(`return ${i}`),
  });
  return {
    d,
    events,
    advance(ms: number) {
      t += ms;
    },
    now: () => t,
  };
}

function repeat(d: OutlierDetector, i: number, outcome: Outcome, n: number): boolean[] {
  return Array.from({ length: n }, () => d.record(i, outcome));
}

Deno.test("outlier: five consecutive 5xx eject; a success in between resets the streak", () => {
  const { d } = setup(2);
  repeat(d, 0, "5xx", 4);
  d.record(0, "success");
  assert.deepEqual(repeat(d, 0, "5xx", 4), [false, false, false, false]);
  assert.equal(d.isEjected(0), false);
  assert.equal(d.record(0, "5xx"), true);
  assert.equal(d.isEjected(0), true);
  assert.equal(d.ejectedCount, 1);
});

Deno.test("outlier: gateway failures and connect failures share the gateway streak", () => {
  const { d, events } = setup(4, { consecutive5xx: 0, maxEjectionPercent: 100 });
  repeat(d, 0, "gateway", 3);
  repeat(d, 0, "connect-failure", 2);
  assert.equal(d.isEjected(0), true);
  assert.match(events[0]!, /5 consecutive gateway failures/);
  // A plain 500 breaks the gateway streak.
  repeat(d, 1, "gateway", 4);
  d.record(1, "5xx");
  repeat(d, 1, "gateway", 4);
  assert.equal(d.isEjected(1), false);
});

Deno.test("outlier: a 500 counts toward consecutive 5xx even between gateway failures", () => {
  const { d, events } = setup(4, { maxEjectionPercent: 100 });
  for (const o of ["gateway", "5xx", "gateway", "5xx", "connect-failure"] as const) d.record(0, o);
  assert.equal(d.isEjected(0), true);
  assert.match(events[0]!, /5 consecutive 5xx/);
});

Deno.test("outlier: ejection lasts base x times ejected, capped by maxEjectionTimeMs", () => {
  const { d, advance, now } = setup(2, {
    baseEjectionTimeMs: 30_000,
    maxEjectionTimeMs: 100_000,
  });
  const lengths: number[] = [];
  for (let k = 0; k < 5; k++) {
    repeat(d, 0, "5xx", 5);
    const s = d.status(0);
    assert.equal(s.ejected, true);
    lengths.push(s.ejectedUntil! - now());
    // Return, then fail again at once (no decay between ejections).
    advance(s.ejectedUntil! - now());
    assert.equal(d.isEjected(0), false);
  }
  assert.deepEqual(lengths, [30_000, 60_000, 90_000, 100_000, 100_000]);
  assert.equal(d.status(0).ejections, 5);
});

Deno.test("outlier: the multiplier decays by one per interval spent un-ejected", () => {
  const { d, advance } = setup(2, { baseEjectionTimeMs: 1_000, intervalMs: 10_000 });
  repeat(d, 0, "5xx", 5); // 1 s
  advance(1_000);
  repeat(d, 0, "5xx", 5); // 2 s
  advance(2_000);
  repeat(d, 0, "5xx", 5); // 3 s
  assert.equal(d.status(0).multiplier, 3);
  advance(3_000);
  advance(20_000); // two intervals healthy: 3 -> 1
  assert.equal(d.status(0).multiplier, 1);
  repeat(d, 0, "5xx", 5);
  assert.equal(d.status(0).multiplier, 2);
  assert.equal(d.status(0).ejectedUntil, 26_000 + 2_000);
});

Deno.test("outlier: max ejection percent caps simultaneous ejections", () => {
  const { d } = setup(20); // 10% of 20 = 2
  for (let i = 0; i < 4; i++) repeat(d, i, "5xx", 5);
  assert.deepEqual([0, 1, 2, 3].map((i) => d.isEjected(i)), [true, true, false, false]);
  assert.equal(d.ejectedCount, 2);
  // The refused endpoint's streak was reset: it needs a full streak again.
  assert.equal(d.status(2).consecutive5xx, 0);
});

Deno.test("outlier: alwaysEjectOne lets a small cluster eject one endpoint, not two", () => {
  const { d } = setup(3); // 10% of 3 < 1
  repeat(d, 0, "5xx", 5);
  repeat(d, 1, "5xx", 5);
  assert.deepEqual([d.isEjected(0), d.isEjected(1)], [true, false]);

  const strict = setup(3, { alwaysEjectOne: false }).d; // Envoy's default
  repeat(strict, 0, "5xx", 5);
  assert.equal(strict.isEjected(0), false);

  const single = setup(1).d; // one endpoint follows the percentage alone
  repeat(single, 0, "5xx", 5);
  assert.equal(single.isEjected(0), false);
  const all = setup(1, { maxEjectionPercent: 100 }).d;
  repeat(all, 0, "5xx", 5);
  assert.equal(all.isEjected(0), true);
});

Deno.test("outlier: an endpoint returns by itself when its time is up (lazy and tick)", () => {
  const { d, events, advance } = setup(4, { baseEjectionTimeMs: 1_000, maxEjectionPercent: 50 });
  repeat(d, 0, "5xx", 5);
  advance(500);
  repeat(d, 1, "5xx", 5);
  assert.equal(d.nextReturnAt, 1_000);
  advance(499);
  assert.deepEqual(d.tick(), []);
  advance(1);
  d.record(3, "success"); // lazily ends endpoint 0's ejection
  assert.equal(d.ejectedCount, 1);
  assert.equal(d.nextReturnAt, 1_500);
  advance(500);
  assert.deepEqual(d.tick(), [1]);
  assert.equal(d.nextReturnAt, Infinity);
  assert.deepEqual(events.filter((e) => e.startsWith("return")), ["return 0", "return 1"]);
});

Deno.test("outlier: uneject ends an ejection early", () => {
  const { d } = setup(2);
  repeat(d, 0, "gateway", 5);
  assert.equal(d.uneject(0), true);
  assert.equal(d.isEjected(0), false);
  assert.equal(d.ejectedCount, 0);
  assert.equal(d.uneject(0), false);
});

Deno.test("outlier: recentFailures counts failures of the last one to two intervals", () => {
  const { d, advance } = setup(2, { intervalMs: 10_000, consecutive5xx: 0 });
  repeat(d, 0, "5xx", 3);
  advance(10_000);
  repeat(d, 0, "5xx", 2);
  assert.equal(d.status(0).recentFailures, 5);
  advance(10_000);
  assert.equal(d.status(0).recentFailures, 2);
  advance(10_000);
  assert.equal(d.status(0).recentFailures, 0);
});

Deno.test("outcomeOfStatus and outcomeOfError classify like Envoy", () => {
  assert.equal(outcomeOfStatus(200), "success");
  assert.equal(outcomeOfStatus(404), "success");
  assert.equal(outcomeOfStatus(500), "5xx");
  for (const s of [502, 503, 504]) assert.equal(outcomeOfStatus(s), "gateway");
  assert.equal(outcomeOfError("upstream_connect_failure"), "connect-failure");
  assert.equal(outcomeOfError("upstream_timeout"), "gateway");
  assert.equal(outcomeOfError("upstream_reset"), "gateway");
  assert.equal(outcomeOfError("client_closed"), undefined);
});

Deno.test("OutlierDetector: rejects bad options naming the field", () => {
  assert.throws(() => new OutlierDetector(2, { consecutive5xx: 1.5 }), /consecutive5xx/);
  assert.throws(() => new OutlierDetector(2, { maxEjectionPercent: 101 }), /maxEjectionPercent/);
  assert.throws(() => new OutlierDetector(2, { baseEjectionTimeMs: 0 }), /baseEjectionTimeMs/);
  assert.throws(() => new OutlierDetector(2).record(5, "5xx"), /index 5/);
});
