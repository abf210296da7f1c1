/**
 * Hostile input on both HTTP/1.1 upstream transports (the h1 codec, and fetch: every cluster has
 * a `transport: fetch` twin, see `withFetchTwins`), each against a Ferry subprocess: a request is forwarded
 * with exactly its body or refused, client failures never count against the upstream, and no
 * upstream answer can crash Ferry or pass for a complete response when it is not one.
 */
import assert from "node:assert/strict";
import { metricValue, run, startUpstream } from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";
import { H2Connection } from "../src/h2/connection.ts";
import {
  assertUnharmed,
  endpointMarks,
  type FerryProcess,
  rawExchange,
  rawUpstream,
  startFerryProcess,
  statusOf,
  TRANSPORTS,
} from "./transport_peers.ts";

/** Replies of the raw upstream, by request path. */
const RAW_REPLIES: Record<string, string> = {
  "/raw/status/600": "HTTP/1.1 600 Odd\r\nContent-Length: 2\r\n\r\nok",
  "/raw/status/999": "HTTP/1.1 999 Odd\r\nContent-Length: 2\r\n\r\nok",
  "/raw/status/099": "HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok",
  "/raw/cl-te":
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
  "/raw/te-cl":
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
  "/raw/te-gzip": "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
  "/raw/cl-list": "HTTP/1.1 200 OK\r\nContent-Length: 2, 5\r\n\r\nhello",
  "/raw/short-cl": "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
  "/raw/short-chunked": "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
  "/raw/101": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nxyz",
};

interface Rig {
  readonly ferry: FerryProcess;
  /** Requests the Deno.serve upstream received: method, path, headers, body length. */
  readonly seen: { method: string; path: string; headers: Record<string, string> }[];
  /** Upload requests whose head reached the upstream. */
  uploadsStarted(): number;
}

/** One Ferry subprocess per test, so that a crash in one case cannot hide another. */
function withRig(fn: (rig: Rig) => Promise<void>): () => Promise<void> {
  return async () => {
    const seen: Rig["seen"] = [];
    let uploads = 0;
    const up = startUpstream(async (req) => {
      const path = new URL(req.url).pathname;
      seen.push({ method: req.method, path, headers: Object.fromEntries(req.headers) });
      if (path === "/upload") uploads++;
      const body = req.body ? await req.arrayBuffer().catch(() => new ArrayBuffer(0)) : null;
      return Response.json({ path, bytes: body?.byteLength ?? null });
    });
    const raw = rawUpstream((head) => {
      const path = head.split(" ")[1] ?? "";
      return RAW_REPLIES[path] ?? "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    });
    const ferry = await startFerryProcess(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { max_body_bytes: 1000 }
routes:
  - { name: raw, match: { path: { prefix: /raw/ } }, cluster: raw }
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - name: up
    endpoints: ["${up.url}"]
    # One failure would open the breaker and one gateway failure would eject: any client
    # misbehaviour counted against the upstream shows.
    circuit_breaker: { failures: 1, open_timeout: 60s }
    outlier_detection: { consecutive_gateway_failure: 1, consecutive_5xx: 1, max_ejection_percent: 100 }
  - name: raw
    endpoints: ["${raw.url}"]
`);
    try {
      await fn({ ferry, seen, uploadsStarted: () => uploads });
      await assertUnharmed(ferry, "after the test");
    } finally {
      await ferry.stop();
      raw.close();
      await up.close();
    }
  };
}

async function assertUpstreamUnmarked(rig: Rig, context: string): Promise<void> {
  for (const cluster of ["up", "up-fetch"]) await assertClusterUnmarked(rig, cluster, context);
}

async function assertClusterUnmarked(rig: Rig, cluster: string, context: string): Promise<void> {
  const [e] = await endpointMarks(rig.ferry.admin, cluster);
  assert.deepEqual(
    { breaker: e!.breakerState, opened: e!.timesOpened, ejections: e!.ejections },
    { breaker: "closed", opened: 0, ejections: 0 },
    `${context}: ${cluster} was marked for the client's doing`,
  );
  assert.equal(
    e!.recentFailures,
    0,
    `${context}: outlier detection counted a failure on ${cluster}`,
  );
}

async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test(
  "a GET or HEAD that declares a body is 400 on both transports; the upstream gets nothing of it",
  withRig(async (rig) => {
    const { port } = rig.ferry;
    for (const [transport, headers] of TRANSPORTS) {
      const shapes = [
        // The body is a whole second request: forwarded as a length without its bytes, the
        // upstream would read the next pooled request as this body (smuggling).
        `GET /smuggle HTTP/1.1\r\nHost: a\r\n${headers}Content-Length: 33\r\n\r\n` +
        "GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n",
        `GET /chunked HTTP/1.1\r\nHost: a\r\n${headers}Transfer-Encoding: chunked\r\n\r\n` +
        "5\r\nhello\r\n0\r\n\r\n",
        `HEAD /head HTTP/1.1\r\nHost: a\r\n${headers}Content-Length: 5\r\n\r\nhello`,
      ];
      for (const bytes of shapes) {
        const res = await rawExchange(port, bytes, { ms: 1_500 });
        assert.equal(statusOf(res), 400, `${transport}: ${bytes.split("\r\n")[0]}\n${res}`);
        assert.match(res, /x-ferry-flag: DPE/);
      }
      // A body of length 0 is no body: forwarded, and without a Content-Length of its own.
      const empty = await rawExchange(
        port,
        `GET /empty HTTP/1.1\r\nHost: a\r\n${headers}Content-Length: 0\r\n\r\n`,
      );
      assert.equal(statusOf(empty), 200, `${transport}: ${empty}`);
      const next = await rawExchange(port, `GET /next HTTP/1.1\r\nHost: a\r\n${headers}\r\n`);
      assert.match(next, /"path":"\/next"/, `${transport}: the next request is itself`);
    }
    // HTTP/2 (h2c): the same rule, whatever the upstream transport. nghttp, not curl: after an
    // early answer the server may reset the rest of the upload with RST_STREAM(NO_ERROR) (RFC
    // 9113 8.1), which curl 7.88 reports as error 92 instead of showing the answer.
    const bodyFile = await Deno.makeTempFile();
    await Deno.writeTextFile(bodyFile, "hello");
    for (const ae of ["identity", "gzip"]) {
      const out = await run("nghttp", [
        "-v",
        "-d",
        bodyFile,
        "-H",
        ":method: GET",
        "-H",
        `accept-encoding: ${ae}`,
        `${rig.ferry.url}/h2-get-body`,
      ]);
      assert.match(out.stdout, /:status: 400/, `h2 GET with a body, ${ae}: ${out.stderr}`);
    }
    await Deno.remove(bodyFile);
    const paths = rig.seen.map((s) => s.path);
    assert.deepEqual(paths, ["/empty", "/next", "/empty", "/next"]);
    for (const s of rig.seen) {
      assert.ok(!("content-length" in s.headers) || s.headers["content-length"] === "0");
    }
  }),
);

Deno.test(
  "an HTTP/2 GET with DATA and no content-length reaches the upstream with no body and no length; the next request is itself",
  withRig(async (rig) => {
    // Deno.serve hides such a body (docs/design.md, "Request bodies"): what must hold is that
    // nothing of it is sent, so the pooled upstream connection reads the next request as itself.
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: rig.ferry.port });
    const h2 = new H2Connection(conn, { role: "client" });
    try {
      await h2.ready;
      for (
        const [transport, extra] of [["fetch", [["x-test-transport", "fetch"], [
          "accept-encoding",
          "identity",
        ]]], ["h1", [["accept-encoding", "gzip"]]]] as const
      ) {
        for (const path of ["/h2-get-data", "/next"]) {
          const st = await h2.request([
            [":method", "GET"],
            [":scheme", "http"],
            [":path", path],
            [":authority", "a"],
            ...extra,
          ], path === "/next");
          if (path !== "/next") {
            await st.write(new TextEncoder().encode("GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"));
            await st.end();
          }
          const head = await st.headers;
          let text = "";
          for await (const c of st.body) text += new TextDecoder().decode(c);
          assert.equal(head.find(([n]) => n === ":status")?.[1], "200", `${transport} ${path}`);
          assert.match(text, new RegExp(`"path":"${path}"`), `${transport} ${path}: ${text}`);
        }
      }
    } finally {
      h2.close();
    }
    assert.deepEqual(rig.seen.map((s) => s.path), [
      "/h2-get-data",
      "/next",
      "/h2-get-data",
      "/next",
    ]);
    for (const s of rig.seen) {
      assert.ok(!("content-length" in s.headers), `${s.path}: content-length reached the upstream`);
      assert.ok(!("transfer-encoding" in s.headers), `${s.path}: transfer-encoding reached it`);
    }
  }),
);

Deno.test(
  "a client that aborts its upload mid-body: Ferry lives, no breaker or outlier mark, on both transports",
  withRig(async (rig) => {
    const { port } = rig.ferry;
    for (const [transport, headers] of TRANSPORTS) {
      for (let i = 0; i < 3; i++) {
        const before = rig.uploadsStarted();
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(
          new TextEncoder().encode(
            `POST /upload HTTP/1.1\r\nHost: a\r\n${headers}Content-Length: 900\r\n\r\n` +
              "x".repeat(300),
          ),
        );
        await waitFor(() => rig.uploadsStarted() > before, `${transport} upload ${i} upstream`);
        conn.close();
      }
      await new Promise((r) => setTimeout(r, 300));
      await assertUpstreamUnmarked(rig, `${transport} upload aborts`);
      const ok = await rawExchange(port, `GET /after HTTP/1.1\r\nHost: a\r\n${headers}\r\n`);
      assert.equal(statusOf(ok), 200, `${transport}: next request after aborts\n${ok}`);
    }
  }),
);

Deno.test(
  "a chunked body over max_body_bytes is a 413 on both transports, and not the upstream's failure",
  withRig(async (rig) => {
    for (const [transport, headers] of TRANSPORTS) {
      const res = await rawExchange(
        rig.ferry.port,
        `POST /upload HTTP/1.1\r\nHost: a\r\n${headers}Transfer-Encoding: chunked\r\n\r\n` +
          `7d0\r\n${"x".repeat(2000)}\r\n0\r\n\r\n`,
      );
      assert.equal(statusOf(res), 413, `${transport}\n${res}`);
      assert.match(res, /larger than 1000 bytes/);
      await assertUnharmed(rig.ferry, `${transport} 413`);
      await assertUpstreamUnmarked(rig, `${transport} 413`);
    }
  }),
);

Deno.test(
  "an upstream status outside 100-599 is a 502 UPE with a reason on both transports",
  withRig(async (rig) => {
    for (const [transport, headers] of TRANSPORTS) {
      for (const status of ["600", "999", "099"]) {
        const res = await rawExchange(
          rig.ferry.port,
          `GET /raw/status/${status} HTTP/1.1\r\nHost: a\r\n${headers}\r\n`,
        );
        assert.equal(statusOf(res), 502, `${transport} ${status}\n${res}`);
        assert.match(res, /x-ferry-flag: UPE/);
        assert.match(res, /"reason":"[^"]*(status|HTTP)/, `${transport} ${status}\n${res}`);
        await assertUnharmed(rig.ferry, `${transport} status ${status}`);
      }
    }
  }),
);

Deno.test(
  "conflicting framing from the upstream is a 502, and a body cut short never ends cleanly, on both transports",
  withRig(async (rig) => {
    for (const [transport, headers] of TRANSPORTS) {
      for (const shape of ["cl-te", "te-cl", "te-gzip", "cl-list"]) {
        const res = await rawExchange(
          rig.ferry.port,
          `GET /raw/${shape} HTTP/1.1\r\nHost: a\r\n${headers}\r\n`,
        );
        assert.equal(statusOf(res), 502, `${transport} ${shape}\n${res}`);
        assert.match(res, /x-ferry-flag: UPE/, `${transport} ${shape}`);
      }
      // Headers already went out: the client must see the response break off, not end.
      for (const shape of ["short-cl", "short-chunked"]) {
        const res = await rawExchange(
          rig.ferry.port,
          `GET /raw/${shape} HTTP/1.1\r\nHost: a\r\n${headers}\r\n`,
        );
        const status = statusOf(res);
        if (status === 200) {
          const [head, body = ""] = res.split("\r\n\r\n");
          const cl = /content-length: (\d+)/i.exec(head!);
          if (cl) {
            assert.ok(body.length < Number(cl[1]), `${transport} ${shape}: complete\n${res}`);
          } else assert.ok(!body.endsWith("0\r\n\r\n"), `${transport} ${shape}: ended\n${res}`);
        } else assert.equal(status, 502, `${transport} ${shape}\n${res}`);
      }
      await assertUnharmed(rig.ferry, `${transport} framing`);
    }
  }),
);

Deno.test(
  "accept, accept-language, user-agent and accept-encoding reach the upstream only as the client sent them",
  withRig(async (rig) => {
    const names = ["accept", "accept-language", "user-agent", "accept-encoding"];
    const cases: [string, Record<string, string>][] = [
      ["", {}],
      ["Accept-Encoding: gzip\r\n", { "accept-encoding": "gzip" }],
      ["User-Agent: curl/8\r\n", { "user-agent": "curl/8" }],
      [
        "Accept: text/html\r\nAccept-Language: de\r\nUser-Agent: ua\r\nAccept-Encoding: identity\r\n",
        {
          "accept": "text/html",
          "accept-language": "de",
          "user-agent": "ua",
          "accept-encoding": "identity",
        },
      ],
    ];
    for (const [sent, expected] of cases) {
      rig.seen.length = 0;
      const res = await rawExchange(rig.ferry.port, `GET /h HTTP/1.1\r\nHost: a\r\n${sent}\r\n`);
      assert.equal(statusOf(res), 200, res);
      const got = Object.fromEntries(
        names.filter((n) => n in rig.seen[0]!.headers).map((n) => [n, rig.seen[0]!.headers[n]]),
      );
      assert.deepEqual(got, expected, `client sent ${JSON.stringify(sent)}`);
    }
    // The fetch twin is really used by the fetch cases of these tests, and still adds what the
    // docs say it does (the reason http1 clusters default to the h1 codec).
    rig.seen.length = 0;
    const viaFetch = await rawExchange(
      rig.ferry.port,
      `GET /h HTTP/1.1\r\nHost: a\r\n${TRANSPORTS[0][1]}\r\n`,
    );
    assert.equal(statusOf(viaFetch), 200, viaFetch);
    assert.equal(rig.seen[0]!.headers["accept-language"], "*");
  }),
);

Deno.test(
  "h1: an upstream 101 to a request that asked for no upgrade is a 502, not a request left hanging",
  withRig(async (rig) => {
    const [, headers] = TRANSPORTS[1];
    // Route timeout 15 s: a hang shows as no answer within the 5 s read.
    const res = await rawExchange(
      rig.ferry.port,
      `GET /raw/101 HTTP/1.1\r\nHost: a\r\n${headers}\r\n`,
      { ms: 5_000 },
    );
    assert.equal(statusOf(res), 502, res);
    assert.match(res, /x-ferry-flag: UPE/);
  }),
);

Deno.test("an https upstream is checked against its own name, not the client's Host, on both transports", async () => {
  const certs = await makeTestCerts();
  const up = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: certs.cert, key: certs.key, onListen() {} },
    (req) => new Response(`tls ok ${req.headers.get("host")}`),
  );
  // The certificate names localhost and 127.0.0.1; preserve_host (the default) sends the
  // client's Host, which the certificate does not name.
  const ferry = await startFerryProcess(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
routes:
  - { name: by-name, match: { path: { prefix: /name } }, cluster: by-name }
  - { name: by-ip, match: { path: { prefix: /ip } }, cluster: by-ip }
  - { name: untrusted, match: { path: { prefix: /untrusted } }, cluster: untrusted }
clusters:
  - name: by-name
    endpoints: ["https://localhost:${up.addr.port}"]
    tls: { ca_file: "${certs.caFile}" }
  - name: by-ip
    endpoints: ["https://127.0.0.1:${up.addr.port}"]
    tls: { ca_file: "${certs.caFile}" }
  - name: untrusted
    endpoints: ["https://localhost:${up.addr.port}"]
`);
  try {
    for (const [transport, headers] of TRANSPORTS) {
      for (const path of ["/name", "/ip"]) {
        const res = await rawExchange(
          ferry.port,
          `GET ${path} HTTP/1.1\r\nHost: example.com\r\n${headers}\r\n`,
        );
        assert.equal(statusOf(res), 200, `${transport} ${path}\n${res}`);
        assert.match(res, /tls ok example\.com/);
      }
      // Still verified: a CA Ferry was not given is refused.
      const res = await rawExchange(
        ferry.port,
        `GET /untrusted HTTP/1.1\r\nHost: localhost\r\n${headers}\r\n`,
      );
      assert.equal(statusOf(res), 502, `${transport} untrusted\n${res}`);
      assert.match(res, /x-ferry-flag: UF/);
    }
    await assertUnharmed(ferry, "https upstreams");
  } finally {
    await ferry.stop();
    await up.shutdown();
    await certs.remove();
  }
});

Deno.test("h1: a pooled upstream connection idle for pool.idle_timeout is closed", async () => {
  let closed = 0, accepted = 0;
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const conn of listener) {
      accepted++;
      (async () => {
        const buf = new Uint8Array(16 * 1024);
        try {
          for (;;) {
            const n = await conn.read(buf);
            if (n === null) break;
            // Slower than the idle timeout: a busy connection must not be cut.
            await new Promise((r) => setTimeout(r, 800));
            await conn.write(
              new TextEncoder().encode("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            );
          }
        } catch { /* reset */ }
        closed++;
        try {
          conn.close();
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  const ferry = await startFerryProcess(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - name: up
    endpoints: ["http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}"]
    pool: { idle_timeout: 300ms }
`);
  try {
    const res = await rawExchange(
      ferry.port,
      `GET / HTTP/1.1\r\nHost: a\r\n${TRANSPORTS[1][1]}\r\n`,
    );
    assert.equal(statusOf(res), 200, res);
    assert.equal(accepted, 1);
    await waitFor(() => closed === 1, "the idle pooled connection to close", 5_000);
  } finally {
    await ferry.stop();
    listener.close();
    await serving;
  }
});

Deno.test("a client that aborts an upload Ferry buffers for retries is a 499 (4xx), not a 500", async () => {
  let reached = 0;
  const up = startUpstream(async (req) => {
    reached++;
    await req.arrayBuffer().catch(() => {});
    return new Response("ok");
  });
  const ferry = await startFerryProcess(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
    retry: { retries: 2, non_idempotent: true }
clusters:
  - name: up
    endpoints: ["${up.url}"]
    circuit_breaker: { failures: 1, open_timeout: 60s }
`);
  try {
    for (const [transport, headers] of TRANSPORTS) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
      await conn.write(
        new TextEncoder().encode(
          `PUT /buffered HTTP/1.1\r\nHost: a\r\n${headers}Content-Length: 900\r\n\r\n` +
            "x".repeat(300),
        ),
      );
      await new Promise((r) => setTimeout(r, 300));
      conn.close();
      await new Promise((r) => setTimeout(r, 300));
      const metrics = await (await fetch(`${ferry.admin}/metrics`)).text();
      const failed = metricValue(metrics, "ferry_downstream_requests_total", {
        status_class: "5xx",
      });
      assert.equal(failed ?? 0, 0, `${transport}: the client's abort was answered as a 5xx`);
    }
    // Both recorded as the client's (499 counts as 4xx); the body never arrived whole, so
    // nothing was sent upstream.
    const metrics = await (await fetch(`${ferry.admin}/metrics`)).text();
    assert.equal(
      metricValue(metrics, "ferry_downstream_requests_total", { status_class: "4xx" }),
      2,
    );
    assert.equal(reached, 0);
    const [e] = await endpointMarks(ferry.admin, "up");
    assert.equal(e!.timesOpened, 0);
    await assertUnharmed(ferry, "buffered upload aborts");
  } finally {
    await ferry.stop();
    await up.close();
  }
});
