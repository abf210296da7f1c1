/**
 * Token buckets kept as one number each, in typed arrays that can later sit in a
 * `SharedArrayBuffer` shared by worker isolates. Nothing here knows HTTP: `take` returns what a
 * handler needs for 429 + `Retry-After` and the `RateLimit` / `RateLimit-Policy` fields of
 * draft-ietf-httpapi-ratelimit-headers (`remaining`, `resetMs`, and `quota` / `windowMs`).
 *
 * Algorithm: GCRA, the "virtual scheduling" form of a token bucket (`rate` tokens/s, at most
 * `burst` tokens). Each bucket stores only its theoretical arrival time `tat`: the instant it
 * will be full again. Taking `n` tokens at time `t` moves `tat` to `max(tat, t) + n * T`
 * (`T = 1000 / rate` ms per token) and is allowed while that stays within `burst * T` of `t`.
 * Hence a bucket never holds more than `burst` tokens, and over any interval of `e` ms at
 * most `burst + rate * e / 1000` tokens are granted. A bucket whose `tat` has passed is
 * exactly a fresh full bucket, so per-key state expires by itself `burst / rate` s after the
 * key's last take at the latest and can be dropped with no change in behaviour.
 *
 * Comparisons allow `EPSILON_MS` (1 us) of float rounding, so waiting exactly `retryAfterMs`
 * always succeeds even with clock values around 1.7e12 ms; the over-grant this permits is at
 * most `rate * 1e-6` tokens.
 *
 * The result object is reused: `take` overwrites and returns the store's `decision` unless
 * the caller passes its own `out`. Read it before the next call. Nothing allocates per call.
 *
 * Sharing between isolates (`server.workers`, src/policy/shared_memory.ts): over a
 * `SharedArrayBuffer` every take runs under a spin lock kept in the same memory (an
 * `Atomics.compareExchange` on one int), so isolates racing on one key never both get the last
 * token. A lock held longer than `LOCK_SPINS` tries (its holder was terminated mid-take) is taken
 * over. Over a plain `ArrayBuffer` nothing locks.
 */

const DEFAULT_MAX_KEYS = 65_536;

/** Tries before a lock is taken over from an isolate that died holding it (about a ms). */
const LOCK_SPINS = 1 << 20;

function lock(i32: Int32Array, at: number): void {
  for (let spins = 0; Atomics.compareExchange(i32, at, 0, 1) !== 0; spins++) {
    if (spins >= LOCK_SPINS) return;
  }
}

/** Float rounding tolerance in comparisons, in ms. */
export const EPSILON_MS = 1e-3;

export interface TokenBucketConfig {
  /** Refill rate, tokens per second, in (0, 1e6]. */
  readonly rate: number;
  /** Capacity: the most tokens a bucket holds, an integer >= 1. */
  readonly burst: number;
}

export interface KeyedTokenBucketConfig extends TokenBucketConfig {
  /** Most keys tracked at once. Default 65_536. The table is allocated whole, up front. */
  readonly maxKeys?: number;
}

/** The outcome of one `take`, shaped for 429 + Retry-After + RateLimit headers. */
export interface RateDecision {
  allowed: boolean;
  /** Whole tokens left after this take (RateLimit `r`). */
  remaining: number;
  /** When denied: ms until the same take would succeed; Infinity if `n > burst`. Else 0. */
  retryAfterMs: number;
  /** Ms until the bucket is full again (RateLimit `t`). */
  resetMs: number;
}

export function newDecision(): RateDecision {
  return { allowed: false, remaining: 0, retryAfterMs: 0, resetMs: 0 };
}

export interface TokenBucketOptions {
  /** Clock in ms. Default `Date.now` (comparable across isolates, unlike `performance.now`). */
  readonly now?: () => number;
  /** Memory to keep state in, at least `byteLength(...)` bytes; used as found. */
  readonly buffer?: ArrayBufferLike;
  /** Where in `buffer` the state starts (a multiple of 8), for stores sharing one arena. */
  readonly byteOffset?: number;
}

function fail(name: string, rule: string, v: unknown): never {
  throw new RangeError(
    `Cannot create token bucket as '${name}' must be ${rule}: current value '${name}=${v}'`,
  );
}

function validate(c: TokenBucketConfig): void {
  if (!(typeof c.rate === "number" && c.rate > 0 && c.rate <= 1e6)) {
    fail("rate", "a number in (0, 1e6]", c.rate);
  }
  if (!Number.isInteger(c.burst) || c.burst < 1 || c.burst > 1e9) {
    fail("burst", "an integer in [1, 1e9]", c.burst);
  }
}

/** GCRA on `f64[i]`; fills `out` and returns whether the take was allowed. */
function gcra(
  f64: Float64Array,
  i: number,
  t: number,
  n: number,
  interval: number,
  tau: number,
  out: RateDecision,
): boolean {
  const tat = f64[i]!;
  const base = tat > t ? tat : t;
  const debt = base - t + n * interval;
  if (debt <= tau + EPSILON_MS) {
    f64[i] = t + debt;
    const left = Math.floor((tau - debt) / interval + 1e-9);
    out.allowed = true;
    out.remaining = left > 0 ? left : 0;
    out.retryAfterMs = 0;
    out.resetMs = debt;
    return true;
  }
  const have = Math.floor((tau - (base - t)) / interval + 1e-9);
  out.allowed = false;
  out.remaining = have > 0 ? have : 0;
  out.retryAfterMs = n * interval > tau + EPSILON_MS ? Infinity : debt - tau;
  out.resetMs = base - t;
  return false;
}

function checkN(n: number): void {
  if (!(n >= 0 && n <= 1e9)) throw new RangeError(`tokens to take must be in [0, 1e9]: got ${n}`);
}

/** `slots` independent buckets with one config, addressed by index (e.g. one per route). */
export class TokenBucketStore {
  static byteLength(slots: number): number {
    if (!Number.isInteger(slots) || slots < 0 || slots > 1 << 24) {
      fail("slots", "an integer in [0, 16777216]", slots);
    }
    // One more 8-byte word: the lock, when the buffer is shared.
    return slots * 8 + 8;
  }

  readonly slots: number;
  readonly config: TokenBucketConfig;
  readonly buffer: ArrayBufferLike;
  /** The reused result of `take`. */
  readonly decision: RateDecision = newDecision();
  readonly #tat: Float64Array;
  /** The lock word, when the buffer is shared between isolates. */
  readonly #lock: Int32Array | undefined;
  readonly #interval: number;
  readonly #tau: number;
  readonly #now: () => number;

  constructor(slots: number, config: TokenBucketConfig, options: TokenBucketOptions = {}) {
    validate(config);
    const bytes = TokenBucketStore.byteLength(slots);
    const buffer = options.buffer ?? new ArrayBuffer(bytes);
    const offset = options.byteOffset ?? 0;
    if (buffer.byteLength - offset < bytes) {
      fail("buffer.byteLength", `>= ${bytes}`, buffer.byteLength - offset);
    }
    this.slots = slots;
    this.config = Object.freeze({ rate: config.rate, burst: config.burst });
    this.buffer = buffer;
    this.#tat = new Float64Array(buffer, offset, slots);
    this.#lock = buffer instanceof SharedArrayBuffer
      ? new Int32Array(buffer, offset + slots * 8, 1)
      : undefined;
    this.#interval = 1000 / config.rate;
    this.#tau = config.burst * this.#interval;
    this.#now = options.now ?? Date.now;
  }

  /** RateLimit-Policy `q`: tokens a full bucket holds. */
  get quota(): number {
    return this.config.burst;
  }
  /** RateLimit-Policy `w`, in ms: time to refill an empty bucket. */
  get windowMs(): number {
    return this.#tau;
  }

  /** Takes `n` tokens from bucket `slot` if it has them. `at`: the time, if already read. */
  take(slot: number, n = 1, at?: number, out: RateDecision = this.decision): RateDecision {
    if (!(slot >= 0 && slot < this.slots && slot % 1 === 0)) {
      throw new RangeError(`bucket slot must be an integer in [0, ${this.slots}): got ${slot}`);
    }
    if (n !== 1) checkN(n);
    const shared = this.#lock;
    if (shared) lock(shared, 0);
    gcra(this.#tat, slot, at ?? this.#now(), n, this.#interval, this.#tau, out);
    if (shared) Atomics.store(shared, 0, 0);
    return out;
  }

  /** Whole tokens bucket `slot` holds now. */
  available(slot: number, at?: number): number {
    const t = at ?? this.#now();
    const tat = this.#tat[slot];
    if (tat === undefined) throw new RangeError(`bucket slot out of range: ${slot}`);
    const debt = tat > t ? tat - t : 0;
    return Math.floor((this.#tau - debt) / this.#interval + 1e-9);
  }
}

/**
 * Buckets per key (client IP, header value) in a fixed table: memory and key count are
 * bounded by `maxKeys` however many distinct keys arrive.
 *
 * Why a fixed set-associative table in typed arrays rather than a `Map` with LRU eviction:
 * - it can be shared between isolates through a `SharedArrayBuffer`; a `Map` cannot;
 * - the cap is structural (there is nowhere to put key `maxKeys + 1`), costs no bookkeeping
 *   and makes no garbage: a flood of distinct keys leaves the JS heap flat;
 * - eviction is cheap and nearly lossless: a key maps to one set of 8 ways, and a new key
 *   replaces the way whose bucket is fullest (smallest `tat`). A way whose `tat` has passed
 *   is expired, and replacing it changes nothing; a live key is evicted only when its whole
 *   set is live, and then it is the key closest to full, so the loss is smallest.
 * Keys are stored as a seeded 64-bit fingerprint (two Math.imul hashes over the UTF-16 code
 * units), not as strings. Two live keys share a bucket only on a 64-bit collision (for
 * 1e6 live keys, about 3e-8); the random seed stops clients from aiming keys at one set.
 */
export class KeyedTokenBuckets {
  static readonly WAYS = 8;

  /** Bytes of memory for a table of `maxKeys` keys (16 per key, plus a 16-byte header). */
  static byteLength(maxKeys = DEFAULT_MAX_KEYS): number {
    return 16 + KeyedTokenBuckets.#capacityFor(maxKeys) * 16;
  }

  static #capacityFor(maxKeys: number): number {
    if (!Number.isInteger(maxKeys) || maxKeys < 1 || maxKeys > 1 << 26) {
      fail("maxKeys", "an integer in [1, 67108864]", maxKeys);
    }
    const ways = Math.min(KeyedTokenBuckets.WAYS, maxKeys);
    return Math.floor(maxKeys / ways) * ways;
  }

  readonly config: Readonly<Required<KeyedTokenBucketConfig>>;
  /** Keys the table can hold: `maxKeys` rounded down to a multiple of 8 ways. */
  readonly capacity: number;
  readonly buffer: ArrayBufferLike;
  /** The reused result of `take`. */
  readonly decision: RateDecision = newDecision();
  /** Live keys pushed out by new keys because their whole set was live (a metric). */
  evictions = 0;
  readonly #tat: Float64Array;
  /** (hi, lo) fingerprint per entry, (0, 0) when empty; then [seed, size, lock]. */
  readonly #i32: Int32Array;
  readonly #sizeAt: number;
  /** Index of the lock word in `#i32` when the buffer is shared; -1 when it is not. */
  readonly #lockAt: number;
  readonly #ways: number;
  readonly #sets: number;
  readonly #seed: number;
  readonly #interval: number;
  readonly #tau: number;
  readonly #now: () => number;

  constructor(config: KeyedTokenBucketConfig, options: TokenBucketOptions = {}) {
    validate(config);
    const maxKeys = config.maxKeys ?? DEFAULT_MAX_KEYS;
    const capacity = KeyedTokenBuckets.#capacityFor(maxKeys);
    const bytes = 16 + capacity * 16;
    const buffer = options.buffer ?? new ArrayBuffer(bytes);
    const offset = options.byteOffset ?? 0;
    if (buffer.byteLength - offset < bytes) {
      fail("buffer.byteLength", `>= ${bytes}`, buffer.byteLength - offset);
    }
    this.config = Object.freeze({ rate: config.rate, burst: config.burst, maxKeys });
    this.capacity = capacity;
    this.buffer = buffer;
    this.#tat = new Float64Array(buffer, offset, capacity);
    this.#i32 = new Int32Array(buffer, offset + capacity * 8, 2 * capacity + 4);
    this.#sizeAt = 2 * capacity + 1;
    this.#lockAt = buffer instanceof SharedArrayBuffer ? 2 * capacity + 2 : -1;
    const seedAt = 2 * capacity;
    this.#ways = Math.min(KeyedTokenBuckets.WAYS, maxKeys);
    this.#sets = capacity / this.#ways;
    // A buffer from another isolate already carries its seed; a fresh one gets a random one.
    if (this.#i32[seedAt] === 0) {
      const seed = crypto.getRandomValues(new Int32Array(1))[0]! | 1;
      // Two isolates building stores over one fresh buffer at once agree on the first seed.
      if (this.#lockAt < 0) this.#i32[seedAt] = seed;
      else Atomics.compareExchange(this.#i32, seedAt, 0, seed);
    }
    this.#seed = this.#i32[seedAt]!;
    this.#interval = 1000 / config.rate;
    this.#tau = config.burst * this.#interval;
    this.#now = options.now ?? Date.now;
  }

  /** Ways in use (live or expired but not yet reused); never above `capacity`. */
  get size(): number {
    return this.#i32[this.#sizeAt]!;
  }
  get quota(): number {
    return this.config.burst;
  }
  get windowMs(): number {
    return this.#tau;
  }

  /** Takes `n` tokens from `key`'s bucket if it has them. `at`: the time, if already read. */
  take(key: string, n = 1, at?: number, out: RateDecision = this.decision): RateDecision {
    if (n !== 1) checkN(n);
    const t = at ?? this.#now();
    // Two 32-bit lanes over the UTF-16 code units, two units per step, then fmix32.
    const len = key.length;
    let h1 = this.#seed ^ len;
    let h2 = Math.imul(this.#seed, 0x9e3779b1) ^ len;
    let i = 0;
    for (; i + 1 < len; i += 2) {
      const c = key.charCodeAt(i) | (key.charCodeAt(i + 1) << 16);
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h1 = (h1 << 13) | (h1 >>> 19);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
      h2 = (h2 << 17) | (h2 >>> 15);
    }
    if (i < len) {
      const c = key.charCodeAt(i);
      h1 = Math.imul(h1 ^ c, 0x01000193);
      h2 = Math.imul(h2 ^ c, 0x5bd1e995);
    }
    h1 = fmix32(h1);
    h2 = fmix32(h2 ^ h1);
    if (h1 === 0 && h2 === 0) h2 = 1;
    // Set index from the top 24 bits by multiply-shift (exact in a double; no division).
    const first = Math.floor((h1 >>> 8) * this.#sets * 5.960464477539063e-8) * this.#ways;
    const end = first + this.#ways;
    const i32 = this.#i32;
    const lockAt = this.#lockAt;
    if (lockAt >= 0) lock(i32, lockAt);
    try {
      for (let e = first; e < end; e++) {
        if (i32[2 * e] === h1 && i32[2 * e + 1] === h2) return this.#decide(e, t, n, out);
      }
      return this.#insert(first, end, h1, h2, t, n, out);
    } finally {
      if (lockAt >= 0) Atomics.store(i32, lockAt, 0);
    }
  }

  /** A new key: its bucket starts full, so reusing a way loses only the victim's debt. */
  #insert(
    first: number,
    end: number,
    h1: number,
    h2: number,
    t: number,
    n: number,
    out: RateDecision,
  ): RateDecision {
    const i32 = this.#i32;
    const tat = this.#tat;
    let victim = first;
    let victimTat = Infinity;
    for (let e = first; e < end; e++) {
      if (i32[2 * e] === 0 && i32[2 * e + 1] === 0) {
        victim = e;
        victimTat = -Infinity;
        break;
      }
      if (tat[e]! < victimTat) {
        victim = e;
        victimTat = tat[e]!;
      }
    }
    if (victimTat === -Infinity) i32[this.#sizeAt]!++;
    else if (victimTat > t) this.evictions++;
    i32[2 * victim] = h1;
    i32[2 * victim + 1] = h2;
    tat[victim] = 0;
    return this.#decide(victim, t, n, out);
  }

  /** Empties every expired way (full bucket); O(capacity), e.g. from a timer. */
  sweep(at?: number): number {
    const t = at ?? this.#now();
    const i32 = this.#i32;
    if (this.#lockAt >= 0) lock(i32, this.#lockAt);
    let freed = 0;
    for (let e = 0; e < this.capacity; e++) {
      if ((i32[2 * e] !== 0 || i32[2 * e + 1] !== 0) && this.#tat[e]! <= t) {
        i32[2 * e] = 0;
        i32[2 * e + 1] = 0;
        this.#tat[e] = 0;
        freed++;
      }
    }
    i32[this.#sizeAt]! -= freed;
    if (this.#lockAt >= 0) Atomics.store(i32, this.#lockAt, 0);
    return freed;
  }

  #decide(e: number, t: number, n: number, out: RateDecision): RateDecision {
    gcra(this.#tat, e, t, n, this.#interval, this.#tau, out);
    return out;
  }
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}
