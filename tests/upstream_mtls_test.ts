/**
 * Upstream mTLS per cluster, against upstreams that demand a client certificate: a node:https
 * server (requestCert + rejectUnauthorized) for HTTP/1.1 and a grpc-js server
 * (checkClientCertificate) for gRPC, with certificates made here by openssl under a SPIFFE-shaped
 * CA. Served with the cluster's certificate, refused without it, refused when the upstream's
 * identity is not the expected one (flag UI), for requests and for gRPC health checks.
 */
import assert from "node:assert/strict";
import * as https from "node:https";
import { startFerry } from "./helpers.ts";
import {
  CLIENT_SPIFFE_ID,
  makeMeshCerts,
  type MeshCerts,
  SERVER_SPIFFE_ID,
} from "./fixtures/certs.ts";
import { echoClient, grpc, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";
import { parseConfigText } from "../src/config/load.ts";

interface MtlsUpstream {
  readonly port: number;
  /** SNI names the server saw, one per TLS connection. */
  readonly serverNames: (string | false | null)[];
  close(): Promise<void>;
}

/** HTTP/1.1 over TLS that refuses clients without a mesh certificate; answers with the caller's SAN. */
async function startMtlsUpstream(certs: MeshCerts): Promise<MtlsUpstream> {
  const serverNames: (string | false | null)[] = [];
  const server = https.createServer({
    cert: certs.server.cert,
    key: certs.server.key,
    ca: certs.ca,
    requestCert: true,
    rejectUnauthorized: true,
  }, (req, res) => {
    const socket = req.socket as import("node:tls").TLSSocket;
    const peer = socket.getPeerCertificate();
    res.setHeader("content-type", "text/plain");
    res.end(`client=${peer.subjectaltname ?? "none"}`);
  });
  server.on(
    "secureConnection",
    (s: import("node:tls").TLSSocket) => serverNames.push(s.servername),
  );
  server.on("tlsClientError", () => {});
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    port,
    serverNames,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

function httpConfig(tls: string, protocol = "http1"): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: ${protocol}
    endpoints: ["https://127.0.0.1:{{PORT}}"]
    tls:
${tls}`;
}

async function get(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers });
  return { status: res.status, flag: res.headers.get("x-ferry-flag"), body: await res.text() };
}

Deno.test("upstream mTLS (HTTP/1.1): served with the cluster's client certificate, refused without it or with one from another CA", async () => {
  const certs = await makeMeshCerts();
  const up = await startMtlsUpstream(certs);
  const vars = { PORT: String(up.port) };
  const ca = `      ca_file: ${certs.caFile}\n`;
  const withCert = startFerry(
    httpConfig(
      ca + `      cert_file: ${certs.client.certFile}\n      key_file: ${certs.client.keyFile}\n`,
    ),
    vars,
  );
  const without = startFerry(httpConfig(ca), vars);
  const stranger = startFerry(
    httpConfig(
      ca +
        `      cert_file: ${certs.strangerClient.certFile}\n` +
        `      key_file: ${certs.strangerClient.keyFile}\n`,
    ),
    vars,
  );
  try {
    // Two request shapes (both on the h1 codec): with and without Accept-Encoding.
    for (const headers of [{}, { "accept-encoding": "gzip" }]) {
      const ok = await get(`${withCert.url}/x`, headers);
      assert.equal(ok.status, 200, JSON.stringify(headers));
      assert.equal(ok.body, `client=URI:${CLIENT_SPIFFE_ID}`);
      const refused = await get(`${without.url}/x`, headers);
      assert.deepEqual([refused.status, refused.flag], [502, "UF"], JSON.stringify(headers));
      // TLS 1.3: the client's side of the handshake is done before the server judges its
      // certificate, so the refusal (here a close without an alert) can look like a reset.
      const other = await get(`${stranger.url}/x`, headers);
      assert.equal(other.status, 502, JSON.stringify(headers));
      assert.ok(other.flag === "UF" || other.flag === "UR", `${other.flag}`);
    }
  } finally {
    await withCert.close();
    await without.close();
    await stranger.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("upstream mTLS (HTTP/1.1): the upstream's SPIFFE ID is checked on the connection; a mismatch is 502 UI", async () => {
  const certs = await makeMeshCerts();
  const up = await startMtlsUpstream(certs);
  const vars = { PORT: String(up.port) };
  const base = `      ca_file: ${certs.caFile}\n      cert_file: ${certs.client.certFile}\n` +
    `      key_file: ${certs.client.keyFile}\n`;
  const expected = startFerry(
    httpConfig(base + `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`),
    vars,
  );
  const wrong = startFerry(
    httpConfig(base + `      expected_identities: ["spiffe://cluster.local/ns/default/sa/db"]\n`),
    vars,
  );
  try {
    for (const headers of [{}, { "accept-encoding": "gzip" }]) {
      const ok = await get(`${expected.url}/x`, headers);
      assert.deepEqual([ok.status, ok.body], [200, `client=URI:${CLIENT_SPIFFE_ID}`]);
      const bad = await get(`${wrong.url}/x`, headers);
      assert.deepEqual([bad.status, bad.flag], [502, "UI"]);
      const reason = JSON.parse(bad.body).reason as string;
      assert.match(reason, /presented spiffe:\/\/cluster\.local\/ns\/default\/sa\/api/);
      assert.match(reason, /expected spiffe:\/\/cluster\.local\/ns\/default\/sa\/db/);
    }
  } finally {
    await expected.close();
    await wrong.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("upstream mTLS (HTTP/1.1): server_name is sent as SNI and checked against the certificate", async () => {
  const certs = await makeMeshCerts();
  const up = await startMtlsUpstream(certs);
  const vars = { PORT: String(up.port) };
  const base = `      ca_file: ${certs.caFile}\n      cert_file: ${certs.client.certFile}\n` +
    `      key_file: ${certs.client.keyFile}\n`;
  const named = startFerry(httpConfig(base + `      server_name: localhost\n`), vars);
  const misnamed = startFerry(httpConfig(base + `      server_name: api.example.com\n`), vars);
  try {
    assert.equal((await get(`${named.url}/x`)).status, 200);
    assert.ok(up.serverNames.includes("localhost"), JSON.stringify(up.serverNames));
    const bad = await get(`${misnamed.url}/x`);
    assert.deepEqual([bad.status, bad.flag], [502, "UF"]);
    assert.match(JSON.parse(bad.body).reason, /does not name api\.example\.com/);
  } finally {
    await named.close();
    await misnamed.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("upstream mTLS (gRPC): client certificate and expected identity on Ferry's HTTP/2 client, and on gRPC health checks", async () => {
  const certs = await makeMeshCerts();
  const { Buffer } = await import("node:buffer");
  const server = await startEchoServer(
    grpc.ServerCredentials.createSsl(Buffer.from(certs.ca), [{
      private_key: Buffer.from(certs.server.key),
      cert_chain: Buffer.from(certs.server.cert),
    }], true),
  );
  const tls = (extra: string) =>
    `    tls:\n      ca_file: ${certs.caFile}\n${extra}` +
    `    health_check:\n      grpc: {}\n      interval: 200ms\n      timeout: 2s\n` +
    `      unhealthy_threshold: 1\n      healthy_threshold: 1\n`;
  const clientCert =
    `      cert_file: ${certs.client.certFile}\n      key_file: ${certs.client.keyFile}\n`;
  const config = (extra: string) =>
    grpcEchoConfig({ endpoints: '["https://127.0.0.1:{{PORT}}"]', cluster: tls(extra) });
  const vars = { PORT: String(server.port) };
  const good = startFerry(
    config(clientCert + `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`),
    vars,
  );
  const wrong = startFerry(
    config(clientCert + `      expected_identities: ["spiffe://cluster.local/ns/default/sa/db"]\n`),
    vars,
  );
  const noCert = startFerry(config(""), vars);
  const clients = [good, wrong, noCert].map((px) => echoClient(px.port));
  const [goodClient, wrongClient, noCertClient] = clients;
  const call = (c: typeof goodClient) =>
    unary(c!, new TextEncoder().encode("hi"), { deadlineMs: 10_000 });
  try {
    const ok = await call(goodClient);
    assert.equal(ok.error, undefined, String(ok.error));
    assert.equal(ok.value?.toString(), "hi");

    // The first call may meet the endpoint before or after its first (failing) health probe:
    // either way the client gets UNAVAILABLE, never an answer from the wrong identity.
    const mismatch = await call(wrongClient);
    assert.equal(mismatch.error?.code, grpc.status.UNAVAILABLE, String(mismatch.error));
    const refused = await call(noCertClient);
    assert.equal(refused.error?.code, grpc.status.UNAVAILABLE, String(refused.error));

    // The health checks use the same TLS: the mismatched and certificate-less clusters go
    // unhealthy, the good one stays healthy.
    const healthy = (px: typeof good) => px.ferry.snapshot.clusters.get("echo")!.health.snapshot();
    let states: boolean[] = [];
    for (let i = 0; i < 50; i++) {
      states = [good, wrong, noCert].map((px) => healthy(px)[0]?.healthy ?? true);
      if (!states[1] && !states[2]) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.deepEqual(states, [true, false, false]);
    assert.match(healthy(wrong)[0]!.lastProbe, /expected spiffe/);
    const later = await call(wrongClient);
    assert.equal(later.error?.code, grpc.status.UNAVAILABLE);
  } finally {
    for (const c of clients) c.close();
    await good.close();
    await wrong.close();
    await noCert.close();
    await server.stop();
    await certs.remove();
  }
});

Deno.test("upstream mTLS: HTTP health checks present the cluster's client certificate", async () => {
  const certs = await makeMeshCerts();
  const up = await startMtlsUpstream(certs);
  const vars = { PORT: String(up.port) };
  const check =
    `    health_check: { path: /, interval: 200ms, timeout: 2s, unhealthy_threshold: 1 }\n`;
  const ca = `      ca_file: ${certs.caFile}\n`;
  const withCert = startFerry(
    httpConfig(
      ca + `      cert_file: ${certs.client.certFile}\n      key_file: ${certs.client.keyFile}\n`,
    ) + check,
    vars,
  );
  const without = startFerry(httpConfig(ca) + check, vars);
  try {
    const lastProbe = (px: typeof withCert) =>
      px.ferry.snapshot.clusters.get("up")!.health.snapshot()[0]!;
    for (let i = 0; i < 50 && (lastProbe(without).healthy || !lastProbe(withCert).lastProbe); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(lastProbe(withCert).healthy, true, lastProbe(withCert).lastProbe);
    assert.match(lastProbe(withCert).lastProbe, /200/);
    assert.equal(lastProbe(without).healthy, false);
  } finally {
    await withCert.close();
    await without.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("upstream mTLS: HTTP health checks check the expected identity and server name (over the h1 codec): a wrong identity is unhealthy with its own reason", async () => {
  const certs = await makeMeshCerts();
  const up = await startMtlsUpstream(certs);
  const vars = { PORT: String(up.port) };
  const check =
    `    health_check: { path: /, interval: 200ms, timeout: 2s, unhealthy_threshold: 1, ` +
    `healthy_threshold: 1 }\n`;
  const tls = (extra: string) =>
    httpConfig(
      `      ca_file: ${certs.caFile}\n      cert_file: ${certs.client.certFile}\n` +
        `      key_file: ${certs.client.keyFile}\n${extra}`,
    ) + check;
  const right = startFerry(tls(`      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`), vars);
  const wrong = startFerry(
    tls(`      expected_identities: ["spiffe://cluster.local/ns/default/sa/db"]\n`),
    vars,
  );
  const misnamed = startFerry(tls(`      server_name: db.internal\n`), vars);
  try {
    const state = (px: typeof right) => px.ferry.snapshot.clusters.get("up")!.health.snapshot()[0]!;
    const all = [right, wrong, misnamed];
    for (let i = 0; i < 60 && all.some((px) => !state(px).lastProbe); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    for (let i = 0; i < 30 && (state(wrong).healthy || state(misnamed).healthy); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(state(right).healthy, true, state(right).lastProbe);
    assert.match(state(right).lastProbe, /status 200/);
    assert.equal(state(wrong).healthy, false);
    assert.match(
      state(wrong).lastProbe,
      /upstream identity mismatch: .*sa\/api.*expected spiffe:\/\/cluster.local\/ns\/default\/sa\/db/,
    );
    assert.equal(state(misnamed).healthy, false);
    assert.match(state(misnamed).lastProbe, /does not name db\.internal/);
    // The cluster's client certificate expiry is in /metrics (kind="cluster").
    const { X509Certificate } = await import("node:crypto");
    const notAfter = new X509Certificate(certs.client.cert).validToDate.getTime() / 1000;
    const scraped = await right.ferry.snapshot.metrics.registry.metrics();
    assert.ok(
      scraped.includes(
        `ferry_tls_certificate_expiry_timestamp_seconds{kind="cluster",name="up"} ${notAfter}`,
      ),
      scraped.split("\n").filter((l) => l.includes("expiry")).join("\n"),
    );
    // Requests agree with the probes: the wrong identity is a 502 with flag UI.
    const res = await fetch(`${wrong.url}/x`);
    await res.body?.cancel();
    assert.ok(res.status === 502 || res.status === 503, String(res.status));
  } finally {
    await right.close();
    await wrong.close();
    await misnamed.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("upstream mTLS config: identities with transport: fetch on a cluster reached from an http listener are refused at their line (auto alone takes the h2 transport); cert_file needs key_file", () => {
  const auto = parseConfigText(
    httpConfig(`      expected_identities: ["spiffe://x/y"]\n`, "auto").replace("{{PORT}}", "1"),
    "mtls.yaml",
  );
  assert.equal(auto.ok, true, JSON.stringify(auto.ok ? "" : auto.errors));
  const h2 = parseConfigText(
    httpConfig(`      expected_identities: ["spiffe://x/y"]\n`, "auto")
      .replace("{{PORT}}", "1").replace(
        "    protocol: auto\n",
        "    protocol: auto\n    transport: fetch\n",
      ),
    "mtls.yaml",
  );
  assert.equal(h2.ok, false);
  const issue = h2.ok ? undefined : h2.errors[0];
  assert.equal(issue?.line, 13);
  assert.match(issue?.message ?? "", /cannot be checked with transport: fetch/);
  const half = parseConfigText(
    httpConfig(`      cert_file: a.pem\n`).replace("{{PORT}}", "1"),
    "mtls.yaml",
  );
  assert.equal(half.ok, false);
  assert.match(half.ok ? "" : half.errors[0]!.message, /cert_file and key_file go together/);
});
