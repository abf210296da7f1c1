import assert from "node:assert/strict";
import { SwitchingHeadEnd } from "./ws_tunnel.ts";

const enc = new TextEncoder();
const HEAD = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
  "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/** Feeds `text` in pieces of `size`; returns the offset in `text` just past the head, or -1. */
function scan(text: string, size: number): number {
  const bytes = enc.encode(text);
  const s = new SwitchingHeadEnd();
  for (let off = 0; off < bytes.length; off += size) {
    const piece = bytes.subarray(off, Math.min(bytes.length, off + size));
    const end = s.end(piece, piece.length);
    if (end >= 0) return off + end;
  }
  return -1;
}

Deno.test("101 head end: found in one read and split across reads at every size", () => {
  for (const size of [1, 2, 3, 7, 16, 64, 1024]) assert.equal(scan(HEAD, size), HEAD.length);
});

Deno.test("101 head end: an earlier pipelined response comes first and is not taken for it", () => {
  const earlier = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nHTTP/";
  for (const size of [1, 5, 4096]) {
    assert.equal(scan(earlier + HEAD, size), earlier.length + HEAD.length);
  }
});

Deno.test("101 head end: not found while the blank line has not come", () => {
  assert.equal(scan(HEAD.slice(0, -2), 8), -1);
  assert.equal(scan("HTTP/1.1 200 OK\r\n\r\n", 4), -1);
});
