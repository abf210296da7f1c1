/** Route matching and rewriting through a real Ferry: what the upstream actually receives. */
import assert from "node:assert/strict";
import { startEchoUpstream, startFerry } from "./helpers.ts";

const CONFIG = `
listeners:
  - { name: public, address: "127.0.0.1:0" }
  - { name: internal, address: "127.0.0.1:0" }
routes:
  - name: canary
    match: { path: { prefix: /shop/ }, headers: { x-canary: "1" } }
    cluster: b
  - name: debug
    match: { path: { prefix: /shop/ }, query: { debug: { present: true } } }
    direct_response: { status: 200, body: debug }
  - name: writes
    match: { path: { prefix: /shop/ }, methods: [POST, PUT] }
    cluster: b
    request_headers: { add: { x-write: "yes" }, remove: [x-drop-me] }
    response_headers: { add: { x-served-by: ferry }, remove: [server-secret] }
  - name: shop
    match: { path: { prefix: /shop/ } }
    cluster: a
  - name: versioned
    match: { path: { regex: "^/v[0-9]+/items/[0-9]+$" } }
    cluster: a
    rewrite: { regex: { pattern: "^/v([0-9]+)/items/([0-9]+)$", substitution: "/items/\\\\2?v=\\\\1" } }
  - name: vhost
    match: { host: "*.example.test", path: { prefix: / } }
    cluster: a
    rewrite: { host: backend.internal }
  - name: internal-only
    listeners: [internal]
    match: { path: { prefix: /admin/ } }
    cluster: b
clusters:
  - { name: a, endpoints: ["{{A}}"] }
  - { name: b, endpoints: ["{{B}}"] }
`;

Deno.test("routes match on headers, query and methods in the documented order", async () => {
  const a = startEchoUpstream("a");
  const b = startEchoUpstream("b");
  const px = startFerry(CONFIG, { A: a.url, B: b.url });
  try {
    const canary = await (await fetch(`${px.url}/shop/1`, { headers: { "x-canary": "1" } })).json();
    assert.equal(canary.upstream, "b");
    const debug = await fetch(`${px.url}/shop/1?debug`);
    assert.equal(await debug.text(), "debug");
    const get = await (await fetch(`${px.url}/shop/1`)).json();
    assert.equal(get.upstream, "a");
    const post = await fetch(`${px.url}/shop/1`, {
      method: "POST",
      body: "payload",
      headers: { "x-drop-me": "1" },
    });
    const posted = await post.json();
    assert.equal(posted.upstream, "b");
    assert.equal(posted.body, "payload");
    assert.equal(posted.headers["x-write"], "yes");
    assert.equal(posted.headers["x-drop-me"], undefined);
    assert.equal(post.headers.get("x-served-by"), "ferry");
  } finally {
    await px.close();
    await a.close();
    await b.close();
  }
});

Deno.test("regex rewrite and host rewrite change what the upstream sees", async () => {
  const a = startEchoUpstream("a");
  const b = startEchoUpstream("b");
  const px = startFerry(CONFIG, { A: a.url, B: b.url });
  try {
    const v = await (await fetch(`${px.url}/v3/items/42`)).json();
    assert.equal(v.path, "/items/42");
    assert.equal(v.search, "?v=3");
    // Deno's fetch replaces a custom Host header unless the client allows it.
    const client = Deno.createHttpClient({ allowHost: true });
    const host = await (await fetch(`${px.url}/anything`, {
      headers: { host: "API.Example.Test:8443" },
      client,
    })).json();
    client.close();
    assert.equal(host.upstream, "a");
    assert.equal(host.headers["host"], "backend.internal");
    assert.equal(host.headers["x-forwarded-host"], "API.Example.Test:8443");
  } finally {
    await px.close();
    await a.close();
    await b.close();
  }
});

Deno.test("a route limited to one listener is not served on the others", async () => {
  const a = startEchoUpstream("a");
  const b = startEchoUpstream("b");
  const px = startFerry(CONFIG, { A: a.url, B: b.url });
  try {
    const onInternal = await fetch(`${px.listenerUrl("internal")}/admin/x`);
    assert.equal((await onInternal.json()).upstream, "b");
    const onPublic = await fetch(`${px.listenerUrl("public")}/admin/x`);
    assert.equal(onPublic.status, 404);
    await onPublic.body?.cancel();
  } finally {
    await px.close();
    await a.close();
    await b.close();
  }
});
