import assert from "node:assert/strict";
import fc from "fast-check";
import {
  EPSILON_MS,
  KeyedTokenBuckets,
  newDecision,
  type TokenBucketConfig,
  TokenBucketStore,
} from "./token_bucket.ts";

function globalBucket(config: TokenBucketConfig) {
  const clock = { t: 0 };
  const store = new TokenBucketStore(1, config, { now: () => clock.t });
  return { clock, store };
}

Deno.test("a bucket starts full, grants burst tokens, then says how long to wait", () => {
  const { store, clock } = globalBucket({ rate: 10, burst: 3 });
  for (const left of [2, 1, 0]) {
    const d = store.take(0);
    assert.equal(d.allowed, true);
    assert.equal(d.remaining, left);
    assert.equal(d.retryAfterMs, 0);
  }
  const d = store.take(0);
  assert.deepEqual({ ...d }, { allowed: false, remaining: 0, retryAfterMs: 100, resetMs: 300 });
  clock.t = 100;
  assert.equal(store.take(0).allowed, true);
  assert.equal(store.take(0).allowed, false);
  clock.t = 10_000;
  assert.equal(store.available(0), 3, "refill stops at burst");
});

Deno.test("the decision carries what RateLimit and RateLimit-Policy headers need", () => {
  const { store } = globalBucket({ rate: 2, burst: 10 });
  assert.equal(store.quota, 10);
  assert.equal(store.windowMs, 5_000);
  const d = store.take(0, 4);
  assert.deepEqual({ ...d }, { allowed: true, remaining: 6, retryAfterMs: 0, resetMs: 2_000 });
});

Deno.test("take reuses one decision object unless given its own", () => {
  const { store } = globalBucket({ rate: 1, burst: 2 });
  const mine = newDecision();
  assert.equal(store.take(0), store.take(0));
  assert.equal(store.take(0, 1, undefined, mine), mine);
  assert.equal(mine.allowed, false);
});

Deno.test("asking for more than burst never succeeds and says so", () => {
  const { store } = globalBucket({ rate: 100, burst: 5 });
  const d = store.take(0, 6);
  assert.equal(d.allowed, false);
  assert.equal(d.retryAfterMs, Infinity);
  assert.equal(store.take(0, 5).allowed, true, "a failed take costs nothing");
});

Deno.test("config is validated eagerly and each error names its field", () => {
  const bad: [TokenBucketConfig, string][] = [
    [{ rate: 0, burst: 1 }, "rate"],
    [{ rate: NaN, burst: 1 }, "rate"],
    [{ rate: 2e6, burst: 1 }, "rate"],
    [{ rate: 1, burst: 0 }, "burst"],
    [{ rate: 1, burst: 1.5 }, "burst"],
  ];
  for (const [config, field] of bad) {
    assert.throws(() => new TokenBucketStore(1, config), new RegExp(`'${field}=`));
    assert.throws(() => new KeyedTokenBuckets(config), new RegExp(`'${field}=`));
  }
  assert.throws(() => new KeyedTokenBuckets({ rate: 1, burst: 1, maxKeys: 0 }), /'maxKeys=/);
  assert.throws(() => new TokenBucketStore(1.5, { rate: 1, burst: 1 }), /'slots=/);
  assert.throws(() => new TokenBucketStore(2, { rate: 1, burst: 1 }).take(2), RangeError);
  assert.throws(() => new TokenBucketStore(2, { rate: 1, burst: 1 }).take(0, -1), RangeError);
});

Deno.test("two bucket stores over one SharedArrayBuffer draw from the same buckets", () => {
  const sab = new SharedArrayBuffer(TokenBucketStore.byteLength(4));
  const config = { rate: 1, burst: 2 };
  const a = new TokenBucketStore(4, config, { buffer: sab, now: () => 0 });
  const b = new TokenBucketStore(4, config, { buffer: sab, now: () => 0 });
  assert.equal(a.take(3).allowed, true);
  assert.equal(b.take(3).allowed, true);
  assert.equal(a.take(3).allowed, false);
  assert.equal(b.take(2).allowed, true);

  const ksab = new SharedArrayBuffer(KeyedTokenBuckets.byteLength(64));
  const ka = new KeyedTokenBuckets({ ...config, maxKeys: 64 }, { buffer: ksab, now: () => 0 });
  const kb = new KeyedTokenBuckets({ ...config, maxKeys: 64 }, { buffer: ksab, now: () => 0 });
  ka.take("10.0.0.1", 2);
  assert.equal(kb.take("10.0.0.1").allowed, false, "same seed, same key, same bucket");
  assert.equal(kb.size, 1);
});

Deno.test("keyed buckets are independent per key", () => {
  const clock = { t: 0 };
  const k = new KeyedTokenBuckets({ rate: 1, burst: 1 }, { now: () => clock.t });
  assert.equal(k.take("10.0.0.1").allowed, true);
  assert.equal(k.take("10.0.0.1").allowed, false);
  assert.equal(k.take("10.0.0.2").allowed, true);
  assert.equal(k.take("").allowed, true);
  assert.equal(k.size, 3);
  clock.t = 1_000;
  assert.equal(k.take("10.0.0.1").allowed, true);
});

Deno.test("expired keys are reused before live ones and sweep frees them", () => {
  const clock = { t: 0 };
  const k = new KeyedTokenBuckets({ rate: 1, burst: 10, maxKeys: 8 }, { now: () => clock.t });
  assert.equal(k.capacity, 8);
  for (let i = 0; i < 8; i++) k.take(`k${i}`, 10);
  clock.t = 5_000;
  assert.equal(k.take("k0", 5).allowed, true); // k0 now owes 10 s, until t = 15 s
  clock.t = 10_000; // all but k0 are full again, so expired
  for (let i = 8; i < 15; i++) assert.equal(k.take(`k${i}`).allowed, true);
  assert.equal(k.evictions, 0, "only expired keys made room");
  assert.equal(k.take("k0", 6).allowed, false, "k0 kept its debt: 5 tokens, not 10");
  assert.equal(k.size, 8);
  clock.t = 1e9;
  assert.equal(k.sweep(), 8);
  assert.equal(k.size, 0);
});

Deno.test("a flood of 1,000,000 distinct keys never exceeds the cap or grows the heap", () => {
  const maxKeys = 10_000;
  let t = 0;
  const k = new KeyedTokenBuckets({ rate: 1, burst: 5, maxKeys }, { now: () => t });
  const table = KeyedTokenBuckets.byteLength(maxKeys);
  const before = Deno.memoryUsage();
  let peakHeap = before.heapUsed;
  let peakSize = 0;
  for (let i = 0; i < 1_000_000; i++) {
    if (!k.take("client-" + i).allowed) throw new Error("a new key must start full");
    if ((i & 1023) === 0) {
      t++; // 1 ms per 1024 keys: every key stays live, so the cap is what evicts
      peakSize = Math.max(peakSize, k.size);
      peakHeap = Math.max(peakHeap, Deno.memoryUsage().heapUsed);
    }
  }
  peakSize = Math.max(peakSize, k.size);
  const growth = peakHeap - before.heapUsed;
  // The table lives off-heap (ArrayBuffer backing store); the JS heap only sees the key
  // strings the loop makes, which die young. Bound: the table's size again plus 16 MiB of
  // young-generation slack, far below what 1e6 retained keys would take (~60 MB as a Map).
  const bound = table + 16 * 2 ** 20;
  console.log(
    `cap=${k.capacity} peakSize=${peakSize} evictions=${k.evictions} table=${table} B ` +
      `heapUsed before=${before.heapUsed} peak=${peakHeap} growth=${growth} B bound=${bound} B`,
  );
  assert.ok(peakSize <= maxKeys);
  assert.equal(k.size, k.capacity);
  assert.ok(growth < bound, `heap grew ${growth} B, bound ${bound} B`);
});

// ---- Property-based ---------------------------------------------------------------------

const cfgArb = fc.record({
  rate: fc.oneof(
    fc.integer({ min: 1, max: 1_000 }),
    fc.double({ min: 0.1, max: 1_000, noNaN: true }),
  ),
  burst: fc.integer({ min: 1, max: 50 }),
});
const stepArb = fc.record({
  dt: fc.oneof(
    fc.constant(0),
    fc.integer({ min: 0, max: 2_000 }),
    fc.double({ min: 0, max: 50, noNaN: true }),
  ),
  n: fc.oneof(fc.constant(1), fc.integer({ min: 0, max: 60 })),
  retry: fc.boolean(),
});

Deno.test("property: never more than burst tokens, nor more granted than burst + rate * t", () => {
  fc.assert(
    fc.property(
      cfgArb,
      fc.double({ min: 0, max: 2e12, noNaN: true }), // start anywhere, up to epoch-ms values
      fc.array(stepArb, { maxLength: 150, size: "max" }),
      (config, start, steps) => {
        const clock = { t: start };
        const store = new TokenBucketStore(1, config, { now: () => clock.t });
        const grants: { at: number; n: number }[] = [];
        for (const s of steps) {
          clock.t += s.dt;
          const d = store.take(0, s.n);
          assert.ok(store.available(0) <= config.burst);
          assert.ok(d.remaining <= config.burst && d.remaining >= 0);
          if (d.allowed) grants.push({ at: clock.t, n: s.n });
        }
        // Any window [grants[i].at, grants[j].at] holds at most burst + rate * elapsed.
        for (let i = 0; i < grants.length; i++) {
          let sum = 0;
          for (let j = i; j < grants.length; j++) {
            sum += grants[j]!.n;
            const elapsed = grants[j]!.at - grants[i]!.at;
            const limit = config.burst + config.rate * (elapsed + 2 * EPSILON_MS) / 1_000;
            assert.ok(sum <= limit + 1e-9, `${sum} tokens in ${elapsed} ms > ${limit}`);
          }
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("property: waiting retryAfterMs makes the same take succeed, and not much less", () => {
  fc.assert(
    fc.property(
      cfgArb,
      fc.double({ min: 0, max: 2e12, noNaN: true }),
      fc.array(stepArb, { maxLength: 150, size: "max" }),
      (config, start, steps) => {
        const clock = { t: start };
        const store = new TokenBucketStore(1, config, { now: () => clock.t });
        for (const s of steps) {
          clock.t += s.dt;
          const d = store.take(0, s.n);
          if (d.allowed) continue;
          if (s.n > config.burst) {
            assert.equal(d.retryAfterMs, Infinity);
            continue;
          }
          assert.ok(d.retryAfterMs > 0 && Number.isFinite(d.retryAfterMs));
          const wait = d.retryAfterMs;
          // Probe 1 ms earlier on a copy of the state: still too early.
          if (wait > 1 + EPSILON_MS) {
            const copy = new TokenBucketStore(1, config, {
              buffer: store.buffer.slice(0),
              now: () => clock.t + wait - 1,
            });
            assert.equal(copy.take(0, s.n).allowed, false);
          }
          if (s.retry) {
            clock.t += wait;
            assert.equal(store.take(0, s.n).allowed, true, `after waiting ${wait} ms`);
          }
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("property: keyed buckets match independent global buckets per key", () => {
  fc.assert(
    fc.property(
      cfgArb,
      fc.array(fc.record({ key: fc.nat(5), dt: fc.nat(300), n: fc.nat(4) }), {
        maxLength: 200,
        size: "max",
      }),
      (config, steps) => {
        let t = 0;
        const keyed = new KeyedTokenBuckets({ ...config, maxKeys: 64 }, { now: () => t });
        const ref = new TokenBucketStore(6, config, { now: () => t });
        for (const s of steps) {
          t += s.dt;
          const got = { ...keyed.take(`user-${s.key}`, s.n) };
          assert.deepEqual(got, { ...ref.take(s.key, s.n) });
          assert.ok(keyed.size <= 6);
        }
      },
    ),
    { numRuns: 200 },
  );
});
