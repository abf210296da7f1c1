/**
 * Circuit breakers for many endpoints, kept in one flat block of numbers.
 *
 * A `BreakerStore` holds `slots` breakers (one per endpoint) in a `Float64Array` and an
 * `Int32Array` laid over a single buffer, so the whole store can later live in a
 * `SharedArrayBuffer` seen by several worker isolates. It knows nothing of HTTP: the caller
 * asks `tryAcquire(slot)` before sending and reports `onSuccess(slot)` / `onFailure(slot)`.
 *
 * States are integers: CLOSED = 0, OPEN = 1, HALF_OPEN = 2.
 *
 * - CLOSED -> OPEN, "consecutive" mode (the default, as Rust-ServiceMesh): after
 *   `failureThreshold` (5) failures in a row; a success resets the run.
 * - CLOSED -> OPEN, "rate" mode: when the rolling window (`windowMs` split into
 *   `windowBuckets` buckets) holds at least `minimumRequests` results and failures make up at
 *   least `failureRatePercent` of them.
 * - OPEN -> HALF_OPEN: on the first `tryAcquire` at or after `openTimeoutMs` (30 s).
 * - HALF_OPEN admits at most `maxHalfOpenRequests` (1) probes at a time; `successThreshold`
 *   (2) probe successes close the breaker, any probe failure opens it again.
 *
 * The closed-state check reads one integer and never the clock; it allocates nothing.
 *
 * Stale results: `acquire()` returns a permit (a positive integer naming the state epoch the
 * request was admitted in). Passing it back to `onSuccess` / `onFailure` lets the store
 * ignore results of requests admitted under an earlier state: a slow request sent while
 * CLOSED that fails after the breaker went HALF_OPEN is not mistaken for a probe result.
 * Without a permit, a result is attributed to the current state.
 *
 * Sharing between isolates (`server.workers`, src/policy/shared_memory.ts): every isolate must build its store with the same
 * `slots` and config over the same buffer (see `BreakerStore.byteLength`). State changes are
 * made with `Atomics.compareExchange`, so each transition is won, and reported to its
 * listener, by exactly one isolate; probe and failure counters use `Atomics.add`. Timestamps
 * and rolling-window buckets are plain stores, so concurrent updates of one slot from two
 * isolates may lose a count; the single-isolate behaviour is exact.
 *
 * @example
 * ```ts
 * import { BreakerStore, OPEN } from "./circuit_breaker.ts";
 * let now = 0;
 * const breakers = new BreakerStore(4, { failureThreshold: 2 }, () => now);
 * breakers.onFailure(0);
 * breakers.onFailure(0);
 * breakers.state(0) === OPEN; // true
 * breakers.tryAcquire(0); // false until 30 s have passed
 * ```
 */

export const CLOSED = 0;
export const OPEN = 1;
export const HALF_OPEN = 2;
/** A breaker state as stored: CLOSED = 0, OPEN = 1, HALF_OPEN = 2. */
export type BreakerState = typeof CLOSED | typeof OPEN | typeof HALF_OPEN;
/** Names for logs and metrics labels, indexed by `BreakerState`. */
export const BREAKER_STATE_NAMES = ["closed", "open", "half_open"] as const;

/** Called after every state change, by the isolate that made it. */
export type TransitionListener = (
  slot: number,
  from: BreakerState,
  to: BreakerState,
  at: number,
) => void;

export interface BreakerConfig {
  /** How CLOSED trips to OPEN. Default "consecutive". */
  readonly mode?: "consecutive" | "rate";
  /** Consecutive failures that open a closed breaker ("consecutive" mode). Default 5. */
  readonly failureThreshold?: number;
  /** Probe successes in HALF_OPEN that close the breaker. Default 2. */
  readonly successThreshold?: number;
  /** How long OPEN rejects before allowing probes, in ms. Default 30_000. */
  readonly openTimeoutMs?: number;
  /** Probes allowed in flight at once while HALF_OPEN. Default 1. */
  readonly maxHalfOpenRequests?: number;
  /** Failure share, in percent (0, 100], that opens the breaker ("rate" mode). Default 50. */
  readonly failureRatePercent?: number;
  /** Results the window must hold before the rate is judged ("rate" mode). Default 20. */
  readonly minimumRequests?: number;
  /** Length of the rolling window, in ms ("rate" mode). Default 10_000. */
  readonly windowMs?: number;
  /** Buckets the window is split into; it slides one bucket at a time. Default 10. */
  readonly windowBuckets?: number;
}

export type ResolvedBreakerConfig = Readonly<Required<BreakerConfig>>;

/** Defaults for every field, in one place. */
export const DEFAULT_BREAKER_CONFIG: ResolvedBreakerConfig = Object.freeze({
  mode: "consecutive",
  failureThreshold: 5,
  successThreshold: 2,
  openTimeoutMs: 30_000,
  maxHalfOpenRequests: 1,
  failureRatePercent: 50,
  minimumRequests: 20,
  windowMs: 10_000,
  windowBuckets: 10,
});

const MAX_COUNT = 1_000_000_000;

function integerIn(name: string, v: number, min: number, max: number): void {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(
      `Cannot create circuit breaker as '${name}' must be an integer in [${min}, ${max}]: ` +
        `current value '${name}=${v}'`,
    );
  }
}

/** Applies defaults and validates eagerly; each `RangeError` names the field and value. */
export function resolveBreakerConfig(config: BreakerConfig = {}): ResolvedBreakerConfig {
  const c = { ...DEFAULT_BREAKER_CONFIG, ...stripUndefined(config) };
  if (c.mode !== "consecutive" && c.mode !== "rate") {
    throw new RangeError(
      `Cannot create circuit breaker as 'mode' must be "consecutive" or "rate": ` +
        `current value 'mode=${String(c.mode)}'`,
    );
  }
  integerIn("failureThreshold", c.failureThreshold, 1, MAX_COUNT);
  integerIn("successThreshold", c.successThreshold, 1, MAX_COUNT);
  integerIn("maxHalfOpenRequests", c.maxHalfOpenRequests, 1, MAX_COUNT);
  integerIn("minimumRequests", c.minimumRequests, 1, MAX_COUNT);
  integerIn("windowBuckets", c.windowBuckets, 1, 1_000);
  if (!Number.isFinite(c.openTimeoutMs) || c.openTimeoutMs < 0) {
    throw new RangeError(
      `Cannot create circuit breaker as 'openTimeoutMs' must be a finite number >= 0: ` +
        `current value 'openTimeoutMs=${c.openTimeoutMs}'`,
    );
  }
  if (!Number.isFinite(c.windowMs) || c.windowMs <= 0) {
    throw new RangeError(
      `Cannot create circuit breaker as 'windowMs' must be a finite number > 0: ` +
        `current value 'windowMs=${c.windowMs}'`,
    );
  }
  if (!(c.failureRatePercent > 0 && c.failureRatePercent <= 100)) {
    throw new RangeError(
      `Cannot create circuit breaker as 'failureRatePercent' must be in (0, 100]: ` +
        `current value 'failureRatePercent=${c.failureRatePercent}'`,
    );
  }
  return Object.freeze(c);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const out: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) {
    if (v !== undefined) (out as Record<string, unknown>)[k] = v;
  }
  return out;
}

export interface BreakerStoreOptions {
  /** Clock in ms. Default `Date.now` (comparable across isolates, unlike `performance.now`). */
  readonly now?: () => number;
  /** Called after every state change; exceptions propagate to the caller that caused it. */
  readonly onTransition?: TransitionListener;
  /**
   * Memory to keep state in, at least `BreakerStore.byteLength(slots, config)` bytes, e.g. a
   * `SharedArrayBuffer` created by another isolate's store. It is used as found: all zero
   * bytes means every breaker CLOSED with empty counters.
   */
  readonly buffer?: ArrayBufferLike;
  /** Where in `buffer` the store starts (a multiple of 8), for stores sharing one arena. */
  readonly byteOffset?: number;
}

/** Snapshot of one breaker for admin pages and tests; allocates, so not for the hot path. */
export interface BreakerSnapshot {
  readonly state: BreakerState;
  readonly consecutiveFailures: number;
  readonly halfOpenSuccesses: number;
  readonly probesInFlight: number;
  readonly openedAt: number;
  readonly windowRequests: number;
  readonly windowFailures: number;
}

// Float64 fields per slot.
const F_OPENED_AT = 0;
const F_WINDOW_HEAD = 1; // index (time / bucketMs) of the newest bucket
const F_STRIDE = 2;
// Int32 fields per slot; rate mode appends [requests, failures] per bucket.
const I_STATE = 0;
const I_EPOCH = 1; // bumped on every transition; permits carry it
const I_FAILS = 2; // consecutive failures while CLOSED
const I_SUCC = 3; // probe successes while HALF_OPEN
const I_PROBES = 4; // probes in flight while HALF_OPEN
const I_WIN_TOTAL = 5;
const I_WIN_FAILS = 6;
const I_BUCKETS = 7;

const EPOCH_MASK = 0x3fffffff;

function mod(x: number, n: number): number {
  const r = x % n;
  return r < 0 ? r + n : r;
}

function int32Stride(c: ResolvedBreakerConfig): number {
  return I_BUCKETS + (c.mode === "rate" ? 2 * c.windowBuckets : 0);
}

/** Many circuit breakers addressed by slot index, in typed arrays over one buffer. */
export class BreakerStore {
  /** Bytes of memory a store of `slots` breakers with `config` needs. */
  static byteLength(slots: number, config: BreakerConfig = {}): number {
    const c = resolveBreakerConfig(config);
    integerIn("slots", slots, 0, 1 << 24);
    return slots * (F_STRIDE * 8 + int32Stride(c) * 4);
  }

  readonly slots: number;
  readonly config: ResolvedBreakerConfig;
  /** The memory holding all state; hand it to another isolate's store to share. */
  readonly buffer: ArrayBufferLike;
  readonly #f64: Float64Array;
  readonly #i32: Int32Array;
  readonly #is: number;
  readonly #now: () => number;
  readonly #listener: TransitionListener | undefined;
  readonly #rate: boolean;
  readonly #bucketMs: number;
  readonly #buckets: number;

  constructor(
    slots: number,
    config: BreakerConfig = {},
    nowOrOptions: (() => number) | BreakerStoreOptions = {},
  ) {
    const options: BreakerStoreOptions = typeof nowOrOptions === "function"
      ? { now: nowOrOptions }
      : nowOrOptions;
    this.config = resolveBreakerConfig(config);
    const bytes = BreakerStore.byteLength(slots, this.config);
    const buffer = options.buffer ?? new ArrayBuffer(bytes);
    const offset = options.byteOffset ?? 0;
    if (buffer.byteLength - offset < bytes) {
      throw new RangeError(
        `Cannot create circuit breaker as 'buffer' must hold at least ${bytes} bytes: ` +
          `current value 'buffer.byteLength=${buffer.byteLength - offset}'`,
      );
    }
    this.slots = slots;
    this.buffer = buffer;
    this.#is = int32Stride(this.config);
    this.#f64 = new Float64Array(buffer, offset, slots * F_STRIDE);
    this.#i32 = new Int32Array(buffer, offset + slots * F_STRIDE * 8, slots * this.#is);
    this.#now = options.now ?? Date.now;
    this.#listener = options.onTransition;
    this.#rate = this.config.mode === "rate";
    this.#buckets = this.config.windowBuckets;
    this.#bucketMs = this.config.windowMs / this.config.windowBuckets;
  }

  /**
   * Forgets `slot`'s history: closed, no failures. For a slot handed to a new endpoint. The epoch
   * moves on, so permits issued to the slot's previous endpoint count for nothing.
   */
  reset(slot: number): void {
    const b = slot * this.#is;
    const epoch = this.#i32[b + I_EPOCH]!;
    this.#i32.fill(0, b, b + this.#is);
    this.#f64.fill(0, slot * F_STRIDE, (slot + 1) * F_STRIDE);
    this.#i32[b + I_EPOCH] = (epoch + 1) | 0;
  }

  /**
   * Asks to send one request through `slot`. Returns 0 to reject (OPEN before its timeout,
   * or HALF_OPEN with every probe taken), otherwise a permit to pass to `onSuccess` /
   * `onFailure`. Moves OPEN to HALF_OPEN once the timeout has passed. `at` is the time if
   * the caller already read the clock for this request.
   */
  acquire(slot: number, at?: number): number {
    const b = slot * this.#is;
    const i32 = this.#i32;
    if (i32[b] === CLOSED) return (i32[b + I_EPOCH]! & EPOCH_MASK) + 1;
    return this.#acquireSlow(slot, at);
  }

  /** `acquire` as a boolean, for callers that do not pass permits back. */
  tryAcquire(slot: number, at?: number): boolean {
    return this.#i32[slot * this.#is] === CLOSED || this.#acquireSlow(slot, at) !== 0;
  }

  /** Reports a successful request; `permit` as returned by `acquire` (0: none). */
  onSuccess(slot: number, permit = 0, at?: number): void {
    const b = slot * this.#is;
    const i32 = this.#i32;
    if (
      i32[b] === CLOSED && !this.#rate &&
      (permit === 0 || permit === (i32[b + I_EPOCH]! & EPOCH_MASK) + 1)
    ) {
      // Skip the store when already zero: a write would bounce the cache line between cores.
      if (i32[b + I_FAILS] !== 0) i32[b + I_FAILS] = 0;
      return;
    }
    this.#settle(slot, true, permit, at);
  }

  /** Reports a failed request; `permit` as returned by `acquire` (0: none). */
  onFailure(slot: number, permit = 0, at?: number): void {
    this.#settle(slot, false, permit, at);
  }

  /**
   * Gives back a permit whose request ended without an outcome worth counting (cancelled by
   * the client, say), so a HALF_OPEN probe place is not held forever.
   */
  release(slot: number, permit: number): void {
    this.#check(slot);
    const b = slot * this.#is;
    const i32 = this.#i32;
    if (
      i32[b] === HALF_OPEN && permit === (i32[b + I_EPOCH]! & EPOCH_MASK) + 1 &&
      i32[b + I_PROBES]! > 0
    ) {
      Atomics.sub(i32, b + I_PROBES, 1);
    }
  }

  state(slot: number): BreakerState {
    this.#check(slot);
    return this.#i32[slot * this.#is] as BreakerState;
  }

  /** Ms until an OPEN breaker lets a probe through (for Retry-After on a 503); else 0. */
  retryAfterMs(slot: number, at?: number): number {
    this.#check(slot);
    if (this.#i32[slot * this.#is] !== OPEN) return 0;
    const t = at ?? this.#now();
    const until = this.#f64[slot * F_STRIDE + F_OPENED_AT]! + this.config.openTimeoutMs;
    return until > t ? until - t : 0;
  }

  snapshot(slot: number): BreakerSnapshot {
    this.#check(slot);
    const b = slot * this.#is;
    const i32 = this.#i32;
    return {
      state: i32[b + I_STATE] as BreakerState,
      consecutiveFailures: i32[b + I_FAILS]!,
      halfOpenSuccesses: i32[b + I_SUCC]!,
      probesInFlight: i32[b + I_PROBES]!,
      openedAt: this.#f64[slot * F_STRIDE + F_OPENED_AT]!,
      windowRequests: i32[b + I_WIN_TOTAL]!,
      windowFailures: i32[b + I_WIN_FAILS]!,
    };
  }

  /** A view of one slot with the same methods, made once when config is compiled. */
  breaker(slot: number): CircuitBreaker {
    this.#check(slot);
    return new CircuitBreaker(this, slot);
  }

  #check(slot: number): void {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.slots) {
      throw new RangeError(`breaker slot must be an integer in [0, ${this.slots}): got ${slot}`);
    }
  }

  #acquireSlow(slot: number, at: number | undefined): number {
    this.#check(slot);
    const b = slot * this.#is;
    const i32 = this.#i32;
    let state = Atomics.load(i32, b);
    if (state === OPEN) {
      const t = at ?? this.#now();
      if (t - this.#f64[slot * F_STRIDE + F_OPENED_AT]! < this.config.openTimeoutMs) return 0;
      // Probe counters were zeroed when the breaker opened.
      if (Atomics.compareExchange(i32, b, OPEN, HALF_OPEN) === OPEN) {
        Atomics.add(i32, b + I_EPOCH, 1);
        this.#listener?.(slot, OPEN, HALF_OPEN, t);
      }
      state = Atomics.load(i32, b);
    }
    if (state === HALF_OPEN) {
      const epoch = i32[b + I_EPOCH]!;
      if (Atomics.add(i32, b + I_PROBES, 1) < this.config.maxHalfOpenRequests) {
        return (epoch & EPOCH_MASK) + 1;
      }
      Atomics.sub(i32, b + I_PROBES, 1);
      return 0;
    }
    return state === CLOSED ? (i32[b + I_EPOCH]! & EPOCH_MASK) + 1 : 0;
  }

  #settle(slot: number, ok: boolean, permit: number, at: number | undefined): void {
    this.#check(slot);
    const b = slot * this.#is;
    const i32 = this.#i32;
    // A permit from an earlier epoch belongs to a state that is gone: ignore its result.
    if (permit !== 0 && permit !== (i32[b + I_EPOCH]! & EPOCH_MASK) + 1) return;
    const state = i32[b];
    if (state === CLOSED) {
      if (this.#rate) {
        const t = at ?? this.#now();
        const k = b + I_BUCKETS + 2 * this.#advance(slot, t);
        i32[k]!++;
        i32[b + I_WIN_TOTAL]!++;
        if (ok) return;
        i32[k + 1]!++;
        const fails = ++i32[b + I_WIN_FAILS]!;
        const total = i32[b + I_WIN_TOTAL]!;
        if (
          total >= this.config.minimumRequests &&
          fails * 100 >= this.config.failureRatePercent * total
        ) this.#open(slot, CLOSED, t);
      } else if (ok) {
        if (i32[b + I_FAILS] !== 0) i32[b + I_FAILS] = 0;
      } else if (Atomics.add(i32, b + I_FAILS, 1) + 1 >= this.config.failureThreshold) {
        this.#open(slot, CLOSED, at ?? this.#now());
      }
    } else if (state === HALF_OPEN) {
      // Without a permit, a result counts as a probe's only if a probe is outstanding.
      if (permit === 0 && i32[b + I_PROBES]! <= 0) return;
      Atomics.sub(i32, b + I_PROBES, 1);
      if (!ok) this.#open(slot, HALF_OPEN, at ?? this.#now());
      else if (Atomics.add(i32, b + I_SUCC, 1) + 1 >= this.config.successThreshold) {
        this.#close(slot, at ?? this.#now());
      }
    }
    // OPEN: nothing was admitted in this state, so the result is stale.
  }

  #open(slot: number, from: BreakerState, t: number): void {
    const b = slot * this.#is;
    const i32 = this.#i32;
    // Written before the state so another isolate that sees OPEN sees a fresh timestamp.
    this.#f64[slot * F_STRIDE + F_OPENED_AT] = t;
    i32[b + I_FAILS] = 0;
    i32[b + I_SUCC] = 0;
    i32[b + I_PROBES] = 0;
    if (Atomics.compareExchange(i32, b, from, OPEN) !== from) return;
    Atomics.add(i32, b + I_EPOCH, 1);
    this.#listener?.(slot, from, OPEN, t);
  }

  #close(slot: number, t: number): void {
    const b = slot * this.#is;
    const i32 = this.#i32;
    i32[b + I_FAILS] = 0;
    if (this.#rate) {
      i32.fill(0, b + I_WIN_TOTAL, b + this.#is);
      this.#f64[slot * F_STRIDE + F_WINDOW_HEAD] = Math.floor(t / this.#bucketMs);
    }
    if (Atomics.compareExchange(i32, b, HALF_OPEN, CLOSED) !== HALF_OPEN) return;
    Atomics.add(i32, b + I_EPOCH, 1);
    this.#listener?.(slot, HALF_OPEN, CLOSED, t);
  }

  /** Slides the window to time `t`, emptying expired buckets; returns the current bucket. */
  #advance(slot: number, t: number): number {
    const f = slot * F_STRIDE + F_WINDOW_HEAD;
    const head = this.#f64[f]!;
    const cur = Math.floor(t / this.#bucketMs);
    const n = this.#buckets;
    if (!(cur > head)) return mod(head, n); // same bucket, or the clock stepped back
    const b = slot * this.#is;
    const i32 = this.#i32;
    const steps = cur - head < n ? cur - head : n;
    for (let s = 1; s <= steps; s++) {
      const k = b + I_BUCKETS + 2 * mod(head + s, n);
      i32[b + I_WIN_TOTAL]! -= i32[k]!;
      i32[b + I_WIN_FAILS]! -= i32[k + 1]!;
      i32[k] = 0;
      i32[k + 1] = 0;
    }
    this.#f64[f] = cur;
    return mod(cur, n);
  }
}

/** One breaker of a store, bound to its slot. */
export class CircuitBreaker {
  constructor(readonly store: BreakerStore, readonly slot: number) {}
  acquire(at?: number): number {
    return this.store.acquire(this.slot, at);
  }
  tryAcquire(at?: number): boolean {
    return this.store.tryAcquire(this.slot, at);
  }
  onSuccess(permit = 0, at?: number): void {
    this.store.onSuccess(this.slot, permit, at);
  }
  onFailure(permit = 0, at?: number): void {
    this.store.onFailure(this.slot, permit, at);
  }
  release(permit: number): void {
    this.store.release(this.slot, permit);
  }
  get state(): BreakerState {
    return this.store.state(this.slot);
  }
}
