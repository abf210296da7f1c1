import assert from "node:assert/strict";
import { LeastRequestBalancer } from "./least_request.ts";
import { seededRandom } from "./random.ts";
import { countPicks, endpoints, share } from "./testing.ts";

Deno.test("least_request steers away from an endpoint whose in-flight count stays high", () => {
  const eps = endpoints(1, 1, 1, 1);
  const lb = new LeastRequestBalancer(eps, { random: seededRandom(7) });
  const rand = seededRandom(8);
  let hot = 0;
  for (let n = 0; n < 10_000; n++) {
    lb.states[0]!.inFlight = 50; // a stuck endpoint: its requests never finish
    for (let i = 1; i < 4; i++) lb.states[i]!.inFlight = Math.floor(rand() * 4);
    if (lb.pick() === eps[0]) hot++;
  }
  assert.ok(hot / 10_000 < 0.25 / 10, `hot endpoint got ${hot} of 10,000 picks`);
});

Deno.test("least_request in a closed loop gives a slow endpoint far less than 1/N", () => {
  // Each tick one request finishes on every fast endpoint but only every 10th tick on the slow
  // one; the balancer sees only in-flight counts.
  const eps = endpoints(1, 1, 1, 1);
  const lb = new LeastRequestBalancer(eps, { random: seededRandom(9) });
  const picked = [0, 0, 0, 0];
  for (let tick = 0; tick < 10_000; tick++) {
    for (let k = 0; k < 3; k++) {
      const e = lb.pick()!;
      const i = eps.indexOf(e);
      lb.states[i]!.inFlight++;
      picked[i]!++;
    }
    for (let i = 0; i < 4; i++) {
      const s = lb.states[i]!;
      if (s.inFlight > 0 && (i !== 0 || tick % 10 === 0)) s.inFlight--;
    }
  }
  const slowShare = picked[0]! / 30_000;
  assert.ok(slowShare < 0.25 / 4, `slow endpoint share ${slowShare}`);
});

Deno.test("least_request with idle endpoints picks in proportion to weight (within 2%)", () => {
  const lb = new LeastRequestBalancer(endpoints(3, 1), { random: seededRandom(10) });
  const counts = countPicks(lb, 10_000);
  assert.ok(Math.abs(share(counts, "a", 10_000) - 0.75) < 0.02, `a: ${counts.get("a")}`);
});

Deno.test("least_request with equal weights always takes the less loaded of two", () => {
  const lb = new LeastRequestBalancer(endpoints(1, 1), { random: seededRandom(11) });
  lb.states[0]!.inFlight = 1;
  assert.deepEqual(countPicks(lb, 1000).get("b"), 1000);
});

Deno.test("least_request compares in-flight per unit of weight", () => {
  const lb = new LeastRequestBalancer(endpoints(2, 1), { random: seededRandom(12) });
  lb.states[0]!.inFlight = 3; // 1.5 per unit of weight
  lb.states[1]!.inFlight = 2; // 2 per unit
  assert.equal(countPicks(lb, 1000).get("a"), 1000);
  lb.states[0]!.inFlight = 5; // 2.5 per unit
  assert.equal(countPicks(lb, 1000).get("b"), 1000);
});

Deno.test("least_request follows effective weight (slow start) when idle", () => {
  const lb = new LeastRequestBalancer(endpoints(1, 1), { random: seededRandom(13) });
  lb.states[0]!.effectiveWeight = 0.25;
  const counts = countPicks(lb, 10_000);
  assert.ok(Math.abs(share(counts, "a", 10_000) - 0.2) < 0.02, `a: ${counts.get("a")}`);
});

Deno.test("least_request never returns excluded or ineligible endpoints", () => {
  const eps = endpoints(1, 1, 1);
  const lb = new LeastRequestBalancer(eps, { random: seededRandom(14) });
  lb.states[2]!.eligible = false;
  lb.states[1]!.inFlight = 100;
  const tried = new Set([eps[0]!]);
  for (let i = 0; i < 100; i++) assert.equal(lb.pick(undefined, tried), eps[1]);
  assert.equal(lb.pick(undefined, new Set([eps[0]!, eps[1]!])), undefined);
  lb.states[0]!.eligible = false;
  lb.states[1]!.eligible = false;
  assert.equal(lb.pick(), undefined);
  assert.equal(new LeastRequestBalancer([]).pick(), undefined);
});
