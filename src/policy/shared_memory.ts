/**
 * Process-wide policy state for `server.workers > 1`: one `SharedArrayBuffer` made by the main
 * isolate and handed to every worker, carved into named regions. The rate limiters' buckets and
 * the circuit breakers of every isolate live in it (src/policy/token_bucket.ts and
 * circuit_breaker.ts already keep their state in typed arrays over a buffer), so a limit of
 * 100/s is 100/s for the process and a breaker opened through one worker refuses in all.
 *
 * A region is found by its key (the policy's name and canonical config, so every isolate
 * compiling the same config finds the same region, and a reload that keeps a policy keeps its
 * state) and its size. Regions are never freed: a reload that changes a policy takes a new
 * region. When the arena is full, `region` returns undefined and the caller keeps that policy's
 * state in its own isolate (logged by the caller).
 *
 * Counts held by requests and connections (the connection caps, a cluster's `limits`, retry
 * budgets, the replay bound) live in *per-worker* regions: one block per worker, in which only
 * that worker writes; a check sums every block (`SharedCounts`, `SharedKeyedCounts`). So what a
 * worker holds is always known, and when a worker dies the supervisor (the main isolate, worker
 * 0, which cannot die alone) zeroes its blocks
 * (`reclaim`) before a new worker takes its index: the connections and requests it held are gone
 * with it, and so are their counts. A take adds first and then sums (`Atomics` are sequentially
 * consistent): two workers racing for the last slot can both be refused, never both admitted.
 *
 * Layout: a header of int32s [lock, entries, next free byte, workers], a directory of
 * `MAX_ENTRIES` entries (a 128-bit key hash, byte offset, byte length, per-worker block length or
 * 0), then the regions, 8-byte aligned.
 */
import { createHash } from "node:crypto";

/** A place in shared memory where a policy keeps its state. */
export interface SharedRegion {
  readonly buffer: SharedArrayBuffer;
  readonly byteOffset: number;
}

/** What the compiler asks for: a region for `key` of `bytes` bytes, or undefined (arena full). */
export interface SharedMemory {
  region(key: string, bytes: number): SharedRegion | undefined;
  /** `width` counts, process-wide (see SharedCounts); undefined when the arena is full. */
  counts(key: string, width: number): SharedCounts | undefined;
  /** Counts by key (a client address, an endpoint), process-wide; undefined when full. */
  keyedCounts(key: string, slotsPerWorker: number): SharedKeyedCounts | undefined;
}

const MAX_ENTRIES = 4096;
const ENTRY_INTS = 7;
const HEADER_INTS = 4;
const LOCK = 0, COUNT = 1, NEXT = 2, WORKERS = 3;
const DIRECTORY_BYTES = (HEADER_INTS + MAX_ENTRIES * ENTRY_INTS) * 4;
/** 32 MiB: 30 keyed limiters of the default 65,536 keys, or thousands of breakers. */
export const DEFAULT_ARENA_BYTES = 32 * 1024 * 1024;

export interface ArenaOptions {
  /** A new arena: how many workers write in per-worker regions (default 1). */
  readonly workers?: number;
  /** This isolate's worker index (the main isolate is 0); without one (-1) it only reads counts. */
  readonly index?: number;
}

export class SharedArena implements SharedMemory {
  readonly buffer: SharedArrayBuffer;
  readonly #i32: Int32Array;
  readonly workers: number;
  readonly #index: number;
  /** One object per per-worker region in this isolate: its local bookkeeping must be single. */
  readonly #made = new Map<string, SharedCounts | SharedKeyedCounts>();

  /** A new, empty arena (main isolate), or a view of one made elsewhere (a worker). */
  constructor(buffer: SharedArrayBuffer | number = DEFAULT_ARENA_BYTES, opts: ArenaOptions = {}) {
    this.buffer = typeof buffer === "number" ? new SharedArrayBuffer(buffer) : buffer;
    this.#i32 = new Int32Array(this.buffer, 0, HEADER_INTS + MAX_ENTRIES * ENTRY_INTS);
    Atomics.compareExchange(this.#i32, NEXT, 0, DIRECTORY_BYTES);
    Atomics.compareExchange(this.#i32, WORKERS, 0, Math.max(1, opts.workers ?? 1));
    this.workers = Atomics.load(this.#i32, WORKERS);
    this.#index = opts.index ?? -1;
  }

  region(key: string, bytes: number): SharedRegion | undefined {
    return this.#allocate(key, bytes, 0);
  }

  counts(key: string, width: number): SharedCounts | undefined {
    const id = `counts ${width} ${key}`;
    const made = this.#made.get(id);
    if (made) return made as SharedCounts;
    // A block per worker, a cache line each: workers counting at once do not share one.
    const stride = Math.ceil((width * 4) / 64) * 64;
    const r = this.#allocate(id, stride * this.workers, stride);
    if (!r) return undefined;
    const counts = new SharedCounts(r, stride, this.workers, this.#index);
    this.#made.set(id, counts);
    return counts;
  }

  keyedCounts(key: string, slotsPerWorker: number): SharedKeyedCounts | undefined {
    const slots = 2 ** Math.ceil(Math.log2(Math.max(KEY_WINDOW, slotsPerWorker)));
    const id = `keyed ${slots} ${key}`;
    const made = this.#made.get(id);
    if (made) return made as SharedKeyedCounts;
    const stride = slots * SLOT_INTS * 4;
    const r = this.#allocate(id, stride * this.workers, stride);
    if (!r) return undefined;
    const counts = new SharedKeyedCounts(r, slots, stride, this.workers, this.#index);
    this.#made.set(id, counts);
    return counts;
  }

  /**
   * Zeroes worker `index`'s block in every per-worker region: what a dead worker held (its
   * connections, its requests) ended with it. Called by the supervisor once the worker is
   * terminated and before another takes its index.
   */
  reclaim(index: number): void {
    const i32 = this.#i32;
    const count = Atomics.load(i32, COUNT);
    for (let e = 0; e < count; e++) {
      const at = HEADER_INTS + e * ENTRY_INTS;
      const stride = i32[at + 6]!;
      if (stride === 0) continue;
      const block = new Int32Array(this.buffer, i32[at + 4]! + index * stride, stride / 4);
      for (let i = 0; i < block.length; i++) Atomics.store(block, i, 0);
    }
  }

  #allocate(key: string, bytes: number, stride: number): SharedRegion | undefined {
    const hash = new Int32Array(createHash("sha256").update(key).digest().buffer, 0, 4);
    const i32 = this.#i32;
    // Regions are taken while compiling a snapshot, rarely: a plain spin lock is enough.
    while (Atomics.compareExchange(i32, LOCK, 0, 1) !== 0) { /* another isolate allocates */ }
    try {
      const count = i32[COUNT]!;
      for (let e = 0; e < count; e++) {
        const at = HEADER_INTS + e * ENTRY_INTS;
        if (
          i32[at] === hash[0] && i32[at + 1] === hash[1] && i32[at + 2] === hash[2] &&
          i32[at + 3] === hash[3] && i32[at + 5] === bytes
        ) return { buffer: this.buffer, byteOffset: i32[at + 4]! };
      }
      const offset = i32[NEXT]!;
      const end = offset + Math.ceil(bytes / 8) * 8;
      if (count >= MAX_ENTRIES || end > this.buffer.byteLength) return undefined;
      const at = HEADER_INTS + count * ENTRY_INTS;
      i32.set([hash[0]!, hash[1]!, hash[2]!, hash[3]!, offset, bytes, stride], at);
      i32[NEXT] = end;
      Atomics.store(i32, COUNT, count + 1);
      return { buffer: this.buffer, byteOffset: offset };
    } finally {
      Atomics.store(i32, LOCK, 0);
    }
  }
}

/**
 * `width` counts, each the sum of one int32 per worker. A worker adds only to its own block;
 * `total` sums every block. (An isolate without an index, -1, only reads.)
 */
export class SharedCounts {
  readonly #i32: Int32Array;
  readonly #own: number;
  readonly #strideInts: number;
  readonly #workers: number;

  constructor(r: SharedRegion, stride: number, workers: number, index: number) {
    this.#strideInts = stride / 4;
    this.#workers = workers;
    this.#i32 = new Int32Array(r.buffer, r.byteOffset, this.#strideInts * workers);
    this.#own = index * this.#strideInts;
  }

  /** Count `i` over every worker. */
  total(i: number): number {
    let sum = 0;
    for (let w = 0, at = i; w < this.#workers; w++, at += this.#strideInts) {
      sum += Atomics.load(this.#i32, at);
    }
    return sum;
  }

  /** This worker's share of count `i`. */
  own(i: number): number {
    return Atomics.load(this.#i32, this.#own + i);
  }

  add(i: number, delta: number): void {
    Atomics.add(this.#i32, this.#own + i, delta);
  }

  /**
   * Adds `n` to count `i` when the process-wide total stays within `limit`; true when taken.
   * Added first, summed after: of two workers racing for the last room, at least one sees the
   * other's add (both may be refused, never both let through).
   */
  take(i: number, limit: number, n = 1): boolean {
    const at = this.#own + i;
    Atomics.add(this.#i32, at, n);
    if (this.total(i) <= limit) return true;
    Atomics.sub(this.#i32, at, n);
    return false;
  }
}

/** Int32s per slot of a keyed table: two halves of the key's 64-bit hash, its count. */
const SLOT_INTS = 3;
/** A key lives in one of this many slots from where its hash points (a bounded probe). */
const KEY_WINDOW = 32;

/**
 * Counts by key (a client address, an endpoint origin), process-wide: each worker has its own
 * table of `slots` (key hash, count) in its block and knows in a local map which slot holds each
 * of its keys; a key's total is its count in every worker's table. A slot whose count is 0 is
 * free. A key that finds no free slot in its window is counted in this worker only ("untracked",
 * admitted without the process-wide check; rare: the window is 32 slots and tables are sized
 * well above the keys in use).
 */
export class SharedKeyedCounts {
  readonly #i32: Int32Array;
  readonly #slots: number;
  readonly #strideInts: number;
  readonly #workers: number;
  readonly #own: number;
  /** This worker's keys with a count: their slot (int32 index of the slot in #i32). */
  readonly #mine = new Map<string, number>();
  /** Keys this worker could not place (full window): their counts, kept locally. */
  readonly #untracked = new Map<string, number>();

  constructor(r: SharedRegion, slots: number, stride: number, workers: number, index: number) {
    this.#slots = slots;
    this.#strideInts = stride / 4;
    this.#workers = workers;
    this.#i32 = new Int32Array(r.buffer, r.byteOffset, this.#strideInts * workers);
    this.#own = index * this.#strideInts;
  }

  /** Whether some key could not be placed in the table since this worker started. */
  get untracked(): number {
    return this.#untracked.size;
  }

  /** The key's count over every worker. */
  count(key: string): number {
    const [h0, h1] = hash64(key);
    let sum = this.#untracked.get(key) ?? 0;
    for (let w = 0; w < this.#workers; w++) sum += this.#countIn(w * this.#strideInts, h0, h1);
    return sum;
  }

  /**
   * Counts one more for `key` if its process-wide count stays within `limit` (0 or Infinity: no
   * limit, always counted); true when counted.
   */
  take(key: string, limit: number): boolean {
    let at = this.#mine.get(key);
    if (at === undefined) {
      at = this.#place(key);
      if (at === undefined) {
        this.#untracked.set(key, (this.#untracked.get(key) ?? 0) + 1);
        return true;
      }
    }
    Atomics.add(this.#i32, at + 2, 1);
    if (limit > 0 && limit !== Number.POSITIVE_INFINITY && this.count(key) > limit) {
      this.#drop(key, at);
      return false;
    }
    return true;
  }

  /** Once per successful `take` of `key`. */
  release(key: string): void {
    const at = this.#mine.get(key);
    if (at !== undefined) return this.#drop(key, at);
    const left = (this.#untracked.get(key) ?? 0) - 1;
    if (left > 0) this.#untracked.set(key, left);
    else this.#untracked.delete(key);
  }

  #drop(key: string, at: number): void {
    if (Atomics.sub(this.#i32, at + 2, 1) === 1) this.#mine.delete(key);
  }

  /** A free slot of this worker's table in the key's window, given the key; its index. */
  #place(key: string): number | undefined {
    const [h0, h1] = hash64(key);
    const mask = this.#slots - 1;
    for (let i = 0; i < KEY_WINDOW; i++) {
      const at = this.#own + ((h0 + i) & mask) * SLOT_INTS;
      if (Atomics.load(this.#i32, at + 2) !== 0) continue;
      Atomics.store(this.#i32, at, h0);
      Atomics.store(this.#i32, at + 1, h1);
      this.#mine.set(key, at);
      return at;
    }
    return undefined;
  }

  #countIn(block: number, h0: number, h1: number): number {
    const i32 = this.#i32;
    const mask = this.#slots - 1;
    for (let i = 0; i < KEY_WINDOW; i++) {
      const at = block + ((h0 + i) & mask) * SLOT_INTS;
      if (Atomics.load(i32, at) === h0 && Atomics.load(i32, at + 1) === h1) {
        const n = Atomics.load(i32, at + 2);
        if (n > 0) return n;
      }
    }
    return 0;
  }
}

/** Two independent 32-bit FNV-1a style hashes of `s` (a 64-bit key for the keyed tables). */
function hash64(s: string): [number, number] {
  let a = 0x811c9dc5, b = 0x01000193 ^ s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995);
    b ^= b >>> 15;
  }
  return [a >>> 0 & 0x7fffffff, b | 0];
}
