/** The admin listener's views: /clusters, /routes, /config (redacted) and /explain. */
import assert from "node:assert/strict";
import { startFerry, startUpstream } from "./helpers.ts";

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
