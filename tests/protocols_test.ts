/**
 * Wire protocols end to end, with clients we did not write (curl, h2load): HTTP/1.1, h2c,
 * TLS with ALPN on the listener, and h2c / TLS towards the upstream.
 */
import assert from "node:assert/strict";
import {
  catchAllConfig,
  type Peer,
  requirePeer,
  run,
  startEchoUpstream,
  startFerry,
  startUpstream,
} from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";

const SIMPLE = catchAllConfig();

/** curl bounded in time; `-w` output comes after the body on its own line. */
async function curl(args: string[]) {
  const out = await run("curl", ["-sS", "--max-time", "15", ...args]);
  return out;
}

/** Runs a command with a hard deadline (the process is killed when it passes). */
async function runBounded(peer: Peer, args: string[], ms: number) {
  const child = new Deno.Command(await requirePeer(peer), {
    args,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(ms),
  }).spawn();
  const out = await child.output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/**
 * A TCP relay in front of an upstream that records the first bytes of every connection, so a
 * test can tell HTTP/1.1 (`GET /...`) from prior-knowledge HTTP/2 (`PRI * HTTP/2.0`).
 */
function startSniffer(target: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const prefaces: string[] = [];
  const conns = new Set<Deno.Conn>();
  const pipes: Promise<unknown>[] = [];
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      pipes.push(
        (async () => {
          const up = await Deno.connect({ hostname: "127.0.0.1", port: target });
          conns.add(up);
          const buf = new Uint8Array(64 * 1024);
          const n = await conn.read(buf);
          if (n === null) return;
          prefaces.push(new TextDecoder().decode(buf.subarray(0, Math.min(n, 24))));
          await up.write(buf.subarray(0, n));
          await Promise.allSettled([
            conn.readable.pipeTo(up.writable),
            up.readable.pipeTo(conn.writable),
          ]);
        })().catch(() => {}),
      );
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    prefaces,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* already closed */ }
      }
      await Promise.allSettled(pipes);
    },
  };
}

Deno.test("curl over HTTP/1.1 gets the upstream body and an x-request-id", async () => {
  const up = startUpstream(() => new Response("hello from upstream\n"));
  const px = startFerry(SIMPLE, { UP: up.url });
  try {
    const out = await curl(["--http1.1", "-D", "-", "-w", "%{http_version}", `${px.url}/a`]);
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /^HTTP\/1\.1 200/);
    assert.match(out.stdout, /\r\nx-request-id: [\x21-\x7e]+\r\n/i);
    assert.ok(out.stdout.endsWith("\r\n\r\nhello from upstream\n1.1"), out.stdout);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("curl --http2-prior-knowledge (h2c) on the plain listener gets HTTP/2", async () => {
  const up = startEchoUpstream();
  const px = startFerry(SIMPLE, { UP: up.url });
  try {
    const out = await curl([
      "--http2-prior-knowledge",
      "-D",
      "/dev/stderr",
      "-w",
      "\n%{http_version}",
      `${px.url}/h2c?x=1`,
    ]);
    assert.equal(out.code, 0, out.stderr);
    const [body, version] = out.stdout.split("\n");
    assert.equal(version, "2");
    assert.match(out.stderr, /^HTTP\/2 200/);
    assert.match(out.stderr, /\r\nx-request-id: /);
    const echo = JSON.parse(body!);
    assert.equal(echo.path, "/h2c");
    assert.equal(echo.search, "?x=1");
    assert.equal(echo.headers["x-forwarded-proto"], "http");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("TLS listener: ALPN gives curl h2 or http/1.1; upstream sees proto https", async () => {
  const certs = await makeTestCerts();
  const up = startEchoUpstream();
  const px = startFerry(
    `
listeners:
  - name: secure
    address: "127.0.0.1:0"
    tls: { cert: "{{CERT}}", key: "{{KEY}}" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    endpoints: ["{{UP}}"]
`,
    { UP: up.url, CERT: certs.certFile, KEY: certs.keyFile },
  );
  try {
    const base = `https://localhost:${px.port}`;
    for (const [flag, want] of [["--http2", "2"], ["--http1.1", "1.1"]] as const) {
      const out = await curl([
        "--cacert",
        certs.caFile,
        flag,
        "-w",
        "\n%{http_version}",
        `${base}/t`,
      ]);
      assert.equal(out.code, 0, out.stderr);
      const [body, version] = out.stdout.split("\n");
      assert.equal(version, want, `${flag} negotiated HTTP/${version}`);
      const echo = JSON.parse(body!);
      assert.equal(echo.headers["x-forwarded-proto"], "https");
      assert.equal(echo.path, "/t");
    }
    // The certificate names 127.0.0.1 too, and an untrusted CA is refused by curl.
    const byIp = await curl([
      "--cacert",
      certs.caFile,
      "-o",
      "/dev/null",
      "-w",
      "%{http_code}",
      `https://127.0.0.1:${px.port}/`,
    ]);
    assert.equal(byIp.stdout, "200", byIp.stderr);
    const untrusted = await curl(["-o", "/dev/null", `${base}/`]);
    assert.notEqual(untrusted.code, 0, "curl accepted a certificate it cannot verify");
  } finally {
    await px.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("an h2c cluster reaches a Deno.serve upstream with prior-knowledge HTTP/2", async () => {
  const seen: string[] = [];
  const up = startUpstream((req) => {
    seen.push(new URL(req.url).pathname);
    return new Response(`ok ${req.method}`);
  });
  const sniff = startSniffer(up.port);
  const yaml = (protocol: string) => `
listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    protocol: ${protocol}
    endpoints: ["http://127.0.0.1:{{PORT}}"]
`;
  const h2 = startFerry(yaml("h2c"), { PORT: String(sniff.port) });
  try {
    // Both transports' paths: fetch (no Accept-Encoding) and with a coding accepted.
    const a = await fetch(`${h2.url}/one`, { headers: { "accept-encoding": "identity" } });
    assert.equal(a.status, 200);
    assert.equal(await a.text(), "ok GET");
    const b = await fetch(`${h2.url}/two`, { method: "POST", body: "x" });
    assert.equal(b.status, 200);
    assert.equal(await b.text(), "ok POST");
    assert.deepEqual(seen, ["/one", "/two"]);
    assert.ok(sniff.prefaces.length >= 1);
    for (const p of sniff.prefaces) assert.ok(p.startsWith("PRI * HTTP/2.0"), `preface ${p}`);
  } finally {
    await h2.close();
  }
  // Control: the same sniffer sees HTTP/1.1 from an http1 cluster, so the check above can fail.
  sniff.prefaces.length = 0;
  const h1 = startFerry(yaml("http1"), { PORT: String(sniff.port) });
  try {
    const c = await fetch(`${h1.url}/three`);
    assert.equal(await c.text(), "ok GET");
    assert.ok(sniff.prefaces[0]?.startsWith("GET /three HTTP/1.1"), `${sniff.prefaces[0]}`);
  } finally {
    await h1.close();
    await sniff.close();
    await up.close();
  }
});

Deno.test("a TLS cluster works with its ca_file; without it the answer is 502 UF", async () => {
  const certs = await makeTestCerts();
  const server = Deno.serve(
    {
      hostname: "127.0.0.1",
      port: 0,
      cert: certs.cert,
      key: certs.key,
      onListen: () => {},
    },
    (req) => Response.json({ secure: new URL(req.url).protocol, path: new URL(req.url).pathname }),
  );
  const yaml = (tls: string) => `
listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    endpoints: ["https://localhost:{{PORT}}"]
${tls}
`;
  const port = String(server.addr.port);
  const trusted = startFerry(yaml(`    tls: { ca_file: "{{CA}}" }`), {
    PORT: port,
    CA: certs.caFile,
  });
  const untrusted = startFerry(yaml(""), { PORT: port });
  try {
    // Through the h1 transport, TLS by Deno.startTls with the cluster's CA, whatever the coding.
    for (const ae of ["identity", "gzip"]) {
      const ok = await fetch(`${trusted.url}/tls`, { headers: { "accept-encoding": ae } });
      assert.equal(ok.status, 200, `accept-encoding ${ae}: ${await ok.clone().text()}`);
      assert.deepEqual(await ok.json(), { secure: "https:", path: "/tls" });

      const bad = await fetch(`${untrusted.url}/tls`, { headers: { "accept-encoding": ae } });
      const body = await bad.text();
      assert.equal(bad.status, 502, `accept-encoding ${ae}: ${body}`);
      assert.equal(bad.headers.get("x-ferry-flag"), "UF", body);
    }
  } finally {
    await trusted.close();
    await untrusted.close();
    await server.shutdown();
    await certs.remove();
  }
});

Deno.test("h2load: 2000 h2c requests over 10 connections x 10 streams all succeed", async () => {
  const up = startUpstream(() => new Response("pong"));
  const px = startFerry(SIMPLE, { UP: up.url });
  try {
    const out = await runBounded(
      "h2load",
      ["-n", "2000", "-c", "10", "-m", "10", `${px.url}/`],
      60_000,
    );
    assert.equal(out.signal, null, "h2load did not finish in 60 s");
    assert.equal(out.code, 0, out.stdout + out.stderr);
    assert.match(out.stdout, /Application protocol: h2c/);
    const m =
      /requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/
        .exec(out.stdout);
    assert.ok(m, out.stdout);
    assert.deepEqual(m.slice(1).map(Number), [2000, 2000, 2000, 0, 0]);
    assert.match(out.stdout, /status codes: 2000 2xx/);
  } finally {
    await px.close();
    await up.close();
  }
});

/** One HTTP/1.1 request (TLS when `tls` is given) with exactly these head lines; the reply. */
async function rawHead(port: number, head: string, tls?: { caCerts: string[] }) {
  const conn = tls
    ? await Deno.connectTls({ hostname: "127.0.0.1", port, ...tls, alpnProtocols: ["http/1.1"] })
    : await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(new TextEncoder().encode(head + "Connection: close\r\n\r\n"));
    let text = "";
    const buf = new Uint8Array(16 * 1024);
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      text += new TextDecoder().decode(buf.subarray(0, n));
    }
    return text;
  } finally {
    try {
      conn.close();
    } catch { /* closed by the peer */ }
  }
}

Deno.test("behind the connection guard an HTTP/1.1 request without Host is 400 (plain and TLS); HTTP/2 :authority still works", async () => {
  const certs = await makeTestCerts();
  let hits = 0;
  const up = startUpstream(() => {
    hits++;
    return new Response("ok");
  });
  const px = startFerry(
    `listeners:
  - { name: plain, address: "127.0.0.1:0" }
  - name: secure
    address: "127.0.0.1:0"
    tls: { cert: "{{CERT}}", key: "{{KEY}}" }
routes: [{ name: all, match: { path: { prefix: / } }, cluster: up }]
clusters: [{ name: up, endpoints: ["{{UP}}"] }]
`,
    { UP: up.url, CERT: certs.certFile, KEY: certs.keyFile },
  );
  const plain = Number(new URL(px.listenerUrl("plain")).port);
  const secure = Number(new URL(px.listenerUrl("secure")).port);
  const tls = { caCerts: [certs.ca] };
  try {
    for (const [port, t] of [[plain, undefined], [secure, tls]] as const) {
      for (const line of ["GET /x HTTP/1.1\r\n", "GET /x HTTP/1.0\r\n"]) {
        const res = await rawHead(port, line, t);
        assert.match(res, /^HTTP\/1\.[01] 400 /, `${t ? "TLS" : "plain"} ${line.trim()}: ${res}`);
        assert.match(res, /"reason":"missing Host header"/);
      }
      const named = await rawHead(port, "GET /x HTTP/1.1\r\nHost: localhost\r\n", t);
      assert.match(named, /^HTTP\/1\.1 200 /, named);
    }
    assert.equal(hits, 2, "only the requests with a Host reached the upstream");

    const h2c = await curl([
      "--http2-prior-knowledge",
      "-w",
      "\n%{http_code} %{http_version}",
      `http://127.0.0.1:${plain}/x`,
    ]);
    assert.equal(h2c.stdout, "ok\n200 2", h2c.stderr);
    const h2 = await curl([
      "--cacert",
      certs.caFile,
      "--http2",
      "-w",
      "\n%{http_code} %{http_version}",
      `https://localhost:${secure}/x`,
    ]);
    assert.equal(h2.stdout, "ok\n200 2", h2.stderr);
    assert.equal(hits, 4);
  } finally {
    await px.close();
    await up.close();
    await certs.remove();
  }
});

Deno.test("without the connection guard an HTTP/1.1 request without Host is 400 too (plain, TLS, admin); the gRPC listener speaks no HTTP/1.1", async () => {
  const certs = await makeTestCerts();
  let hits = 0;
  const up = startUpstream(() => {
    hits++;
    return new Response("ok");
  });
  const px = startFerry(
    `server: { connection_guard: false }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: plain, address: "127.0.0.1:0" }
  - name: secure
    address: "127.0.0.1:0"
    tls: { cert: "{{CERT}}", key: "{{KEY}}" }
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
routes:
  - { name: all, listeners: [plain, secure], match: { path: { prefix: / } }, cluster: up }
  - { name: calls, listeners: [grpc], match: { path: { prefix: / } }, cluster: h2 }
clusters:
  - { name: up, endpoints: ["{{UP}}"] }
  - { name: h2, protocol: h2c, endpoints: ["{{UP}}"] }
`,
    { UP: up.url, CERT: certs.certFile, KEY: certs.keyFile },
  );
  const plain = Number(new URL(px.listenerUrl("plain")).port);
  const secure = Number(new URL(px.listenerUrl("secure")).port);
  const admin = px.ferry.addresses().admin!.port;
  const grpcPort = Number(new URL(px.listenerUrl("grpc")).port);
  const tls = { caCerts: [certs.ca] };
  try {
    for (const [port, t] of [[plain, undefined], [secure, tls]] as const) {
      for (const line of ["GET /x HTTP/1.1\r\n", "GET /x HTTP/1.0\r\n"]) {
        const res = await rawHead(port, line, t);
        assert.match(res, /^HTTP\/1\.[01] 400 /, `${t ? "TLS" : "plain"} ${line.trim()}: ${res}`);
        assert.match(res, /"reason":"missing Host header"/);
      }
      // Naming the port Deno would fill in is fine when the Host is really sent.
      const named = await rawHead(port, `GET /x HTTP/1.1\r\nHost: localhost:${port}\r\n`, t);
      assert.match(named, /^HTTP\/1\.1 200 /, named);
    }
    assert.equal(hits, 2, "only the requests with a Host reached the upstream");

    const adminBare = await rawHead(admin, "GET /config HTTP/1.1\r\n");
    assert.match(adminBare, /^HTTP\/1\.1 400 /, adminBare);
    assert.match(adminBare, /"reason":"missing Host header"/);
    const adminNamed = await rawHead(admin, `GET /config HTTP/1.1\r\nHost: localhost:${admin}\r\n`);
    assert.match(adminNamed, /^HTTP\/1\.1 200 /, adminNamed);
    // Probes keep working whatever they send (Ferry's own server answers HTTP/1.0 with its own
    // version, HTTP/1.1, as RFC 9110 2.5 asks; Deno.serve said HTTP/1.0).
    assert.match(await rawHead(admin, "GET /healthz HTTP/1.0\r\n"), /^HTTP\/1\.[01] 200 /);

    // The gRPC listener is HTTP/2 only: an HTTP/1.1 request is a bad preface, GOAWAY, closed.
    const g = await rawHead(grpcPort, "GET /x HTTP/1.1\r\n");
    assert.doesNotMatch(g, /HTTP\/1/);
    assert.equal(hits, 2);

    // HTTP/2 to the listeners by address still works.
    const h2c = await curl([
      "--http2-prior-knowledge",
      "-w",
      "\n%{http_code} %{http_version}",
      `http://127.0.0.1:${plain}/x`,
    ]);
    assert.equal(h2c.stdout, "ok\n200 2", h2c.stderr);
  } finally {
    await px.close();
    await up.close();
    await certs.remove();
  }
});
