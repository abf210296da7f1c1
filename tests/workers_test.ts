/**
 * `server.workers: 2` end to end: real Ferry processes whose two Web Workers share each port
 * (SO_REUSEPORT). FERRY_WORKER_HEADER=1 makes every response say which worker served it
 * (`x-ferry-worker`); FERRY_TEST_HOOKS=1 enables POST /debug/kill-worker and lets worker 1 refuse
 * a config with a route named `refused-by-worker-1`.
 */
import assert from "node:assert/strict";
import { makeTestCerts } from "./fixtures/certs.ts";
import { startDnsServer } from "./fixtures/dns_server.ts";
import { metricValue, spawnFerry, type Started, startUpstream, tempConfig } from "./helpers.ts";

const ENV = { FERRY_WORKER_HEADER: "1", FERRY_TEST_HOOKS: "1" };

function config(upstream: string, extra = "", body = "v1"): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { workers: 2, watch_config: false, drain_timeout: 10s }
rate_limits:
  - { name: tight, scope: global, rate: 0.2, burst: 10 }
routes:
  - name: version
    match: { path: { exact: /version } }
    direct_response: { status: 200, body: "${body}" }
  - name: limited
    match: { path: { prefix: /limited } }
    cluster: up
    rate_limit: [tight]
  - name: flaky
    match: { path: { prefix: /flaky } }
    cluster: flaky
  - name: dead
    match: { path: { prefix: /dead } }
    cluster: dead
  - name: all
    match: { path: { prefix: / } }
    cluster: up
    timeout: 30s
${extra}clusters:
  - name: dead
    endpoints: ["http://127.0.0.1:1"]
  - name: up
    endpoints: ["${upstream}"]
  - name: flaky
    endpoints: ["${upstream}"]
    circuit_breaker: { failures: 3, open_timeout: 60s }
`;
}

/** Answers after `?ms=`; /flaky answers 500 and counts how often it was reached. */
function upstream() {
  let flakyHits = 0;
  const up = startUpstream(async (req) => {
    const url = new URL(req.url);
    if (url.pathname.startsWith("/flaky")) {
      flakyHits++;
      return new Response("broken", { status: 500 });
    }
    const ms = Number(url.searchParams.get("ms") ?? "0");
    await new Promise((r) => {
      const t = setTimeout(r, ms);
      req.signal.addEventListener("abort", () => (clearTimeout(t), r(undefined)));
    });
    return new Response(`slept ${ms}`);
  });
  return { ...up, flakyHits: () => flakyHits };
}

/** One request on a new connection: its status, body and the worker that served it. */
async function once(url: string): Promise<{ status: number; body: string; worker: string }> {
  const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
  try {
    const res = await fetch(url, { client, headers: { connection: "close" } });
    return {
      status: res.status,
      body: await res.text(),
      worker: res.headers.get("x-ferry-worker") ?? "",
    };
  } finally {
    client.close();
  }
}

/** A keep-alive connection pinned to the worker that answered its first request. */
async function pinnedTo(base: string, worker: string): Promise<Deno.HttpClient> {
  for (let i = 0; i < 50; i++) {
    const client = Deno.createHttpClient({ poolMaxIdlePerHost: 1 });
    const res = await fetch(`${base}/version`, { client });
    await res.body?.cancel();
    if (res.headers.get("x-ferry-worker") === worker) return client;
    client.close();
  }
  throw new Error(`no connection landed on worker ${worker} in 50 tries`);
}

async function stop(ferry: Started): Promise<void> {
  try {
    ferry.child.kill("SIGKILL");
  } catch { /* gone */ }
  await ferry.child.status;
}

async function reload(ferry: Started): Promise<{ ok: boolean; error?: string }> {
  const res = await fetch(`${ferry.admin}/reload`, { method: "POST" });
  return await res.json();
}

Deno.test("workers: 2 — new connections are served by both workers; the dashboard lists both workers' errors", async () => {
  const up = upstream();
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url))], ENV);
  try {
    const base = ferry.listeners.get("public")!;
    const seen = new Set<string>();
    for (let i = 0; i < 60 && seen.size < 2; i++) {
      const r = await once(`${base}/version`);
      assert.equal(r.status, 200);
      seen.add(r.worker);
    }
    assert.deepEqual([...seen].sort(), ["0", "1"]);
    assert.ok(ferry.logs.some((l) => l.includes('"ferry started"') && l.includes('"workers":2')));

    // Proxy-made errors of both workers reach the dashboard on the admin listener.
    const ids = new Map<string, string>();
    for (let i = 0; i < 60 && ids.size < 2; i++) {
      const client = Deno.createHttpClient({ poolMaxIdlePerHost: 0 });
      const res = await fetch(`${base}/dead`, { client });
      await res.body?.cancel();
      client.close();
      assert.equal(res.status, 502);
      ids.set(res.headers.get("x-ferry-worker")!, res.headers.get("x-request-id")!);
    }
    let listed: string[] = [];
    for (let i = 0; i < 50; i++) {
      const stats = await (await fetch(`${ferry.admin}/stats`)).json();
      listed = stats.recent_errors.map((e: { request_id: string }) => e.request_id);
      if ([...ids.values()].every((id) => listed.includes(id))) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const [worker, id] of ids) assert.ok(listed.includes(id), `worker ${worker}'s error`);
  } finally {
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — a rate limit holds across workers within its burst; /metrics and /stats have process totals", async () => {
  const up = upstream();
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url))], ENV);
  try {
    const base = ferry.listeners.get("public")!;
    const started = Date.now();
    let allowed = 0;
    const byWorker = new Map<string, number>();
    for (let i = 0; i < 40; i++) {
      const r = await once(`${base}/limited`);
      assert.ok(r.status === 200 || r.status === 429, `status ${r.status}`);
      if (r.status === 200) allowed++;
      byWorker.set(r.worker, (byWorker.get(r.worker) ?? 0) + 1);
    }
    const refill = Math.floor(((Date.now() - started) / 1000) * 0.2);
    // Burst 10 for the process (two separate buckets would let about 20 through).
    assert.ok(allowed >= 10 && allowed <= 10 + refill, `allowed ${allowed}, refill ${refill}`);
    assert.equal(byWorker.size, 2, "both workers took requests");
    // One scrape of the admin listener (main isolate) counts what both workers served.
    const metrics = await (await fetch(`${ferry.admin}/metrics`)).text();
    assert.equal(metricValue(metrics, "ferry_downstream_requests_total", { route: "limited" }), 40);
    assert.equal(metricValue(metrics, "ferry_rate_limited_requests_total"), 40 - allowed);
    // The dashboard reads the same merged totals.
    const stats = await (await fetch(`${ferry.admin}/stats`)).json();
    const limited = stats.routes.find((r: { route: string }) => r.route === "limited");
    assert.equal(limited?.requests, 40);
    assert.equal(limited?.c429, 40 - allowed);
  } finally {
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — a breaker opened through one worker refuses through the other", async () => {
  const up = upstream();
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url))], ENV);
  const base = ferry.listeners.get("public")!;
  const zero = await pinnedTo(base, "0");
  const one = await pinnedTo(base, "1");
  try {
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${base}/flaky`, { client: zero });
      assert.equal(res.status, 500);
      await res.body?.cancel();
    }
    assert.equal(up.flakyHits(), 3);
    const refused = await fetch(`${base}/flaky`, { client: one });
    await refused.body?.cancel();
    assert.equal(refused.headers.get("x-ferry-worker"), "1");
    assert.equal(refused.status, 503);
    assert.equal(refused.headers.get("x-ferry-flag"), "UO");
    assert.equal(up.flakyHits(), 3, "the open breaker kept the request from the upstream");
    // The admin listener (main isolate) reads the same shared breaker.
    const view = await (await fetch(`${ferry.admin}/clusters`)).json();
    const flaky = view.clusters.find((c: { name: string }) => c.name === "flaky");
    assert.equal(flaky.endpoints[0].breaker.state, "open");
  } finally {
    zero.close();
    one.close();
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — one reload switches every worker; a config one worker refuses is refused for all, and so is a TLS listener", async () => {
  const up = upstream();
  const file = await tempConfig(config(up.url));
  const ferry = await spawnFerry(["--config", file], ENV);
  const base = ferry.listeners.get("public")!;
  const zero = await pinnedTo(base, "0");
  const one = await pinnedTo(base, "1");
  const versions = async () => {
    const out: string[] = [];
    for (const client of [zero, one]) {
      const res = await fetch(`${base}/version`, { client });
      out.push(`${res.headers.get("x-ferry-worker")}:${await res.text()}`);
    }
    return out;
  };
  try {
    assert.deepEqual(await versions(), ["0:v1", "1:v1"]);
    // A changed worker count is read at start only: the reload applies, with a warning.
    await Deno.writeTextFile(file, config(up.url, "", "v2").replace("workers: 2", "workers: 3"));
    assert.equal((await reload(ferry)).ok, true);
    assert.deepEqual(await versions(), ["0:v2", "1:v2"]);
    assert.ok(ferry.logs.some((l) => l.includes("server.workers changes on restart only")));

    const refusedRoute = `  - name: refused-by-worker-1
    match: { path: { prefix: /refused } }
    direct_response: { status: 200, body: "never" }
`;
    await Deno.writeTextFile(
      file,
      config(up.url, "", "v3").replace("routes:\n", `routes:\n${refusedRoute}`),
    );
    const outcome = await reload(ferry);
    assert.equal(outcome.ok, false);
    assert.match(outcome.error ?? "", /worker 1: test hook/);
    // Worker 0 could load it, but nobody switched: both still serve v2.
    assert.deepEqual(await versions(), ["0:v2", "1:v2"]);
    const status = await (await fetch(`${ferry.admin}/config`)).json();
    assert.equal(status.version, 2);

    // A TLS listener (node:tls) cannot share its port between workers: a reload adding one is
    // refused before any worker binds, with the fix named, and both keep serving v2.
    const certs = await makeTestCerts();
    try {
      await Deno.writeTextFile(
        file,
        config(up.url, "", "v4").replace(
          "listeners:\n",
          `listeners:\n  - name: secure\n    address: "127.0.0.1:0"\n` +
            `    tls: { cert: ${certs.certFile}, key: ${certs.keyFile} }\n`,
        ),
      );
      const tlsOutcome = await reload(ferry);
      assert.equal(tlsOutcome.ok, false);
      assert.match(
        tlsOutcome.error ?? "",
        /TLS listeners \(secure\) cannot be served by 2 workers.*server\.workers: 1/,
      );
      assert.deepEqual(await versions(), ["0:v2", "1:v2"]);
    } finally {
      await certs.remove();
    }
  } finally {
    zero.close();
    one.close();
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — a port-0 listener a reload adds is one port, bound by the main isolate and shared by the worker", async () => {
  const up = upstream();
  const file = await tempConfig(config(up.url));
  const ferry = await spawnFerry(["--config", file], ENV);
  try {
    await Deno.writeTextFile(
      file,
      config(up.url).replace(
        `  - { name: public, address: "127.0.0.1:0" }`,
        `  - { name: public, address: "127.0.0.1:0" }\n  - { name: extra, address: "127.0.0.1:0" }`,
      ),
    );
    assert.equal((await reload(ferry)).ok, true);
    // Each isolate logs its own bind: the main isolate's line has no worker field.
    const binds = ferry.logs.flatMap((l) => {
      if (!l.includes('"listener":"extra"')) return [];
      const j = JSON.parse(l);
      return j.msg === "listening" ? [j] : [];
    });
    assert.deepEqual(binds.map((b) => b.worker ?? "main").sort(), [1, "main"]);
    const addresses = new Set(binds.map((b) => b.address));
    assert.equal(addresses.size, 1, `one port: ${[...addresses].join(", ")}`);
    const seen = new Set<string>();
    for (let i = 0; i < 60 && seen.size < 2; i++) {
      const r = await once(`http://${[...addresses][0]}/version`);
      assert.equal(r.status, 200);
      seen.add(r.worker);
    }
    assert.deepEqual([...seen].sort(), ["0", "1"]);
  } finally {
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — /clusters counts both workers' requests in flight; SIGTERM drains both: they complete, exit 0", async () => {
  const up = upstream();
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url))], ENV);
  const base = ferry.listeners.get("public")!;
  const clients = [await pinnedTo(base, "0"), await pinnedTo(base, "1")];
  try {
    const inFlight = clients.map((client) =>
      fetch(`${base}/slow?ms=1500`, { client }).then(async (r) => ({
        status: r.status,
        worker: r.headers.get("x-ferry-worker"),
        body: await r.text(),
      })).catch((err) => ({ status: 0, worker: null, body: String(err) }))
    );
    await new Promise((r) => setTimeout(r, 400));
    // /clusters sums what each worker has in flight (one slow request each).
    const view = await (await fetch(`${ferry.admin}/clusters`)).json();
    const upView = view.clusters.find((c: { name: string }) => c.name === "up");
    assert.equal(upView.endpoints[0].in_flight, 2);
    ferry.child.kill("SIGTERM");
    const done = await Promise.all(inFlight);
    assert.deepEqual(done.map((d) => [d.status, d.worker, d.body]), [
      [200, "0", "slept 1500"],
      [200, "1", "slept 1500"],
    ]);
    const status = await ferry.child.status;
    assert.equal(status.code, 0);
    const stopped = ferry.logs.find((l) => l.includes('"msg":"stopped"'));
    assert.ok(stopped?.includes('"clean":true'), String(stopped));
  } finally {
    for (const c of clients) c.close();
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — a worker that dies is logged, counted and replaced while the other serves", async () => {
  const up = upstream();
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url))], ENV);
  const base = ferry.listeners.get("public")!;
  try {
    const killed = await fetch(`${ferry.admin}/debug/kill-worker?index=1`, { method: "POST" });
    assert.deepEqual(await killed.json(), { killed: true });
    // Connections the kernel had already queued on the dead isolate's socket are reset with it
    // (as with any SO_REUSEPORT server whose process dies); once it is closed, a moment later,
    // new connections are all served (by worker 0, the main isolate, until 1 is back).
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 10; i++) assert.equal((await once(`${base}/version`)).status, 200);
    let replaced = false;
    for (let i = 0; i < 100 && !replaced; i++) {
      replaced = ferry.logs.some((l) => l.includes('"worker replaced"'));
      if (!replaced) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(replaced, "worker 1 was replaced");
    assert.ok(ferry.logs.some((l) => l.includes('"worker died; starting a new one"')));
    const seen = new Set<string>();
    for (let i = 0; i < 60 && seen.size < 2; i++) seen.add((await once(`${base}/version`)).worker);
    assert.deepEqual([...seen].sort(), ["0", "1"]);
    const metrics = await (await fetch(`${ferry.admin}/metrics`)).text();
    assert.equal(metricValue(metrics, "ferry_worker_restarts_total", { worker: "1" }), 1);
  } finally {
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — health checks run once, in the main isolate, and both workers follow the verdicts", async () => {
  const probes = { good: 0, bad: 0 };
  const served = { good: 0, bad: 0 };
  const backend = (name: "good" | "bad") =>
    startUpstream((req) => {
      if (new URL(req.url).pathname === "/healthz") {
        probes[name]++;
        return new Response(name, { status: name === "good" ? 200 : 503 });
      }
      served[name]++;
      return new Response(name);
    });
  const good = backend("good"), bad = backend("bad");
  const yaml = `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { workers: 2, watch_config: false }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: pair }
clusters:
  - name: pair
    endpoints: ["${good.url}", "${bad.url}"]
    health_check:
      { path: /healthz, interval: 200ms, jitter: 0, unhealthy_threshold: 1, healthy_threshold: 1 }
`;
  const ferry = await spawnFerry(["--config", await tempConfig(yaml)], ENV);
  const base = ferry.listeners.get("public")!;
  try {
    const start = { ...probes };
    const started = Date.now();
    await new Promise((r) => setTimeout(r, 2_000));
    const rounds = (Date.now() - started) / 200;
    // One prober: about one probe per interval per endpoint (three isolates would make three).
    assert.ok(probes.good - start.good <= rounds + 2, `good probed ${probes.good - start.good}x`);
    const workers = new Set<string>();
    for (let i = 0; i < 30; i++) {
      const r = await once(`${base}/x`);
      assert.equal(r.body, "good");
      workers.add(r.worker);
    }
    assert.equal(workers.size, 2, "both workers routed around the unhealthy endpoint");
    assert.equal(served.bad, 0);
  } finally {
    await stop(ferry);
    await good.close();
    await bad.close();
  }
});

Deno.test("workers: 1 — one isolate serves everything, as before workers existed", async () => {
  const up = upstream();
  const yaml = config(up.url).replace("workers: 2", "workers: 1");
  const ferry = await spawnFerry(["--config", await tempConfig(yaml)], ENV);
  try {
    const r = await once(`${ferry.listeners.get("public")!}/version`);
    assert.equal(r.status, 200);
    assert.equal(r.worker, "", "no worker tags a response");
    assert.ok(ferry.logs.some((l) => l.includes('"ferry started"') && l.includes('"workers":1')));
    assert.ok(!ferry.logs.some((l) => l.includes('"worker":')), "no worker logged anything");
    const killed = await fetch(`${ferry.admin}/debug/kill-worker?index=1`, { method: "POST" });
    assert.equal(killed.status, 404);
    await killed.body?.cancel();
  } finally {
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — DNS discovery resolves once, in the main isolate; both workers follow its answers", async () => {
  const dns = await startDnsServer();
  const a = startUpstream(() => new Response("a"));
  const c = startUpstream(() => new Response("c"));
  dns.setA("a.test", ["127.0.0.1"]);
  const srv = (port: number) => [{ priority: 10, weight: 1, port, target: "a.test" }];
  dns.setSrv("_http._tcp.api.test", srv(a.port));
  const yaml = `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { workers: 2, watch_config: false }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - name: up
    discovery:
      dns: { name: _http._tcp.api.test, type: SRV, interval: 200ms, timeout: 1s, name_server: "127.0.0.1:${dns.port}" }
`;
  const ferry = await spawnFerry(["--config", await tempConfig(yaml)], ENV);
  const base = ferry.listeners.get("public")!;
  const answers = async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) {
      const r = await once(`${base}/`);
      seen.add(`${r.worker}:${r.body}`);
    }
    return [...seen].sort();
  };
  const until = async (want: string[]) => {
    let got: string[] = [];
    for (let i = 0; i < 100; i++) {
      got = await answers();
      if (JSON.stringify(got) === JSON.stringify(want)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(got, want);
  };
  try {
    await until(["0:a", "1:a"]);
    dns.setSrv("_http._tcp.api.test", srv(c.port));
    await until(["0:c", "1:c"]);
    // One resolver: SRV queries at about one per interval (three isolates would make three).
    const before = dns.queries.filter((q) => q.type === 33).length;
    await new Promise((r) => setTimeout(r, 2_000));
    const during = dns.queries.filter((q) => q.type === 33).length - before;
    assert.ok(during <= 2_000 / 200 + 3, `${during} SRV queries in 2 s`);
  } finally {
    await stop(ferry);
    await a.close();
    await c.close();
    await dns.close();
  }
});
