/**
 * An upstream whose response body fails before its first byte (a good head, then a close, a
 * reset, a malformed chunk) on the h1 codec, the HTTP/2 transport and fetch, behind every kind of
 * listener: Ferry's own HTTP/1.1 server (guarded), the inner Deno.serve (h2c clients), and
 * Deno.serve alone (`connection_guard: false`). Nothing has reached the client, so it gets the
 * error table's 502 (request id, flag), counted and logged like any 502, on a connection that
 * stays usable; the request is not replayed (the upstream answered). A body that fails after
 * bytes went out is cut visibly instead, and the access log says so.
 */
import assert from "node:assert/strict";
import {
  metricValue,
  readFor,
  requirePeer,
  run,
  startFerry,
  startH2Server,
  startUpstream,
} from "./helpers.ts";
import { startBadUpstream } from "./fixtures/bad_upstream.ts";
import { makeTestCerts } from "./fixtures/certs.ts";
import { echoClient, grpc, grpcEchoConfig, unary } from "./grpc/peers.ts";
import { ErrorCode } from "../src/h2/frames.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/**
 * An HTTP/2 upstream on Ferry's own HTTP/2 stack that misbehaves by path: `/head-then-reset`
 * (HEADERS, then RST_STREAM), `/head-then-short-end` (content-length 100, then END_STREAM with no
 * DATA), `/data-then-reset` (HEADERS, 7 bytes of DATA, then RST_STREAM), else 200 "ok".
 */
function startBadH2Upstream() {
  const seen: string[] = [];
  const server = startH2Server(async (s) => {
    const head = await s.headers;
    const path = head.find(([n]) => n === ":path")?.[1] ?? "/";
    seen.push(path);
    for await (const _ of s.body) { /* the request body, if any */ }
    const behaviour = path.split("/").pop();
    if (behaviour === "head-then-reset") {
      s.sendHeaders([[":status", "200"], ["content-type", "text/plain"]]);
      await new Promise((r) => setTimeout(r, 20));
      s.reset(ErrorCode.INTERNAL_ERROR);
    } else if (behaviour === "head-then-short-end") {
      s.sendHeaders([[":status", "200"], ["content-length", "100"]]);
      await s.end();
    } else if (behaviour === "data-then-reset") {
      s.sendHeaders([[":status", "200"], ["content-type", "text/plain"]]);
      await s.write(enc.encode("partial"));
      await new Promise((r) => setTimeout(r, 50));
      s.reset(ErrorCode.INTERNAL_ERROR);
    } else {
      s.sendHeaders([[":status", "200"], ["content-length", "2"]]);
      await s.write(enc.encode("ok"));
      await s.end();
    }
  });
  return { ...server, seen };
}

function config(h1: string, h2: string, log: string, guard = true, tls = ""): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0"${tls} }
admin: { address: "127.0.0.1:0" }
access_log: { path: "${log}" }
server: { watch_config: false${guard ? "" : ", connection_guard: false"} }
routes:
  - { name: h1, match: { path: { prefix: /h1/ } }, cluster: h1, timeout: 5s }
  - name: retried
    match: { path: { prefix: /retried/ } }
    cluster: h1
    timeout: 5s
    retry: { retries: 2, retry_on: [reset, connect-failure, gateway-error] }
  - { name: h2, match: { path: { prefix: /h2/ } }, cluster: h2, timeout: 5s }
  - { name: fe, match: { path: { prefix: /fe/ } }, cluster: fe, timeout: 5s }
clusters:
  - { name: h1, endpoints: ["${h1}"] }
  - { name: fe, endpoints: ["${h1}"], transport: fetch }
  - { name: h2, protocol: h2c, endpoints: ["${h2}"] }
`;
}

interface Answer {
  status: number;
  head: string;
  body: string;
}

/**
 * HTTP/1.1 requests one after another on one keep-alive connection; each answer must be complete
 * (Content-Length). Returns them, or throws when the connection ends first.
 */
async function onOneConnection(port: number, paths: string[]): Promise<Answer[]> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const answers: Answer[] = [];
  let text = "";
  try {
    for (const path of paths) {
      await conn.write(enc.encode(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`));
      const deadline = Date.now() + 8_000;
      for (;;) {
        const end = text.indexOf("\r\n\r\n");
        const cl = end >= 0 ? /\r\ncontent-length: (\d+)/i.exec(text.slice(0, end)) : null;
        if (cl && text.length >= end + 4 + Number(cl[1])) {
          const head = text.slice(0, end);
          answers.push({
            status: Number(head.slice(9, 12)),
            head,
            body: text.slice(end + 4, end + 4 + Number(cl[1])),
          });
          text = text.slice(end + 4 + Number(cl[1]));
          break;
        }
        assert.ok(end < 0 || cl, `an answer with a Content-Length: ${JSON.stringify(text)}`);
        const buf = new Uint8Array(16 * 1024);
        const n = await Promise.race([
          conn.read(buf),
          new Promise<"t">((r) => setTimeout(() => r("t"), Math.max(1, deadline - Date.now()))),
        ]);
        if (n === "t") throw new Error(`no answer to ${path}: ${JSON.stringify(text)}`);
        if (n === null) throw new Error(`connection ended at ${path}: ${JSON.stringify(text)}`);
        text += dec.decode(buf.subarray(0, n));
      }
    }
  } finally {
    conn.close();
  }
  return answers;
}

function assertTableError(a: Answer, flag: string): void {
  assert.equal(a.status, 502, a.head + a.body);
  const json = JSON.parse(a.body);
  assert.equal(json.flag, flag, a.body);
  assert.match(json.request_id, /^[0-9a-f-]{36}$/);
  assert.match(a.head, new RegExp(`\\r\\nx-request-id: ${json.request_id}`, "i"));
  assert.match(a.head, new RegExp(`\\r\\nx-ferry-flag: ${flag}`, "i"));
}

async function accessLines(px: ReturnType<typeof startFerry>, file: string) {
  await new Promise((r) => setTimeout(r, 100));
  await px.ferry.snapshot.accessLog!.writer.flush();
  const text = await Deno.readTextFile(file);
  return text.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

Deno.test("a body failing before its first byte: 502 from the error table on Ferry's own HTTP/1.1 server, keep-alive kept, logged and counted, not replayed", async () => {
  const up = startBadUpstream();
  const up2 = startBadH2Upstream();
  const log = `${await Deno.makeTempDir()}/access.log`;
  const px = startFerry(config(up.url, up2.url, log));
  try {
    const answers = await onOneConnection(px.port, [
      "/h1/head-then-close",
      "/h1/ok",
      "/h1/chunked-head-then-close",
      "/h1/bad-chunk",
      "/h2/head-then-reset",
      "/h2/head-then-short-end",
      "/h2/ok",
      "/retried/head-then-close",
      "/h1/ok",
      "/fe/head-then-close",
      "/fe/chunked-head-then-close",
      "/fe/ok",
    ]);
    assertTableError(answers[0]!, "UR");
    assert.equal(answers[1]!.status, 200);
    assert.equal(answers[1]!.body, "ok");
    assertTableError(answers[2]!, "UR");
    assertTableError(answers[3]!, "UPE");
    assertTableError(answers[4]!, "UR");
    assertTableError(answers[5]!, "UPE");
    assert.equal(answers[6]!.body, "ok");
    assertTableError(answers[7]!, "UR");
    assert.equal(answers[8]!.body, "ok");
    assertTableError(answers[9]!, "UR");
    assertTableError(answers[10]!, "UR");
    assert.equal(answers[11]!.body, "ok");
    // The upstream answered: the request is not sent again, even with a retry policy for resets.
    assert.equal(up.seen.filter((p) => p === "/retried/head-then-close").length, 1);
    // ... while a close before any response byte is retried as before.
    const before = await onOneConnection(px.port, ["/retried/close-before-head"]);
    assertTableError(before[0]!, "UR");
    // (Three attempts; one more when the first met a pooled connection the upstream had closed.)
    assert.ok(up.seen.filter((p) => p === "/retried/close-before-head").length >= 3);

    const lines = await accessLines(px, log);
    const line = (path: string) => lines.find((l) => l.path === path);
    assert.equal(line("/h1/head-then-close")?.status, 502);
    assert.equal(line("/h1/head-then-close")?.flags, "UR");
    assert.equal(line("/h1/head-then-close")?.request_id, JSON.parse(answers[0]!.body).request_id);
    assert.equal(line("/h2/head-then-reset")?.status, 502);
    const metrics = await (await fetch(`${px.adminUrl}/metrics`)).text();
    assert.equal(
      metricValue(metrics, "ferry_downstream_requests_total", {
        route: "h1",
        status_class: "5xx",
      }),
      3,
    );
    assert.equal(
      metricValue(metrics, "ferry_downstream_requests_total", {
        route: "h2",
        status_class: "5xx",
      }),
      2,
    );
    // Answered with a 502 (counted above), never as a body cut after its head.
    for (const cluster of ["h1", "h2", "fe"]) {
      assert.equal(
        metricValue(metrics, "ferry_upstream_response_body_errors_total", { cluster }),
        0,
        cluster,
      );
    }
  } finally {
    await px.close();
    await up.close();
    up2.close();
  }
});

Deno.test("a body failing before its first byte: 502 on the Deno.serve paths (h2c clients, connection_guard: false)", async () => {
  await requirePeer("curl");
  const up = startBadUpstream();
  const up2 = startBadH2Upstream();
  const log = `${await Deno.makeTempDir()}/access.log`;
  const guarded = startFerry(config(up.url, up2.url, log));
  const log2 = `${await Deno.makeTempDir()}/access.log`;
  const bare = startFerry(config(up.url, up2.url, log2, false));
  try {
    // h2c (prior knowledge) through the guard to the inner Deno.serve, one client connection.
    const paths = ["/h1/head-then-close", "/h1/bad-chunk", "/h2/head-then-reset", "/h1/ok"];
    const client = Deno.createHttpClient({ http1: false, http2: true });
    try {
      const got: string[] = [];
      for (const p of paths) {
        const res = await fetch(`${guarded.url}${p}`, { client });
        const body = await res.text();
        got.push(`${res.status} ${res.status === 502 ? JSON.parse(body).flag : body}`);
        if (res.status === 502) assert.equal(res.headers.get("x-request-id")?.length, 36);
      }
      assert.deepEqual(got, ["502 UR", "502 UPE", "502 UR", "200 ok"]);
    } finally {
      client.close();
    }
    // Deno.serve alone, HTTP/1.1 keep-alive.
    const h1 = await run("curl", [
      "-s",
      "-w",
      "%{http_code} %{num_connects}\n",
      ...paths.flatMap((p) => ["-o", "/dev/null", `${bare.url}${p}`]),
    ]);
    assert.equal(h1.stdout, "502 1\n502 0\n502 0\n200 0\n");
    const res = await fetch(`${bare.url}/h2/head-then-short-end`);
    assert.equal(res.status, 502);
    const json = await res.json();
    assert.equal(json.flag, "UPE");
    assert.equal(res.headers.get("x-request-id"), json.request_id);
  } finally {
    await guarded.close();
    await bare.close();
    await up.close();
    up2.close();
  }
});

Deno.test("a body failing before its first byte: 502 on a TLS listener, HTTP/1.1 and h2 (ALPN)", async () => {
  await requirePeer("curl");
  const certs = await makeTestCerts();
  const up = startBadUpstream();
  const up2 = startBadH2Upstream();
  const log = `${await Deno.makeTempDir()}/access.log`;
  const px = startFerry(
    config(
      up.url,
      up2.url,
      log,
      true,
      `, tls: { cert: "${certs.certFile}", key: "${certs.keyFile}" }`,
    ),
  );
  try {
    const paths = ["/h1/head-then-close", "/h2/head-then-reset", "/fe/bad-chunk", "/h1/ok"];
    for (const version of ["--http1.1", "--http2"]) {
      const out = await run("curl", [
        "-s",
        version,
        "--cacert",
        certs.caFile,
        "-w",
        "%{http_version} %{http_code} %{num_connects}\n",
        ...paths.flatMap((p) => ["-o", "/dev/null", `https://127.0.0.1:${px.port}${p}`]),
      ]);
      const v = version === "--http2" ? "2" : "1.1";
      assert.equal(out.stdout, `${v} 502 1\n${v} 502 0\n${v} 502 0\n${v} 200 0\n`, version);
    }
  } finally {
    await px.close();
    await up.close();
    up2.close();
    await certs.remove();
  }
});

const CUT = ["/h1/short-body", "/h1/close-mid-chunked", "/h2/data-then-reset", "/fe/short-body"];

Deno.test("a body failing after bytes went out is cut (no last chunk, short length, RST_STREAM) and the access log flags it", async () => {
  await requirePeer("curl");
  const up = startBadUpstream();
  const up2 = startBadH2Upstream();
  const log = `${await Deno.makeTempDir()}/access.log`;
  const px = startFerry(config(up.url, up2.url, log));
  try {
    // HTTP/1.1: a Content-Length body that stops short, and a chunked one with no last chunk.
    for (const path of CUT) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
      let text = "";
      try {
        await conn.write(enc.encode(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`));
        const ended = await readFor(conn, 8_000, (c) => text += dec.decode(c));
        assert.ok(ended, `${path}: the connection ends`);
      } finally {
        conn.close();
      }
      assert.match(text, /^HTTP\/1\.1 200 /, path);
      const end = text.indexOf("\r\n\r\n");
      const cl = /\r\ncontent-length: (\d+)/i.exec(text.slice(0, end));
      if (cl) assert.ok(text.length - end - 4 < Number(cl[1]), `${path}: short of its length`);
      else assert.ok(!text.endsWith("0\r\n\r\n"), `${path}: no last chunk`);
    }
    // HTTP/2 client: the stream is reset, curl says the transfer did not complete.
    const h2 = await run("curl", [
      "-s",
      "--http2-prior-knowledge",
      "-o",
      "/dev/null",
      `${px.url}/h2/data-then-reset`,
    ]);
    assert.notEqual(h2.code, 0, "curl sees the stream end unclean");
    // Deno.serve reports the broken body to the listener's onError: no internal error for it.
    assert.deepEqual(
      px.ferry.recentErrors.list().filter((e) => e.flag === "IE"),
      [],
      "a body the upstream cut is not listed as an internal error",
    );
    const lines = await accessLines(px, log);
    for (const path of CUT) {
      const l = lines.find((x) => x.path === path);
      assert.equal(l?.status, 200, path);
      assert.equal(l?.flags, "UR", `${path}: the body's failure is flagged: ${JSON.stringify(l)}`);
    }
    // ... and counted once per body, on each transport (the h2 one twice: for curl too).
    const metrics = await (await fetch(`${px.adminUrl}/metrics`)).text();
    const cut = (cluster: string) =>
      metricValue(metrics, "ferry_upstream_response_body_errors_total", {
        cluster,
        reason: "upstream_reset",
      });
    assert.deepEqual([cut("h1"), cut("h2"), cut("fe")], [2, 2, 1]);
  } finally {
    await px.close();
    await up.close();
    up2.close();
  }
});

/**
 * A gRPC upstream on Ferry's own HTTP/2 stack that answers every call with its response headers
 * and then RST_STREAM (INTERNAL_ERROR), before any message; counts the calls it got.
 */
function startGrpcHeadThenReset() {
  const state = { calls: 0 };
  const server = startH2Server(async (s) => {
    state.calls++;
    for await (const _ of s.body) { /* the request message */ }
    s.sendHeaders([[":status", "200"], ["content-type", "application/grpc"]]);
    await new Promise((r) => setTimeout(r, 20));
    s.reset(ErrorCode.INTERNAL_ERROR);
  });
  return { ...server, state };
}

Deno.test("gRPC: an upstream reset after its headers but before any message is a status (UNAVAILABLE), not a reset, and is not retried", async () => {
  const up = startGrpcHeadThenReset();
  const px = startFerry(
    grpcEchoConfig({
      route:
        "    retry: { retries: 2, retry_on: [unavailable, reset], backoff: { base: 1ms, max: 2ms } }\n",
    }),
    { PORT: String(up.port) },
  );
  const client = echoClient(px.port);
  try {
    const r = await unary(client, enc.encode("hi"));
    assert.equal(r.error?.code, grpc.status.UNAVAILABLE, `${r.error?.code}: ${r.error?.details}`);
    assert.match(r.error!.details, /reset the stream/, r.error!.details);
    assert.equal(up.state.calls, 1, "the upstream answered: not sent again");
  } finally {
    client.close();
    await px.close();
    up.close();
  }
});

Deno.test("a body whose first byte comes late: its head goes out after the hold (100 ms), not with the first event, on Ferry's own server and Deno.serve", async () => {
  const up = startUpstream(() =>
    new Response(
      new ReadableStream<Uint8Array>({
        async start(c) {
          await new Promise((r) => setTimeout(r, 3_000));
          c.enqueue(enc.encode("data: late\n\n"));
          c.close();
        },
      }),
      { headers: { "content-type": "text/event-stream" } },
    )
  );
  const yaml = (guard: boolean) =>
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
server: { watch_config: false${guard ? "" : ", connection_guard: false"} }
routes: [{ name: r, cluster: c, timeout: 10s }]
clusters: [{ name: c, endpoints: ["${up.url}"] }]
`;
  const guarded = startFerry(yaml(true));
  const bare = startFerry(yaml(false));
  try {
    for (const px of [guarded, bare]) {
      const t0 = Date.now();
      const res = await fetch(`${px.url}/events`);
      const headAfter = Date.now() - t0;
      assert.equal(res.headers.get("content-type"), "text/event-stream");
      assert.ok(headAfter >= 90 && headAfter < 1_500, `head after ${headAfter} ms`);
      assert.equal(await res.text(), "data: late\n\n");
      assert.ok(Date.now() - t0 >= 2_900, "the event itself came when the upstream sent it");
    }
  } finally {
    await guarded.close();
    await bare.close();
    await up.close();
  }
});
