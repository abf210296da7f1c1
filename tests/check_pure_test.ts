/**
 * Compiling a config runs nothing: `--check` (and any compile that does not go live) opens no
 * socket, sends no DNS query, starts no timer and opens no file. Health checks, DNS discovery,
 * JWKS refreshes and the access-log file start only when a snapshot starts serving.
 */
import assert from "node:assert/strict";
import { DENO, RUN, run, tempConfig } from "./helpers.ts";
import { startDnsServer } from "./fixtures/dns_server.ts";
import { configSource } from "../src/config/source.ts";
import { buildSnapshot } from "../src/server/build.ts";
import { createLogger } from "../src/observability/log.ts";

/** A TCP listener that counts connections (health checks, JWKS fetches) and answers none. */
function countingListener() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let accepted = 0;
  const loop = (async () => {
    for await (const conn of listener) {
      accepted++;
      conn.close();
    }
  })().catch(() => {});
  return {
    port: listener.addr.port,
    get accepted() {
      return accepted;
    },
    async close() {
      listener.close();
      await loop;
    },
  };
}

/**
 * Every kind of part that talks to the network or the disk once it runs: active health checks
 * (to a counting listener and to an unroutable TEST-NET address), DNS discovery (to a name server
 * that records queries and to an unreachable one), a JWKS URL and an access-log file.
 */
function configText(dir: string, tcpPort: number, dnsPort: number): string {
  return `listeners: [{ name: public, address: "127.0.0.1:0" }]
access_log: { path: ${dir}/access.log }
jwt_providers:
  - { name: corp, issuer: x, jwks_url: "http://127.0.0.1:${tcpPort}/jwks", refresh_interval: 100ms }
routes:
  - name: a
    match: { path: { prefix: /a } }
    cluster: watched
    authorization: { jwt: { provider: corp }, default: allow }
  - { name: b, match: { path: { prefix: /b } }, cluster: unreachable }
  - { name: c, match: { path: { prefix: /c } }, cluster: discovered }
  - { name: d, match: { path: { prefix: /d } }, cluster: lost }
clusters:
  - name: watched
    endpoints: ["http://127.0.0.1:${tcpPort}"]
    health_check: { path: /h, interval: 100ms, timeout: 5s, jitter: 0 }
  - name: unreachable
    endpoints: ["http://192.0.2.1:80"]
    health_check: { path: /h, interval: 100ms, timeout: 30s, jitter: 0 }
  - name: discovered
    discovery:
      dns: { name: api.test, type: A, port: 80, interval: 100ms, timeout: 30s, name_server: "127.0.0.1:${dnsPort}" }
  - name: lost
    discovery:
      dns: { name: api.test, type: A, port: 80, interval: 100ms, timeout: 30s, name_server: "192.0.2.53:53" }
`;
}

Deno.test("--check on a config whose health checks and name servers are unreachable exits 0 in under 1 s and touches nothing", async () => {
  const tcp = countingListener();
  const dns = await startDnsServer();
  dns.setSilent(true);
  const dir = await Deno.makeTempDir();
  try {
    const file = await tempConfig(configText(dir, tcp.port, dns.port));
    // --allow-write so that an access-log file could be opened, if anything tried.
    const timed = async (...args: string[]) => {
      const started = performance.now();
      const out = await new Deno.Command(DENO, {
        args: [RUN[0]!, "--allow-write", ...RUN.slice(1), ...args],
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { out, ms: performance.now() - started };
    };
    // The same process loading the same modules without a config: what the machine's load
    // alone costs (about 0.3 s idle, over 1 s while the whole suite runs).
    const baseline = await timed("--version");
    const { out, ms } = await timed("--config", file, "--check");
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.match(new TextDecoder().decode(out.stdout), /: OK/);
    console.log(`--check ${ms.toFixed(0)} ms, --version ${baseline.ms.toFixed(0)} ms`);
    // Waiting on anything here would take the probes' and resolvers' 5-30 s timeouts.
    assert.ok(ms - baseline.ms < 1_000, `--check took ${ms.toFixed(0)} ms`);
    assert.ok(ms < 5_000, `--check took ${ms.toFixed(0)} ms`);
    // Anything sent before the process exited has arrived by now.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(tcp.accepted, 0, "no health check or JWKS connection");
    assert.equal(dns.queries.length, 0, "no DNS query");
    assert.throws(() => Deno.statSync(`${dir}/access.log`), Deno.errors.NotFound);
  } finally {
    await Promise.all([tcp.close(), dns.close()]);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a compiled snapshot that never goes live runs nothing, however long it is kept", async () => {
  const tcp = countingListener();
  const dns = await startDnsServer();
  dns.setA("api.test", ["127.0.0.1"]);
  const dir = await Deno.makeTempDir();
  try {
    const file = await tempConfig(configText(dir, tcp.port, dns.port));
    const built = await buildSnapshot(configSource(file, {}), {
      version: 1,
      log: createLogger("error"),
    });
    assert.ok(built.ok, built.ok ? "" : built.message);
    // Several health-check, DNS and JWKS intervals (100 ms each).
    await new Promise((r) => setTimeout(r, 1_000));
    assert.equal(tcp.accepted, 0, "no health check or JWKS connection");
    assert.equal(dns.queries.length, 0, "no DNS query");
    assert.throws(() => Deno.statSync(`${dir}/access.log`), Deno.errors.NotFound);
    assert.equal(built.snapshot.clusters.get("discovered")!.endpoints.length, 0);
    built.snapshot.close();
  } finally {
    await Promise.all([tcp.close(), dns.close()]);
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--check without --allow-write refuses a file access log at its line, as starting would", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = await tempConfig(`listeners: [{ name: public, address: "127.0.0.1:0" }]
access_log: { path: ${dir}/access.log }
routes: [{ name: r, direct_response: { status: 200 } }]
`);
    const r = await run(DENO, [...RUN, "--config", file, "--check"]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`${file}:2:21: access_log\\.path: .*--allow-write`));
    assert.throws(() => Deno.statSync(`${dir}/access.log`), Deno.errors.NotFound);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
