/** Forwarding semantics (RFC 9110 7.6) through a real Ferry and real upstreams. */
import assert from "node:assert/strict";
import { rawRequest, startEchoUpstream, startFerry, startUpstream } from "./helpers.ts";

const BASIC = `
listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: api
    match: { path: { prefix: /api/ } }
    cluster: echo
    rewrite: { prefix: /v2/ }
  - name: health
    match: { path: { exact: /health } }
    direct_response: { status: 200, body: "ok" }
  - name: old
    match: { path: { prefix: /old/ } }
    redirect: { status: 301, prefix: /new/ }
  - name: rest
    match: { path: { prefix: /e/ } }
    cluster: echo
clusters:
  - name: echo
    endpoints: ["{{ECHO}}"]
`;

Deno.test("hop-by-hop request headers and names listed in Connection are not forwarded", async () => {
  const up = startEchoUpstream();
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const res = await rawRequest(
      px.port,
      "GET /e/x HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, x-secret\r\n" +
        "X-Secret: s\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9v\r\n" +
        "Proxy-Foo: bar\r\nX-Kept: yes\r\nConnection: close\r\n\r\n",
    );
    assert.match(res, /^HTTP\/1\.1 200/);
    const body = JSON.parse(res.slice(res.indexOf("\r\n\r\n") + 4));
    const h = body.headers as Record<string, string>;
    for (const name of ["x-secret", "keep-alive", "te", "proxy-authorization", "proxy-foo"]) {
      assert.equal(h[name], undefined, `${name} leaked upstream`);
    }
    assert.equal(h["x-kept"], "yes");
    assert.equal(h["host"], "example.test", "original Host is preserved");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("hop-by-hop response headers from the upstream are stripped", async () => {
  const up = startUpstream(() =>
    new Response("hi", {
      headers: {
        "connection": "x-internal",
        "x-internal": "1",
        "keep-alive": "timeout=9",
        "proxy-authenticate": "Basic",
        "trailer": "x-t",
        "upgrade": "foo",
        "x-public": "ok",
      },
    })
  );
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const res = await rawRequest(
      px.port,
      "GET /e/ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    const head = res.slice(0, res.indexOf("\r\n\r\n")).toLowerCase();
    for (const name of ["x-internal", "keep-alive", "proxy-authenticate", "trailer", "upgrade"]) {
      assert.ok(!head.includes(`\r\n${name}:`), `${name} leaked to the client:\n${head}`);
    }
    assert.ok(head.includes("\r\nx-public: ok"));
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("X-Forwarded-For from an untrusted client is replaced; proto, host, via and request id are set", async () => {
  const up = startEchoUpstream();
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const res = await fetch(`${px.url}/e/q?a=1&b=%2F`, {
      headers: { "x-forwarded-for": "6.6.6.6", "x-request-id": "client-chosen" },
    });
    const body = await res.json();
    assert.equal(body.headers["x-forwarded-for"], "127.0.0.1");
    assert.equal(body.headers["x-forwarded-proto"], "http");
    assert.equal(body.headers["x-forwarded-host"], `127.0.0.1:${px.port}`);
    assert.match(body.headers["via"], /1\.1 ferry/);
    // An untrusted client's request id is replaced by a generated one, sent both ways.
    const id = res.headers.get("x-request-id");
    assert.ok(id && id !== "client-chosen");
    assert.equal(body.headers["x-request-id"], id);
    assert.equal(body.search, "?a=1&b=%2F", "query string passes unchanged");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("a trusted proxy's X-Forwarded-For is appended to and its request id kept", async () => {
  const up = startEchoUpstream();
  const px = startFerry(
    BASIC.replace("routes:", "server: { trusted_proxies: [127.0.0.0/8] }\nroutes:"),
    { ECHO: up.url },
  );
  try {
    const res = await fetch(`${px.url}/e/`, {
      headers: { "x-forwarded-for": "203.0.113.9", "x-request-id": "abc-123" },
    });
    const body = await res.json();
    assert.equal(body.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert.equal(res.headers.get("x-request-id"), "abc-123");
    assert.equal(body.headers["x-request-id"], "abc-123");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("prefix rewrite, direct response and redirect (never followed)", async () => {
  const up = startEchoUpstream();
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const r1 = await (await fetch(`${px.url}/api/users/7?x=1`)).json();
    assert.equal(r1.path, "/v2/users/7");
    assert.equal(r1.search, "?x=1");
    const r2 = await fetch(`${px.url}/health`);
    assert.equal(r2.status, 200);
    assert.equal(await r2.text(), "ok");
    const r3 = await fetch(`${px.url}/old/page?q=2`, { redirect: "manual" });
    assert.equal(r3.status, 301);
    assert.equal(r3.headers.get("location"), `http://127.0.0.1:${px.port}/new/page?q=2`);
    await r3.body?.cancel();
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("upstream redirects are passed to the client, not followed", async () => {
  const up = startUpstream(() =>
    new Response(null, { status: 302, headers: { location: "http://127.0.0.1:1/elsewhere" } })
  );
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const res = await fetch(`${px.url}/e/go`, { redirect: "manual" });
    assert.equal(res.status, 302);
    assert.equal(res.headers.get("location"), "http://127.0.0.1:1/elsewhere");
    await res.body?.cancel();
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("several Set-Cookie headers survive", async () => {
  const up = startUpstream(() => {
    const h = new Headers();
    h.append("set-cookie", "a=1; Path=/");
    h.append("set-cookie", "b=2; HttpOnly");
    h.append("set-cookie", "c=3, with comma; Secure");
    return new Response("ok", { headers: h });
  });
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const res = await fetch(`${px.url}/e/`);
    assert.deepEqual(res.headers.getSetCookie(), [
      "a=1; Path=/",
      "b=2; HttpOnly",
      "c=3, with comma; Secure",
    ]);
    await res.body?.cancel();
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("HEAD, 204 and 304 responses carry no body", async () => {
  const up = startUpstream((req) => {
    const p = new URL(req.url).pathname;
    if (p === "/e/204") return new Response(null, { status: 204 });
    if (p === "/e/304") return new Response(null, { status: 304, headers: { etag: '"x"' } });
    return new Response("a body of 17 byte", { headers: { "content-type": "text/plain" } });
  });
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    for (
      const [method, path, status] of [["HEAD", "/e/x", 200], ["GET", "/e/204", 204], [
        "GET",
        "/e/304",
        304,
      ]] as const
    ) {
      const res = await rawRequest(
        px.port,
        `${method} ${path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`,
        1500,
      );
      assert.match(res, new RegExp(`^HTTP/1\\.1 ${status}`));
      const body = res.slice(res.indexOf("\r\n\r\n") + 4);
      assert.equal(body, "", `${method} ${path} carried a body: ${JSON.stringify(body)}`);
    }
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("no route is a 404 with a JSON reason and the request id", async () => {
  const up = startEchoUpstream();
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const res = await fetch(`${px.url}/nothing/here`);
    assert.equal(res.status, 404);
    const body = await res.json();
    assert.equal(body.error, "no route");
    assert.match(body.reason, /GET .*\/nothing\/here/);
    assert.equal(body.request_id, res.headers.get("x-request-id"));
    assert.equal(res.headers.get("x-ferry-flag"), "NR");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("dot segments are removed before routing: /e/../health is /health, /api/../x has no route", async () => {
  const up = startEchoUpstream();
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const a = await rawRequest(
      px.port,
      "GET /e/../health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert.match(a, /^HTTP\/1\.1 200/);
    assert.ok(a.endsWith("ok"));
    const b = await rawRequest(
      px.port,
      "GET /api/%2e%2e/secret HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert.match(b, /^HTTP\/1\.1 404/);
    const c = await rawRequest(
      px.port,
      "GET /../../etc/passwd HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert.match(c, /^HTTP\/1\.1 400/);
    assert.match(c, /request_id/);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("a refused upstream is a 502 with flag UF and a reason", async () => {
  // Bind then close a port so nothing listens there.
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dead = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  const px = startFerry(BASIC, { ECHO: dead });
  try {
    const res = await fetch(`${px.url}/e/x`);
    assert.equal(res.status, 502);
    const body = await res.json();
    assert.equal(body.flag, "UF");
    assert.match(body.reason, /refused/);
    assert.ok(body.request_id);
  } finally {
    await px.close();
  }
});

Deno.test("a slow upstream hits the route timeout: 504 with flag UT", async () => {
  const up = startUpstream(async () => {
    await new Promise((r) => setTimeout(r, 1500));
    return new Response("late");
  });
  const px = startFerry(
    BASIC.replace("cluster: echo\n    rewrite", "cluster: echo\n    timeout: 200ms\n    rewrite"),
    { ECHO: up.url },
  );
  try {
    const t0 = performance.now();
    const res = await fetch(`${px.url}/api/slow`);
    assert.equal(res.status, 504);
    assert.equal((await res.json()).flag, "UT");
    assert.ok(performance.now() - t0 < 1400, "answered before the upstream did");
  } finally {
    await px.close();
    await new Promise((r) => setTimeout(r, 1500));
    await up.close();
  }
});

Deno.test("an upstream that resets the connection is a 502 with flag UR", async () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  (async () => {
    for await (const conn of l) {
      const buf = new Uint8Array(4096);
      await conn.read(buf).catch(() => null);
      conn.close(); // close after reading the request: no response at all
    }
  })().catch(() => {});
  const px = startFerry(BASIC, { ECHO: `http://127.0.0.1:${port}` });
  try {
    const res = await fetch(`${px.url}/e/x`);
    assert.equal(res.status, 502);
    const body = await res.json();
    assert.ok(["UR", "UPE"].includes(body.flag), `flag ${body.flag}`);
  } finally {
    await px.close();
    l.close();
  }
});

Deno.test("when the client goes away the upstream request is cancelled", async () => {
  const upstreamAborted = Promise.withResolvers<boolean>();
  const up = startUpstream((req) =>
    // Answers only when the request is aborted, so the test cannot pass by a timeout.
    new Promise<Response>((resolve) => {
      req.signal.addEventListener("abort", () => {
        upstreamAborted.resolve(true);
        resolve(new Response("too late"));
      });
    })
  );
  const px = startFerry(BASIC, { ECHO: up.url });
  try {
    const ctl = new AbortController();
    const pending = fetch(`${px.url}/e/hang`, { signal: ctl.signal }).catch(() => "aborted");
    await new Promise((r) => setTimeout(r, 200));
    ctl.abort();
    assert.equal(await pending, "aborted");
    const aborted = await Promise.race([
      upstreamAborted.promise,
      new Promise<boolean>((r) => setTimeout(() => r(false), 3000)),
    ]);
    assert.equal(aborted, true, "upstream saw the cancellation");
  } finally {
    upstreamAborted.resolve(false);
    await px.close();
    await up.close();
  }
});
