/**
 * What upstreams send Ferry, beyond tests/hostile_upstream_test.ts: an answer that comes before
 * the request body was all sent (RFC 9112 9.3: a client SHOULD watch for an error response while
 * it sends), and the count of response bodies that fail after their head went out.
 */
import assert from "node:assert/strict";
import { H1Transport } from "../src/h1/transport.ts";
import { metricValue, readFor, startFerry, startH2Server, startRawServer } from "./helpers.ts";
import { ErrorCode } from "../src/h2/frames.ts";
import { echoClient, grpcEchoConfig, unary } from "./grpc/peers.ts";
import { ok, startRawUpstream } from "./h1_upstream.ts";
import { ProxyError } from "../src/pipeline/errors.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** An upstream that reads only the request head, answers 413 at once and closes (a reset, as the body is unread). */
function startEarlyAnswerUpstream() {
  return startRawServer(async (conn) => {
    const text = await readHead(conn, 10_000);
    if (!text.includes("\r\n\r\n")) return;
    // A large head (40 KiB, within the limits): it takes Ferry several reads, so the failing
    // write of the request body is seen before the head is whole.
    const filler = Array.from({ length: 40 }, (_, i) => `x-filler-${i}: ${"f".repeat(1000)}\r\n`);
    const answer = enc.encode(
      "HTTP/1.1 413 Payload Too Large\r\n" + filler.join("") +
        "content-length: 7\r\nconnection: close\r\n\r\ntoo big",
    );
    let off = 0;
    while (off < answer.length) off += await conn.write(answer.subarray(off));
  });
}

/** A request body of `total` bytes in 64 KiB pieces, as fast as it is read. */
function bigBody(total: number): ReadableStream<Uint8Array> {
  const piece = new Uint8Array(64 * 1024).fill(120);
  let sent = 0;
  return new ReadableStream({
    pull(ctl) {
      if (sent >= total) return ctl.close();
      const n = Math.min(piece.length, total - sent);
      sent += n;
      ctl.enqueue(piece.slice(0, n));
    },
  });
}

/** The h1 codec as a cluster uses it, keeping connections for reuse. */
function codecTransport(): H1Transport {
  return new H1Transport({
    maxIdlePerEndpoint: 8,
    maxConnectionsPerEndpoint: 64,
    idleTimeoutMs: 30_000,
    maxRequestsPerConnection: 0,
    connectTimeoutMs: 5_000,
  });
}

Deno.test("h1 codec: an upstream's early answer (413 before the upload ended, then a close) reaches the client, not a 502 for the failed write", async () => {
  const up = startEarlyAnswerUpstream();
  const t = codecTransport();
  try {
    const got: string[] = [];
    // The write failing and the answer arriving race: several rounds, both framings.
    for (let i = 0; i < 18; i++) {
      const chunked = i % 6 >= 3;
      const size = [1000, 100_000, 8 << 20][i % 3]!;
      const headers: [string, string][] = [["host", "up"]];
      if (!chunked) headers.push(["content-length", String(size)]);
      try {
        const res = await t.send({
          url: `${up.url}/upload`,
          method: "POST",
          headers,
          body: bigBody(size),
          signal: AbortSignal.timeout(10_000),
        });
        got.push(`${res.status} ${await res.text()}`);
      } catch (err) {
        got.push(`${(err as Error).name}: ${(err as Error).message}`);
      }
    }
    assert.deepEqual(got, got.map(() => "413 too big"));
  } finally {
    t.close();
    await up.close();
  }
});

/**
 * A gRPC upstream on Ferry's own HTTP/2 stack that answers every call with its headers and one
 * message, then RST_STREAM (INTERNAL_ERROR): the answer breaks off after it began.
 */
function startGrpcMessageThenReset() {
  const server = startH2Server(async (s) => {
    for await (const _ of s.body) { /* the request message */ }
    s.sendHeaders([[":status", "200"], ["content-type", "application/grpc"]]);
    await s.write(new Uint8Array([0, 0, 0, 0, 2, 104, 105]));
    await new Promise((r) => setTimeout(r, 50));
    s.reset(ErrorCode.INTERNAL_ERROR);
  });
  return server;
}

Deno.test("gRPC: an answer the upstream resets after its first message is counted in ferry_upstream_response_body_errors_total", async () => {
  const up = startGrpcMessageThenReset();
  const px = startFerry(grpcEchoConfig() + `admin: { address: "127.0.0.1:0" }\n`, {
    PORT: String(up.port),
  });
  const client = echoClient(px.port);
  try {
    const r = await unary(client, enc.encode("hi"));
    assert.ok(r.error, "the call fails");
    const metrics = await (await fetch(`${px.adminUrl}/metrics`)).text();
    assert.equal(
      metricValue(metrics, "ferry_upstream_response_body_errors_total", {
        cluster: "echo",
        reason: "upstream_reset",
      }),
      1,
    );
  } finally {
    client.close();
    await px.close();
    up.close();
  }
});

Deno.test("a response body silent past the route's idle_timeout is counted once (reason upstream_timeout), on h1 and fetch", async () => {
  // A good head and 2 of 10 body bytes, then silence.
  const up = startRawServer(async (conn) => {
    const text = await readHead(conn, 10_000);
    if (!text.includes("\r\n\r\n")) return;
    await conn.write(enc.encode("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhi"));
    await new Promise((r) => setTimeout(r, 3_000));
  });
  const px = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
server: { watch_config: false }
routes:
  - { name: h1, match: { path: { prefix: /h1/ } }, cluster: h1, timeout: 5s, idle_timeout: 300ms }
  - { name: fe, match: { path: { prefix: /fe/ } }, cluster: fe, timeout: 5s, idle_timeout: 300ms }
clusters:
  - { name: h1, endpoints: ["${up.url}"] }
  - { name: fe, endpoints: ["${up.url}"], transport: fetch }
`);
  try {
    for (const path of ["/h1/x", "/fe/x"]) {
      const res = await fetch(`${px.url}${path}`);
      assert.equal(res.status, 200);
      await assert.rejects(res.text(), Error, `${path}: the body is cut`);
    }
    const metrics = await (await fetch(`${px.adminUrl}/metrics`)).text();
    const count = (cluster: string, reason: string) =>
      metricValue(metrics, "ferry_upstream_response_body_errors_total", { cluster, reason });
    assert.deepEqual(
      [count("h1", "upstream_timeout"), count("fe", "upstream_timeout")],
      [1, 1],
    );
    assert.deepEqual([count("h1", "upstream_reset"), count("fe", "upstream_reset")], [0, 0]);
  } finally {
    await px.close();
    await up.close();
  }
});

/**
 * An h2c upstream on Ferry's own HTTP/2 stack, by path: `/early` answers 413 in full without
 * reading the request body, then RST_STREAM (NO_ERROR), as RFC 9113 8.1 lets a server stop an
 * upload; `/info-flood` sends 1xx HEADERS without end; `/info-end` a 103 with END_STREAM.
 */
function startH2Misbehaving() {
  const server = startH2Server(async (s) => {
    const head = await s.headers;
    const path = head.find(([n]) => n === ":path")?.[1] ?? "/";
    if (path.endsWith("/early")) {
      s.sendHeaders([[":status", "413"], ["content-length", "7"]]);
      await s.write(enc.encode("too big"));
      await s.end();
      s.reset(ErrorCode.NO_ERROR);
    } else if (path.endsWith("/info-flood")) {
      for (let i = 0; i < 2_000 && !s.isClosed; i++) {
        s.sendHeaders([[":status", "100"]]);
        if (i % 50 === 0) await new Promise((r) => setTimeout(r, 1));
      }
    } else if (path.endsWith("/info-end")) {
      s.sendHeaders([[":status", "103"], ["link", "</a>"]], true);
    }
  });
  return server;
}

/** A POST of `size` bytes on a raw HTTP/1.1 connection; what came back before the close or 4 s. */
async function rawPost(port: number, path: string, size: number): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let text = "";
  const reading = readFor(conn, 4_000, (c) => text += dec.decode(c), 1 << 20);
  try {
    await conn.write(enc.encode(
      `POST ${path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\ncontent-length: ${size}\r\n\r\n`,
    ));
    const piece = new Uint8Array(64 * 1024).fill(120);
    for (let sent = 0; sent < size; sent += piece.length) {
      await conn.write(piece.subarray(0, Math.min(piece.length, size - sent)));
    }
  } catch { /* Ferry may stop reading once it has the answer */ }
  await reading;
  conn.close();
  return text;
}

Deno.test("HTTP/2 upstream: a complete early answer then RST_STREAM(NO_ERROR) reaches the client; 1xx floods and a 1xx with END_STREAM are a prompt 502", async () => {
  const up = startH2Misbehaving();
  const px = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
server: { watch_config: false }
routes: [{ name: h2, cluster: h2, timeout: 4s }]
clusters: [{ name: h2, protocol: h2c, endpoints: ["${up.url}"] }]
`);
  try {
    // 4 MiB: far more than the stream's window, so the upload is still going when the answer comes.
    const early = await rawPost(px.port, "/early", 4 << 20);
    assert.match(
      early,
      /^HTTP\/1\.1 413 [^]*\r\n\r\ntoo big$/,
      JSON.stringify(early.slice(0, 300)),
    );
    for (const path of ["/info-flood", "/info-end"]) {
      const t0 = Date.now();
      const res = await fetch(`${px.url}${path}`);
      const body = await res.json();
      assert.equal(res.status, 502, `${path}: ${JSON.stringify(body)}`);
      assert.equal(body.flag, "UPE", path);
      assert.ok(Date.now() - t0 < 2_000, `${path}: answered before the route timeout`);
    }
  } finally {
    await px.close();
    up.close();
  }
});

Deno.test("h1 keep-alive race: a POST that met a reused connection closing is not sent again (the upstream may have acted on it)", async () => {
  // The second request on every connection is read whole and met with a close, no answer: an
  // upstream that crashed on it, or one whose idle timer fired as it arrived. Only an idempotent
  // request may go again (RFC 9110 9.2.2; nginx, Go's net/http).
  const up = startRawUpstream((req) => req.index === 1 ? { bytes: null } : { bytes: ok("fresh") });
  const t = codecTransport();
  try {
    assert.equal(await (await t.send(request(`${up.url}/1`, "GET"))).text(), "fresh");
    await assert.rejects(
      t.send(request(`${up.url}/2`, "POST", "order=1")),
      (e: unknown) => e instanceof ProxyError && e.kind === "upstream_reset",
    );
    assert.equal(t.staleRetries, 0);
    assert.equal(up.requests.filter((r) => r.head.startsWith("POST")).length, 1, "sent once");
  } finally {
    t.close();
    await up.close();
  }
});

function request(url: string, method: string, body?: string) {
  return {
    url,
    method,
    headers: [["host", "up"], ...(body ? [["content-length", String(body.length)]] : [])] as [
      string,
      string,
    ][],
    body: body ? new Blob([body]).stream() : null,
    signal: AbortSignal.timeout(10_000),
  };
}

Deno.test("a WebSocket upstream that never answers the handshake gets 504 within the route timeout, on the byte tunnel and the frame relay", async () => {
  const up = startRawServer(async (conn) => {
    await conn.read(new Uint8Array(16 * 1024));
    await new Promise((r) => setTimeout(r, 12_000));
  });
  const px = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
server: { watch_config: false }
routes:
  - { name: h1, match: { path: { prefix: /h1/ } }, cluster: h1, timeout: 1s }
  - { name: fe, match: { path: { prefix: /fe/ } }, cluster: fe, timeout: 1s }
clusters:
  - { name: h1, endpoints: ["${up.url}"] }
  - { name: fe, endpoints: ["${up.url}"], transport: fetch }
`);
  try {
    for (const path of ["/h1/ws", "/fe/ws"]) {
      const t0 = Date.now();
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
      let text = "";
      try {
        await conn.write(enc.encode(
          `GET ${path} HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n` +
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        ));
        text = await readHead(conn, 8_000);
      } finally {
        conn.close();
      }
      assert.match(text, /^HTTP\/1\.1 504 /, `${path}: ${JSON.stringify(text.slice(0, 200))}`);
      assert.ok(Date.now() - t0 < 4_000, `${path}: ${Date.now() - t0} ms, past the route timeout`);
    }
  } finally {
    await px.close();
    await up.close();
  }
});

/** Reads until a head has come (or the peer closes, or `ms` pass); the text so far. */
async function readHead(conn: Deno.Conn, ms: number): Promise<string> {
  let text = "";
  const deadline = Date.now() + ms;
  const buf = new Uint8Array(16 * 1024);
  while (!text.includes("\r\n\r\n") && Date.now() < deadline) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"t">((r) => timer = setTimeout(() => r("t"), deadline - Date.now())),
    ]);
    clearTimeout(timer);
    if (n === "t" || n === null) break;
    text += dec.decode(buf.subarray(0, n));
  }
  return text;
}

/**
 * A raw WebSocket upstream: a real 101, one text frame `then` (default: "bye", unmasked), then the
 * TCP connection closes after `holdMs`; what it reads meanwhile lands in `got`.
 */
function startWsThenClose(
  then: Uint8Array = new Uint8Array([0x81, 3, 98, 121, 101]),
  holdMs = 0,
  got: number[] = [],
  /** `100 Continue` heads sent before the 101. */
  interim = 0,
) {
  return startRawServer(async (conn) => {
    const text = await readHead(conn, 10_000);
    if (!text.includes("\r\n\r\n")) return;
    const key = /sec-websocket-key: *(\S+)/i.exec(text)?.[1] ?? "";
    const digest = await crypto.subtle.digest(
      "SHA-1",
      enc.encode(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"),
    );
    const accept = btoa(String.fromCharCode(...new Uint8Array(digest)));
    await conn.write(enc.encode(
      "HTTP/1.1 100 Continue\r\n\r\n".repeat(interim) +
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n" +
        `sec-websocket-accept: ${accept}\r\n\r\n`,
    ));
    await conn.write(then);
    const until = Date.now() + holdMs;
    const buf = new Uint8Array(16 * 1024);
    while (Date.now() < until) {
      const n = await Promise.race([
        conn.read(buf),
        new Promise<null>((r) => setTimeout(() => r(null), until - Date.now())),
      ]);
      if (n === null) break;
      got.push(...buf.subarray(0, n));
    }
  });
}

/** Opens a WebSocket, sends `hello` once open when `closeFirst`, then closes it; waits for the close. */
function wsSession(url: string, closeFirst: boolean): Promise<string[]> {
  return new Promise((resolve) => {
    const seen: string[] = [];
    const ws = new WebSocket(url);
    const timer = setTimeout(() => {
      seen.push("timeout");
      ws.close();
    }, 5_000);
    ws.onopen = () => {
      if (closeFirst) ws.send("hello");
    };
    ws.onmessage = (m) => {
      seen.push(String(m.data));
      if (closeFirst) ws.close(1000);
    };
    ws.onerror = () => {};
    ws.onclose = () => {
      clearTimeout(timer);
      resolve(seen);
    };
  });
}

Deno.test("a WebSocket the upstream breaks off (TCP close, no close frame) is counted once on the byte tunnel and the frame relay; a clean close is not", async () => {
  const broken = startWsThenClose();
  const echo = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (m) => socket.send(m.data);
    return response;
  });
  const px = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
server: { watch_config: false }
routes:
  - { name: h1, match: { path: { prefix: /h1/ } }, cluster: h1 }
  - { name: fe, match: { path: { prefix: /fe/ } }, cluster: fe }
  - { name: h1-echo, match: { path: { prefix: /echo/h1 } }, cluster: h1-echo }
  - { name: fe-echo, match: { path: { prefix: /echo/fe } }, cluster: fe-echo }
clusters:
  - { name: h1, endpoints: ["${broken.url}"] }
  - { name: fe, endpoints: ["${broken.url}"], transport: fetch }
  - { name: h1-echo, endpoints: ["http://127.0.0.1:${echo.addr.port}"] }
  - { name: fe-echo, endpoints: ["http://127.0.0.1:${echo.addr.port}"], transport: fetch }
`);
  const ws = px.url.replace("http", "ws");
  try {
    assert.deepEqual(await wsSession(`${ws}/h1/x`, false), ["bye"]);
    assert.deepEqual(await wsSession(`${ws}/fe/x`, false), ["bye"]);
    assert.deepEqual(await wsSession(`${ws}/echo/h1`, true), ["hello"]);
    assert.deepEqual(await wsSession(`${ws}/echo/fe`, true), ["hello"]);
    await new Promise((r) => setTimeout(r, 300));
    const metrics = await (await fetch(`${px.adminUrl}/metrics`)).text();
    const count = (cluster: string) =>
      metricValue(metrics, "ferry_upstream_response_body_errors_total", {
        cluster,
        reason: "upstream_reset",
      });
    assert.deepEqual(
      ["h1", "fe", "h1-echo", "fe-echo"].map(count),
      [1, 1, 0, 0],
    );
  } finally {
    await px.close();
    await echo.shutdown();
    await broken.close();
  }
});

/** A WebSocket handshake on a raw connection; the bytes that came back until `done` says so. */
async function rawWs(
  port: number,
  done: (bytes: number[], bodyAt: number) => boolean,
): Promise<{ bytes: number[]; bodyAt: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const bytes: number[] = [];
  let bodyAt = -1;
  try {
    await conn.write(enc.encode(
      "GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" +
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ));
    const buf = new Uint8Array(16 * 1024);
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline) {
      const head = String.fromCharCode(...bytes).indexOf("\r\n\r\n");
      bodyAt = head < 0 ? -1 : head + 4;
      if (bodyAt >= 0 && done(bytes, bodyAt)) break;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        conn.read(buf).catch(() => null),
        new Promise<null>((r) => timer = setTimeout(() => r(null), deadline - Date.now())),
      ]);
      clearTimeout(timer);
      if (n === null) break;
      bytes.push(...buf.subarray(0, n));
    }
  } finally {
    conn.close();
  }
  return { bytes, bodyAt };
}

Deno.test("byte tunnel: a masked frame from the upstream is not passed on; the client gets 1011, the upstream 1002", async () => {
  const got: number[] = [];
  // A masked text frame "hi" (mask 1 2 3 4), which a server must never send (RFC 6455 5.1).
  const masked = startWsThenClose(
    new Uint8Array([0x81, 0x82, 1, 2, 3, 4, 104 ^ 1, 105 ^ 2]),
    1_000,
    got,
  );
  const px = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
server: { watch_config: false }
routes: [{ name: h1, cluster: h1 }]
clusters: [{ name: h1, endpoints: ["${masked.url}"] }]
`);
  try {
    const { bytes, bodyAt } = await rawWs(px.port, (b, at) => b.length >= at + 4);
    assert.match(String.fromCharCode(...bytes), /^HTTP\/1\.1 101 /);
    const frames = bytes.slice(bodyAt);
    assert.equal(frames[0], 0x88, `a close frame first, not the masked one: ${frames}`);
    assert.equal((frames[2]! << 8) | frames[3]!, 1011);
    await new Promise((r) => setTimeout(r, 300));
    // The upstream got a close frame (masked, as a client's) with 1002.
    const at = got.indexOf(0x88);
    assert.ok(at >= 0 && got[at + 1]! & 0x80, `the upstream got a masked close frame: ${got}`);
    const key = got.slice(at + 2, at + 6);
    assert.equal(((got[at + 6]! ^ key[0]!) << 8) | (got[at + 7]! ^ key[1]!), 1002);
  } finally {
    await px.close();
    await masked.close();
  }
});

Deno.test("frame relay: an upstream WebSocket that drops its TCP connection gets the client a close frame 1014, not the invalid code 0", async () => {
  const broken = startWsThenClose();
  const px = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
server: { watch_config: false }
routes: [{ name: fe, cluster: fe }]
clusters: [{ name: fe, endpoints: ["${broken.url}"], transport: fetch }]
`);
  try {
    // Until the close frame's code is in (Ferry then waits for the client's close reply).
    const { bytes, bodyAt } = await rawWs(px.port, (b, at) => {
      const close = b.indexOf(0x88, at);
      return close >= 0 && b.length >= close + 4;
    });
    assert.match(String.fromCharCode(...bytes), /^HTTP\/1\.1 101 /);
    // After the head: a text frame "bye", then the close frame (FIN + opcode 8, unmasked).
    const frames = bytes.slice(bodyAt);
    const close = frames.indexOf(0x88);
    assert.ok(close >= 0, `a close frame: ${JSON.stringify(frames)}`);
    assert.equal((frames[close + 2]! << 8) | frames[close + 3]!, 1014);
  } finally {
    await px.close();
    await broken.close();
  }
});

Deno.test("WebSocket handshake through the codec: 1xx before the 101 are bounded as on every transport (16)", async () => {
  const flood = startWsThenClose(undefined, 0, [], 17);
  const fine = startWsThenClose(undefined, 0, [], 16);
  const px = startFerry(`listeners: [{ name: p, address: "127.0.0.1:0" }]
server: { watch_config: false }
routes:
  - { name: flood, match: { path: { prefix: /flood } }, cluster: flood }
  - { name: fine, match: { path: { prefix: / } }, cluster: fine }
clusters:
  - { name: flood, endpoints: ["${flood.url}"] }
  - { name: fine, endpoints: ["${fine.url}"] }
`);
  try {
    assert.deepEqual(await wsSession(`${px.url.replace("http", "ws")}/ok`, false), ["bye"]);
    const res = await fetch(`${px.url}/flood`, {
      headers: {
        connection: "upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      },
    });
    const body = await res.json();
    assert.equal(res.status, 502);
    assert.match(body.reason, /more than 16 interim \(1xx\) responses/);
  } finally {
    await px.close();
    await flood.close();
    await fine.close();
  }
});
