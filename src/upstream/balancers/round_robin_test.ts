import assert from "node:assert/strict";
import { RoundRobinBalancer } from "./round_robin.ts";
import { countPicks, endpoints, share } from "./testing.ts";

function sequence(lb: RoundRobinBalancer<{ id: string; weight: number }>, n: number): string {
  return Array.from({ length: n }, () => lb.pick()?.id ?? "-").join("");
}

Deno.test("round_robin with weights 5,1,1 picks a a b a c a a, and repeats it", () => {
  const lb = new RoundRobinBalancer(endpoints(5, 1, 1));
  assert.equal(sequence(lb, 14), "aabacaa".repeat(2));
});

Deno.test("round_robin with equal weights rotates in list order", () => {
  const lb = new RoundRobinBalancer(endpoints(1, 1, 1, 1));
  assert.equal(sequence(lb, 12), "abcd".repeat(3));
  const heavy = new RoundRobinBalancer(endpoints(7, 7, 7));
  assert.equal(sequence(heavy, 6), "abcabc");
});

Deno.test("round_robin shares over 10,000 picks match weights 6,3,1 within 1%", () => {
  const lb = new RoundRobinBalancer(endpoints(6, 3, 1));
  const counts = countPicks(lb, 10_000);
  for (const [id, expected] of [["a", 0.6], ["b", 0.3], ["c", 0.1]] as const) {
    assert.ok(Math.abs(share(counts, id, 10_000) - expected) < 0.01, `${id}: ${counts.get(id)}`);
  }
});

Deno.test("round_robin skips an ineligible endpoint and takes it back when eligible again", () => {
  const lb = new RoundRobinBalancer(endpoints(1, 1, 1));
  lb.states[1]!.eligible = false;
  assert.equal(sequence(lb, 6), "acacac");
  lb.states[1]!.eligible = true;
  const counts = countPicks(lb, 300);
  assert.deepEqual([counts.get("a"), counts.get("b"), counts.get("c")], [100, 100, 100]);
});

Deno.test("round_robin follows a lowered effective weight (slow start)", () => {
  const lb = new RoundRobinBalancer(endpoints(1, 1));
  lb.states[0]!.effectiveWeight = 0.25; // warming up: a quarter of its weight
  const counts = countPicks(lb, 10_000);
  assert.ok(Math.abs(share(counts, "a", 10_000) - 0.2) < 0.01, `a: ${counts.get("a")}`);
  lb.states[0]!.effectiveWeight = 0;
  assert.equal(countPicks(lb, 100).get("a"), undefined);
});

Deno.test("round_robin never returns an excluded endpoint (a retry goes elsewhere)", () => {
  const eps = endpoints(5, 1, 1);
  const lb = new RoundRobinBalancer(eps);
  const tried = new Set([eps[0]!]);
  for (let i = 0; i < 20; i++) assert.notEqual(lb.pick(undefined, tried), eps[0]);
  assert.equal(lb.pick(undefined, new Set(eps)), undefined);
});

Deno.test("round_robin returns undefined when no endpoint is eligible, or there are none", () => {
  const lb = new RoundRobinBalancer(endpoints(1, 2));
  for (const s of lb.states) s.eligible = false;
  assert.equal(lb.pick(), undefined);
  assert.equal(new RoundRobinBalancer([]).pick(), undefined);
});
