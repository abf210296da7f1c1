import assert from "node:assert/strict";
import { slowStartCurve, slowStartFactor } from "./slow_start.ts";

Deno.test("slowStartFactor: linear ramp is 10% floor at 0%, half at 50%, full at 100%", () => {
  const curve = slowStartCurve({ windowMs: 10_000 });
  assert.equal(slowStartFactor(curve, 0), 0.1);
  assert.equal(slowStartFactor(curve, 500), 0.1, "the floor holds through the first 10%");
  assert.equal(slowStartFactor(curve, 2_500), 0.25);
  assert.equal(slowStartFactor(curve, 5_000), 0.5);
  assert.equal(slowStartFactor(curve, 10_000), 1);
  assert.equal(slowStartFactor(curve, 60_000), 1);
});

Deno.test("slowStartFactor: aggression above 1 climbs faster early", () => {
  const curve = slowStartCurve({ windowMs: 10_000, aggression: 2 });
  assert.ok(Math.abs(slowStartFactor(curve, 2_500) - 0.5) < 1e-12);
  const gentle = slowStartCurve({ windowMs: 10_000, aggression: 0.5, minWeightPercent: 0 });
  assert.ok(Math.abs(slowStartFactor(gentle, 5_000) - 0.25) < 1e-12);
});

Deno.test("slowStartFactor: a window of 0 is off", () => {
  assert.equal(slowStartFactor(slowStartCurve(), 0), 1);
});

Deno.test("slowStartCurve: rejects bad options naming the field", () => {
  assert.throws(() => slowStartCurve({ windowMs: -1 }), /slowStart\.windowMs/);
  assert.throws(() => slowStartCurve({ aggression: 0 }), /slowStart\.aggression/);
  assert.throws(() => slowStartCurve({ minWeightPercent: 150 }), /slowStart\.minWeightPercent/);
});
