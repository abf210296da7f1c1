/**
 * Ferry's own HTTP/1.1 server writes small answers from a shared pool of buffers (src/h1/server.ts,
 * takeBuffer): a buffer goes back to the pool only when its write has settled. A client that stops
 * reading leaves a write pending on its buffer while other clients are answered from the pool; its
 * answers must still arrive intact, in order, once it reads again.
 */
import assert from "node:assert/strict";
import { startFerry, startUpstream } from "./helpers.ts";

const CONFIG = `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: all, cluster: u }]
clusters: [{ name: u, endpoints: ["{{U}}"] }]
`;

/** A body of about 1.5 KiB that says which request it answers, all through. */
function bodyFor(n: string): string {
  return `<${n}>`.repeat(Math.ceil(1500 / (n.length + 2))).slice(0, 1500);
}

Deno.test("a pending write keeps its pooled buffer: a stalled client's answers arrive intact", async () => {
  let stalledSeen = 0;
  const up = startUpstream((req) => {
    const name = new URL(req.url).pathname.slice(1);
    if (name.startsWith("s")) stalledSeen++;
    return new Response(bodyFor(name));
  });
  const px = startFerry(CONFIG, { U: up.url });
  const REQUESTS = 6000; // about 10 MB of answers: more than loopback buffers take unread (4 MiB send buffer at most)
  const stalled = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
  try {
    const port = px.port;
    let pipeline = "";
    for (let i = 0; i < REQUESTS; i++) pipeline += `GET /s${i} HTTP/1.1\r\nHost: a\r\n\r\n`;
    const sent = stalled.write(new TextEncoder().encode(pipeline));
    // Until the server stops taking requests off the stalled connection: its write waits.
    let last = -1;
    for (let i = 0; i < 200 && stalledSeen !== last; i++) {
      last = stalledSeen;
      await new Promise((r) => setTimeout(r, 300));
    }
    assert.ok(stalledSeen < REQUESTS, `the client's buffers took all ${REQUESTS} answers`);
    // While that write waits, other clients are answered from the pool.
    const others: Promise<void>[] = [];
    for (let c = 0; c < 4; c++) {
      others.push((async () => {
        for (let i = 0; i < 50; i++) {
          const res = await fetch(`http://127.0.0.1:${port}/o${c}x${i}`);
          assert.equal(await res.text(), bodyFor(`o${c}x${i}`));
        }
      })());
    }
    await Promise.all(others);
    await sent;
    // Now read everything the stalled client was sent, and check every answer in order.
    const dec = new TextDecoder();
    const buf = new Uint8Array(256 * 1024);
    let text = "";
    let seen = 0;
    const deadline = Date.now() + 30_000;
    while (seen < REQUESTS && Date.now() < deadline) {
      const n = await stalled.read(buf);
      if (n === null) break;
      text += dec.decode(buf.subarray(0, n));
      for (;;) {
        const headEnd = text.indexOf("\r\n\r\n");
        if (headEnd < 0) break;
        const length = Number(/content-length: (\d+)/i.exec(text.slice(0, headEnd))?.[1]);
        if (text.length < headEnd + 4 + length) break;
        assert.match(text.slice(0, headEnd), /^HTTP\/1\.1 200 OK\r\n/);
        assert.equal(text.slice(headEnd + 4, headEnd + 4 + length), bodyFor(`s${seen}`));
        text = text.slice(headEnd + 4 + length);
        seen++;
      }
    }
    assert.equal(seen, REQUESTS);
  } finally {
    stalled.close();
    await px.close();
    await up.close();
  }
});
