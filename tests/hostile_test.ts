/**
 * Malformed and adversarial requests sent raw over TCP: each gets a 4xx with a reason (or a
 * clean refusal by Deno's parser), nothing ambiguous reaches the upstream, Ferry stays up.
 */
import assert from "node:assert/strict";
import { rawRequest, startFerry, startUpstream } from "./helpers.ts";

const CASES: { name: string; request: string; status: number; reason?: RegExp }[] = [
  {
    name: "invalid percent-encoding",
    request: "GET /a%zz HTTP/1.1\r\nHost: a\r\n",
    status: 400,
    reason: /percent/,
  },
  {
    name: "encoded NUL",
    request: "GET /a%00b HTTP/1.1\r\nHost: a\r\n",
    status: 400,
    reason: /NUL/,
  },
  {
    name: "path above the root",
    request: "GET /../../etc/passwd HTTP/1.1\r\nHost: a\r\n",
    status: 400,
  },
  {
    name: "dot segments behind encoded slashes",
    request: "GET /x/%2e%2e%2f%2e%2e/etc HTTP/1.1\r\nHost: a\r\n",
    status: 400,
    reason: /encoded slash/,
  },
  {
    name: "non-ASCII bytes in the path",
    request: "GET /caf\u00e9 HTTP/1.1\r\nHost: a\r\n",
    status: 400,
  },
  {
    name: "userinfo in Host",
    request: "GET / HTTP/1.1\r\nHost: evil@good.test\r\n",
    status: 400,
    reason: /Host/,
  },
  { name: "empty Host", request: "GET / HTTP/1.1\r\nHost: \r\n", status: 400, reason: /Host/ },
  { name: "space in Host", request: "GET / HTTP/1.1\r\nHost: a b\r\n", status: 400 },
  { name: "two Host headers", request: "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", status: 400 },
  {
    name: "CONNECT",
    request: "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n",
    status: 405,
    reason: /CONNECT/,
  },
  { name: "TRACE", request: "TRACE / HTTP/1.1\r\nHost: a\r\n", status: 405, reason: /TRACE/ },
  { name: "invalid method token", request: "G@T / HTTP/1.1\r\nHost: a\r\n", status: 400 },
  {
    name: "Content-Length with Transfer-Encoding",
    request: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    status: 400,
  },
  {
    name: "two different Content-Lengths",
    request: "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n",
    status: 400,
  },
  {
    name: "obs-fold header",
    request: "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n",
    status: 400,
  },
  {
    name: "URI over 8 KiB",
    request: `GET /${"a".repeat(9000)} HTTP/1.1\r\nHost: a\r\n`,
    status: 414,
  },
];

Deno.test("hostile requests get a 4xx with a reason and never reach the upstream", async () => {
  let upstreamHits = 0;
  const up = startUpstream(() => {
    upstreamHits++;
    return new Response("upstream");
  });
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: all, cluster: u }]
clusters: [{ name: u, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    for (const c of CASES) {
      const res = await rawRequest(px.port, `${c.request}Connection: close\r\n\r\n`, 1500);
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(res)?.[1]);
      assert.equal(status, c.status, `${c.name}: got ${res.slice(0, 200)}`);
      if (c.reason) {
        const body = JSON.parse(res.slice(res.indexOf("\r\n\r\n") + 4));
        assert.match(body.reason, c.reason, c.name);
        assert.ok(body.request_id, `${c.name}: request id in the body`);
      }
    }
    assert.equal(upstreamHits, 0, "no hostile request was forwarded");
    // And the proxy is still up and serving.
    const ok = await fetch(`${px.url}/fine`);
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "upstream");
    console.log(`${CASES.length} hostile cases sent; proxy still serving`);
  } finally {
    await px.close();
    await up.close();
  }
});
