import assert from "node:assert/strict";
import { RandomBalancer, seededRandom } from "./random.ts";
import { countPicks, endpoints, share } from "./testing.ts";

Deno.test("random picks in proportion to weights 5,3,2 over 10,000 picks (within 2%)", () => {
  const lb = new RandomBalancer(endpoints(5, 3, 2), { random: seededRandom(1) });
  const counts = countPicks(lb, 10_000);
  for (const [id, expected] of [["a", 0.5], ["b", 0.3], ["c", 0.2]] as const) {
    assert.ok(Math.abs(share(counts, id, 10_000) - expected) < 0.02, `${id}: ${counts.get(id)}`);
  }
});

Deno.test("random with equal weights spreads 10,000 picks evenly (within 2%)", () => {
  const lb = new RandomBalancer(endpoints(1, 1, 1, 1, 1), { random: seededRandom(2) });
  const counts = countPicks(lb, 10_000);
  for (const id of ["a", "b", "c", "d", "e"]) {
    assert.ok(Math.abs(share(counts, id, 10_000) - 0.2) < 0.02, `${id}: ${counts.get(id)}`);
  }
});

Deno.test("random follows effective weights and skips ineligible endpoints", () => {
  const lb = new RandomBalancer(endpoints(1, 1, 1), { random: seededRandom(3) });
  lb.states[0]!.effectiveWeight = 3;
  lb.states[2]!.eligible = false;
  const counts = countPicks(lb, 10_000);
  assert.equal(counts.get("c"), undefined);
  assert.ok(Math.abs(share(counts, "a", 10_000) - 0.75) < 0.02, `a: ${counts.get("a")}`);
});

Deno.test("random never returns an excluded endpoint; undefined when all are excluded", () => {
  const eps = endpoints(1, 1, 1);
  const lb = new RandomBalancer(eps, { random: seededRandom(4) });
  const tried = new Set([eps[1]!]);
  for (let i = 0; i < 200; i++) assert.notEqual(lb.pick(undefined, tried), eps[1]);
  assert.equal(lb.pick(undefined, new Set(eps)), undefined);
  for (const s of lb.states) s.eligible = false;
  assert.equal(lb.pick(), undefined);
});

Deno.test("random lands on the last usable endpoint when the source returns almost 1", () => {
  const lb = new RandomBalancer(endpoints(1, 1, 1), { random: () => 0.9999999999999999 });
  assert.equal(lb.pick()?.id, "c");
});

Deno.test("seededRandom is deterministic per seed and stays in [0, 1)", () => {
  const a = seededRandom(42);
  const b = seededRandom(42);
  for (let i = 0; i < 1000; i++) {
    const x = a();
    assert.equal(x, b());
    assert.ok(x >= 0 && x < 1);
  }
  assert.notEqual(seededRandom(1)(), seededRandom(2)());
});
