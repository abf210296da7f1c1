/**
 * Request bodies through Ferry's own HTTP/1.1 upstream client (`transport: h1`): the client's
 * keep-alive connection survives a POST (the body is read to its end, so Deno.serve does not
 * answer `connection: close`), and a body is not held back by Nagle's algorithm waiting for the
 * upstream's delayed ACK of the request head. Found by the 10-minute soak's upload round: every
 * POST cost h2load a new connection, and 4 clients at 250/s got about 80 requests/s through.
 */
import assert from "node:assert/strict";
import { startFerry, startUpstream } from "./helpers.ts";

const CONFIG = `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - { name: up, endpoints: ["{{UP}}"], transport: h1 }
`;

/** Sends `n` POSTs of `size` bytes on one connection; each answer's head, and the time taken. */
async function postsOnOneConnection(port: number, n: number, size: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const heads: string[] = [];
  const body = "a".repeat(size);
  const started = performance.now();
  try {
    for (let i = 0; i < n; i++) {
      await conn.write(new TextEncoder().encode(
        `POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: ${size}\r\n\r\n${body}`,
      ));
      let text = "";
      const buf = new Uint8Array(16 * 1024);
      const deadline = Date.now() + 10_000;
      while (Date.now() < deadline) {
        const got = await conn.read(buf);
        if (got === null) break;
        text += new TextDecoder().decode(buf.subarray(0, got));
        const end = text.indexOf("\r\n\r\n");
        const cl = /content-length: (\d+)/i.exec(text);
        if (end >= 0 && cl && text.length >= end + 4 + Number(cl[1])) break;
      }
      heads.push(text.slice(0, text.indexOf("\r\n\r\n")));
      if (/\r\nconnection: close/i.test(text)) break;
    }
  } finally {
    conn.close();
  }
  return { heads, ms: performance.now() - started };
}

Deno.test("h1 transport: a POST's body is read to its end, so the client's connection stays open for the next", async () => {
  const up = startUpstream(async (req) =>
    new Response(`got ${(await req.arrayBuffer()).byteLength}`)
  );
  const ferry = startFerry(CONFIG, { UP: up.url });
  try {
    const { heads } = await postsOnOneConnection(ferry.port, 5, 16 * 1024);
    assert.equal(heads.length, 5, `answers on one connection: ${heads.join(" | ")}`);
    for (const h of heads) {
      assert.match(h, /^HTTP\/1\.1 200/);
      assert.doesNotMatch(h, /\r\nconnection: close/i);
    }
  } finally {
    await ferry.close();
    await up.close();
  }
});

Deno.test("h1 transport: a request body is not held back waiting for the upstream's delayed ACK (TCP_NODELAY)", async () => {
  const up = startUpstream(async (req) =>
    new Response(`got ${(await req.arrayBuffer()).byteLength}`)
  );
  const ferry = startFerry(CONFIG, { UP: up.url });
  try {
    await postsOnOneConnection(ferry.port, 2, 1024); // warm: upstream connection open
    // With Nagle's algorithm each body waits at least 40 ms (Linux's minimum delayed ACK) for
    // the head's ACK: 20 POSTs take over 800 ms. Without, a few ms each even on a busy machine.
    const { heads, ms } = await postsOnOneConnection(ferry.port, 20, 4 * 1024);
    assert.equal(heads.length, 20);
    assert.ok(ms < 700, `20 POSTs took ${ms.toFixed(0)} ms`);
  } finally {
    await ferry.close();
    await up.close();
  }
});
