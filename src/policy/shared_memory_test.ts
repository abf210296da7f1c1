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
