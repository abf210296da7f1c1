/**
 * The hop-by-hop filter on headers as Deno really hands them over: a request read by Deno.serve
 * and a response read by fetch, both chunked. (Ferry's h1 codec writes the header list itself, so a
 * Transfer-Encoding leaked past this filter would reach the upstream beside the codec's own
 * framing.)
 */
import assert from "node:assert/strict";
import { endToEndHeaders } from "./headers.ts";

const HOP = [
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "expect",
];

Deno.test("endToEndHeaders drops Transfer-Encoding (and the other hop-by-hop headers) from a chunked request Deno.serve received", async () => {
  let seen: Headers | undefined;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req) => {
    seen = req.headers;
    await req.text();
    return new Response("ok");
  });
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
    await conn.write(
      new TextEncoder().encode(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n" +
          "Connection: keep-alive, X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n" +
          "Proxy-Authorization: Basic eA==\r\nX-End: kept\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
      ),
    );
    const reply = new Uint8Array(1024);
    assert.ok((await conn.read(reply))! > 0);
    conn.close();
    assert.equal(seen!.get("transfer-encoding"), "chunked", "Deno exposes the framing header");
    const out = endToEndHeaders(seen!);
    assert.equal(out.get("transfer-encoding"), null);
    for (const name of [...HOP, "x-private", "proxy-authorization"]) {
      assert.equal(out.has(name), false, name);
    }
    assert.equal(out.get("x-end"), "kept");
    assert.equal(out.get("host"), "a");
  } finally {
    await server.shutdown();
  }
});

Deno.test("endToEndHeaders drops Transfer-Encoding from a chunked response fetch received", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    const c = await l.accept();
    await c.read(new Uint8Array(4096));
    await c.write(
      new TextEncoder().encode(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX-End: kept\r\n" +
          "Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      ),
    );
    c.close();
  })();
  try {
    const res = await fetch(`http://127.0.0.1:${(l.addr as Deno.NetAddr).port}/`);
    assert.equal(await res.text(), "hello");
    assert.equal(res.headers.get("transfer-encoding"), "chunked", "fetch exposes it");
    const out = endToEndHeaders(res.headers);
    assert.equal(out.get("transfer-encoding"), null);
    assert.equal(out.get("trailer"), null);
    assert.equal(out.get("connection"), null);
    assert.equal(out.get("x-end"), "kept");
  } finally {
    await serving;
    l.close();
  }
});
