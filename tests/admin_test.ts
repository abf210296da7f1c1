/** The admin listener's views: /clusters, /routes, /config (redacted) and /explain. */
import assert from "node:assert/strict";
import { rawRequest, startFerry, startUpstream } from "./helpers.ts";

const CONFIG = `
listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
routes:
  - name: canary
    match: { path: { prefix: /api/ }, headers: { x-canary: "1" } }
    cluster: api
    request_headers: { add: { authorization: "Bearer s3cret" } }
  - name: api
    match: { path: { prefix: /api/ } }
    cluster: api
    retry: { retries: 1 }
clusters:
  - name: api
    endpoints: ["{{U}}", "{{D}}"]
    circuit_breaker: { failures: 1, open_timeout: 30s }
    pool: { idle_timeout: 1.5s }
    health_check: { interval: 60s }
`;

Deno.test("admin views show clusters with breaker state, routes, redacted config and explain", async () => {
  const up = startUpstream(() => new Response("ok"));
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dead = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  const px = startFerry(CONFIG, { U: up.url, D: dead });
  const admin = px.adminUrl!;
  try {
    // Two requests: round robin sends one to the dead endpoint, whose breaker opens at once.
    for (let i = 0; i < 2; i++) await (await fetch(`${px.url}/api/x`)).body?.cancel();
    const clusters = await (await fetch(`${admin}/clusters`)).json();
    const eps = clusters.clusters[0].endpoints;
    assert.equal(clusters.clusters[0].name, "api");
    assert.equal(eps.length, 2);
    const deadEp = eps.find((e: { origin: string }) => e.origin === dead);
    assert.equal(deadEp.breaker.state, "open");
    assert.equal(deadEp.breaker.times_opened, 1, "every state change is counted");
    assert.ok(deadEp.breaker.retry_after_ms > 0);
    assert.equal(eps.find((e: { origin: string }) => e.origin === up.url).breaker.state, "closed");

    const routes = await (await fetch(`${admin}/routes`)).json();
    assert.deepEqual(routes.routes.map((r: { name: string }) => r.name), ["canary", "api"]);

    const cfgText = await (await fetch(`${admin}/config`)).text();
    assert.ok(!cfgText.includes("s3cret"), "secrets are redacted");
    assert.match(cfgText, /<redacted>/);
    // Durations as a config writes them, not as milliseconds.
    const shown = JSON.parse(cfgText).config;
    assert.equal(shown.clusters[0].circuit_breaker.open_timeout, "30s");
    assert.equal(shown.routes[1].timeout, "15s", "a default duration too");
    assert.equal(shown.routes[1].retry.backoff.base, "25ms");
    assert.equal(shown.clusters[0].pool.idle_timeout, "1.5s", "as written, not 1500ms");
    assert.equal(shown.clusters[0].health_check.interval, "60s", "as written, not 1m");

    const ex = await (await fetch(`${admin}/explain?method=GET&host=a.test&path=/api/../api/v1`, {
      headers: { "x-explain-x-canary": "1" },
    })).json();
    assert.equal(ex.normalized_path, "/api/v1");
    assert.equal(ex.matched.name, "canary");
    assert.equal(ex.cluster.name, "api");
    assert.equal(ex.policies.circuit_breaker.failures, 1);
    const ex2 = await (await fetch(`${admin}/explain?path=/api/v1`)).json();
    assert.equal(ex2.matched.name, "api");
    assert.ok(
      ex2.considered.some((c: { name: string; result: string }) =>
        c.name === "canary" && c.result === "skipped"
      ),
    );
    assert.equal(ex2.policies.retry.retries, 1);

    const nf = await fetch(`${admin}/nope`);
    assert.equal(nf.status, 404);
    assert.ok((await nf.json()).endpoints.includes("/explain"));
    const post = await fetch(`${admin}/clusters`, { method: "POST" });
    assert.equal(post.status, 405);
    await post.body?.cancel();
  } finally {
    await px.close();
    await up.close();
  }
});

/** One HTTP/1.1 request to the admin port with exactly the headers given; status and body. */
async function adminRaw(port: number, method: string, path: string, headers: string[]) {
  const text = await rawRequest(
    port,
    `${method} ${path} HTTP/1.1\r\n${headers.map((h) => h + "\r\n").join("")}` +
      `Connection: close\r\nContent-Length: 0\r\n\r\n`,
    5_000,
  );
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1]);
  return { status, body: text.slice(text.indexOf("\r\n\r\n") + 4) };
}

const NO_TOKEN = `listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
routes: [{ name: r, direct_response: { status: 200 } }]
`;

Deno.test("admin without a token refuses a Host that is not loopback, an IP or its address (DNS rebinding) with 421", async () => {
  const px = startFerry(NO_TOKEN);
  const port = px.ferry.addresses().admin!.port;
  try {
    for (const path of ["/config", "/metrics", "/stats", "/dashboard"]) {
      const r = await adminRaw(port, "GET", path, [`Host: rebind.attacker.example:${port}`]);
      assert.equal(r.status, 421, path);
      const body = JSON.parse(r.body);
      assert.equal(body.flag, "AH");
      assert.ok(body.request_id);
      assert.ok(!r.body.includes("routes"), "no config leaks in the refusal");
    }
    const noPort = await adminRaw(port, "GET", "/config", ["Host: rebind.attacker.example"]);
    assert.equal(noPort.status, 421);
    for (
      const host of [
        `localhost:${port}`,
        "localhost",
        "LOCALHOST",
        `127.0.0.1:${port}`,
        "127.0.0.1",
        `[::1]:${port}`,
        "[::1]",
        "10.1.2.3:9901",
      ]
    ) {
      const r = await adminRaw(port, "GET", "/config", [`Host: ${host}`]);
      assert.equal(r.status, 200, host);
      assert.match(r.body, /"config"/);
    }
    const probe = await adminRaw(port, "GET", "/healthz", ["Host: ferry.default.svc:9901"]);
    assert.equal(probe.status, 200, "/healthz answers probes whatever Host they name");
  } finally {
    await px.close();
  }
});

Deno.test("admin without a token refuses a cross-origin POST /reload with 403 and does not reload", async () => {
  const px = startFerry(NO_TOKEN);
  const port = px.ferry.addresses().admin!.port;
  let reloads = 0;
  px.ferry.setAdminExtras({
    reload: () => {
      reloads++;
      return Promise.resolve({ ok: true, version: 2 });
    },
  });
  const host = `Host: 127.0.0.1:${port}`;
  try {
    for (
      const extra of [
        ["Origin: http://attacker.example"],
        ["Origin: null"],
        [`Origin: http://localhost:${port}`], // another origin, even on loopback
        ["Sec-Fetch-Site: cross-site"],
        ["Sec-Fetch-Site: same-site"],
      ]
    ) {
      const r = await adminRaw(port, "POST", "/reload", [host, ...extra]);
      assert.equal(r.status, 403, extra.join());
      assert.equal(JSON.parse(r.body).flag, "AO");
    }
    assert.equal(reloads, 0, "no refused request reached the reloader");
    // The admin's own page (same origin) and clients that are not browsers (curl) may reload.
    const same = await adminRaw(port, "POST", "/reload", [
      host,
      `Origin: http://127.0.0.1:${port}`,
      "Sec-Fetch-Site: same-origin",
    ]);
    assert.equal(same.status, 200);
    const curl = await adminRaw(port, "POST", "/reload", [host]);
    assert.equal(curl.status, 200);
    assert.equal(reloads, 2);
  } finally {
    await px.close();
  }
});

Deno.test("admin on 0.0.0.0 accepts any Host only with a token: without one a name gets 421", async () => {
  const TOKEN = "correct-horse-battery-staple";
  const withToken = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "0.0.0.0:0", token: "${TOKEN}" }
`);
  const open = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "0.0.0.0:0" }
`);
  try {
    const tp = withToken.ferry.addresses().admin!.port;
    const named = ["Host: ferry-admin.internal:9901"];
    assert.equal((await adminRaw(tp, "GET", "/config", named)).status, 401);
    const ok = await adminRaw(tp, "GET", "/config", [...named, `Authorization: Bearer ${TOKEN}`]);
    assert.equal(ok.status, 200);
    // With a token a cross-site form cannot authenticate, so Origin is not checked.
    const post = await adminRaw(tp, "POST", "/reload", [
      ...named,
      `Authorization: Bearer ${TOKEN}`,
      "Origin: http://elsewhere.example",
    ]);
    assert.equal(post.status, 501, "reached the reload endpoint (no reloader in this test)");
    const op = open.ferry.addresses().admin!.port;
    assert.equal((await adminRaw(op, "GET", "/config", named)).status, 421);
    assert.equal((await adminRaw(op, "GET", "/config", ["Host: 10.0.0.7:9901"])).status, 200);
  } finally {
    await withToken.close();
    await open.close();
  }
});
