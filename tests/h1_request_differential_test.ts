/**
 * Differential test of the request-head parser of Ferry's own HTTP/1.1 server
 * (src/h1/parse.ts parseRequestHead, with the chunked decoder for the body) against llhttp, the
 * parser of node:http (Deno ships it as node's `http_parser` binding), as the oracle. For each
 * raw request (hand-written valid, edge and hostile cases, then fast-check generated ones) both
 * must make the same decision: the same method, target, header fields, body bytes and
 * keep-alive, or both refuse, or both wait for more bytes. Where they differ, the difference is
 * one listed below with its reason.
 */
// deno-lint-ignore-file no-explicit-any
import assert from "node:assert/strict";
import process from "node:process";
import { Buffer } from "node:buffer";
import fc from "fast-check";
import { ChunkedDecoder, H1ProtocolError, parseRequestHead } from "../src/h1/parse.ts";

/** Where Ferry refuses what llhttp accepts, by Ferry's reason (docs/connections.md). */
const STRICTER: [RegExp, string][] = [
  [/missing Host/, "RFC 9112 3.2: a server MUST answer 400 to a request without Host"],
  [/more than one Host/, "RFC 9112 3.2: a server MUST answer 400 to more than one Host"],
  [
    /more than one Content-Length|invalid Content-Length/,
    "one framing, stated once (RFC 9112 6.3 allows refusing equal repeats and lists)",
  ],
  [
    /Transfer-Encoding/,
    "only plain chunked: any other coding would reach the upstream undone (RFC 9112 6.1 allows 501)",
  ],
  [/version/, "only HTTP/1.0 and 1.1 (505)"],
  [/request target/, "a target that is not origin-form, absolute-form http(s) or OPTIONS *"],
  [/malformed request line/, "exactly one SP between the three parts of the request line"],
  [/chunk/, "chunk lines: only BWS and ';' extensions after the size, CRLF only"],
  [/obs-fold/, "obs-fold: RFC 9112 5.2 lets a server refuse it"],
  [/request head over/, "the guard's limits: 60 KiB and 124 lines"],
  [/invalid character in a header value/, "controls other than HTAB in a value"],
];

/** Where Ferry accepts what llhttp refuses, and why. */
const LENIENT: [RegExp, string][] = [
  [
    /Expected CRLF|Expected LF|Missing expected LF|Missing expected CR|Invalid header value char|Unexpected whitespace|Invalid header field char/,
    "bare LF line ends: RFC 9112 2.2 lets a recipient accept them (Deno.serve did)",
  ],
  [
    /Invalid method/,
    "extension methods: any token is a method (RFC 9110 9.1); llhttp knows a fixed list",
  ],
];

type Outcome =
  | {
    kind: "request";
    method: string;
    target: string;
    headers: string;
    body: string;
    keepAlive: boolean;
  }
  | { kind: "refused"; why: string }
  | { kind: "incomplete" };

const { HTTPParser, methods } = (process as any).binding("http_parser");

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

function viaLlhttp(raw: Uint8Array): Outcome {
  const p = new HTTPParser();
  p.initialize(HTTPParser.REQUEST, {}, 0, 0);
  let head: any[] | undefined;
  // Long header sections come in parts through kOnHeaders before kOnHeadersComplete.
  const early: string[] = [];
  p[HTTPParser.kOnHeaders] = (pairs: string[]) => {
    if (!head) early.push(...pairs); // after the head: trailers, which Ferry checks and drops
  };
  const body: number[] = [];
  let complete = false;
  p[HTTPParser.kOnHeadersComplete] = (...a: any[]) => {
    if (!complete) head = a;
  };
  p[HTTPParser.kOnBody] = (b: Uint8Array) => {
    if (!complete) body.push(...b);
  };
  p[HTTPParser.kOnMessageComplete] = () => {
    complete = true;
  };
  const r = p.execute(Buffer.from(raw));
  if (!complete && r instanceof Error) return { kind: "refused", why: String(r.message) };
  if (!complete || !head) return { kind: "incomplete" };
  const [, minor, last, method, url, , , upgrade, keepAlive] = head;
  const pairs = [...early, ...(last ?? [])];
  const headers: string[] = [];
  for (let i = 0; i < pairs.length; i += 2) {
    headers.push(`${pairs[i].toLowerCase()}:${pairs[i + 1]}`);
  }
  void minor;
  void upgrade;
  return {
    kind: "request",
    method: methods[method],
    target: url,
    headers: headers.join("\n"),
    body: hex(Uint8Array.from(body)),
    keepAlive,
  };
}

function viaFerry(raw: Uint8Array): Outcome {
  try {
    const h = parseRequestHead(raw, 0, raw.length);
    if (!h) return { kind: "incomplete" };
    const body: number[] = [];
    let pos = h.size;
    if (h.chunked) {
      const d = new ChunkedDecoder();
      while (!d.done) {
        const used = d.step(raw, pos, raw.length);
        if (used === 0) return { kind: "incomplete" };
        if (d.dataTo > d.dataFrom) body.push(...raw.subarray(d.dataFrom, d.dataTo));
        pos += used;
      }
    } else if (h.contentLength > 0) {
      if (raw.length - pos < h.contentLength) return { kind: "incomplete" };
      body.push(...raw.subarray(pos, pos + h.contentLength));
    }
    return {
      kind: "request",
      method: h.method,
      target: h.target,
      headers: h.headers.map(([n, v]) => `${n}:${v}`).join("\n"),
      body: hex(Uint8Array.from(body)),
      keepAlive: h.keepAlive,
    };
  } catch (err) {
    if (err instanceof H1ProtocolError) return { kind: "refused", why: err.reason };
    throw err;
  }
}

const tally = { same: 0, bothRefused: 0, bothIncomplete: 0, stricter: 0, lenient: 0 };

function judge(raw: Uint8Array): void {
  const node = viaLlhttp(raw);
  const ferry = viaFerry(raw);
  const show = `${JSON.stringify(String.fromCharCode(...raw.subarray(0, 300)))}\n llhttp: ${
    JSON.stringify(node)
  }\n ferry: ${JSON.stringify(ferry)}`;
  if (ferry.kind === "refused") {
    if (node.kind === "refused") return void tally.bothRefused++;
    assert.ok(
      STRICTER.some(([re]) => re.test(ferry.why)),
      `Ferry refused what llhttp took, for no listed reason\n${show}`,
    );
    tally.stricter++;
    return;
  }
  if (node.kind === "refused" && LENIENT.some(([re]) => re.test(node.why))) {
    return void tally.lenient++;
  }
  if (node.kind === "refused" && ferry.kind === "incomplete") {
    // llhttp refuses at the first bad byte; Ferry reads a line once it has ended. The same bytes
    // with the head ended must be refused by Ferry too.
    const ended = viaFerry(new Uint8Array([...raw, 13, 10, 13, 10]));
    assert.equal(ended.kind, "refused", `refused once the head ends\n${show}`);
    return void tally.bothRefused++;
  }
  if (node.kind === "refused") {
    assert.ok(
      LENIENT.some(([re]) => re.test(node.why)),
      `Ferry took what llhttp refused, for no listed reason\n${show}`,
    );
    tally.lenient++;
    return;
  }
  if (ferry.kind === "incomplete" || node.kind === "incomplete") {
    assert.equal(ferry.kind, node.kind, show);
    tally.bothIncomplete++;
    return;
  }
  // A Connection header naming close and keep-alive both: llhttp goes by the last one, Ferry
  // closes (RFC 9112 9.6: "close" means this is the last request).
  if (
    ferry.keepAlive !== node.keepAlive && !ferry.keepAlive &&
    /^connection:.*close/im.test(ferry.headers)
  ) {
    assert.deepEqual({ ...ferry, keepAlive: true }, node, show);
    return void tally.stricter++;
  }
  assert.deepEqual(ferry, node, show);
  tally.same++;
}

const latin1 = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);

const CASES: string[] = [
  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET /a?b=c HTTP/1.1\r\nHost: a\r\nX-A:  v  \r\nx-b:\r\n\r\n",
  "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
  "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
  "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
  "GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, Close\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nT: v\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
  "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET http://x.test/p HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET / HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9\r\n\r\n",
  "PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n",
  // Hostile.
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
  "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nab\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 x\r\nabc\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
  "POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
  "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
  "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n",
  "GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n",
  "GET / HTTP/1.1\r\nHost: a\r\nXA\r\n\r\n",
  "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
  "GET / HTTP/1.1\r\n\r\n",
  "GET / HTTP/1.1\nHost: a\n\n",
  "GET / HTTP/1.1\rHost: a\r\n\r\n",
  "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
  "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
  "GET / http/1.1\r\nHost: a\r\n\r\n",
  "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
  "GET /\r\n\r\n",
  "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
  "get / HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
  "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
  "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
  `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${"b".repeat(70_000)}\r\n\r\n`,
  `GET / HTTP/1.1\r\nHost: a\r\n${"X-M: m\r\n".repeat(130)}\r\n`,
  "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
];

Deno.test("request heads: Ferry's parser and llhttp decide alike on the hand-written corpus, or differ for a listed reason", () => {
  for (const c of CASES) judge(latin1(c));
  assert.ok(tally.same >= 10, JSON.stringify(tally));
  assert.ok(tally.bothRefused >= 15, JSON.stringify(tally));
});

/** Mostly `usual`, sometimes one of `odd`: most generated requests are valid or nearly so. */
const mostly = (usual: string[], odd: string[]) =>
  fc.oneof({ arbitrary: fc.constantFrom(...usual), weight: 8 }, {
    arbitrary: fc.constantFrom(...odd),
    weight: 1,
  });
const line = mostly(["\r\n"], ["\n", "\r"]);
const method = mostly(["GET", "POST", "PUT", "OPTIONS", "DELETE"], ["get", "G@T", "", "PURGE"]);
const target = mostly(["/", "/a?b=1", "/%41", "http://h.test/x"], ["*", "a/b", "/s p", "/\x7f"]);
const version = mostly(["HTTP/1.1", "HTTP/1.0"], ["HTTP/1.2", "HTTP/2.0", "http/1.1"]);
const header = fc.constantFrom(
  "Host: b",
  "X-A: b",
  "X-A: b",
  "Accept: */*",
  "Content-Length: 3",
  "Content-Length: 3",
  "Content-Length: 0",
  "Content-Length: 4",
  "Content-Length: x",
  "Transfer-Encoding: chunked",
  "Transfer-Encoding: chunked",
  "Transfer-Encoding: gzip",
  "Transfer-Encoding: identity",
  "Connection: close",
  "Connection: keep-alive",
  "X-A: b",
  " folded",
  "X-B : c",
  "X-C: d\x00e",
  "X-D: caf\xe9",
  "X-E:",
  "NoColon",
);
const body = fc.constantFrom(
  "",
  "abc",
  "abcd",
  "3\r\nabc\r\n0\r\n\r\n",
  "3;e=1\r\nabc\r\n0\r\n\r\n",
  "3\r\nabc\r\n0\r\nT: 1\r\n\r\n",
  "zz\r\nabc\r\n0\r\n\r\n",
  "ffffffffffffffffff\r\n",
  "3\r\nabcX\r\n0\r\n\r\n",
);

Deno.test("request heads: generated requests, the same decision or a listed difference", () => {
  fc.assert(
    fc.property(
      method,
      target,
      version,
      fc.array(fc.tuple(header, line), { maxLength: 6 }),
      line,
      body,
      (m, t, v, hs, end, b) => {
        const raw = `${m} ${t} ${v}\r\nHost: h${hs.map(([h, l]) => l + h).join("")}\r\n${end}${b}`;
        judge(latin1(raw));
      },
    ),
    { numRuns: 3_000, seed: 1717 },
  );
  // The generator reaches each kind of outcome: a test that compares nothing fails here.
  assert.ok(
    tally.same > 50 && tally.bothRefused > 50 && tally.stricter > 10,
    JSON.stringify(tally),
  );
});
