import assert from "node:assert/strict";
import { seededRandom } from "./random.ts";
import { xxh32String } from "./hash.ts";
import { pointCounts, RingHashBalancer } from "./ring_hash.ts";
import { endpoints, mapKeys } from "./testing.ts";

const KEYS = Array.from({ length: 10_000 }, (_, i) => `user-${i}`);

function shares(ids: readonly string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const id of ids) m.set(id, (m.get(id) ?? 0) + 1 / ids.length);
  return m;
}

Deno.test("ring_hash maps the same key to the same endpoint, whatever the endpoint order", () => {
  const eps = endpoints(1, 1, 1, 1, 1);
  const lb = new RingHashBalancer(eps);
  const first = mapKeys(lb, KEYS);
  assert.deepEqual(mapKeys(lb, KEYS), first);
  assert.deepEqual(mapKeys(new RingHashBalancer([...eps].reverse()), KEYS), first);
});

Deno.test("ring_hash spreads 10,000 keys over 5 equal endpoints within 15% of 1/5", () => {
  const s = shares(mapKeys(new RingHashBalancer(endpoints(1, 1, 1, 1, 1)), KEYS));
  for (const id of ["a", "b", "c", "d", "e"]) {
    const got = s.get(id) ?? 0;
    assert.ok(Math.abs(got - 0.2) < 0.2 * 0.15, `${id}: ${got}`);
  }
});

Deno.test("ring_hash honours weights through its virtual node counts", () => {
  const lb = new RingHashBalancer(endpoints(3, 1));
  const [a, b] = lb.pointsPerEndpoint();
  assert.equal(a, 3 * b!);
  const got = shares(mapKeys(lb, KEYS)).get("a") ?? 0;
  assert.ok(Math.abs(got - 0.75) < 0.04, `a: ${got}`);
});

Deno.test("ring_hash builds >= minRingSize points, 160 per weight times a power of 2", () => {
  assert.equal(new RingHashBalancer(endpoints(1, 1, 1)).size, 1920);
  assert.equal(new RingHashBalancer(endpoints(1, 1, 1), { minRingSize: 100 }).size, 480);
  assert.equal(new RingHashBalancer(endpoints(1, 1, 1), { minRingSize: 5000 }).size, 7680);
  assert.deepEqual(pointCounts([1, 2], 1024, 1 << 20), [640, 1280]);
  assert.deepEqual(pointCounts([1000, 1], 16, 1000), [625, 1]); // 160 / 256 per weight
  assert.deepEqual(pointCounts([1, 1], 1, 1), [1, 1]);
});

Deno.test("ring_hash: removing 1 of 10 endpoints moves <= 1.3/N of keys, no others", () => {
  const eps = endpoints(...Array<number>(10).fill(1));
  const before = mapKeys(new RingHashBalancer(eps), KEYS);
  for (let r = 0; r < eps.length; r++) {
    const removed = eps[r]!.id;
    const after = mapKeys(new RingHashBalancer(eps.filter((_, i) => i !== r)), KEYS);
    let moved = 0;
    for (let k = 0; k < KEYS.length; k++) {
      if (before[k] === after[k]) continue;
      moved++;
      assert.equal(before[k], removed, `${KEYS[k]} moved off ${before[k]}, not ${removed}`);
    }
    assert.ok(moved <= (1.3 / 10) * KEYS.length, `removing ${removed} moved ${moved}`);
  }
});

Deno.test("ring_hash: an ineligible endpoint's keys spread over the others and come back", () => {
  const eps = endpoints(1, 1, 1, 1);
  const lb = new RingHashBalancer(eps);
  const before = mapKeys(lb, KEYS);
  lb.states[1]!.eligible = false;
  const during = mapKeys(lb, KEYS);
  const receivers = new Set<string>();
  for (let k = 0; k < KEYS.length; k++) {
    if (before[k] === "b") receivers.add(during[k]!);
    else assert.equal(during[k], before[k]);
  }
  assert.deepEqual([...receivers].sort(), ["a", "c", "d"]);
  lb.states[1]!.eligible = true;
  assert.deepEqual(mapKeys(lb, KEYS), before);
});

Deno.test("ring_hash: a retry with the first pick excluded gets a stable other endpoint", () => {
  const eps = endpoints(1, 1, 1);
  const lb = new RingHashBalancer(eps);
  const first = lb.pick({ hashKey: "session-9" })!;
  const retry = lb.pick({ hashKey: "session-9" }, new Set([first]))!;
  assert.notEqual(retry, first);
  assert.equal(lb.pick({ hashKey: "session-9" }, new Set([first])), retry);
  assert.equal(lb.pick({ hashKey: "session-9" }, new Set(eps)), undefined);
});

Deno.test("ring_hash returns undefined when no endpoint is eligible, or there are none", () => {
  const lb = new RingHashBalancer(endpoints(1, 1, 1));
  for (const s of lb.states) s.eligible = false;
  assert.equal(lb.pick({ hashKey: "k" }), undefined);
  assert.equal(lb.pick(), undefined);
  assert.equal(new RingHashBalancer([]).pick({ hashKey: "k" }), undefined);
});

Deno.test("ring_hash without a hash key picks a random point from the injected source", () => {
  const lb = new RingHashBalancer(endpoints(1, 1), { random: seededRandom(5) });
  const s = shares(Array.from({ length: 4000 }, () => lb.pick()!.id));
  assert.ok(Math.abs((s.get("a") ?? 0) - 0.5) < 0.1);
});

Deno.test("ring_hash rejects endpoints without a stable key, duplicate keys and bad sizes", () => {
  assert.throws(() => new RingHashBalancer([{ weight: 1 }]), /stable endpoint key/);
  const keyed = new RingHashBalancer([{ weight: 1 }, { weight: 2 }], {
    keyOf: (e) => `w${e.weight}`,
  });
  assert.equal(keyed.size, 1920);
  assert.throws(
    () => new RingHashBalancer([{ id: "x", weight: 1 }, { id: "x", weight: 1 }]),
    /key/,
  );
  assert.throws(() => new RingHashBalancer(endpoints(1), { minRingSize: 0 }), /minRingSize/);
  assert.throws(
    () => new RingHashBalancer(endpoints(1), { minRingSize: 4096, maxRingSize: 1024 }),
    /exceeds/,
  );
});

/** The owner of the first point at or after `h`, else of the lowest point: a linear scan. */
function bruteForceOwner(points: readonly { hash: number; id: string }[], h: number): string {
  let best: { hash: number; id: string } | undefined;
  let lowest = points[0]!;
  for (const p of points) {
    if (p.hash < lowest.hash) lowest = p;
    if (p.hash >= h && (best === undefined || p.hash < best.hash)) best = p;
  }
  return (best ?? lowest).id;
}

Deno.test("ring_hash: a key hashing past the last point wraps to the first (checked against a brute-force ring)", () => {
  for (const minRingSize of [1, 1024]) {
    const eps = endpoints(1, 2, 1);
    const lb = new RingHashBalancer(eps, { minRingSize, maxRingSize: minRingSize });
    // The ring the module documents, built here independently: points xxh32("<id>-<j>").
    const points = eps.flatMap((e, i) =>
      Array.from({ length: lb.pointsPerEndpoint()[i]! }, (_, j) => ({
        hash: xxh32String(`${e.id}-${j}`),
        id: e.id,
      }))
    );
    const last = Math.max(...points.map((p) => p.hash));
    const keys: string[] = [];
    let wrapping = 0;
    // Every key beyond the last point among the first 300,000, plus 2,000 ordinary keys.
    for (let i = 0; i < 300_000 && (wrapping < 50 || keys.length < 2_000); i++) {
      const key = `k${i}`;
      const beyond = xxh32String(key) > last;
      if (beyond) wrapping++;
      if (beyond || keys.length < 2_000) keys.push(key);
    }
    assert.ok(wrapping >= 20, `only ${wrapping} keys hash past the last point`);
    for (const key of keys) {
      assert.equal(
        lb.pick({ hashKey: key })?.id,
        bruteForceOwner(points, xxh32String(key)),
        `${key} (ring of ${points.length})`,
      );
    }
  }
});
