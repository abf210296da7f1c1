/**
 * HPACK against RFC 7541's own examples: Appendix C.1 (integers), C.2 (fields), C.3/C.5 (plain
 * strings) and C.4/C.6 (Huffman), each decoded and re-encoded byte for byte, with the dynamic
 * table size the RFC states after each block. Then the error cases of sections 5 and 6.
 */
import assert from "node:assert/strict";
import {
  decodeInteger,
  encodeInteger,
  type HeaderField,
  HeaderListTooLarge,
  HpackDecoder,
  HpackEncoder,
  HpackError,
} from "./hpack.ts";
import { huffmanDecode, huffmanEncode, HuffmanError } from "./huffman.ts";

function hex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, "");
  return Uint8Array.from(clean.match(/../g)!.map((b) => parseInt(b, 16)));
}

Deno.test("C.1 integers: 10 in 5 bits, 1337 in 5 bits, 42 in 8 bits", () => {
  for (const [value, bits, bytes] of [[10, 5, "0a"], [1337, 5, "1f9a0a"], [42, 8, "2a"]] as const) {
    const out: number[] = [];
    encodeInteger(out, value, bits, 0);
    assert.deepEqual(Uint8Array.from(out), hex(bytes));
    assert.deepEqual(decodeInteger(hex(bytes), 0, bits), [value, hex(bytes).length]);
  }
});

Deno.test("C.2 single fields: with, without and never indexed, and an indexed field", () => {
  const cases: [string, HeaderField, number][] = [
    ["400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572", [
      "custom-key",
      "custom-header",
    ], 55],
    ["040c 2f73 616d 706c 652f 7061 7468", [":path", "/sample/path"], 0],
    ["1008 7061 7373 776f 7264 0673 6563 7265 74", ["password", "secret"], 0],
    ["82", [":method", "GET"], 0],
  ];
  for (const [bytes, field, size] of cases) {
    const d = new HpackDecoder();
    assert.deepEqual(d.decode(hex(bytes)), [field]);
    assert.equal(d.tableSize, size);
  }
});

const REQUESTS: HeaderField[][] = [
  [[":method", "GET"], [":scheme", "http"], [":path", "/"], [":authority", "www.example.com"]],
  [[":method", "GET"], [":scheme", "http"], [":path", "/"], [":authority", "www.example.com"], [
    "cache-control",
    "no-cache",
  ]],
  [[":method", "GET"], [":scheme", "https"], [":path", "/index.html"], [
    ":authority",
    "www.example.com",
  ], ["custom-key", "custom-value"]],
];
const RESPONSES: HeaderField[][] = [
  [[":status", "302"], ["cache-control", "private"], ["date", "Mon, 21 Oct 2013 20:13:21 GMT"], [
    "location",
    "https://www.example.com",
  ]],
  [[":status", "307"], ["cache-control", "private"], ["date", "Mon, 21 Oct 2013 20:13:21 GMT"], [
    "location",
    "https://www.example.com",
  ]],
  [
    [":status", "200"],
    ["cache-control", "private"],
    ["date", "Mon, 21 Oct 2013 20:13:22 GMT"],
    ["location", "https://www.example.com"],
    ["content-encoding", "gzip"],
    ["set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"],
  ],
];

/** Runs one RFC example sequence through a fresh encoder/decoder pair on the same connection. */
function sequence(
  blocks: readonly string[],
  fields: HeaderField[][],
  sizes: readonly number[],
  opts: { huffman: boolean; tableSize: number },
) {
  const dec = new HpackDecoder({ maxTableSize: opts.tableSize });
  const enc = new HpackEncoder({ huffman: opts.huffman, tableSize: opts.tableSize });
  for (const [i, block] of blocks.entries()) {
    assert.deepEqual(dec.decode(hex(block)), fields[i], `decode block ${i + 1}`);
    assert.equal(dec.tableSize, sizes[i], `decoder table size after block ${i + 1}`);
    assert.deepEqual(enc.encode(fields[i]!), hex(block), `encode block ${i + 1}`);
    assert.equal(enc.tableSize, sizes[i], `encoder table size after block ${i + 1}`);
  }
}

Deno.test("C.3 requests without Huffman, dynamic table shared across blocks", () => {
  sequence(
    [
      "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "8286 84be 5808 6e6f 2d63 6163 6865",
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ],
    REQUESTS,
    [57, 110, 164],
    { huffman: false, tableSize: 4096 },
  );
});

Deno.test("C.4 requests with Huffman", () => {
  sequence(
    [
      "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
      "8286 84be 5886 a8eb 1064 9cbf",
      "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ],
    REQUESTS,
    [57, 110, 164],
    { huffman: true, tableSize: 4096 },
  );
});

Deno.test("C.5 responses without Huffman, 256-byte table with eviction", () => {
  sequence(
    [
      "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a" +
      "3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "4803 3330 37c1 c0bf",
      "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04" +
      "677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49" +
      "553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
    ],
    RESPONSES,
    [222, 222, 215],
    { huffman: false, tableSize: 256 },
  );
});

Deno.test("C.6 responses with Huffman, 256-byte table with eviction", () => {
  sequence(
    [
      "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e" +
      "919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
      "4883 640e ffc1 c0bf",
      "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7" +
      "821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed" +
      "4ee5 b106 3d50 07",
    ],
    RESPONSES,
    [222, 222, 215],
    { huffman: true, tableSize: 256 },
  );
});

Deno.test("Huffman round-trips every octet and rejects EOS and bad padding (5.2)", () => {
  const all = Uint8Array.from({ length: 256 }, (_, i) => i);
  assert.deepEqual(huffmanDecode(huffmanEncode(all)), all);
  assert.throws(() => huffmanDecode(hex("ffff fffc")), HuffmanError); // EOS
  assert.throws(() => huffmanDecode(hex("00")), HuffmanError); // '0' + zero padding
  assert.throws(() => huffmanDecode(hex("1f ff")), HuffmanError); // 8+ bits of padding
  assert.deepEqual(huffmanDecode(hex("07")), new TextEncoder().encode("0"));
});

Deno.test("decoder errors: bad index, truncation, late or oversized table-size update", () => {
  const d = () => new HpackDecoder({ maxTableSize: 4096 });
  assert.throws(() => d().decode(hex("80")), HpackError); // index 0
  assert.throws(() => d().decode(hex("be")), HpackError); // dynamic index 62, empty table
  assert.throws(() => d().decode(hex("400a 6375")), HpackError); // truncated string
  assert.throws(() => d().decode(hex("1f")), HpackError); // truncated integer
  assert.throws(() => d().decode(hex("82 20")), HpackError); // update after a field
  assert.throws(() => d().decode(hex("3fe2 1f")), HpackError); // 4097 > our limit
  assert.throws(() => d().decode(hex("1fff ffff ff0f")), HpackError); // integer overflow
  const ok = d();
  assert.deepEqual(ok.decode(hex("20 82")), [[":method", "GET"]]); // update to 0 first is fine
});

Deno.test("a header list over the limit is reported after the whole block keeps the table in sync", () => {
  const enc = new HpackEncoder();
  const dec = new HpackDecoder({ maxHeaderListSize: 100 });
  const big = enc.encode([["x-big", "v".repeat(80)], ["x-small", "1"]]);
  assert.throws(() => dec.decode(big), HeaderListTooLarge);
  // Both entries were still added, so the next block (referring to them) decodes.
  assert.deepEqual(dec.decode(enc.encode([["x-small", "1"]])), [["x-small", "1"]]);
});

Deno.test("encoder: size update after the peer lowers its table; secrets never indexed", () => {
  const enc = new HpackEncoder();
  const dec = new HpackDecoder();
  dec.decode(enc.encode([["x-a", "1"]]));
  enc.setMaxTableSize(0);
  const block = enc.encode([["authorization", "Bearer t"], ["x-a", "1"]]);
  assert.equal(block[0], 0x20); // table size update to 0 first
  assert.deepEqual(dec.decode(block), [["authorization", "Bearer t"], ["x-a", "1"]]);
  assert.equal(dec.tableSize, 0);
});

Deno.test("hpack: obs-text bytes count one octet each in the dynamic table, as the peer counts them", () => {
  // A peer adds "x: <2100 bytes of 0xe9>" (2133 octets) and then "y: <1900 bytes of 0x80>" (1933):
  // 4066 of 4096 together, so both stay, and it refers to the first as index 63.
  const literal = (name: string, byte: number, n: number) => [
    0x40,
    1,
    name.charCodeAt(0),
    0x7f,
    ...(() => {
      const out: number[] = [];
      encodeInteger(out, n, 7, 0);
      return out.slice(1);
    })(),
    ...new Array(n).fill(byte),
  ];
  const decoder = new HpackDecoder();
  const first = decoder.decode(Uint8Array.from(literal("x", 0xe9, 2100)));
  assert.equal(first[0]![1], "\xe9".repeat(2100));
  decoder.decode(Uint8Array.from(literal("y", 0x80, 1900)));
  assert.equal(decoder.tableSize, 4066);
  const again = decoder.decode(Uint8Array.from([0x80 | 63]));
  assert.deepEqual(again, [["x", "\xe9".repeat(2100)]]);
  // Our encoder sends the same bytes and counts them the same way.
  const enc = new HpackEncoder({ huffman: false });
  const block = enc.encode([["x", "\xe9\x80"]]);
  assert.deepEqual([...block.subarray(block.length - 2)], [0xe9, 0x80]);
  assert.equal(enc.tableSize, 32 + 1 + 2);
});

Deno.test("hpack: a string longer than the header-list limit is the list's 431, and the table stays in step", () => {
  const dec = new HpackDecoder({ maxHeaderListSize: 8192 });
  dec.decode(new HpackEncoder({ huffman: false }).encode([["x-keep", "1"]])); // index 62
  // A 10,000-byte value with incremental indexing (literal, new name): it was COMPRESSION_ERROR.
  const big = [0x40, 1, 0x62];
  encodeInteger(big, 10_000, 7, 0);
  big.push(...new Array(10_000).fill(0x61));
  assert.throws(() => dec.decode(Uint8Array.from(big)), HeaderListTooLarge);
  // An entry larger than the table empties it (RFC 7541 4.4): index 62 is gone, as for the peer.
  assert.equal(dec.tableSize, 0);
  assert.throws(() => dec.decode(hex("be")), HpackError);
  assert.deepEqual(dec.decode(hex("82")), [[":method", "GET"]]);
});
