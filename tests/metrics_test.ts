/**
 * GET /metrics on the admin listener: what real traffic records, checked by promtool (the
 * Prometheus project's own linter and parser), and the admin bearer token.
 */
import assert from "node:assert/strict";
import { metricValue, rawRequest, run, startFerry, startUpstream } from "./helpers.ts";
import { FerryMetrics } from "../src/observability/metrics.ts";

function deadOrigin(): string {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  return url;
}

const CONFIG = `
listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
rate_limits:
  - { name: tiny, scope: global, rate: 0.01, burst: 1 }
routes:
  - { name: limited, match: { path: { prefix: /limited } }, cluster: good, rate_limit: [tiny] }
  - name: flaky
    match: { path: { prefix: /flaky } }
    cluster: flaky
    retry: { retries: 2, retry_on: [5xx], backoff: { base: 1ms, max: 2ms } }
  - { name: dead, match: { path: { prefix: /dead } }, cluster: dead }
  - name: stingy
    match: { path: { prefix: /stingy } }
    cluster: stingy
    retry: { retries: 2, retry_on: [5xx], backoff: { base: 1ms, max: 2ms } }
  - { name: good, match: { path: { prefix: /good } }, cluster: good }
clusters:
  - { name: good, endpoints: ["{{GOOD}}"] }
  - { name: flaky, endpoints: ["{{FLAKY}}"] }
  - name: stingy
    endpoints: ["{{FLAKY}}"]
    retry_budget: { percent: 0, min_retries: 0 }
  - name: dead
    endpoints: ["{{DEAD}}"]
    circuit_breaker: { failures: 2, open_timeout: 30s }
`;

Deno.test("/metrics counts real traffic by route, endpoint and outcome, and passes promtool", async () => {
  const good = startUpstream(() => new Response("ok"));
  const flaky = startUpstream(() => new Response("no", { status: 503 }));
  const dead = deadOrigin();
  const px = startFerry(CONFIG, { GOOD: good.url, FLAKY: flaky.url, DEAD: dead }, {
    metrics: new FerryMetrics({ processMetrics: true }),
  });
  try {
    const send = async (path: string, init?: RequestInit) => {
      const res = await fetch(`${px.url}${path}`, init);
      await res.body?.cancel();
      return res.status;
    };
    for (let i = 0; i < 5; i++) assert.equal(await send("/good/x"), 200);
    assert.equal(await send("/good/x", { method: "POST", body: "hi" }), 200);
    assert.equal(await send("/good/x", { method: "BREW" }), 200, "odd methods still proxied");
    assert.equal(await send("/limited"), 200);
    assert.equal(await send("/limited"), 429);
    assert.equal(await send("/flaky"), 503);
    assert.equal(await send("/stingy"), 503);
    for (let i = 0; i < 3; i++) await send("/dead"); // two 502s open the breaker, then 503
    // Three raw connections held open: the guard counts them (plus fetch's pooled ones).
    const held = await Promise.all(
      [1, 2, 3].map(() => Deno.connect({ hostname: "127.0.0.1", port: px.port })),
    );
    await new Promise((r) => setTimeout(r, 100));
    const text = await (await fetch(`${px.adminUrl}/metrics`)).text();
    for (const c of held) c.close();
    const open = metricValue(text, "ferry_downstream_connections_open", { listener: "public" });
    assert.ok(open !== undefined && open >= 3, `open connections gauge: ${open}`);

    const down = (labels: Record<string, string>) =>
      metricValue(text, "ferry_downstream_requests_total", { listener: "public", ...labels });
    assert.equal(down({ route: "good", method: "GET", status_class: "2xx" }), 5);
    assert.equal(down({ route: "good", method: "POST", status_class: "2xx" }), 1);
    assert.equal(down({ route: "good", method: "other" }), 1, "unknown methods fold into other");
    assert.equal(down({ route: "limited", status_class: "4xx" }), 1);
    assert.equal(down({ route: "dead", status_class: "5xx" }), 3);
    assert.equal(
      metricValue(text, "ferry_downstream_request_duration_seconds_count", { route: "good" }),
      7,
    );
    assert.equal(
      metricValue(text, "ferry_upstream_requests_total", {
        cluster: "good",
        endpoint: good.url,
        status_class: "2xx",
      }),
      8,
    );
    assert.equal(
      metricValue(text, "ferry_upstream_requests_total", { cluster: "flaky", status_class: "5xx" }),
      3,
      "first try and two retries",
    );
    assert.equal(metricValue(text, "ferry_upstream_retries_total", { cluster: "flaky" }), 2);
    assert.equal(metricValue(text, "ferry_retry_budget_exhausted_total", { cluster: "flaky" }), 0);
    assert.equal(metricValue(text, "ferry_upstream_retries_total", { cluster: "stingy" }), 0);
    assert.equal(
      metricValue(text, "ferry_retry_budget_exhausted_total", { cluster: "stingy" }),
      1,
      "a budget of zero refuses the first retry",
    );
    assert.equal(
      metricValue(text, "ferry_upstream_requests_total", {
        cluster: "dead",
        status_class: "error",
      }),
      2,
    );
    assert.equal(
      metricValue(text, "ferry_upstream_errors_total", {
        cluster: "dead",
        kind: "upstream_connect_failure",
      }),
      2,
    );
    assert.equal(
      metricValue(text, "ferry_rate_limited_requests_total", {
        route: "limited",
        limit: "tiny",
        scope: "global",
      }),
      1,
    );
    assert.equal(
      metricValue(text, "ferry_circuit_breaker_transitions_total", { cluster: "dead", to: "open" }),
      1,
    );
    assert.equal(
      metricValue(text, "ferry_circuit_breaker_state", { cluster: "dead", endpoint: dead }),
      1,
      "open",
    );
    assert.equal(metricValue(text, "ferry_endpoint_healthy", { cluster: "good" }), 1);
    assert.equal(metricValue(text, "ferry_endpoint_ejected", { cluster: "good" }), 0);
    assert.equal(metricValue(text, "ferry_config_info", { version: "1" }), 1);
    assert.equal(metricValue(text, "ferry_config_reloads_total", { result: "success" }), 0);
    assert.equal(
      metricValue(text, "ferry_downstream_requests_in_flight", { listener: "public" }),
      0,
    );
    assert.ok((metricValue(text, "process_resident_memory_bytes") ?? 0) > 0, "process metrics");
    assert.ok(!text.includes("/good/x") && !text.includes("/limited"), "no raw paths as labels");

    // promtool parses the exposition and lints names (units, _total, ...); silence is a pass.
    const checked = await run("promtool", ["check", "metrics"], {
      stdin: new TextEncoder().encode(text),
    });
    assert.equal(checked.code, 0, checked.stdout + checked.stderr);
    assert.equal((checked.stdout + checked.stderr).trim(), "", "promtool reports no problems");
  } finally {
    await px.close();
    await good.close();
    await flaky.close();
  }
});

Deno.test("requests refused at the cluster's request limit are counted as overflow", async () => {
  const gate = Promise.withResolvers<void>();
  const slow = startUpstream(async () => {
    await gate.promise;
    return new Response("late");
  });
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
routes: [{ name: r, cluster: c }]
clusters:
  - name: c
    endpoints: ["{{U}}"]
    limits: { max_requests: 1 }
`,
    { U: slow.url },
  );
  try {
    const first = fetch(`${px.url}/a`);
    // Wait until the first request is in flight upstream, then overflow with a second.
    for (let i = 0; i < 200; i++) {
      const t = await (await fetch(`${px.adminUrl}/metrics`)).text();
      if (metricValue(t, "ferry_upstream_requests_in_flight", { cluster: "c" }) === 1) break;
      await new Promise((r) => setTimeout(r, 10));
    }
    const second = await fetch(`${px.url}/b`);
    assert.equal(second.status, 503);
    await second.body?.cancel();
    gate.resolve();
    await (await first).body?.cancel();
    const text = await (await fetch(`${px.adminUrl}/metrics`)).text();
    assert.equal(
      metricValue(text, "ferry_upstream_overflow_total", { cluster: "c", limit: "cluster" }),
      1,
    );
  } finally {
    gate.resolve();
    await px.close();
    await slow.close();
  }
});

const TOKEN = "correct-horse-battery-staple";

Deno.test("an admin token guards every admin data endpoint (not /healthz, /dashboard) and is redacted in /config", async () => {
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0", token: "${TOKEN}" }
routes: [{ name: r, direct_response: { status: 200 } }]
`,
  );
  try {
    const get = (path: string, auth?: string) =>
      fetch(`${px.adminUrl}${path}`, auth ? { headers: { authorization: auth } } : {});
    const dataEndpoints = [
      "/metrics",
      "/clusters",
      "/routes",
      "/config",
      "/explain?path=/",
      "/stats",
      "/ready",
      "/nope",
    ];
    for (const path of dataEndpoints) {
      const res = await get(path);
      assert.equal(res.status, 401, path);
      assert.equal(res.headers.get("www-authenticate"), 'Bearer realm="ferry-admin"');
      await res.body?.cancel();
      const wrong = await get(path, `Bearer ${TOKEN}x`);
      assert.equal(wrong.status, 401, `${path} with a wrong token`);
      await wrong.body?.cancel();
    }
    const reload = await fetch(`${px.adminUrl}/reload`, { method: "POST" });
    assert.equal(reload.status, 401, "POST /reload");
    await reload.body?.cancel();
    const live = await get("/healthz");
    assert.equal(live.status, 200, "probes need no token");
    await live.body?.cancel();
    const page = await get("/dashboard");
    assert.equal(page.status, 200, "the page holds no data and asks for the token itself");
    assert.ok(!(await page.text()).includes(TOKEN));
    const metrics = await get("/metrics", `Bearer ${TOKEN}`);
    assert.equal(metrics.status, 200);
    assert.match(await metrics.text(), /ferry_build_info/);
    const config = await (await get("/config", `bearer ${TOKEN}`)).text();
    assert.ok(!config.includes(TOKEN), "the token never appears in /config");
    assert.match(config, /"token": "<redacted>"/);
  } finally {
    await px.close();
  }
});

Deno.test("the admin token can come from an environment variable; a missing one is a config error", () => {
  const cfg = `listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0", token_env: FERRY_TEST_ADMIN_TOKEN }
`;
  const px = startFerry(cfg, {}, {
    env: (n) => n === "FERRY_TEST_ADMIN_TOKEN" ? TOKEN : undefined,
  });
  assert.equal(px.ferry.snapshot.adminToken, TOKEN);
  const closing = px.close();
  assert.throws(() => startFerry(cfg, {}, { env: () => undefined }), /variable is not set/);
  return closing;
});

Deno.test('requests that match no route are counted under route="none"', async () => {
  const px = startFerry(`listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
routes: [{ name: only, match: { path: { exact: /only } }, direct_response: { status: 200 } }]
`);
  try {
    for (const path of ["/nope", "/also/nope"]) {
      const res = await fetch(`${px.url}${path}`);
      assert.equal(res.status, 404);
      await res.body?.cancel();
    }
    const ok = await fetch(`${px.url}/only`);
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    const text = await (await fetch(`${px.adminUrl}/metrics`)).text();
    const count = (route: string) =>
      metricValue(text, "ferry_downstream_requests_total", {
        listener: "public",
        route,
        method: "GET",
        status_class: "4xx",
      });
    assert.equal(count("none"), 2);
    assert.equal(count(""), undefined, "no empty route label");
    assert.equal(
      metricValue(text, "ferry_downstream_requests_total", { route: "only", status_class: "2xx" }),
      1,
    );
  } finally {
    await px.close();
  }
});

Deno.test("ferry_downstream_refused_total counts what the guard refuses before any handler, by reason", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    `listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
server: { max_connections: 1, header_timeout: 300ms }
routes: [{ name: all, match: { path: { prefix: / } }, cluster: up }]
clusters: [{ name: up, endpoints: ["{{UP}}"] }]
`,
    { UP: up.url },
  );
  const refused = async (reason: string) =>
    metricValue(
      await (await fetch(`${px.adminUrl}/metrics`)).text(),
      "ferry_downstream_refused_total",
      {
        listener: "public",
        reason,
      },
    ) ?? 0;
  // The cap is one connection: wait until the guard has let the last one go.
  const closed = async () => {
    for (let i = 0; i < 100 && px.ferry.openConnections().public !== 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  try {
    // Over the cap: one connection held, the next refused.
    const held = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
    await new Promise((r) => setTimeout(r, 50));
    assert.match(
      await rawRequest(px.port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
      /^HTTP\/1\.1 503 /,
    );
    // A head that never completes: 408 after header_timeout, on the held connection.
    await held.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: a\r\n"));
    const buf = new Uint8Array(4096);
    const n = await held.read(buf);
    assert.match(new TextDecoder().decode(buf.subarray(0, n ?? 0)), /^HTTP\/1\.1 408 /);
    held.close();
    await closed();
    // Heads the parser refuses, each on its own connection.
    const dup = "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert.match(await rawRequest(px.port, dup), /^HTTP\/1\.1 400 /);
    await closed();
    assert.match(
      await rawRequest(px.port, "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
      /^HTTP\/1\.1 505 /,
    );
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(await refused("too_many_connections"), 1);
    assert.equal(await refused("request_timeout"), 1);
    assert.equal(await refused("bad_request"), 1);
    assert.equal(await refused("version_not_supported"), 1);
    assert.equal(await refused("headers_too_large"), 0);
  } finally {
    await px.close();
    await up.close();
  }
});
