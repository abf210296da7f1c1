/**
 * HTTP requests over Ferry's own HTTP/2 client (`transport: h2`, the default for h2c and auto
 * clusters whose upstream identity is checked), against a node:http2 TLS server that demands a
 * client certificate (requestCert + rejectUnauthorized), with certificates made here by openssl
 * under a SPIFFE-shaped CA: served with the cluster's certificate, refused without it, refused
 * with UI when the identity does not match; large bodies both ways, byte for byte; cancellation
 * reaching the upstream as RST_STREAM; health checks over HTTP/2 marking a mismatching endpoint
 * unhealthy.
 */
import assert from "node:assert/strict";
import * as http2 from "node:http2";
import type { TLSSocket } from "node:tls";
import { requirePeer, startFerry } from "./helpers.ts";
import { clustersView } from "../src/server/cluster_view.ts";
import { H2Connection } from "../src/h2/connection.ts";
import { ErrorCode } from "../src/h2/frames.ts";
import {
  CLIENT_SPIFFE_ID,
  makeMeshCerts,
  type MeshCerts,
  SERVER_SPIFFE_ID,
} from "./fixtures/certs.ts";

const DB_SPIFFE_ID = "spiffe://cluster.local/ns/default/sa/db";

interface H2Upstream {
  readonly port: number;
  /** One entry per stream: its path, and the RST_STREAM code it ended with (0: none). */
  readonly streams: { path: string; httpVersion: string; closedWith?: number }[];
  /** Resolves when a stream on `path` closes (with its rstCode). */
  closed(path: string): Promise<number>;
  close(): Promise<void>;
}

/**
 * HTTP/2 only (no HTTP/1.1 fallback) over TLS, demanding a mesh client certificate. Routes:
 * `/who` answers with the caller's SAN and the HTTP version; `/upload` answers with the byte count
 * and SHA-256 of the request body; `/download?n=N` sends N bytes of a known pattern; `/gzip`
 * sends gzip bytes labelled so; `/stall` sends headers and then nothing; `/silent` sends
 * nothing; `/healthz` answers 200.
 */
async function startH2Upstream(
  certs: MeshCerts,
  leaf: { cert: string; key: string } = certs.server,
): Promise<H2Upstream> {
  const streams: H2Upstream["streams"] = [];
  const waiters = new Map<string, ((code: number) => void)[]>();
  const server = http2.createSecureServer({
    cert: leaf.cert,
    key: leaf.key,
    ca: certs.ca,
    requestCert: true,
    rejectUnauthorized: true,
    allowHTTP1: false,
  }, async (req, res) => {
    const url = new URL(req.url, "https://x");
    const entry: H2Upstream["streams"][number] = {
      path: url.pathname,
      httpVersion: req.httpVersion,
    };
    streams.push(entry);
    req.stream.on("close", () => {
      entry.closedWith = req.stream.rstCode;
      for (const w of waiters.get(url.pathname)?.splice(0) ?? []) w(req.stream.rstCode);
    });
    req.stream.on("error", () => {});
    switch (url.pathname) {
      case "/who": {
        const peer = (req.socket as TLSSocket).getPeerCertificate();
        res.setHeader("content-type", "text/plain");
        res.end(`client=${peer.subjectaltname ?? "none"} http=${req.httpVersion}`);
        return;
      }
      case "/upload": {
        const hash = new BodyDigest();
        try {
          for await (const chunk of req) hash.update(chunk as Uint8Array);
        } catch (err) {
          // The test sees the failure as a wrong answer (or none).
          console.error("upload", err, req.stream.rstCode);
          return;
        }
        res.end(JSON.stringify({ bytes: hash.bytes, sha256: await hash.digest() }));
        return;
      }
      case "/download": {
        const n = Number(url.searchParams.get("n"));
        res.setHeader("content-length", String(n));
        let sent = 0;
        const write = () => {
          while (sent < n) {
            const piece = pattern(sent, Math.min(64 * 1024, n - sent));
            sent += piece.length;
            if (!res.write(piece)) return void res.once("drain", write);
          }
          res.end();
        };
        write();
        return;
      }
      case "/gzip": {
        res.setHeader("content-encoding", "gzip");
        res.setHeader("content-type", "text/plain");
        res.end(GZIP_BYTES);
        return;
      }
      case "/stall":
        res.writeHead(200, { "content-type": "text/plain" });
        res.write("first");
        return;
      case "/silent":
        return;
      case "/cookies":
        res.setHeader("set-cookie", ["a=1; Path=/", "b=2; Path=/"]);
        res.end("two cookies");
        return;
      case "/nocontent":
        res.writeHead(204);
        res.end();
        return;
      default:
        res.end("ok");
    }
  });
  server.on("tlsClientError", () => {});
  server.on("sessionError", () => {});
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (s) => {
    sessions.add(s);
    s.on("close", () => sessions.delete(s));
  });
  return {
    port,
    streams,
    closed: (path) =>
      new Promise<number>((resolve) => {
        const done = streams.find((s) => s.path === path && s.closedWith !== undefined);
        if (done) return resolve(done.closedWith!);
        const list = waiters.get(path) ?? [];
        list.push(resolve);
        waiters.set(path, list);
      }),
    close: () =>
      new Promise<void>((r) => {
        for (const s of sessions) s.destroy();
        server.close(() => r());
      }),
  };
}

/** Incremental SHA-256 over the chunks (Web Crypto has no streaming digest): kept, then hashed. */
class BodyDigest {
  readonly #parts: Uint8Array[] = [];
  bytes = 0;
  update(chunk: Uint8Array): void {
    this.#parts.push(new Uint8Array(chunk));
    this.bytes += chunk.length;
  }
  async digest(): Promise<string> {
    const all = new Uint8Array(this.bytes);
    let off = 0;
    for (const p of this.#parts) {
      all.set(p, off);
      off += p.length;
    }
    return hex(await crypto.subtle.digest("SHA-256", all));
  }
}

function hex(buf: ArrayBuffer): string {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Bytes `offset .. offset+len` of a pattern that makes a shifted or dropped chunk visible. */
function pattern(offset: number, len: number): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = ((offset + i) * 31 + ((offset + i) >>> 12)) & 0xff;
  return out;
}

/** A gzip member of "hello, gzip\n" (made once with CompressionStream). */
const GZIP_BYTES = new Uint8Array(
  await new Response(
    new Blob(["hello, gzip\n"]).stream().pipeThrough(new CompressionStream("gzip")),
  ).arrayBuffer(),
);

function config(tls: string, opts: { protocol?: string; transport?: string; extra?: string } = {}) {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
    timeout: 20s
clusters:
  - name: up
    protocol: ${opts.protocol ?? "auto"}
${opts.transport ? `    transport: ${opts.transport}\n` : ""}    endpoints: {{ENDPOINTS}}
    tls:
${tls}${opts.extra ?? ""}`;
}

function meshTls(certs: MeshCerts, extra = "", clientCert = true): string {
  return `      ca_file: ${certs.caFile}\n` +
    (clientCert
      ? `      cert_file: ${certs.client.certFile}\n      key_file: ${certs.client.keyFile}\n`
      : "") +
    extra;
}

async function get(url: string, headers: Record<string, string> = {}) {
  const res = await fetch(url, { headers });
  return { status: res.status, flag: res.headers.get("x-ferry-flag"), body: await res.text() };
}

Deno.test("h2 transport (auto, mTLS): served over HTTP/2 with the cluster's certificate and the expected identity; refused without the certificate (UF/UR) and on a mismatch (UI)", async () => {
  const certs = await makeMeshCerts();
  const up = await startH2Upstream(certs);
  const vars = { ENDPOINTS: `["https://127.0.0.1:${up.port}"]` };
  const right = startFerry(
    config(meshTls(certs, `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`)),
    vars,
  );
  const noCert = startFerry(
    config(meshTls(certs, `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`, false)),
    vars,
  );
  const wrong = startFerry(
    config(meshTls(certs, `      expected_identities: ["${DB_SPIFFE_ID}"]\n`)),
    vars,
  );
  const named = startFerry(config(meshTls(certs, `      server_name: localhost\n`)), vars);
  try {
    const ok = await get(`${right.url}/who`, { "accept-encoding": "gzip" });
    assert.equal(ok.status, 200, ok.body);
    assert.equal(ok.body, `client=URI:${CLIENT_SPIFFE_ID} http=2.0`);
    assert.equal((await get(`${named.url}/who`)).status, 200);

    const refused = await get(`${noCert.url}/who`);
    assert.equal(refused.status, 502, refused.body);
    // TLS 1.3: the server judges the client's certificate after the client's handshake is done,
    // so the refusal can arrive as a close.
    assert.ok(refused.flag === "UF" || refused.flag === "UR", `${refused.flag}`);

    const bad = await get(`${wrong.url}/who`);
    assert.deepEqual([bad.status, bad.flag], [502, "UI"]);
    const reason = JSON.parse(bad.body).reason as string;
    assert.match(reason, /presented spiffe:\/\/cluster\.local\/ns\/default\/sa\/api/);
    assert.match(reason, /expected spiffe:\/\/cluster\.local\/ns\/default\/sa\/db/);
    // Only the good connections carried requests.
    assert.equal(up.streams.filter((s) => s.path === "/who").length, 2);

    // /clusters names the transport and shows the HTTP/2 pool's connections.
    const view = clustersView(right.ferry.snapshot).clusters[0]!;
    assert.equal(view.transport, "h2");
    assert.equal(view.endpoints[0]!.connections?.open, 1);
    assert.equal(view.endpoints[0]!.connections?.opened, 1);
    const scraped = await right.ferry.snapshot.metrics.registry.metrics();
    const origin = `https://127.0.0.1:${up.port}`;
    assert.ok(
      scraped.includes(
        `ferry_upstream_connections_opened_total{cluster="up",endpoint="${origin}"} 1`,
      ),
      scraped.split("\n").filter((l) => l.includes("upstream_connections")).join("\n"),
    );
  } finally {
    for (const px of [right, noCert, wrong, named]) await px.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("h2 transport: large request and response bodies stream byte for byte; Content-Encoding untouched; HEAD and 204 have no body", async () => {
  const certs = await makeMeshCerts();
  const up = await startH2Upstream(certs);
  const px = startFerry(
    config(meshTls(certs, `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`)),
    { ENDPOINTS: `["https://127.0.0.1:${up.port}"]` },
  );
  try {
    // 9 MiB up (under the 10 MiB body limit), sent in uneven chunks by a stream: more than the
    // upstream's windows, so it flows only as they are given back.
    const total = 9 << 20;
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        if (sent >= total) return c.close();
        const piece = pattern(sent, Math.min(100_003, total - sent));
        sent += piece.length;
        c.enqueue(piece);
      },
    });
    const res = await fetch(`${px.url}/upload`, { method: "POST", body });
    assert.equal(res.status, 200);
    const got = await res.json();
    const whole = new Uint8Array(total);
    whole.set(pattern(0, total));
    assert.deepEqual(got, {
      bytes: total,
      sha256: hex(await crypto.subtle.digest("SHA-256", whole)),
    });

    // 32 MiB down, read through and compared piece by piece.
    const n = 32 << 20;
    const down = await fetch(`${px.url}/download?n=${n}`);
    assert.equal(down.status, 200);
    assert.equal(down.headers.get("content-length"), String(n));
    let seen = 0;
    for await (const chunk of down.body!) {
      assert.deepEqual(chunk, pattern(seen, chunk.length), `at byte ${seen}`);
      seen += chunk.length;
    }
    assert.equal(seen, n);

    // gzip bytes arrive as sent, labelled as sent (no decoding on the way).
    const gz = await fetch(`${px.url}/gzip`, { headers: { "accept-encoding": "gzip" } });
    assert.equal(gz.headers.get("content-encoding"), "gzip");
    // (fetch on the test side decodes it; the raw bytes are checked with curl below.)
    assert.equal(await gz.text(), "hello, gzip\n");
    const curl = await requirePeer("curl");
    const raw = await new Deno.Command(curl, {
      args: ["-s", "-H", "accept-encoding: gzip", `${px.url}/gzip`],
      stdout: "piped",
    }).output();
    assert.deepEqual(raw.stdout, GZIP_BYTES);

    const head = await fetch(`${px.url}/download?n=1000`, { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), "");
    const cookies = await fetch(`${px.url}/cookies`);
    assert.deepEqual(cookies.headers.getSetCookie(), ["a=1; Path=/", "b=2; Path=/"]);
    await cookies.body?.cancel();
    const none = await fetch(`${px.url}/nocontent`);
    assert.deepEqual([none.status, await none.text()], [204, ""]);
  } finally {
    await px.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("h2 transport: a client that goes away cancels the upstream stream (RST_STREAM CANCEL), before and after the response headers", async () => {
  const certs = await makeMeshCerts();
  const up = await startH2Upstream(certs);
  const px = startFerry(
    config(meshTls(certs, `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`)),
    { ENDPOINTS: `["https://127.0.0.1:${up.port}"]` },
  );
  try {
    // After the headers: the body is being relayed when the client leaves.
    const ctl = new AbortController();
    const res = await fetch(`${px.url}/stall`, { signal: ctl.signal });
    const reader = res.body!.getReader();
    assert.equal(new TextDecoder().decode((await reader.read()).value), "first");
    const stallClosed = up.closed("/stall");
    ctl.abort();
    const code = await withinMs(stallClosed, 10_000, "the upstream stream of /stall closed");
    assert.equal(code, http2.constants.NGHTTP2_CANCEL);

    // Before the headers: the upstream has not answered at all.
    const ctl2 = new AbortController();
    const pending = fetch(`${px.url}/silent`, { signal: ctl2.signal }).catch(() => undefined);
    for (let i = 0; i < 100 && !up.streams.some((s) => s.path === "/silent"); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const silentClosed = up.closed("/silent");
    ctl2.abort();
    await pending;
    const code2 = await withinMs(silentClosed, 10_000, "the upstream stream of /silent closed");
    assert.equal(code2, http2.constants.NGHTTP2_CANCEL);
  } finally {
    await px.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("h2 transport: HTTP health checks go over HTTP/2 with the identity checked; the endpoint presenting another identity is unhealthy with the reason", async () => {
  const certs = await makeMeshCerts();
  const db = await makeLeaf(certs, "db", `URI:${DB_SPIFFE_ID},IP:127.0.0.1`);
  const api = await startH2Upstream(certs);
  const other = await startH2Upstream(certs, db);
  const check =
    `    health_check: { path: /healthz, interval: 200ms, timeout: 2s, unhealthy_threshold: 1, ` +
    `healthy_threshold: 1 }\n`;
  const px = startFerry(
    config(meshTls(certs, `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`), {
      extra: check,
    }),
    {
      ENDPOINTS: `["https://127.0.0.1:${api.port}", "https://127.0.0.1:${other.port}"]`,
    },
  );
  try {
    const state = () => px.ferry.snapshot.clusters.get("up")!.health.snapshot();
    for (let i = 0; i < 80 && (state().some((s) => !s.lastProbe) || state()[1]!.healthy); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const [good, bad] = state();
    assert.equal(good!.healthy, true, good!.lastProbe);
    assert.match(good!.lastProbe, /status 200/);
    assert.equal(bad!.healthy, false);
    assert.match(bad!.lastProbe, /upstream identity mismatch: .*sa\/db.*expected .*sa\/api/);
    // The probes spoke HTTP/2 to the good endpoint, and nothing reached the other one.
    const probes = api.streams.filter((s) => s.path === "/healthz");
    assert.ok(probes.length > 0 && probes.every((s) => s.httpVersion === "2.0"));
    assert.equal(other.streams.length, 0);
    // Requests go only to the healthy endpoint.
    for (let i = 0; i < 4; i++) assert.equal((await get(`${px.url}/who`)).status, 200);
  } finally {
    await px.close();
    await api.close();
    await other.close();
    await certs.remove();
  }
});

Deno.test("h2 transport: h2c clusters carry HTTP over Ferry's HTTP/2 client with transport: h2; transport: fetch with an identity to check is refused at its line", async () => {
  const upstream = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => new Response(req.body ? req.body : `path=${new URL(req.url).pathname}`),
  );
  const port = upstream.addr.port;
  const px = startFerry(
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: h2c
    transport: h2
    endpoints: ["http://127.0.0.1:${port}"]
`,
  );
  try {
    const res = await fetch(`${px.url}/a/b?c=d`);
    assert.deepEqual([res.status, await res.text()], [200, "path=/a/b"]);
    const echo = await fetch(`${px.url}/echo`, { method: "POST", body: "x".repeat(300_000) });
    assert.equal((await echo.text()).length, 300_000);
    const cluster = px.ferry.snapshot.clusters.get("up")!;
    assert.equal(cluster.h2.endpointStats(`http://127.0.0.1:${port}`).open, 1);
  } finally {
    await px.close();
    await upstream.shutdown();
  }
  const { parseConfigText } = await import("../src/config/load.ts");
  const refused = parseConfigText(
    config(`      expected_identities: ["spiffe://x/y"]\n`, { transport: "fetch" })
      .replace("{{ENDPOINTS}}", '["https://127.0.0.1:1"]'),
    "h2.yaml",
  );
  assert.equal(refused.ok, false);
  assert.match(refused.ok ? "" : refused.errors[0]!.message, /transport: fetch/);
  const h1OnH2 = parseConfigText(
    config("      ca_file: x.pem\n", { protocol: "http1", transport: "h2" })
      .replace("{{ENDPOINTS}}", '["https://127.0.0.1:1"]'),
    "h2.yaml",
  );
  assert.equal(h1OnH2.ok, false);
});

Deno.test("h2 transport: the per-try timeout resets the slow attempt's stream and the retry is answered", async () => {
  let calls = 0;
  const aborted: boolean[] = [];
  // h2c with prior knowledge: the first request hangs until cancelled, later ones answer.
  const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const n = calls++;
    if (n > 0) return new Response(`attempt ${n}`);
    return new Promise<Response>((resolve) => {
      req.signal.addEventListener("abort", () => {
        aborted.push(true);
        resolve(new Response("late"));
      });
    });
  });
  const px = startFerry(
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
    per_try_timeout: 300ms
    retry: { retries: 1, retry_on: [gateway-error] }
clusters:
  - name: up
    protocol: h2c
    transport: h2
    endpoints: ["http://127.0.0.1:${upstream.addr.port}"]
`,
  );
  try {
    const res = await fetch(`${px.url}/x`);
    assert.deepEqual([res.status, await res.text()], [200, "attempt 1"]);
    assert.equal(calls, 2);
    for (let i = 0; i < 50 && aborted.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(aborted, [true], "the first attempt's stream was reset");
  } finally {
    await px.close();
    await upstream.shutdown();
  }
});

Deno.test("h2 transport: an h2c cluster of nginx is served (the default transport puts host in :authority; fetch sent both and nginx answered 400)", async () => {
  const nginx = await startNginxH2c();
  const px = startFerry(
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: h2c
    endpoints: ["http://127.0.0.1:${nginx.port}"]
`,
  );
  try {
    const curl = await requirePeer("curl");
    for (const path of ["/a", "/b?x=1"]) {
      const out = await new Deno.Command(curl, {
        args: ["-s", "-w", "%{http_code}", "-H", "host: svc.example", `${px.url}${path}`],
        stdout: "piped",
      }).output();
      assert.equal(
        new TextDecoder().decode(out.stdout),
        "host=svc.example proto=HTTP/2.0\n200",
      );
    }
  } finally {
    await px.close();
    await nginx.stop();
  }
});

/**
 * nginx serving h2c (`listen ... http2`), answering with the Host it saw and the protocol. nginx
 * cannot bind port 0 and report it, so a port is taken from the kernel and handed over.
 */
async function startNginxH2c(): Promise<{ port: number; stop(): Promise<void> }> {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const dir = await Deno.makeTempDir({ prefix: "ferry-nginx-" });
  await Deno.writeTextFile(
    `${dir}/nginx.conf`,
    `daemon off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 64; }
http {
  access_log off;
  server {
    listen 127.0.0.1:${port} http2;
    location / { default_type text/plain; return 200 "host=$host proto=$server_protocol\\n"; }
  }
}
`,
  );
  const child = new Deno.Command("nginx", {
    args: ["-c", `${dir}/nginx.conf`, "-p", dir],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  for (let i = 0; i < 100; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    port,
    async stop() {
      child.kill("SIGTERM");
      await child.output().catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

Deno.test("h2 transport (auto): an upstream whose TLS picks HTTP/1.1 in ALPN is served over the HTTP/1.1 codec, identity still checked (UI on a mismatch), probes too", async () => {
  const certs = await makeMeshCerts();
  const https = await import("node:https");
  const versions: string[] = [];
  const server = https.createServer({
    cert: certs.server.cert,
    key: certs.server.key,
    ca: certs.ca,
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ["http/1.1"],
  }, (req, res) => {
    versions.push(req.httpVersion);
    const peer = (req.socket as TLSSocket).getPeerCertificate();
    res.end(`client=${peer.subjectaltname ?? "none"} http=${req.httpVersion}`);
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const vars = { ENDPOINTS: `["https://127.0.0.1:${port}"]` };
  const check =
    `    health_check: { path: /, interval: 200ms, timeout: 2s, unhealthy_threshold: 1, ` +
    `healthy_threshold: 1 }\n`;
  const right = startFerry(
    config(meshTls(certs, `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`), {
      extra: check,
    }),
    vars,
  );
  const wrong = startFerry(
    config(meshTls(certs, `      expected_identities: ["${DB_SPIFFE_ID}"]\n`), { extra: check }),
    vars,
  );
  try {
    for (let i = 0; i < 3; i++) {
      const ok = await get(`${right.url}/who`);
      assert.deepEqual([ok.status, ok.body], [200, `client=URI:${CLIENT_SPIFFE_ID} http=1.1`]);
    }
    const bad = await get(`${wrong.url}/who`);
    // 502 UI, or 503 once the probe has marked the endpoint unhealthy.
    assert.ok(
      (bad.status === 502 && bad.flag === "UI") || bad.status === 503,
      `${bad.status} ${bad.flag}`,
    );
    const state = (px: typeof right) => px.ferry.snapshot.clusters.get("up")!.health.snapshot()[0]!;
    for (let i = 0; i < 60 && (!state(right).lastProbe || state(wrong).healthy); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(state(right).healthy, true, state(right).lastProbe);
    assert.match(state(right).lastProbe, /status 200/);
    assert.equal(state(wrong).healthy, false);
    assert.match(state(wrong).lastProbe, /upstream identity mismatch/);
    assert.ok(versions.every((v) => v === "1.1"));
  } finally {
    await right.close();
    await wrong.close();
    await new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
    await certs.remove();
  }
});

Deno.test("h2 transport (auto): plain http:// endpoints speak HTTP/1.1 over the codec, the client's Accept-Encoding passed as sent", async () => {
  const upstream = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) => new Response(`accept-encoding=${req.headers.get("accept-encoding")}`),
  );
  const px = startFerry(
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: auto
    transport: h2
    endpoints: ["http://127.0.0.1:${upstream.addr.port}"]
`,
  );
  try {
    const res = await fetch(`${px.url}/x`, { headers: { "accept-encoding": "br" } });
    // fetch would have asked for identity (it decodes bodies otherwise).
    assert.deepEqual([res.status, await res.text()], [200, "accept-encoding=br"]);
    // /clusters shows the pool that carried it: the codec's connection, not the h2 pool's none.
    const endpoint = clustersView(px.ferry.snapshot).clusters[0]!.endpoints[0]!;
    assert.equal(endpoint.protocol, "http/1.1");
    assert.equal((endpoint.connections as { opened: number }).opened, 1);
  } finally {
    await px.close();
    await upstream.shutdown();
  }
});

Deno.test("h2 transport: an answer whose DATA does not add up to its content-length never reaches the client as complete", async () => {
  // An h2c upstream on Ferry's own HTTP/2 server side, sending exactly the frames wanted:
  // content-length 10, then "12345", a pause, and 9 bytes more (/over) or an early end (/short).
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<H2Connection>();
  void (async () => {
    for await (const conn of listener) {
      const h2 = new H2Connection(conn, {
        role: "server",
        onStream: (st) =>
          void (async () => {
            const path = (await st.headers).find(([n]) => n === ":path")?.[1];
            st.sendHeaders([[":status", "200"], ["content-length", "10"]]);
            await st.write(new TextEncoder().encode("12345"));
            await new Promise((r) => setTimeout(r, 200));
            if (path === "/over") {
              await st.write(new TextEncoder().encode("678901234"));
              await st.end();
            } else await st.end();
          })().catch(() => {}),
        onClose: () => open.delete(h2),
      });
      open.add(h2);
    }
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  const px = startFerry(
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: h2c
    endpoints: ["http://127.0.0.1:${port}"]
`,
  );
  try {
    for (const path of ["/over", "/short"]) {
      const res = await fetch(`${px.url}${path}`);
      assert.equal(res.status, 200, path);
      const body = await res.text().then((t) => `complete: ${t}`, () => "cut");
      assert.equal(body, "cut", path);
    }
  } finally {
    await px.close();
    listener.close();
    for (const c of open) c.close();
  }
});

Deno.test("h2 transport: a stream the upstream refuses unprocessed (REFUSED_STREAM) is sent once more when it has no body; with a body it is the route's retry policy's", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<H2Connection>();
  let streams = 0;
  void (async () => {
    for await (const conn of listener) {
      const h2 = new H2Connection(conn, {
        role: "server",
        // Every other stream is refused, as a server over its limit or closing would.
        onStream: (st) => {
          if (streams++ % 2 === 0) return st.reset(ErrorCode.REFUSED_STREAM);
          st.sendHeaders([[":status", "200"], ["content-length", "2"]]);
          void st.write(new TextEncoder().encode("ok")).then(() => st.end()).catch(() => {});
        },
        onClose: () => open.delete(h2),
      });
      open.add(h2);
    }
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  const px = startFerry(
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: h2c
    endpoints: ["http://127.0.0.1:${port}"]
`,
  );
  try {
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${px.url}/get`);
      assert.deepEqual([res.status, await res.text()], [200, "ok"]);
    }
    assert.equal(streams, 6);
    const post = await fetch(`${px.url}/post`, { method: "POST", body: "data" });
    await post.body?.cancel();
    assert.deepEqual([post.status, post.headers.get("x-ferry-flag")], [502, "UR"]);
    assert.equal(px.ferry.snapshot.clusters.get("up")!.h2Transport!.refusedRetries, 3);
  } finally {
    await px.close();
    listener.close();
    for (const c of open) c.close();
  }
});

/** A leaf signed by the mesh CA with `san`, made with openssl in the certs' directory. */
async function makeLeaf(certs: MeshCerts, name: string, san: string) {
  const openssl = await requirePeer("openssl");
  const dir = certs.dir;
  await Deno.writeTextFile(
    `${dir}/${name}.ext`,
    `subjectAltName=${san}\nbasicConstraints=CA:FALSE\n` +
      "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
  );
  const run = async (args: string[]) => {
    const out = await new Deno.Command(openssl, { args, stdout: "null", stderr: "piped" })
      .output();
    if (out.code !== 0) throw new Error(new TextDecoder().decode(out.stderr));
  };
  await run([
    "req",
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
    "-keyout",
    `${dir}/${name}.key`,
    "-out",
    `${dir}/${name}.csr`,
    "-subj",
    `/CN=${name}`,
  ]);
  await run([
    "x509",
    "-req",
    "-in",
    `${dir}/${name}.csr`,
    "-CA",
    `${dir}/mesh-ca.pem`,
    "-CAkey",
    `${dir}/mesh-ca.key`,
    "-CAcreateserial",
    "-out",
    `${dir}/${name}.pem`,
    "-days",
    "2",
    "-extfile",
    `${dir}/${name}.ext`,
  ]);
  return {
    cert: await Deno.readTextFile(`${dir}/${name}.pem`),
    key: await Deno.readTextFile(`${dir}/${name}.key`),
  };
}

async function withinMs<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) =>
        timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("h2 transport (auto): a WebSocket upgrade goes through the HTTP/1.1 codec with the cluster's certificate and the identity checked (UI on a mismatch), not Deno's unchecked WebSocket client", async () => {
  const certs = await makeMeshCerts();
  const https = await import("node:https");
  const { createHash } = await import("node:crypto");
  const server = https.createServer({
    cert: certs.server.cert,
    key: certs.server.key,
    ca: certs.ca,
    requestCert: true,
    rejectUnauthorized: true,
    ALPNProtocols: ["http/1.1"],
  }, (_req, res) => res.end("not an upgrade"));
  // A minimal WebSocket server: the handshake, then one text frame naming the client's
  // certificate, then a close frame.
  server.on("upgrade", (req, socket) => {
    const accept = createHash("sha1")
      .update(`${req.headers["sec-websocket-key"]}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
      .digest("base64");
    const peer = (socket as unknown as TLSSocket).getPeerCertificate();
    const text = new TextEncoder().encode(`client=${peer.subjectaltname ?? "none"}`);
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
        `sec-websocket-accept: ${accept}\r\n\r\n`,
    );
    socket.write(new Uint8Array([0x81, text.length, ...text]));
    socket.write(new Uint8Array([0x88, 2, 0x03, 0xe8]));
    socket.on("error", () => {});
    socket.on("data", () => {});
    setTimeout(() => socket.destroy(), 2000);
  });
  server.on("tlsClientError", () => {});
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  const vars = { ENDPOINTS: `["https://127.0.0.1:${port}"]` };
  const right = startFerry(
    config(meshTls(certs, `      expected_identities: ["${SERVER_SPIFFE_ID}"]\n`)),
    vars,
  );
  const wrong = startFerry(
    config(meshTls(certs, `      expected_identities: ["${DB_SPIFFE_ID}"]\n`)),
    vars,
  );
  try {
    const ws = new WebSocket(right.url.replace("http:", "ws:") + "/ws");
    const message = await withinMs(
      new Promise<string>((resolve, reject) => {
        ws.onmessage = (e) => resolve(String(e.data));
        ws.onerror = (e) =>
          reject(new Error(`the WebSocket through Ferry failed ${(e as ErrorEvent).message}`));
      }),
      10_000,
      "the upstream's message",
    );
    assert.equal(message, `client=URI:${CLIENT_SPIFFE_ID}`);
    ws.close();

    // The mismatching cluster refuses the upgrade with the identity flag.
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: Number(new URL(wrong.url).port),
    });
    await conn.write(new TextEncoder().encode(
      "GET /ws HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n" +
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    ));
    const buf = new Uint8Array(4096);
    let head = "";
    while (!head.includes("\r\n\r\n")) {
      const n = await withinMs(conn.read(buf), 10_000, "the refusal");
      if (n === null) break;
      head += new TextDecoder().decode(buf.subarray(0, n));
    }
    conn.close();
    assert.match(head, /^HTTP\/1\.1 502/);
    assert.match(head, /x-ferry-flag: UI/i);
  } finally {
    await right.close();
    await wrong.close();
    await new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
    await certs.remove();
  }
});
