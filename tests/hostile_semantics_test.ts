/**
 * HTTP semantics of what clients send, where Ferry itself parses it: the gRPC listener's own
 * HTTP/2 server (RFC 9113 8.1.1, 8.2, 8.3), header bytes through Ferry's HPACK in both
 * directions, and Expect on every HTTP listener kind. A real Ferry process, raw sockets and raw
 * HTTP/2 frames, and a recording upstream (Deno.serve, h2c) that shows what was forwarded.
 * Malformed requests on HTTP/1.1 and on Deno.serve's HTTP/2 are in hostile_test.ts,
 * h1_server_test.ts and hostile_h2_test.ts.
 */
import assert from "node:assert/strict";
import {
  metricValue,
  spawnFerry,
  type Started,
  startH2Server,
  startUpstream,
  tempConfig,
} from "./helpers.ts";
import {
  CLIENT_PREFACE,
  ErrorCode,
  Flag,
  frame,
  FrameReader,
  FrameType,
  headerFrames,
  readUint32,
  settingsAck,
  settingsFrame,
} from "../src/h2/frames.ts";
import { type HeaderField, HpackDecoder, HpackEncoder } from "../src/h2/hpack.ts";

/** What the upstream received: path, header values as char codes (one per byte), body length. */
interface Seen {
  path: string;
  headers: Map<string, string>;
  bodyBytes: number;
}

/** An h2c/HTTP/1.1 upstream recording each request; answers gRPC with status 0 and a header. */
function startRecordingUpstream() {
  const seen: Seen[] = [];
  const up = startUpstream(async (req) => {
    const body = req.body ? new Uint8Array(await req.arrayBuffer()) : new Uint8Array();
    seen.push({
      path: new URL(req.url).pathname,
      headers: new Map(req.headers),
      bodyBytes: body.length,
    });
    // obs-text in a response field: bytes 0x80 and 0xe9 (a ByteString holds one per char).
    const headers: Record<string, string> = { "x-obs": "\x80\xe9z" };
    if ((req.headers.get("content-type") ?? "").startsWith("application/grpc")) {
      headers["content-type"] = "application/grpc";
      headers["grpc-status"] = "0";
      return new Response(new Uint8Array(5), { headers });
    }
    return new Response("ok", { headers });
  });
  return { up, seen };
}

async function stop(f: Started): Promise<void> {
  f.child.kill("SIGTERM");
  await f.child.status;
  assert.deepEqual(f.logs.filter((l) => /internal error escaped|Uncaught/.test(l)), []);
}

function portOf(url: string): number {
  return Number(new URL(url).port);
}

/** What came back on stream 1: a reset, a GOAWAY, or headers (with the trailers' grpc-status). */
type Outcome =
  | { rst: number }
  | { goaway: number }
  | { status: string; grpcStatus?: string; fields: HeaderField[] }
  | { none: true };

/**
 * One request on a fresh HTTP/2 connection: `fields` in HEADERS (END_STREAM when there is no
 * body), then each body part as DATA, the last with END_STREAM. A frame instead of `fields` is
 * sent as it is.
 */
async function h2Request(
  port: number,
  fields: HeaderField[] | Uint8Array,
  body: Uint8Array[] = [],
  ms = 5_000,
): Promise<Outcome> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const encoder = new HpackEncoder({ huffman: false });
  const decoder = new HpackDecoder();
  const reader = new FrameReader(1 << 24);
  const timer = setTimeout(() => conn.close(), ms);
  let head: { status: string; fields: HeaderField[] } | undefined;
  try {
    await conn.write(CLIENT_PREFACE);
    await conn.write(settingsFrame([]));
    const frames = fields instanceof Uint8Array
      ? [fields]
      : headerFrames(1, encoder.encode(fields), body.length === 0, 16_384);
    for (const f of frames) await conn.write(f);
    for (let i = 0; i < body.length; i++) {
      const last = i === body.length - 1 ? Flag.END_STREAM : 0;
      await conn.write(frame(FrameType.DATA, last, 1, body[i])).catch(() => 0);
    }
    const buf = new Uint8Array(65_536);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) return head ?? { none: true };
      reader.push(buf.slice(0, n));
      for (let f = reader.next(); f; f = reader.next()) {
        if (f.type === FrameType.SETTINGS && !(f.flags & Flag.ACK)) await conn.write(settingsAck());
        if (f.type === FrameType.GOAWAY && readUint32(f.payload, 4) !== 0) {
          return { goaway: readUint32(f.payload, 4) };
        }
        if (f.streamId !== 1) continue;
        if (f.type === FrameType.RST_STREAM) return { rst: readUint32(f.payload, 0) };
        if (f.type === FrameType.HEADERS) {
          const got = decoder.decode(f.payload);
          if (!head) head = { status: got.find(([k]) => k === ":status")?.[1] ?? "", fields: got };
          else {
            return { ...head, grpcStatus: got.find(([k]) => k === "grpc-status")?.[1] ?? "" };
          }
          const grpcStatus = got.find(([k]) => k === "grpc-status")?.[1];
          if (f.flags & Flag.END_STREAM) {
            return grpcStatus === undefined ? head : { ...head, grpcStatus };
          }
        }
        if (f.type === FrameType.DATA && f.flags & Flag.END_STREAM && head) return head;
      }
    }
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer or the server */ }
  }
}

const GRPC_CONFIG = (upstream: string) =>
  `listeners:
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
admin: { address: "127.0.0.1:0" }
routes:
  - { name: g, match: { path: { prefix: / } }, cluster: g }
clusters:
  - { name: g, protocol: h2c, endpoints: ["${upstream}"] }
`;

/** A gRPC call's request fields, with `extra` after them and `over` replacing pseudo-headers. */
function call(path: string, extra: HeaderField[] = [], over: Record<string, string> = {}) {
  const pseudo: HeaderField[] = [
    [":method", over[":method"] ?? "POST"],
    [":scheme", "http"],
    [":path", over[":path"] ?? path],
    [":authority", "a.test"],
  ];
  return [
    ...pseudo,
    ["content-type", "application/grpc"],
    ["te", "trailers"],
    ...extra,
  ] as HeaderField[];
}

const TEN = new Uint8Array(10);

Deno.test("hostile semantics: the gRPC listener resets malformed requests (RFC 9113 8.1.1), counts them and forwards none", async () => {
  const { up, seen } = startRecordingUpstream();
  const f = await spawnFerry(["--config", await tempConfig(GRPC_CONFIG(up.url))]);
  const port = portOf(f.listeners.get("grpc")!);
  try {
    const cases: [string, HeaderField[] | Uint8Array, Uint8Array[]][] = [
      // Fields Headers cannot hold were a 500 (grpc-status 13, "the proxy failed").
      ["CR LF in a value", call("/m.S/crlf", [["x-a", "a\r\nx-injected: 1"]]), []],
      ["NUL in a value", call("/m.S/nul", [["x-a", "a\x00b"]]), []],
      ["space in a name", call("/m.S/space", [["x a", "1"]]), []],
      ["colon in a name", call("/m.S/colon", [["x:a", "1"]]), []],
      // Forwarded before.
      ["a :method that is no token", call("/m.S/method", [], { ":method": "G T" }), []],
      ["an empty :path", call("", [], { ":path": "" }), []],
      ["a :path without /", call("m.S/noslash"), []],
      ["a :path with a fragment", call("/m.S/frag#x"), []],
      ["Host naming another authority", call("/m.S/host", [["host", "b.test"]]), []],
      ["CONNECT with :path and :scheme", call("/m.S/connect", [], { ":method": "CONNECT" }), []],
      [
        "a :protocol (extended CONNECT, RFC 8441, is never enabled)",
        [[":method", "POST"], [":protocol", "websocket"], ...call("/m.S/protocol").slice(1)],
        [],
      ],
      ["a content-length of no digits", call("/m.S/cl-abc", [["content-length", "ten"]]), [TEN]],
      ["a signed content-length", call("/m.S/cl-plus", [["content-length", "+10"]]), [TEN]],
      [
        "two content-lengths",
        call("/m.S/cl-two", [["content-length", "10"], ["content-length", "10"]]),
        [TEN],
      ],
      ["more DATA than content-length", call("/m.S/cl-over", [["content-length", "5"]]), [TEN]],
      ["less DATA than content-length", call("/m.S/cl-under", [["content-length", "20"]]), [TEN]],
      ["content-length on a body-less stream", call("/m.S/cl-none", [["content-length", "5"]]), []],
    ];
    // A PRIORITY frame making stream 1 depend on itself (RFC 9113 5.3.1) was ignored.
    const selfDependent = frame(FrameType.PRIORITY, 0, 1, new Uint8Array([0, 0, 0, 1, 16]));
    cases.push(["a stream depending on itself", selfDependent, []]);
    for (const [name, fields, body] of cases) {
      const out = await h2Request(port, fields, body);
      assert.deepEqual(out, { rst: ErrorCode.PROTOCOL_ERROR }, `${name}: a stream error`);
    }
    // Well-formed but not proxied, as on the HTTP listeners: a scheme other than http(s).
    const ftp = await h2Request(
      port,
      call("/m.S/ftp").map(([n, v]) => [n, n === ":scheme" ? "ftp" : v]),
    );
    assert.ok("status" in ftp && ftp.grpcStatus === "13", JSON.stringify(ftp));
    // Well-formed: a matching content-length, and a Host naming the same host as :authority, are
    // served; the client's Host is not forwarded beside the upstream's :authority.
    const ok = await h2Request(
      port,
      call("/m.S/ok", [["content-length", "10"], ["host", "A.test:80"]]),
      [TEN],
    );
    assert.equal("status" in ok && ok.grpcStatus, "0", JSON.stringify(ok));
    // A body whose DATA breaks its content-length is known bad only when that DATA arrives: if
    // the head had gone upstream by then, Ferry resets the upstream stream (CANCEL), and none of
    // the body is forwarded. Deno.serve, this test's upstream, reads a request reset after its
    // HEADERS as a complete empty body (a raw HTTP/2 client shows it with a bare Deno.serve), so
    // such a head may be seen here, always with no body bytes.
    const streamedLength = new Set(["/m.S/cl-over", "/m.S/cl-under"]);
    for (const s of seen.filter((s) => streamedLength.has(s.path))) {
      assert.equal(s.bodyBytes, 0, `${s.path}: no byte of a body that breaks its length`);
    }
    assert.deepEqual(
      seen.filter((s) => !streamedLength.has(s.path)).map((s) => s.path),
      ["/m.S/ok"],
      "nothing malformed reached upstream",
    );
    const served = seen.find((s) => s.path === "/m.S/ok")!;
    assert.equal(served.bodyBytes, 10);
    assert.equal(served.headers.get("host") ?? null, null);
    // A header list over the limit is answered 431 (RFC 9113 10.5.1); it was not counted.
    const big = await h2Request(
      port,
      call("/m.S/big", Array.from({ length: 20 }, (_, i) => [`x-big-${i}`, "v".repeat(4000)])),
    );
    assert.ok("status" in big && big.status === "431", JSON.stringify(big));
    // One value over the limit alone: the same 431 (it was GOAWAY COMPRESSION_ERROR, which ends
    // every call on the connection).
    const one = await h2Request(port, call("/m.S/one", [["x-big", "v".repeat(70_000)]]));
    assert.ok("status" in one && one.status === "431", JSON.stringify(one));
    const metrics = await (await fetch(`${f.admin}/metrics`)).text();
    assert.equal(
      metricValue(metrics, "ferry_downstream_refused_total", {
        listener: "grpc",
        reason: "headers_too_large",
      }),
      2,
    );
    assert.equal(
      metricValue(metrics, "ferry_downstream_refused_total", {
        listener: "grpc",
        reason: "bad_request",
      }),
      cases.length,
    );
    // Log lines arrive through the child's stderr pipe: wait for them, a bounded while.
    const refusedLines = () => f.logs.filter((l) => l.includes("grpc stream refused")).length;
    for (let i = 0; i < 50 && refusedLines() < cases.length + 2; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(refusedLines(), cases.length + 2);
  } finally {
    await stop(f);
    await up.close();
  }
});

/** One HTTP/1.1 request as bytes (header values may carry any byte); the response as bytes. */
async function h1Bytes(port: number, head: number[]): Promise<Uint8Array> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const chunks: number[] = [];
  try {
    await conn.write(new Uint8Array(head));
    const buf = new Uint8Array(65_536);
    const deadline = Date.now() + 5_000;
    while (Date.now() < deadline) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      chunks.push(...buf.subarray(0, n));
    }
  } finally {
    conn.close();
  }
  return new Uint8Array(chunks);
}

const ascii = (s: string) => [...s].map((c) => c.charCodeAt(0));
const codes = (s: string | null | undefined) => [...s ?? ""].map((c) => c.charCodeAt(0));

Deno.test("hostile semantics: obs-text header bytes cross Ferry's HTTP/2 unchanged, to h2c upstreams and back, on HTTP and gRPC listeners", async () => {
  const { up, seen } = startRecordingUpstream();
  const cfg = await tempConfig(`listeners:
  - { name: public, address: "127.0.0.1:0" }
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
routes:
  - { name: g, match: { path: { prefix: / } }, cluster: g }
clusters:
  - { name: g, protocol: h2c, endpoints: ["${up.url}"] }
`);
  const f = await spawnFerry(["--config", cfg], {}, 2);
  try {
    // An HTTP/1.1 client's field value with bytes 0xe9 0x80 (obs-text, RFC 9110 5.5). They went
    // upstream as UTF-8 (c3 a9 c2 80), and 0x80 came back as windows-1252's U+20AC (a 502).
    const res = await h1Bytes(portOf(f.listeners.get("public")!), [
      ...ascii("GET /h1 HTTP/1.1\r\nHost: a\r\nX-Obs: "),
      0xe9,
      0x80,
      0x7a,
      ...ascii("\r\nConnection: close\r\n\r\n"),
    ]);
    const text = String.fromCharCode(...res);
    assert.match(text, /^HTTP\/1\.1 200 /);
    assert.match(text, /\r\nx-obs: \x80\xe9z\r\n/);
    assert.deepEqual(codes(seen.at(-1)?.headers.get("x-obs")), [0xe9, 0x80, 0x7a]);
    // The same bytes as gRPC metadata.
    const out = await h2Request(
      portOf(f.listeners.get("grpc")!),
      call("/m.S/obs", [["x-obs", "\xe9\x80z"]]),
      [new Uint8Array(5)],
    );
    assert.ok("status" in out && out.status === "200", JSON.stringify(out));
    assert.deepEqual(codes(out.fields.find(([n]) => n === "x-obs")?.[1]), [0x80, 0xe9, 0x7a]);
    assert.deepEqual(codes(seen.at(-1)?.headers.get("x-obs")), [0xe9, 0x80, 0x7a]);
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("hostile semantics: an Expect other than 100-continue is 417 on every HTTP listener kind, and never forwarded", async () => {
  const { up, seen } = startRecordingUpstream();
  const config = (guard: boolean) =>
    tempConfig(`listeners:
  - { name: public, address: "127.0.0.1:0" }
server: { connection_guard: ${guard} }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: u }
clusters:
  - { name: u, endpoints: ["${up.url}"] }
`);
  for (const guard of [true, false]) {
    const f = await spawnFerry(["--config", await config(guard)]);
    const port = portOf(f.listeners.get("public")!);
    try {
      const res = String.fromCharCode(
        ...await h1Bytes(
          port,
          ascii(
            "POST /h1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue, foo\r\nContent-Length: 5\r\n" +
              "Connection: close\r\n\r\nhello",
          ),
        ),
      );
      assert.match(res, /^HTTP\/1\.1 417 /, `guard ${guard}: ${res}`);
      assert.match(res, /x-request-id: /);
      assert.match(res, /unsupported expectation/);
      // HTTP/2 (h2c with prior knowledge): through the guard's hop, or Deno.serve directly.
      const h2 = await h2Request(port, [
        [":method", "GET"],
        [":scheme", "http"],
        [":path", "/h2"],
        [":authority", "a.test"],
        ["expect", "foo"],
      ]);
      assert.ok("status" in h2 && h2.status === "417", JSON.stringify(h2));
      assert.ok(h2.fields.some(([n]) => n === "x-request-id"));
      // 100-continue alone is still met (the body is read, the request forwarded).
      const ok = String.fromCharCode(
        ...await h1Bytes(
          port,
          ascii(
            "POST /ok HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n" +
              "Connection: close\r\n\r\nhello",
          ),
        ),
      );
      assert.match(ok, /HTTP\/1\.1 200 /, `guard ${guard}: ${ok}`);
      assert.deepEqual(seen.map((s) => s.path), ["/ok"]);
      seen.length = 0;
    } finally {
      await stop(f);
    }
  }
  await up.close();
});

/**
 * A gRPC upstream on Ferry's own HTTP/2 stack answering with a field value holding CR LF (its
 * sender does not check what it is given).
 */
function startInjectingH2Upstream() {
  const server = startH2Server(async (s) => {
    await s.headers;
    for await (const _ of s.body) { /* the request message */ }
    s.sendHeaders([
      [":status", "200"],
      ["content-type", "application/grpc"],
      ["x-injected", "a\r\nset-cookie: stolen=1"],
    ]);
    await s.write(new Uint8Array(5));
    s.sendHeaders([["grpc-status", "0"]], true);
  });
  return server;
}

Deno.test("hostile semantics: a gRPC upstream's field value with CR LF is an upstream protocol error naming the field", async () => {
  const up = startInjectingH2Upstream();
  const f = await spawnFerry(["--config", await tempConfig(GRPC_CONFIG(up.url))]);
  try {
    const out = await h2Request(portOf(f.listeners.get("grpc")!), call("/m.S/inject"), [
      new Uint8Array(5),
    ]);
    assert.ok("status" in out, JSON.stringify(out));
    // UNAVAILABLE, trailers-only, not passed on; the reason was "reset the stream (code 1)",
    // blaming a reset the upstream never sent.
    assert.equal(out.grpcStatus, "14");
    assert.ok(!out.fields.some(([n]) => n === "x-injected"));
    const message = out.fields.find(([n]) => n === "grpc-message")?.[1] ?? "";
    assert.match(decodeURIComponent(message), /invalid character in the value of "x-injected"/);
  } finally {
    await stop(f);
    up.close();
  }
});
