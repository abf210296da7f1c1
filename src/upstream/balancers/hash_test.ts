import assert from "node:assert/strict";
import fc from "fast-check";
import { StringHasher, xxh32, xxh32String } from "./hash.ts";

// Reference digests published with xxHash and its ports (Go lz4 xxh32, SourceCode.Clay).
const VECTORS: ReadonlyArray<readonly [string, number, number]> = [
  ["", 0, 0x02cc5d05],
  ["", 1, 0x0b2cb792],
  ["", 42, 0xd5be6eb8],
  ["a", 0, 0x550d7456],
  ["ab", 0, 0x4999fc53],
  ["abc", 0, 0x32d153ff],
  ["abcd", 0, 0xa3643705],
  ["abcd", 42, 0xe37d5ac5],
  ["abcdefgh", 0, 0x0bb3c6bb],
  ["abcdefghijklmnop", 0, 0x9d2d8b62],
  ["abcdefghijklmnopqrstuvwxyz0123456789", 0, 0x42ae804d],
  ["Hello, world!", 0, 0x31b7405d],
  ["Nobody inspects the spammish repetition", 0, 0xe2293b2f],
  ["The quick brown fox jumps over the lazy dog", 0, 0xe85ea4de],
  ["01234567890123456789012345678901", 0, 0xfa57b070],
];

Deno.test("xxh32 matches the reference digests (short, word, stripe and tail paths)", () => {
  for (const [text, seed, expected] of VECTORS) {
    assert.equal(xxh32String(text, seed), expected, `${JSON.stringify(text)} seed ${seed}`);
  }
});

Deno.test("xxh32 hashes only the first `length` bytes of a buffer", () => {
  const bytes = new TextEncoder().encode("abcdefgh");
  assert.equal(xxh32(bytes, 0, 3), 0x32d153ff);
});

Deno.test("StringHasher agrees with TextEncoder-based hashing for any string", () => {
  const hasher = new StringHasher();
  for (const [text, seed, expected] of VECTORS) assert.equal(hasher.hash(text, seed), expected);
  fc.assert(
    fc.property(fc.string({ unit: "binary", maxLength: 400 }), fc.integer(), (s, seed) => {
      assert.equal(hasher.hash(s, seed), xxh32String(s, seed));
    }),
    { numRuns: 2000 },
  );
});

Deno.test("StringHasher encodes lone surrogates as U+FFFD like TextEncoder", () => {
  const hasher = new StringHasher();
  for (const s of ["\ud800", "x\udc00y", "\ud83d\ude00", "é€"]) {
    assert.equal(hasher.hash(s), xxh32String(s));
  }
});
