/**
 * TLS listener settings with real clients (openssl s_client, curl): certificates chosen by server
 * name (SNI: exact and `*.example.com`, a default for the rest) on HTTP/1.1, h2 (ALPN) and gRPC
 * listeners; the minimum version; the handshake timeout; and the pair checks a start or reload
 * makes (key not matching, expired).
 */
import assert from "node:assert/strict";
import { run, startEchoUpstream, startFerry } from "./helpers.ts";
import { parseConfigText } from "../src/config/load.ts";
import { expiredSelfSigned, type Leaf, sClient, selfSigned } from "./fixtures/tls_files.ts";

interface SniCerts {
  dir: string;
  fallback: Leaf;
  api: Leaf;
  wild: Leaf;
}

async function sniCerts(): Promise<SniCerts> {
  const dir = await Deno.makeTempDir({ prefix: "ferry-sni-" });
  return {
    dir,
    fallback: await selfSigned(dir, "default", "default.test"),
    api: await selfSigned(dir, "api", "api.example.com"),
    wild: await selfSigned(dir, "wild", "any.apps.example.com"),
  };
}

function tlsBlock(c: SniCerts, extra = ""): string {
  return `{ cert: ${c.fallback.certFile}, key: ${c.fallback.keyFile}${extra}, certificates: [
        { server_names: [api.example.com], cert: ${c.api.certFile}, key: ${c.api.keyFile} },
        { server_names: ["*.apps.example.com"], cert: ${c.wild.certFile}, key: ${c.wild.keyFile} } ] }`;
}

Deno.test("SNI: two names on one port get their own certificates, a wildcard covers one label, an unknown or absent name gets the default (HTTP/1.1, h2 and gRPC listeners)", async () => {
  const c = await sniCerts();
  const up = startEchoUpstream();
  const px = startFerry(`listeners:
  - name: web
    address: "127.0.0.1:0"
    tls: ${tlsBlock(c)}
  - name: rpc
    address: "127.0.0.1:0"
    protocol: grpc
    tls: ${tlsBlock(c)}
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: h2c
    endpoints: ["${up.url}"]
`);
  try {
    const addrs = px.ferry.addresses().listeners;
    for (const [listener, alpn] of [["web", "http/1.1"], ["web", "h2"], ["rpc", "h2"]] as const) {
      const port = addrs[listener]!.port;
      const cases: [string | undefined, Leaf][] = [
        ["api.example.com", c.api],
        ["API.Example.com", c.api],
        ["x.apps.example.com", c.wild],
        ["a.b.apps.example.com", c.fallback], // a wildcard covers exactly one label
        ["apps.example.com", c.fallback],
        ["unknown.test", c.fallback],
        [undefined, c.fallback],
      ];
      for (const [name, want] of cases) {
        const hs = await sClient(port, { ...(name ? { serverName: name } : {}), alpn });
        assert.equal(hs.code, 0, hs.output);
        assert.equal(
          hs.fingerprint,
          want.fingerprint,
          `${listener} ${alpn} ${name}: ${hs.subject}`,
        );
        assert.equal(hs.alpn, alpn, `${listener}: ALPN as before`);
      }
    }
    // Requests are served on the certificate SNI chose, HTTP/1.1 and h2.
    const web = addrs.web!.port;
    for (const [flag, version] of [["--http1.1", "1.1"], ["--http2", "2"]]) {
      const out = await run("curl", [
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        c.api.certFile,
        "--resolve",
        `api.example.com:${web}:127.0.0.1`,
        flag!,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{http_version}",
        `https://api.example.com:${web}/hello`,
      ]);
      assert.equal(out.stdout, `200 ${version}`, out.stderr);
    }
  } finally {
    await px.close();
    await up.close();
    await Deno.remove(c.dir, { recursive: true });
  }
});

Deno.test("TLS min_version 1.3: a TLS 1.2 client is refused, 1.3 is served; the default accepts 1.2", async () => {
  const c = await sniCerts();
  const px = startFerry(`listeners:
  - name: strict
    address: "127.0.0.1:0"
    tls: { cert: ${c.fallback.certFile}, key: ${c.fallback.keyFile}, min_version: 1.3 }
  - name: lenient
    address: "127.0.0.1:0"
    tls: { cert: ${c.fallback.certFile}, key: ${c.fallback.keyFile} }
routes:
  - { name: ok, match: { path: { prefix: / } }, direct_response: { status: 200, body: ok } }
`);
  try {
    const addrs = px.ferry.addresses().listeners;
    const old = await sClient(addrs.strict!.port, { version: "-tls1_2" });
    assert.notEqual(old.code, 0, "TLS 1.2 refused by a 1.3 minimum");
    assert.match(old.output, /alert protocol version|no protocols available|wrong version/i);
    const current = await sClient(addrs.strict!.port, { version: "-tls1_3" });
    assert.equal(current.code, 0, current.output);
    assert.equal(current.protocol, "TLSv1.3");
    const lenient = await sClient(addrs.lenient!.port, { version: "-tls1_2" });
    assert.equal(lenient.code, 0, lenient.output);
    assert.equal(lenient.protocol, "TLSv1.2");
  } finally {
    await px.close();
    await Deno.remove(c.dir, { recursive: true });
  }
});

/** Opens TCP, sends nothing; resolves with the ms until the server closed (or `limitMs`). */
async function silentClient(port: number, limitMs: number): Promise<number> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const t0 = performance.now();
  const timer = setTimeout(() => conn.close(), limitMs);
  try {
    while ((await conn.read(new Uint8Array(64))) !== null) { /* nothing is sent */ }
  } catch { /* closed by our own limit, or reset */ }
  clearTimeout(timer);
  try {
    conn.close();
  } catch { /* closed */ }
  return performance.now() - t0;
}

Deno.test("TLS handshake timeout: a client that opens TCP and sends nothing is closed after tls.handshake_timeout, well before the header timeout (HTTP and gRPC listeners)", async () => {
  const c = await sniCerts();
  const up = startEchoUpstream();
  const px = startFerry(`server: { header_timeout: 30s }
listeners:
  - name: web
    address: "127.0.0.1:0"
    tls: { cert: ${c.fallback.certFile}, key: ${c.fallback.keyFile}, handshake_timeout: 1s }
  - name: rpc
    address: "127.0.0.1:0"
    protocol: grpc
    tls: { cert: ${c.fallback.certFile}, key: ${c.fallback.keyFile}, handshake_timeout: 1s }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - { name: up, protocol: h2c, endpoints: ["${up.url}"] }
`);
  try {
    const addrs = px.ferry.addresses().listeners;
    for (const name of ["web", "rpc"]) {
      const ms = await silentClient(addrs[name]!.port, 15_000);
      assert.ok(ms >= 800, `${name}: not before the timeout (${ms} ms)`);
      assert.ok(ms < 10_000, `${name}: closed after the handshake timeout, got ${ms} ms`);
    }
    // A real client is unaffected.
    const hs = await sClient(addrs.web!.port);
    assert.equal(hs.code, 0, hs.output);
  } finally {
    await px.close();
    await up.close();
    await Deno.remove(c.dir, { recursive: true });
  }
});

Deno.test("TLS config: handshake_timeout above header_timeout, and SNI or min_version without the guard, are refused at their line", () => {
  const above = parseConfigText(
    `server: { header_timeout: 5s }
listeners:
  - { name: h, address: "127.0.0.1:0", tls: { cert: a.pem, key: a.key, handshake_timeout: 10s } }
`,
    "t.yaml",
  );
  assert.equal(above.ok, false);
  assert.match(above.ok ? "" : above.errors[0]!.message, /at most server.header_timeout/);
  assert.equal(above.ok ? 0 : above.errors[0]!.line, 3);
  const noGuard = parseConfigText(
    `server: { connection_guard: false }
listeners:
  - name: h
    address: "127.0.0.1:0"
    tls:
      cert: a.pem
      key: a.key
      min_version: "1.3"
      certificates: [{ server_names: ["*.example.com"], cert: b.pem, key: b.key }]
`,
    "t.yaml",
  );
  assert.equal(noGuard.ok, false);
  const messages = noGuard.ok ? [] : noGuard.errors.map((e) => `${e.line}: ${e.message}`);
  assert.ok(messages.some((m) => /^8: .*need server.connection_guard/.test(m)), messages.join());
  assert.ok(messages.some((m) => /^9: .*need server.connection_guard/.test(m)), messages.join());
  const badName = parseConfigText(
    `listeners:
  - name: h
    address: "127.0.0.1:0"
    tls: { cert: a.pem, key: a.key, certificates: [{ server_names: ["a.*.com"], cert: b, key: c }] }
`,
    "t.yaml",
  );
  assert.equal(badName.ok, false);
});

Deno.test("TLS pairs are checked at start: a key that does not match and an expired certificate are refused, naming the config entry", async () => {
  const c = await sniCerts();
  const expired = await expiredSelfSigned(c.dir, "expired", "old.example.com");
  try {
    const start = (cert: string, key: string) => () =>
      startFerry(`listeners:
  - name: web
    address: "127.0.0.1:0"
    tls:
      cert: ${c.fallback.certFile}
      key: ${c.fallback.keyFile}
      certificates: [{ server_names: [a.example.com], cert: ${cert}, key: ${key} }]
routes:
  - { name: ok, match: { path: { prefix: / } }, direct_response: { status: 200 } }
`);
    assert.throws(
      start(c.api.certFile, c.wild.keyFile),
      /listeners\[0\]\.tls\.certificates\[0\]: the key does not match the certificate/,
    );
    assert.throws(
      start(expired.certFile, expired.keyFile),
      /listeners\[0\]\.tls\.certificates\[0\]: the certificate expired on 2020-01-02/,
    );
  } finally {
    await Deno.remove(c.dir, { recursive: true });
  }
});

Deno.test("SNI with downstream mTLS, and a client CA replaced by a reload: every SNI certificate asks for the client certificate; after the swap the old CA's clients are refused and the new CA's served, on the same socket", async () => {
  const { makeMeshCerts } = await import("./fixtures/certs.ts");
  const { parseConfigText } = await import("../src/config/load.ts");
  const { compileConfig } = await import("../src/server/compile_config.ts");
  const mesh = await makeMeshCerts();
  const next = await makeMeshCerts();
  const c = await sniCerts();
  const caFile = `${c.dir}/client-ca.pem`;
  await Deno.copyFile(mesh.caFile, caFile);
  const yaml = `listeners:
  - name: web
    address: "127.0.0.1:0"
    tls: ${tlsBlock(c, `, client_ca: ${caFile}`)}
routes:
  - { name: ok, match: { path: { prefix: / } }, direct_response: { status: 200, body: ok } }
`;
  const px = startFerry(yaml);
  const curl = async (client: { certFile: string; keyFile: string }) =>
    (await run("curl", [
      "-sS",
      "--max-time",
      "10",
      "--cacert",
      c.api.certFile,
      "--resolve",
      `api.example.com:${px.port}:127.0.0.1`,
      "--cert",
      client.certFile,
      "--key",
      client.keyFile,
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `https://api.example.com:${px.port}/`,
    ])).stdout;
  try {
    assert.equal(await curl(mesh.client), "200");
    assert.equal(await curl(next.client), "000", "another CA's client is refused");
    // The client CA file changes; a reload (what the file watcher triggers) swaps it in place.
    await Deno.copyFile(next.caFile, caFile);
    const loaded = parseConfigText(yaml, "test.yaml");
    assert.ok(loaded.ok);
    const before = px.ferry.addresses().listeners.web!.port;
    await px.ferry.apply(compileConfig(loaded.config, {
      version: 2,
      source: "test.yaml",
      readTextFile: (p) => Deno.readTextFileSync(p),
      previous: px.ferry.snapshot,
    }));
    assert.equal(px.ferry.addresses().listeners.web!.port, before, "same socket");
    assert.equal(await curl(next.client), "200");
    assert.equal(await curl(mesh.client), "000", "the old CA's client is refused now");
  } finally {
    await px.close();
    await Deno.remove(c.dir, { recursive: true });
    await mesh.remove();
    await next.remove();
  }
});

Deno.test("TLS handshake timeout by default: a silent client on an mTLS listener is closed after min(10s, header_timeout), not left open", async () => {
  const { makeMeshCerts } = await import("./fixtures/certs.ts");
  const mesh = await makeMeshCerts();
  const px = startFerry(`server: { header_timeout: 2s }
listeners:
  - name: web
    address: "127.0.0.1:0"
    tls: { cert: ${mesh.server.certFile}, key: ${mesh.server.keyFile}, client_ca: ${mesh.caFile} }
routes:
  - { name: ok, match: { path: { prefix: / } }, direct_response: { status: 200 } }
`);
  try {
    const ms = await silentClient(px.port, 15_000);
    assert.ok(ms >= 1_500 && ms < 10_000, `closed after the 2 s handshake timeout, got ${ms} ms`);
  } finally {
    await px.close();
    await mesh.remove();
  }
});
