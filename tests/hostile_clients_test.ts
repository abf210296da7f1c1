/**
 * Hostile clients against a real Ferry process (raw sockets, the workers FERRY_TEST_WORKERS asks
 * for): what one client can make Ferry hold, and for how long.
 */
import assert from "node:assert/strict";
import { spawnFerry, startUpstream, tempConfig } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const ROUTE_TIMEOUT_MS = 1_500;

Deno.test("hostile clients: a body dripped to a retriable route gets 408 within the route timeout (it was held with no limit)", async () => {
  const seen: string[] = [];
  const up = startUpstream(async (req) => {
    const body = await req.text();
    seen.push(`${new URL(req.url).pathname} ${body.length}`);
    return new Response(`got ${body.length}`);
  });
  const f = await spawnFerry([
    "--config",
    await tempConfig(`listeners:
  - { name: public, address: "127.0.0.1:0" }
server: { watch_config: false }
routes:
  - name: fetch
    match: { path: { prefix: /fetch/ } }
    cluster: viafetch
    timeout: ${ROUTE_TIMEOUT_MS}ms
    retry: { retries: 1, non_idempotent: true }
  - name: h1
    match: { path: { prefix: / } }
    cluster: viah1
    timeout: ${ROUTE_TIMEOUT_MS}ms
    retry: { retries: 1, non_idempotent: true }
clusters:
  - { name: viah1, endpoints: ["${up.url}"] }
  - { name: viafetch, endpoints: ["${up.url}"], transport: fetch }
`),
  ]);
  const port = Number(new URL(f.listeners.get("public")!).port);
  try {
    const drip = async (method: string, path: string, framing: string, byte: string) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      const t0 = Date.now();
      let text = "";
      let done = false;
      const reading = (async () => {
        const buf = new Uint8Array(16 * 1024);
        try {
          for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
            text += dec.decode(buf.subarray(0, n));
          }
        } catch { /* reset */ }
        done = true;
      })();
      try {
        await conn.write(enc.encode(`${method} ${path} HTTP/1.1\r\nHost: a\r\n${framing}\r\n`));
        // One byte every 200 ms, for at most three route timeouts.
        while (!done && Date.now() - t0 < 3 * ROUTE_TIMEOUT_MS) {
          await conn.write(enc.encode(byte)).catch(() => {});
          await new Promise((r) => setTimeout(r, 200));
        }
      } finally {
        conn.close();
        await reading;
      }
      return { text, ms: Date.now() - t0 };
    };
    const cases = ["/h1", "/fetch"].flatMap((prefix) =>
      [
        ["PUT", "Content-Length: 100000\r\n", "x"],
        ["POST", "Transfer-Encoding: chunked\r\n", "1\r\nx\r\n"],
      ].map(([method, framing, byte]) => ({
        prefix,
        method: method!,
        framing: framing!,
        byte: byte!,
      }))
    );
    const replies = await Promise.all(
      cases.map((c) => drip(c.method, `${c.prefix}/drip`, c.framing, c.byte)),
    );
    cases.forEach((c, i) => {
      const r = replies[i]!;
      const name = `${c.prefix} ${c.method}`;
      assert.match(r.text, /^HTTP\/1\.1 408 /, `${name}: ${r.text}`);
      assert.match(r.text, /"reason":"request body not received within the route timeout/);
      assert.match(r.text, /"request_id":"[0-9a-f-]{36}"/);
      assert.ok(r.ms < 2 * ROUTE_TIMEOUT_MS + 1_500, `${name}: closed after ${r.ms} ms`);
    });
    assert.deepEqual(seen, [], "no dripped body reached the upstream");
    // A body that comes in time is still kept and forwarded.
    const res = await fetch(`http://127.0.0.1:${port}/h1/ok`, { method: "PUT", body: "hello" });
    assert.equal(await res.text(), "got 5");
    const escaped = f.logs.filter((l) => /internal error escaped|Uncaught/.test(l));
    assert.deepEqual(escaped, [], "no error escaped a handler");
  } finally {
    f.child.kill("SIGTERM");
    await f.child.status;
    await up.close();
  }
});
