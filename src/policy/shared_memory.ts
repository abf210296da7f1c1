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
 * Layout: a header of int32s [lock, entries, next free byte], a directory of `MAX_ENTRIES`
 * entries (a 128-bit key hash, byte offset, byte length), then the regions, 8-byte aligned.
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
}

const MAX_ENTRIES = 4096;
const ENTRY_INTS = 6;
const HEADER_INTS = 4;
const LOCK = 0, COUNT = 1, NEXT = 2;
const DIRECTORY_BYTES = (HEADER_INTS + MAX_ENTRIES * ENTRY_INTS) * 4;
/** 32 MiB: 30 keyed limiters of the default 65,536 keys, or thousands of breakers. */
export const DEFAULT_ARENA_BYTES = 32 * 1024 * 1024;

export class SharedArena implements SharedMemory {
  readonly buffer: SharedArrayBuffer;
  readonly #i32: Int32Array;

  /** A new, empty arena (main isolate), or a view of one made elsewhere (a worker). */
  constructor(buffer: SharedArrayBuffer | number = DEFAULT_ARENA_BYTES) {
    this.buffer = typeof buffer === "number" ? new SharedArrayBuffer(buffer) : buffer;
    this.#i32 = new Int32Array(this.buffer, 0, HEADER_INTS + MAX_ENTRIES * ENTRY_INTS);
    Atomics.compareExchange(this.#i32, NEXT, 0, DIRECTORY_BYTES);
  }

  region(key: string, bytes: number): SharedRegion | undefined {
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
      i32.set([hash[0]!, hash[1]!, hash[2]!, hash[3]!, offset, bytes], at);
      i32[NEXT] = end;
      i32[COUNT] = count + 1;
      return { buffer: this.buffer, byteOffset: offset };
    } finally {
      Atomics.store(i32, LOCK, 0);
    }
  }
}
