import assert from "node:assert/strict";
import { WsFrameLimit } from "./ws_frames.ts";

/** A masked client frame header (RFC 6455 5.2) with `len` payload bytes of zeros after it. */
function frame(opcode: number, fin: boolean, len: number): Uint8Array {
  const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const out = new Uint8Array(2 + ext + 4 + len);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = 0x80 | (ext === 0 ? len : ext === 2 ? 126 : 127);
  if (ext === 2) out.set([len >> 8, len & 0xff], 2);
  if (ext === 8) new DataView(out.buffer).setBigUint64(2, BigInt(len));
  return out;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Feeds `bytes` in pieces of `step`; returns the bytes allowed through. */
function feedAll(limit: WsFrameLimit, bytes: Uint8Array, step: number): number {
  let passed = 0;
  for (let o = 0; o < bytes.length; o += step) {
    const piece = bytes.slice(o, o + step);
    const ok = limit.feed(piece, piece.length);
    passed += ok;
    if (ok < piece.length) break;
  }
  return passed;
}

Deno.test("frames and messages within the limits pass whole, in any split", () => {
  const stream = concat(
    frame(1, true, 100),
    frame(2, false, 300),
    frame(9, true, 5), // a ping between fragments is not part of the message
    frame(0, true, 700),
    frame(2, true, 70_000),
  );
  for (const step of [1, 3, 7, 64, 4096, stream.length]) {
    const limit = new WsFrameLimit(100_000, 100_000);
    assert.equal(feedAll(limit, stream, step), stream.length, `step ${step}`);
    assert.equal(limit.violation, undefined);
  }
});

Deno.test("a frame over the frame limit stops the stream at its header", () => {
  const first = frame(1, true, 10);
  const stream = concat(first, frame(2, true, 2000));
  for (const step of [1, 5, stream.length]) {
    const limit = new WsFrameLimit(1000, 100_000);
    // Header bytes before the one that completes it may already have passed; no payload does.
    const passed = feedAll(limit, stream, step);
    assert.ok(passed >= first.length && passed < first.length + 8, `step ${step}: ${passed}`);
    assert.match(limit.violation ?? "", /frame of 2000 bytes/);
    assert.equal(limit.feed(new Uint8Array(3), 3), 0, "nothing passes after a violation");
  }
});

Deno.test("fragments that never finish are refused once their sum passes the message limit", () => {
  const limit = new WsFrameLimit(1000, 4000);
  let passed = feedAll(limit, frame(2, false, 1000), 512);
  for (let i = 0; i < 2; i++) passed += feedAll(limit, frame(0, false, 1000), 512);
  assert.equal(passed, 3 * 1008);
  assert.equal(limit.violation, undefined);
  // The 4th fragment brings the message to 4000 (allowed), the 5th past it.
  assert.equal(feedAll(limit, frame(0, false, 1000), 512), 1008);
  assert.equal(feedAll(limit, frame(0, false, 1000), 512), 0);
  assert.match(limit.violation ?? "", /message of 5000\+ bytes/);
});

Deno.test("a 64-bit length is read whole", () => {
  const limit = new WsFrameLimit(1 << 20, 1 << 20);
  const head = frame(2, true, 0).slice(0, 6);
  head[1] = 0x80 | 127;
  const big = new Uint8Array(14);
  big.set(head.subarray(0, 2));
  new DataView(big.buffer).setBigUint64(2, 2n ** 40n);
  assert.equal(limit.feed(big, big.length), 0);
  assert.match(limit.violation ?? "", /frame of 1099511627776 bytes/);
});

Deno.test("an unmasked client frame is refused at its header with 1002 (RFC 6455 5.1)", () => {
  const limit = new WsFrameLimit(1 << 20, 1 << 20, true);
  const unmasked = frame(1, true, 5);
  unmasked[1] = unmasked[1]! & 0x7f;
  const stream = concat(frame(1, true, 10), unmasked.subarray(0, unmasked.length - 4));
  assert.equal(feedAll(limit, stream, 3), frame(1, true, 10).length);
  // A server's frames are unmasked: followed without complaint when no mask is required.
  const serverSide = new WsFrameLimit(1 << 20, 1 << 20);
  assert.equal(feedAll(serverSide, stream, 3), stream.length);
  assert.equal(serverSide.violation, undefined);
  assert.equal(limit.violationCode, 1002);
  assert.match(limit.violation!, /unmasked/);
});
