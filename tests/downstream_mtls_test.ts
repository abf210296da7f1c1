/**
 * Downstream mTLS per listener (node:tls inside the connection guard), with curl as the client
 * and certificates made here by openssl under a SPIFFE-shaped CA: `require` refuses clients
 * without a certificate or with one from another CA before routing; `optional` serves them with
 * no identity; the verified identity reaches the request context, where authorization rules
 * match it (exact, prefix, trust domain), over HTTP/1.1 and HTTP/2 (ALPN).
 */
import assert from "node:assert/strict";
import { run, startEchoUpstream, startFerry } from "./helpers.ts";
import { CLIENT_SPIFFE_ID, makeMeshCerts, type MeshCerts } from "./fixtures/certs.ts";
import { echoClient, grpc, startEchoServer, unary } from "./grpc/peers.ts";

function config(certs: MeshCerts, clientAuth: "require" | "optional"): string {
  return `listeners:
  - name: mesh
    address: "127.0.0.1:0"
    tls:
      cert: ${certs.server.certFile}
      key: ${certs.server.keyFile}
      client_ca: ${certs.caFile}
      client_auth: ${clientAuth}
routes:
  - name: admin
    match: { path: { prefix: /admin } }
    direct_response: { status: 200, body: admin }
    authorization:
      rules: [{ name: admins, action: allow, identities: [{ exact: "spiffe://cluster.local/ns/ops/sa/admin" }] }]
  - name: default-ns
    match: { path: { prefix: /ns } }
    direct_response: { status: 200, body: ns }
    authorization:
      rules: [{ name: default-ns, action: allow, identities: [{ prefix: "spiffe://cluster.local/ns/default/" }] }]
  - name: mesh-only
    match: { path: { prefix: /mesh } }
    direct_response: { status: 200, body: mesh }
    authorization:
      rules: [{ name: in-mesh, action: allow, identities: [{ trust_domain: cluster.local }] }]
  - name: open
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: open }
`;
}

/** curl over TLS; `cert` is a client leaf or none. Returns the status ("000" when refused). */
async function curl(
  port: number,
  path: string,
  certs: MeshCerts,
  cert: MeshCerts["client"] | undefined,
  extra: string[] = [],
): Promise<{ status: string; body: string; code: number; stderr: string }> {
  const out = await run("curl", [
    "-sS",
    "--max-time",
    "10",
    "--cacert",
    certs.caFile,
    ...(cert ? ["--cert", cert.certFile, "--key", cert.keyFile] : []),
    ...extra,
    "-o",
    "-",
    "-w",
    "\n%{http_code} %{http_version}",
    `https://127.0.0.1:${port}${path}`,
  ]);
  const lines = out.stdout.split("\n");
  const status = lines.pop() ?? "";
  return { status, body: lines.join("\n"), code: out.code, stderr: out.stderr };
}

Deno.test("downstream mTLS require: no certificate or another CA's is refused in the handshake; a mesh certificate's SPIFFE ID drives authorization (HTTP/1.1 and HTTP/2)", async () => {
  const certs = await makeMeshCerts();
  const px = startFerry(config(certs, "require"));
  try {
    const none = await curl(px.port, "/", certs, undefined);
    assert.notEqual(none.code, 0, "a client without a certificate is refused");
    assert.match(none.status, /^000/);
    const stranger = await curl(px.port, "/", certs, certs.strangerClient);
    assert.notEqual(stranger.code, 0, "a certificate from another CA is refused");

    for (const version of ["--http1.1", "--http2"]) {
      const open = await curl(px.port, "/", certs, certs.client, [version]);
      assert.equal(open.status, version === "--http2" ? "200 2" : "200 1.1", open.stderr);
      assert.equal(open.body, "open");
      // The client is spiffe://cluster.local/ns/default/sa/ferry (CLIENT_SPIFFE_ID).
      assert.equal((await curl(px.port, "/ns", certs, certs.client, [version])).body, "ns");
      assert.equal((await curl(px.port, "/mesh", certs, certs.client, [version])).body, "mesh");
      const admin = await curl(px.port, "/admin", certs, certs.client, [version]);
      assert.match(admin.status, /^403/);
      assert.match(admin.body, /"flag":"AZ"/);
    }
  } finally {
    await px.close();
    await certs.remove();
  }
});

Deno.test("downstream mTLS optional: served without a certificate (no identity, identity rules do not match), refused with an invalid one", async () => {
  const certs = await makeMeshCerts();
  const px = startFerry(config(certs, "optional"));
  try {
    const anonymous = await curl(px.port, "/", certs, undefined);
    assert.match(anonymous.status, /^200 /, anonymous.stderr);
    assert.equal(anonymous.body, "open");
    assert.match((await curl(px.port, "/mesh", certs, undefined)).status, /^403/);
    assert.equal((await curl(px.port, "/mesh", certs, certs.client)).body, "mesh");
    const stranger = await curl(px.port, "/", certs, certs.strangerClient);
    assert.doesNotMatch(stranger.status, /^200/, "a certificate that does not verify is refused");
  } finally {
    await px.close();
    await certs.remove();
  }
});

Deno.test("downstream mTLS config: client_ca on an http listener needs the connection guard", async () => {
  const { parseConfigText } = await import("../src/config/load.ts");
  const noGuard = parseConfigText(
    `listeners:
  - { name: h, address: "127.0.0.1:0", tls: { cert: a.pem, key: a.key, client_ca: ca.pem } }
server: { connection_guard: false }
`,
    "d.yaml",
  );
  assert.match(noGuard.ok ? "" : noGuard.errors[0]!.message, /need server.connection_guard/);
});

Deno.test("downstream mTLS: the verified identity goes upstream in the listener's client_cert_header (XFCC format; a client-sent one is dropped) and into the access log", async () => {
  const certs = await makeMeshCerts();
  const up = startEchoUpstream();
  const logFile = `${certs.dir}/access.log`;
  const px = startFerry(
    `listeners:
  - name: mesh
    address: "127.0.0.1:0"
    tls:
      cert: ${certs.server.certFile}
      key: ${certs.server.keyFile}
      client_ca: ${certs.caFile}
      client_auth: optional
      client_cert_header: X-Client-Identity
access_log: { path: "${logFile}", fields: [status, identity] }
routes:
  - { name: all, cluster: up }
clusters:
  - { name: up, endpoints: ["${up.url}"] }
`,
  );
  const spoof = ["-H", "x-client-identity: URI=spiffe://cluster.local/ns/ops/sa/admin"];
  try {
    const withCert = await curl(px.port, "/", certs, certs.client, spoof);
    const seen = JSON.parse(withCert.body).headers["x-client-identity"];
    assert.match(seen, new RegExp(`^Hash=[0-9a-f]{64};URI=${CLIENT_SPIFFE_ID}$`));
    // The hash is the certificate's SHA-256 (DER), as Envoy sends it.
    const fingerprint = await run("openssl", [
      "x509",
      "-in",
      certs.client.certFile,
      "-noout",
      "-fingerprint",
      "-sha256",
    ]);
    const expected = fingerprint.stdout.split("=")[1]!.trim().replaceAll(":", "").toLowerCase();
    assert.equal(seen, `Hash=${expected};URI=${CLIENT_SPIFFE_ID}`);

    const anonymous = await curl(px.port, "/", certs, undefined, spoof);
    const headers = JSON.parse(anonymous.body).headers;
    assert.equal(
      headers["x-client-identity"],
      undefined,
      "a client cannot claim an identity",
    );
    // The access log names the identity (null for the anonymous client).
    await new Promise((r) => setTimeout(r, 50));
    await px.ferry.snapshot.accessLog!.writer.flush();
    const lines = (await Deno.readTextFile(logFile)).trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines, [
      { status: 200, identity: CLIENT_SPIFFE_ID },
      { status: 200, identity: null },
    ]);
  } finally {
    await px.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("downstream mTLS on a grpc listener (grpc-js): refused without a certificate; the identity drives authorization and goes upstream as XFCC", async () => {
  const certs = await makeMeshCerts();
  const server = await startEchoServer();
  const px = startFerry(
    `listeners:
  - name: grpc
    address: "127.0.0.1:0"
    protocol: grpc
    tls: { cert: ${certs.server.certFile}, key: ${certs.server.keyFile}, client_ca: ${certs.caFile} }
routes:
  - name: echo
    match: { path: { prefix: /test.Echo/ } }
    cluster: echo
    authorization:
      rules: [{ action: allow, identities: [{ trust_domain: cluster.local }] }]
clusters:
  - { name: echo, protocol: h2c, endpoints: ["http://127.0.0.1:${server.port}"] }
`,
  );
  const { Buffer } = await import("node:buffer");
  const mtls = grpc.credentials.createSsl(
    Buffer.from(certs.ca),
    Buffer.from(certs.client.key),
    Buffer.from(certs.client.cert),
  );
  // Node's TLS refuses an IP as SNI: dial 127.0.0.1 and check the certificate for localhost.
  const sni = { "grpc.ssl_target_name_override": "localhost" };
  const member = echoClient(px.port, mtls, sni);
  const anonymous = echoClient(px.port, grpc.credentials.createSsl(Buffer.from(certs.ca)), sni);
  try {
    const ok = await unary(member, new TextEncoder().encode("hi"), { deadlineMs: 10_000 });
    assert.equal(ok.error, undefined, String(ok.error));
    assert.equal(ok.value?.toString(), "hi");
    const xfcc = String(ok.headers?.get("x-client-cert-echo")[0] ?? "");
    assert.match(xfcc, new RegExp(`^Hash=[0-9a-f]{64};URI=${CLIENT_SPIFFE_ID}$`));
    const refused = await unary(anonymous, new TextEncoder().encode("hi"), { deadlineMs: 10_000 });
    assert.equal(refused.error?.code, grpc.status.UNAVAILABLE, String(refused.error));
    assert.equal(server.calls.n, 1, "the client without a certificate never reached the upstream");
  } finally {
    member.close();
    anonymous.close();
    await px.close();
    await server.stop();
    await certs.remove();
  }
});

Deno.test("downstream mTLS: an access-log template can name the identity ($identity; - without one)", async () => {
  const certs = await makeMeshCerts();
  const logFile = `${certs.dir}/access.log`;
  const px = startFerry(
    `listeners:
  - name: mesh
    address: "127.0.0.1:0"
    tls:
      cert: ${certs.server.certFile}
      key: ${certs.server.keyFile}
      client_ca: ${certs.caFile}
      client_auth: optional
access_log: { path: "${logFile}", format: "$status $identity" }
routes:
  - { name: all, direct_response: { status: 200, body: ok } }
`,
  );
  try {
    assert.match((await curl(px.port, "/", certs, certs.client)).status, /^200 /);
    assert.match((await curl(px.port, "/", certs, undefined)).status, /^200 /);
    await new Promise((r) => setTimeout(r, 50));
    await px.ferry.snapshot.accessLog!.writer.flush();
    const lines = (await Deno.readTextFile(logFile)).trim().split("\n");
    assert.deepEqual(lines, [`200 ${CLIENT_SPIFFE_ID}`, "200 -"]);
  } finally {
    await px.close();
    await certs.remove();
  }
});
