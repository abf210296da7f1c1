import assert from "node:assert/strict";
import fc from "fast-check";
import { ThresholdCounter } from "./thresholds.ts";

function counter(healthyThreshold: number, unhealthyThreshold: number, initiallyHealthy = true) {
  return new ThresholdCounter({ healthyThreshold, unhealthyThreshold, initiallyHealthy });
}

Deno.test("ThresholdCounter: one failure among successes never flips a healthy endpoint", () => {
  const c = counter(2, 2);
  for (const ok of [true, false, true, true, false, true, false, true]) {
    assert.equal(c.observe(ok), false);
    assert.equal(c.healthy, true);
  }
});

Deno.test("ThresholdCounter: unhealthy after exactly unhealthyThreshold failures", () => {
  const c = counter(2, 3);
  assert.equal(c.observe(false), false);
  assert.equal(c.observe(false), false);
  assert.equal(c.observe(false), true);
  assert.equal(c.healthy, false);
  assert.equal(c.failures, 3);
  assert.equal(c.observe(false), false, "more failures are not another transition");
});

Deno.test("ThresholdCounter: recovery needs healthyThreshold consecutive successes", () => {
  const c = counter(3, 1);
  c.observe(false);
  assert.equal(c.healthy, false);
  c.observe(true);
  c.observe(true);
  c.observe(false); // the streak starts over
  c.observe(true);
  c.observe(true);
  assert.equal(c.healthy, false);
  assert.equal(c.observe(true), true);
  assert.equal(c.healthy, true);
});

Deno.test("ThresholdCounter: starting unhealthy, the very first success marks healthy", () => {
  const c = counter(3, 3, false);
  assert.equal(c.observe(true), true);
  assert.equal(c.healthy, true);
  const d = counter(3, 3, false);
  d.observe(false);
  assert.equal(d.observe(true), false, "only the first probe gets the shortcut");
});

Deno.test("ThresholdCounter: every transition follows a run of threshold equal results", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 5 }),
      fc.integer({ min: 1, max: 5 }),
      fc.array(fc.boolean(), { maxLength: 200 }),
      (rise, fall, results) => {
        const c = counter(rise, fall);
        let run = 0;
        let last: boolean | undefined;
        for (const ok of results) {
          run = ok === last ? run + 1 : 1;
          last = ok;
          const before = c.healthy;
          const changed = c.observe(ok);
          assert.equal(changed, before !== c.healthy);
          if (changed) {
            assert.equal(c.healthy, ok);
            assert.equal(run, ok ? rise : fall);
          }
        }
      },
    ),
  );
});
