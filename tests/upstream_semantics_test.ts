/**
 * What upstreams send Ferry, beyond tests/hostile_upstream_test.ts: an answer that comes before
 * the request body was all sent (RFC 9112 9.3: a client SHOULD watch for an error response while
 * it sends), and the count of response bodies that fail after their head went out.
 */
import assert from "node:assert/strict";
import { H1Transport } from "../src/h1/transport.ts";
import { startRawServer } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** An upstream that reads only the request head, answers 413 at once and closes (a reset, as the body is unread). */
function startEarlyAnswerUpstream() {
  return startRawServer(async (conn) => {
    let text = "";
    const buf = new Uint8Array(16 * 1024);
    while (!text.includes("\r\n\r\n")) {
      const n = await conn.read(buf);
      if (n === null) return;
      text += dec.decode(buf.subarray(0, n));
    }
    // A large head (40 KiB, within the limits): it takes Ferry several reads, so the failing
    // write of the request body is seen before the head is whole.
    const filler = Array.from({ length: 40 }, (_, i) => `x-filler-${i}: ${"f".repeat(1000)}\r\n`);
    const answer = enc.encode(
      "HTTP/1.1 413 Payload Too Large\r\n" + filler.join("") +
        "content-length: 7\r\nconnection: close\r\n\r\ntoo big",
    );
    let off = 0;
    while (off < answer.length) off += await conn.write(answer.subarray(off));
  });
}

/** A request body of `total` bytes in 64 KiB pieces, as fast as it is read. */
function bigBody(total: number): ReadableStream<Uint8Array> {
  const piece = new Uint8Array(64 * 1024).fill(120);
  let sent = 0;
  return new ReadableStream({
    pull(ctl) {
      if (sent >= total) return ctl.close();
      const n = Math.min(piece.length, total - sent);
      sent += n;
      ctl.enqueue(piece.slice(0, n));
    },
  });
}

Deno.test("h1 codec: an upstream's early answer (413 before the upload ended, then a close) reaches the client, not a 502 for the failed write", async () => {
  const up = startEarlyAnswerUpstream();
  const t = new H1Transport({
    maxIdlePerEndpoint: 8,
    maxConnectionsPerEndpoint: 64,
    idleTimeoutMs: 30_000,
    maxRequestsPerConnection: 0,
    connectTimeoutMs: 5_000,
  });
  try {
    const got: string[] = [];
    // The write failing and the answer arriving race: several rounds, both framings.
    for (let i = 0; i < 18; i++) {
      const chunked = i % 6 >= 3;
      const size = [1000, 100_000, 8 << 20][i % 3]!;
      const headers: [string, string][] = [["host", "up"]];
      if (!chunked) headers.push(["content-length", String(size)]);
      try {
        const res = await t.send({
          url: `${up.url}/upload`,
          method: "POST",
          headers,
          body: bigBody(size),
          signal: AbortSignal.timeout(10_000),
        });
        got.push(`${res.status} ${await res.text()}`);
      } catch (err) {
        got.push(`${(err as Error).name}: ${(err as Error).message}`);
      }
    }
    assert.deepEqual(got, got.map(() => "413 too big"));
  } finally {
    t.close();
    await up.close();
  }
});
