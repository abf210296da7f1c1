/**
 * xxHash32 (Yann Collet's XXH32), the hash behind `ring_hash` and `maglev`. Fast in plain
 * JavaScript (32-bit multiplies through `Math.imul`, no BigInt) and well mixed in every bit,
 * which FNV-1a is not for short, similar keys such as `10.0.0.1:80` / `10.0.0.2:80`.
 *
 * `StringHasher` hashes the UTF-8 bytes of a string without allocating: it encodes into a
 * scratch buffer it owns (one per balancer, never module-wide), so a pick stays allocation-free.
 *
 * @example
 * ```ts
 * import { xxh32String } from "./hash.ts";
 * xxh32String("abc"); // 0x32d153ff
 * ```
 */

const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;
const P4 = 0x27d4eb2f;
const P5 = 0x165667b1;

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

function readU32(b: Uint8Array, i: number): number {
  return (b[i]! | (b[i + 1]! << 8) | (b[i + 2]! << 16) | (b[i + 3]! << 24)) >>> 0;
}

function round(acc: number, lane: number): number {
  return Math.imul(rotl((acc + Math.imul(lane, P2)) | 0, 13), P1);
}

/** XXH32 of `bytes[0..length)` with `seed`; an unsigned 32-bit integer. */
export function xxh32(bytes: Uint8Array, seed = 0, length = bytes.length): number {
  let i = 0;
  let h: number;
  if (length >= 16) {
    let v1 = (seed + P1 + P2) | 0;
    let v2 = (seed + P2) | 0;
    let v3 = seed | 0;
    let v4 = (seed - P1) | 0;
    const limit = length - 16;
    while (i <= limit) {
      v1 = round(v1, readU32(bytes, i));
      v2 = round(v2, readU32(bytes, i + 4));
      v3 = round(v3, readU32(bytes, i + 8));
      v4 = round(v4, readU32(bytes, i + 12));
      i += 16;
    }
    h = (rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)) | 0;
  } else {
    h = (seed + P5) | 0;
  }
  h = (h + length) | 0;
  while (i + 4 <= length) {
    h = (h + Math.imul(readU32(bytes, i), P3)) | 0;
    h = Math.imul(rotl(h, 17), P4);
    i += 4;
  }
  while (i < length) {
    h = (h + Math.imul(bytes[i]!, P5)) | 0;
    h = Math.imul(rotl(h, 11), P1);
    i++;
  }
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Hashes strings as UTF-8 (lone surrogates become U+FFFD, as `TextEncoder` does). */
export class StringHasher {
  #buf = new Uint8Array(256);

  hash(s: string, seed = 0): number {
    const n = s.length;
    if (this.#buf.length < n * 3) this.#buf = new Uint8Array(n * 3);
    const b = this.#buf;
    let o = 0;
    for (let i = 0; i < n; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) {
        b[o++] = c;
        continue;
      }
      if (c < 0x800) {
        b[o++] = 0xc0 | (c >> 6);
        b[o++] = 0x80 | (c & 0x3f);
        continue;
      }
      if (c >= 0xd800 && c <= 0xdfff) {
        const next = i + 1 < n ? s.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
          const cp = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
          b[o++] = 0xf0 | (cp >> 18);
          b[o++] = 0x80 | ((cp >> 12) & 0x3f);
          b[o++] = 0x80 | ((cp >> 6) & 0x3f);
          b[o++] = 0x80 | (cp & 0x3f);
          i++;
          continue;
        }
        c = 0xfffd;
      }
      b[o++] = 0xe0 | (c >> 12);
      b[o++] = 0x80 | ((c >> 6) & 0x3f);
      b[o++] = 0x80 | (c & 0x3f);
    }
    return xxh32(b, seed, o);
  }
}

/** XXH32 of a string's UTF-8 bytes. Allocates; balancers use their own `StringHasher`. */
export function xxh32String(s: string, seed = 0): number {
  return xxh32(new TextEncoder().encode(s), seed);
}
