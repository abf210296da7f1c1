/**
 * Resilience primitives micro-benchmarks:
 * `deno bench --allow-all --no-lock bench/policy_bench.ts`.
 * Reference (Rust ServiceMesh, Apple M1): circuit breaker 52M ops/s, rate limiter 20M ops/s.
 *
 * Each iteration runs OPS operations so the harness's own per-iteration cost (~8 ns) does not
 * swamp a ~10 ns operation: ops/s = iter/s * OPS. "at" variants pass the time in, as a
 * handler that reads the clock once per request would; "Date.now" variants read the clock
 * inside, which alone costs ~50 ns on the reference machine of these runs.
 */
import { BreakerStore } from "../src/policy/circuit_breaker.ts";
import { KeyedTokenBuckets, TokenBucketStore } from "../src/policy/token_bucket.ts";
import { printSeeds } from "./seeds.ts";

const OPS = 1_000;
printSeeds(["circuit breaker", "rate limiter"], OPS);
const SLOTS = 64;
let sink = 0;

const closed = new BreakerStore(SLOTS);
Deno.bench(`breaker tryAcquire+onSuccess, closed (x${OPS})`, { group: "breaker" }, () => {
  for (let i = 0; i < OPS; i++) {
    const slot = i & (SLOTS - 1);
    if (closed.tryAcquire(slot)) closed.onSuccess(slot);
  }
});

const closedPermits = new BreakerStore(SLOTS);
Deno.bench(`breaker acquire+onSuccess(permit), closed (x${OPS})`, { group: "breaker" }, () => {
  for (let i = 0; i < OPS; i++) {
    const slot = i & (SLOTS - 1);
    const p = closedPermits.acquire(slot);
    if (p !== 0) closedPermits.onSuccess(slot, p);
  }
});

const opened = new BreakerStore(SLOTS, { failureThreshold: 1 }, () => 0);
for (let s = 0; s < SLOTS; s++) opened.onFailure(s);
const t0 = Date.now();
Deno.bench(`breaker tryAcquire, open, at given (x${OPS})`, { group: "breaker" }, () => {
  for (let i = 0; i < OPS; i++) sink += opened.tryAcquire(i & (SLOTS - 1), 1_000) ? 1 : 0;
});

const openedClock = new BreakerStore(SLOTS, { failureThreshold: 1 });
for (let s = 0; s < SLOTS; s++) openedClock.onFailure(s);
Deno.bench(`breaker tryAcquire, open, Date.now (x${OPS})`, { group: "breaker" }, () => {
  for (let i = 0; i < OPS; i++) sink += openedClock.tryAcquire(i & (SLOTS - 1)) ? 1 : 0;
});

const rate = new BreakerStore(SLOTS, { mode: "rate" });
Deno.bench(`breaker rate mode acquire+onSuccess, at given (x${OPS})`, { group: "breaker" }, () => {
  const at = t0;
  for (let i = 0; i < OPS; i++) {
    const slot = i & (SLOTS - 1);
    if (rate.tryAcquire(slot, at)) rate.onSuccess(slot, 0, at);
  }
});

const bucket = new TokenBucketStore(1, { rate: 1e6, burst: 1e9 });
let clockAt = t0;
Deno.bench(`bucket take (global), at given (x${OPS})`, { group: "bucket" }, () => {
  const at = clockAt++;
  for (let i = 0; i < OPS; i++) sink += bucket.take(0, 1, at).remaining;
});

const bucketClock = new TokenBucketStore(1, { rate: 1e6, burst: 1e9 });
Deno.bench(`bucket take (global), Date.now (x${OPS})`, { group: "bucket" }, () => {
  for (let i = 0; i < OPS; i++) sink += bucketClock.take(0).remaining;
});

const KEYS = 10_000;
const keys = Array.from({ length: KEYS }, (_, i) => `10.${(i >> 8) & 255}.${i & 255}.${i % 7}`);
const keyed = new KeyedTokenBuckets({ rate: 100, burst: 1_000 });
// One token each, so no entry is expired (reusable) at t0; the table is set-associative with a
// random seed, so a full set may still evict a live key now and then: those are counted.
for (const k of keys) keyed.take(k, 1, t0);
if (keyed.size + keyed.evictions !== KEYS) {
  throw new Error(`expected ${KEYS} keys, have ${keyed.size} and ${keyed.evictions} evicted`);
}
let ki = 0;
Deno.bench(`keyed take (hit, 10k keys), at given (x${OPS})`, { group: "bucket" }, () => {
  const at = clockAt++;
  for (let i = 0; i < OPS; i++) {
    sink += keyed.take(keys[ki]!, 1, at).remaining;
    ki = ki + 1 === KEYS ? 0 : ki + 1;
  }
});

globalThis.addEventListener("unload", () => {
  if (sink === -1) console.log(sink);
});
