import assert from "node:assert/strict";
import { ActiveHealthChecker, type ActiveHealthOptions } from "./active.ts";
import type { ProbeResult, ProbeTarget } from "./probe.ts";
import { FakeTimers, sequence } from "./testing.ts";

const targets: ProbeTarget[] = [
  { index: 0, origin: "http://a:80" },
  { index: 1, origin: "http://b:80" },
];

/** A checker over fake time whose probe answers from `script` (per endpoint, in order). */
function setup(
  script: (index: number, n: number) => boolean | "hang",
  opts: Partial<ActiveHealthOptions> = {},
) {
  const timers = new FakeTimers(0);
  const transitions: string[] = [];
  const probeTimes: number[][] = [[], []];
  const running = [0, 0];
  let maxRunning = 0;
  const checker = new ActiveHealthChecker(targets, {
    intervalMs: 1_000,
    timeoutMs: 200,
    jitterFraction: 0,
    healthyThreshold: 2,
    unhealthyThreshold: 2,
    timers,
    ...opts,
    onTransition: (i, healthy, reason) => transitions.push(`${i} ${healthy} ${reason}`),
    probe: (t, signal) => {
      const n = probeTimes[t.index]!.push(timers.now()) - 1;
      const verdict = script(t.index, n);
      running[t.index]!++;
      maxRunning = Math.max(maxRunning, running[t.index]!);
      return new Promise<ProbeResult>((resolve, reject) => {
        const done = () => running[t.index]!--;
        if (verdict === "hang") {
          signal.addEventListener("abort", () => {
            done();
            reject(signal.reason);
          });
          return;
        }
        done();
        resolve({ ok: verdict, reason: verdict ? "status 200" : "status 500" });
      });
    },
  });
  // maxRunning: the most probes ever in flight at once to one endpoint.
  return { timers, checker, transitions, probeTimes, maxRunning: () => maxRunning };
}

Deno.test("ActiveHealthChecker: probes each endpoint once per interval after start", async () => {
  const { timers, checker, probeTimes } = setup(() => true);
  checker.start();
  await timers.advance(3_500);
  assert.deepEqual(probeTimes, [[0, 1_000, 2_000, 3_000], [0, 1_000, 2_000, 3_000]]);
  await checker.stop();
  assert.equal(timers.pending, 0);
});

Deno.test("ActiveHealthChecker: jitter adds random() x (fraction x interval + ms)", async () => {
  const { timers, checker, probeTimes } = setup(() => true, {
    jitterFraction: 0.1,
    jitterMs: 100,
    random: sequence(0, 0.5, 1 - 1e-9),
  });
  checker.start();
  await timers.advance(2_500);
  // Span 200 ms: first probes at 0 and 100, then 1000 + up to 200 ms each.
  assert.equal(probeTimes[0]![0], 0);
  assert.equal(probeTimes[1]![0], 100);
  for (const times of probeTimes) {
    for (let k = 1; k < times.length; k++) {
      const gap = times[k]! - times[k - 1]!;
      assert.ok(gap >= 1_000 && gap < 1_200, `gap ${gap}`);
    }
  }
  await checker.stop();
});

Deno.test("ActiveHealthChecker: a lone failure among successes never flips health", async () => {
  // Endpoint 0 fails every third probe: never two in a row.
  const { timers, checker, transitions } = setup((i, n) => i === 1 || n % 3 !== 2);
  checker.start();
  await timers.advance(20_000);
  assert.deepEqual(transitions, []);
  assert.equal(checker.healthy(0), true);
  assert.equal(checker.status(0).probes, 21);
  await checker.stop();
});

Deno.test("ActiveHealthChecker: thresholds decide both transitions, with reasons", async () => {
  // Endpoint 0: ok, ok, fail, fail, fail, ok, ok, ok.
  const plan = [true, true, false, false, false, true, true, true];
  const { timers, checker, transitions } = setup((i, n) => i === 1 || (plan[n] ?? true));
  checker.start();
  await timers.advance(3_000);
  assert.deepEqual(transitions, ["0 false 2 consecutive failures, last: status 500"]);
  assert.equal(checker.healthy(0), false);
  await timers.advance(2_000); // probes at 4 s (fail) and 5 s (ok)
  assert.equal(checker.healthy(0), false);
  await timers.advance(1_000); // 6 s: second success
  assert.equal(checker.healthy(0), true);
  assert.equal(transitions[1], "0 true 2 consecutive successes, last: status 200");
  assert.equal(transitions.length, 2);
  await checker.stop();
});

Deno.test("ActiveHealthChecker: a hung probe times out and probes never overlap", async () => {
  const { timers, checker, probeTimes, maxRunning } = setup((i) => i === 0 ? "hang" : true);
  checker.start();
  await timers.advance(2_500);
  // Each hung probe lasts the 200 ms timeout, then the 1000 ms interval starts.
  assert.deepEqual(probeTimes[0], [0, 1_200, 2_400]);
  assert.equal(maxRunning(), 1);
  assert.equal(checker.healthy(0), false);
  assert.equal(checker.status(0).lastReason, "timeout after 200 ms");
  await checker.stop();
});

Deno.test("ActiveHealthChecker: a probe ignoring its signal fails at the timeout", async () => {
  const timers = new FakeTimers(0);
  let calls = 0;
  const checker = new ActiveHealthChecker([targets[0]!], {
    intervalMs: 1_000,
    timeoutMs: 200,
    jitterFraction: 0,
    unhealthyThreshold: 1,
    timers,
    probe: () => {
      calls++;
      return new Promise<never>(() => {});
    },
  });
  checker.start();
  await timers.advance(1_300);
  assert.equal(calls, 2);
  assert.equal(checker.healthy(0), false);
  await checker.stop();
});

Deno.test("ActiveHealthChecker: initial unhealthy turns healthy on the first success", async () => {
  const { timers, checker, transitions } = setup(() => true, {
    initialState: "unhealthy",
    healthyThreshold: 3,
  });
  assert.equal(checker.healthy(0), false);
  checker.start();
  await timers.advance(0);
  assert.equal(checker.healthy(0), true);
  assert.equal(transitions.length, 2);
  await checker.stop();
});

Deno.test("ActiveHealthChecker: stop aborts probes in flight, reports nothing after", async () => {
  const { timers, checker, transitions } = setup(() => "hang", { unhealthyThreshold: 1 });
  checker.start();
  await timers.advance(50);
  await checker.stop();
  await timers.advance(5_000);
  assert.deepEqual(transitions, []);
  assert.equal(timers.pending, 0);
});

Deno.test("ActiveHealthChecker: rejects bad options naming the field", () => {
  const probe = () => Promise.resolve({ ok: true, reason: "" });
  assert.throws(() => new ActiveHealthChecker(targets, { probe, intervalMs: 0 }), /intervalMs/);
  assert.throws(
    () => new ActiveHealthChecker(targets, { probe, unhealthyThreshold: 0 }),
    /unhealthyThreshold/,
  );
  assert.throws(
    () => new ActiveHealthChecker(targets, { probe, jitterFraction: 2 }),
    /jitterFraction/,
  );
  assert.throws(
    () => new ActiveHealthChecker(targets, { expectedStatuses: ["2xx"] }),
    /expectedStatuses\[0\]/,
  );
});
