/**
 * Endpoints from DNS, end to end: a DNS server on loopback speaking the wire protocol, SRV records
 * pointing at real upstreams, Ferry re-resolving on an interval. Endpoints that stay keep their
 * state (here: an outlier ejection) when the answer changes, and when a reload edits a static
 * endpoint list.
 */
import assert from "node:assert/strict";
import { startDnsServer } from "./fixtures/dns_server.ts";
import { catchAllConfig, startEchoUpstream, startFerry, startUpstream } from "./helpers.ts";
import { configSource } from "../src/config/source.ts";
import { buildSnapshot } from "../src/server/build.ts";
import { createLogger } from "../src/observability/log.ts";
import { Ferry } from "../src/server/ferry.ts";
import { tempConfig } from "./helpers.ts";

async function whoAnswers(url: string, n: number): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const r = await fetch(url);
    const who = r.headers.get("content-type")?.includes("json")
      ? (await r.json()).upstream ?? `status ${r.status}`
      : `${r.status} ${await r.text()}`;
    seen.set(who, (seen.get(who) ?? 0) + 1);
  }
  return seen;
}

async function until(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

interface ClusterView {
  endpoints: { origin: string; ejected: boolean; ejections: number }[];
  discovery?: { endpoints: number | null; consecutive_failures: number };
}

async function clusterView(admin: string, name = "up"): Promise<ClusterView> {
  const all = await (await fetch(`${admin}/clusters`)).json();
  return all.clusters.find((c: { name: string }) => c.name === name);
}

Deno.test("SRV discovery: endpoints follow the DNS answer; one that stays keeps its ejection", async () => {
  const dns = await startDnsServer();
  const a = startEchoUpstream("a");
  const b = startUpstream(() => new Response("b broken", { status: 500 }));
  const c = startEchoUpstream("c");
  const srv = (port: number, target: string) => ({ priority: 10, weight: 1, port, target });
  dns.setA("a.test", ["127.0.0.1"]);
  dns.setSrv("_http._tcp.api.test", [srv(a.port, "a.test"), srv(b.port, "a.test")]);
  const ferry = startFerry(
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    discovery:
      dns: { name: _http._tcp.api.test, type: SRV, interval: 200ms, timeout: 1s, name_server: "127.0.0.1:{{DNS}}" }
    outlier_detection: { consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 50 }
`,
    { DNS: String(dns.port) },
  );
  const bOrigin = `http://127.0.0.1:${b.port}`;
  try {
    await until(
      "the first answer",
      async () => (await clusterView(ferry.adminUrl!)).endpoints.length === 2,
    );
    // b answers 500s until it is ejected; afterwards only a answers.
    await until("b ejected", async () => {
      await fetch(ferry.url).then((r) => r.body?.cancel());
      return (await clusterView(ferry.adminUrl!)).endpoints.some((e) =>
        e.origin === bOrigin && e.ejected
      );
    });
    assert.deepEqual([...(await whoAnswers(ferry.url, 10)).keys()], ["a"]);

    // c joins through DNS: it takes traffic, and b, still listed, is still ejected.
    dns.setSrv("_http._tcp.api.test", [
      srv(a.port, "a.test"),
      srv(b.port, "a.test"),
      srv(c.port, "a.test"),
    ]);
    await until(
      "c discovered",
      async () => (await clusterView(ferry.adminUrl!)).endpoints.length === 3,
    );
    const view = await clusterView(ferry.adminUrl!);
    const bView = view.endpoints.find((e) => e.origin === bOrigin)!;
    assert.equal(bView.ejected, true, "b's ejection survived the membership change");
    assert.equal(bView.ejections, 1);
    assert.equal(view.discovery?.endpoints, 3);
    const seen = await whoAnswers(ferry.url, 20);
    assert.deepEqual([...seen.keys()].sort(), ["a", "c"]);

    // a leaves the answer: traffic goes to c only.
    dns.setSrv("_http._tcp.api.test", [srv(b.port, "a.test"), srv(c.port, "a.test")]);
    await until(
      "a removed",
      async () => (await clusterView(ferry.adminUrl!)).endpoints.length === 2,
    );
    assert.deepEqual([...(await whoAnswers(ferry.url, 10)).keys()], ["c"]);

    // The name server goes silent: the last answer stays in force.
    dns.setSilent(true);
    await until(
      "a failed resolution",
      async () => ((await clusterView(ferry.adminUrl!)).discovery?.consecutive_failures ?? 0) > 0,
    );
    assert.deepEqual([...(await whoAnswers(ferry.url, 5)).keys()], ["c"]);
  } finally {
    await ferry.close();
    await Promise.all([a.close(), b.close(), c.close(), dns.close()]);
  }
});

Deno.test("an A-record cluster with no answer yet says 503 no healthy upstream, then serves", async () => {
  const dns = await startDnsServer();
  const a = startEchoUpstream("a");
  const ferry = startFerry(
    catchAllConfig().replace(
      `    endpoints: ["{{UP}}"]\n`,
      `    discovery:
      dns: { name: api.test, type: A, port: ${a.port}, interval: 200ms, name_server: "127.0.0.1:{{DNS}}" }\n`,
    ),
    { DNS: String(dns.port) },
  );
  try {
    const first = await fetch(ferry.url);
    assert.equal(first.status, 503);
    assert.equal(first.headers.get("x-ferry-flag"), "UH");
    await first.body?.cancel();
    dns.setA("api.test", ["127.0.0.1"]);
    await until("served", async () => {
      const r = await fetch(ferry.url);
      await r.body?.cancel();
      return r.status === 200;
    });
  } finally {
    await ferry.close();
    await Promise.all([a.close(), dns.close()]);
  }
});

Deno.test("a reload that edits a static endpoint list keeps the state of endpoints that stay", async () => {
  const a = startEchoUpstream("a");
  const b = startUpstream(() => new Response("b broken", { status: 500 }));
  const c = startEchoUpstream("c");
  const config = (ups: string[]) =>
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    endpoints: [${ups.map((u) => `"${u}"`).join(", ")}]
    outlier_detection: { consecutive_5xx: 2, base_ejection_time: 60s, max_ejection_percent: 50 }
    circuit_breaker: { failures: 100 }
`;
  const file = await tempConfig(config([a.url, b.url]));
  const log = createLogger("error", () => {});
  const source = configSource(file, {});
  const built = await buildSnapshot(source, { version: 1, log });
  if (!built.ok) throw new Error(built.message);
  const ferry = Ferry.start(built.snapshot, log);
  const addr = ferry.addresses();
  const url = `http://127.0.0.1:${addr.listeners.public!.port}`;
  const admin = `http://127.0.0.1:${addr.admin!.port}`;
  const bOrigin = `http://127.0.0.1:${b.port}`;
  try {
    await until("b ejected", async () => {
      await fetch(url).then((r) => r.body?.cancel());
      return (await clusterView(admin)).endpoints.some((e) => e.origin === bOrigin && e.ejected);
    });
    const cluster = ferry.snapshot.clusters.get("up")!;
    await Deno.writeTextFile(file, config([a.url, b.url, c.url]));
    const next = await buildSnapshot(source, { version: 2, log, previous: ferry.snapshot });
    if (!next.ok) throw new Error(next.message);
    await ferry.apply(next.snapshot);
    assert.equal(ferry.snapshot.clusters.get("up"), cluster, "the cluster object is kept");
    const view = await clusterView(admin);
    assert.equal(view.endpoints.length, 3);
    assert.equal(view.endpoints.find((e) => e.origin === bOrigin)!.ejected, true);
    assert.deepEqual([...(await whoAnswers(url, 20)).keys()].sort(), ["a", "c"]);
  } finally {
    await ferry.shutdown(2_000);
    await Promise.all([a.close(), b.close(), c.close()]);
  }
});

/**
 * A raw HTTP/1.1 upstream that counts its open connections (keep-alive; `/slow` answers after
 * 800 ms) and names itself in the body.
 */
function countingUpstream(name: string) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const state = { open: 0 };
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const conn of listener) {
      state.open++;
      conns.add(conn);
      void (async () => {
        const buf = new Uint8Array(16384);
        let head = "";
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            head += new TextDecoder().decode(buf.subarray(0, n));
            let end;
            while ((end = head.indexOf("\r\n\r\n")) >= 0) {
              const request = head.slice(0, end);
              head = head.slice(end + 4);
              if (request.startsWith("GET /slow")) await new Promise((r) => setTimeout(r, 800));
              await conn.write(
                new TextEncoder().encode(
                  `HTTP/1.1 200 OK\r\ncontent-length: ${name.length}\r\n\r\n${name}`,
                ),
              );
            }
          }
        } catch { /* reset */ }
        state.open--;
        conns.delete(conn);
        try {
          conn.close();
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get open() {
      return state.open;
    },
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

for (const transport of ["h1", "fetch"]) {
  Deno.test(`DNS discovery (${transport}): an endpoint the answer drops has its connections closed once its requests end`, async () => {
    const dns = await startDnsServer();
    const a = countingUpstream("a");
    const b = countingUpstream("b");
    const srv = (port: number) => ({ priority: 10, weight: 1, port, target: "u.test" });
    dns.setA("u.test", ["127.0.0.1"]);
    dns.setSrv("_http._tcp.rot.test", [srv(a.port)]);
    const ferry = startFerry(
      `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    transport: ${transport}
    discovery:
      dns: { name: _http._tcp.rot.test, type: SRV, interval: 200ms, timeout: 1s, name_server: "127.0.0.1:{{DNS}}" }
`,
      { DNS: String(dns.port) },
    );
    const text = (path: string) => fetch(ferry.url + path).then((r) => r.text());
    try {
      await until("a discovered", async () => (await text("/")) === "a");
      assert.equal(await text("/"), "a");
      // One request still in flight to a when the answer changes: it completes from a.
      const slow = text("/slow");
      await new Promise((r) => setTimeout(r, 100));
      assert.ok(a.open >= 1, "Ferry keeps connections to a");
      dns.setSrv("_http._tcp.rot.test", [srv(b.port)]);
      await until("b takes the traffic", async () => (await text("/")) === "b");
      assert.equal(await slow, "a", "the request in flight on a finished");
      // a's pool is gone: its connections close (the pool's idle timeout is 90 s).
      await until("a's connections closed", () => Promise.resolve(a.open === 0), 5_000);
      assert.deepEqual(
        await Promise.all([text("/"), text("/"), text("/")]),
        ["b", "b", "b"],
      );
      assert.ok(b.open >= 1);
      // The metrics no longer list a (h1 pools).
      const metrics = await (await fetch(`${ferry.adminUrl}/metrics`)).text();
      assert.doesNotMatch(metrics, new RegExp(`endpoint="http://127.0.0.1:${a.port}",state=`));
    } finally {
      await ferry.close();
      a.close();
      b.close();
      await dns.close();
    }
  });
}
