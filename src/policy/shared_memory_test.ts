import assert from "node:assert/strict";
import { SharedArena } from "./shared_memory.ts";
import { KeyedTokenBuckets, TokenBucketStore } from "./token_bucket.ts";
import { BreakerStore, OPEN } from "./circuit_breaker.ts";

Deno.test("SharedArena: one key and size find one region from every view; other keys get their own", () => {
  const arena = new SharedArena(1 << 20);
  const other = new SharedArena(arena.buffer); // as a worker sees it
  const a = arena.region("rate-limit {a}", 100)!;
  assert.deepEqual(other.region("rate-limit {a}", 100), a);
  const b = other.region("rate-limit {b}", 100)!;
  assert.notEqual(b.byteOffset, a.byteOffset);
  assert.ok(b.byteOffset >= a.byteOffset + 104, "regions do not overlap (8-byte aligned)");
  // The same key at another size (a rebuilt cluster with more slots) is another region.
  assert.notEqual(arena.region("rate-limit {a}", 200)!.byteOffset, a.byteOffset);
});

Deno.test("SharedArena: a full arena answers undefined instead of overlapping", () => {
  const arena = new SharedArena(200_000);
  assert.ok(arena.region("big", 50_000));
  assert.equal(arena.region("too big", 150_000), undefined);
});

Deno.test("policy stores at an offset in the arena share state between two views", () => {
  const arena = new SharedArena(1 << 20);
  const view = new SharedArena(arena.buffer);
  const cfg = { rate: 1, burst: 3 };
  const at = (a: SharedArena, key: string, bytes: number) => {
    const r = a.region(key, bytes)!;
    return { buffer: r.buffer, byteOffset: r.byteOffset };
  };
  const now = () => 1_000_000;
  const one = new TokenBucketStore(1, cfg, {
    ...at(arena, "g", TokenBucketStore.byteLength(1)),
    now,
  });
  const two = new TokenBucketStore(1, cfg, {
    ...at(view, "g", TokenBucketStore.byteLength(1)),
    now,
  });
  assert.equal(one.take(0).allowed, true);
  assert.equal(two.take(0).allowed, true);
  assert.equal(one.take(0).allowed, true);
  assert.equal(two.take(0).allowed, false, "the burst of 3 is one burst for both");

  const kBytes = KeyedTokenBuckets.byteLength(64);
  const k1 = new KeyedTokenBuckets({ ...cfg, maxKeys: 64 }, { ...at(arena, "k", kBytes), now });
  const k2 = new KeyedTokenBuckets({ ...cfg, maxKeys: 64 }, { ...at(view, "k", kBytes), now });
  for (let i = 0; i < 3; i++) assert.equal((i % 2 ? k1 : k2).take("10.0.0.1").allowed, true);
  assert.equal(k1.take("10.0.0.1").allowed, false);
  assert.equal(k2.take("10.0.0.2").allowed, true);

  const bBytes = BreakerStore.byteLength(2, { failureThreshold: 2 });
  const b1 = new BreakerStore(2, { failureThreshold: 2 }, { ...at(arena, "b", bBytes), now });
  const b2 = new BreakerStore(2, { failureThreshold: 2 }, { ...at(view, "b", bBytes), now });
  b1.onFailure(1);
  b2.onFailure(1);
  assert.equal(b1.state(1), OPEN);
  assert.equal(b2.tryAcquire(1), false);
  // The region before the breakers' is untouched by them.
  assert.equal(one.available(0), 0);
});

/** An arena for `workers` workers and each worker's view of it (index 0..workers-1). */
function workerViews(workers: number): { main: SharedArena; views: SharedArena[] } {
  const main = new SharedArena(1 << 20, { workers });
  const views = Array.from(
    { length: workers },
    (_, index) => new SharedArena(main.buffer, { index }),
  );
  return { main, views };
}

Deno.test("SharedCounts: a take sums every worker's block; the main isolate reads the total", () => {
  const { main, views: [w0, w1] } = workerViews(2);
  const a = w0!.counts("connections public", 1)!;
  const b = w1!.counts("connections public", 1)!;
  assert.equal(a.take(0, 3), true);
  assert.equal(b.take(0, 3), true);
  assert.equal(b.take(0, 3), true);
  assert.equal(a.take(0, 3), false, "3 for the process, whichever worker asks");
  assert.equal(b.take(0, 3), false);
  assert.deepEqual([a.own(0), b.own(0)], [1, 2], "a refused take leaves nothing counted");
  assert.equal(main.counts("connections public", 1)!.total(0), 3);
  a.add(0, -1);
  assert.equal(b.take(0, 3), true);
  // The same key in one isolate is one object (its bookkeeping must be single).
  assert.equal(w0!.counts("connections public", 1), a);
});

Deno.test("SharedKeyedCounts: counts by key over every worker, slots reused once a key's count is 0", () => {
  const { views: [w0, w1] } = workerViews(2);
  const a = w0!.keyedCounts("per ip", 64)!;
  const b = w1!.keyedCounts("per ip", 64)!;
  assert.equal(a.take("10.0.0.1", 2), true);
  assert.equal(b.take("10.0.0.1", 2), true);
  assert.equal(a.take("10.0.0.1", 2), false);
  assert.equal(b.take("10.0.0.1", 2), false);
  assert.equal(b.take("10.0.0.2", 2), true, "another key has its own count");
  assert.equal(a.count("10.0.0.1"), 2);
  a.release("10.0.0.1");
  assert.equal(b.count("10.0.0.1"), 1);
  assert.equal(b.take("10.0.0.1", 2), true);
  // Many keys come and go through a small table: freed slots are taken again.
  for (let i = 0; i < 2_000; i++) {
    const key = `192.0.2.${i % 250}:${i}`;
    assert.equal(a.take(key, 1), true);
    a.release(key);
  }
  assert.equal(a.untracked, 0);
  assert.equal(a.count("10.0.0.1"), 2);
  // 0: no limit, still counted.
  assert.equal(a.take("10.0.0.3", 0), true);
  assert.equal(b.count("10.0.0.3"), 1);
});

Deno.test("SharedArena.reclaim zeroes a dead worker's counts and leaves the others'", () => {
  const { main, views: [w0, w1] } = workerViews(2);
  const c0 = w0!.counts("cluster requests up", 2)!;
  const c1 = w1!.counts("cluster requests up", 2)!;
  const k0 = w0!.keyedCounts("per ip", 64)!;
  const k1 = w1!.keyedCounts("per ip", 64)!;
  for (let i = 0; i < 3; i++) c0.take(0, 10);
  c1.take(0, 10);
  c0.take(1, 10);
  k0.take("10.0.0.1", 5);
  k0.take("10.0.0.1", 5);
  k1.take("10.0.0.1", 5);
  const before = main.region("rate-limit {x}", 64)!;
  new Int32Array(before.buffer, before.byteOffset, 16).fill(7);
  main.reclaim(0);
  assert.equal(c1.total(0), 1, "worker 1's request stays counted");
  assert.equal(c1.total(1), 0);
  assert.equal(k1.count("10.0.0.1"), 1);
  assert.deepEqual(
    [...new Int32Array(before.buffer, before.byteOffset, 16)],
    new Array(16).fill(7),
    "regions that are not per worker (buckets, breakers) are untouched",
  );
  // The replacement worker 0 starts from zero in a fresh isolate.
  const fresh = new SharedArena(main.buffer, { index: 0 });
  assert.equal(fresh.counts("cluster requests up", 2)!.own(0), 0);
  assert.equal(fresh.keyedCounts("per ip", 64)!.take("10.0.0.1", 2), true);
  assert.equal(k1.take("10.0.0.1", 2), false);
});
