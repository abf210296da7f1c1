/**
 * Malformed and adversarial requests sent raw over TCP. Each case gets a 4xx (with a JSON reason
 * when Ferry answers; Deno's parser answers some with a bare 400) or a clean close, or, where the
 * input has exactly one reading, is forwarded in that one reading. A recording upstream proves
 * that no smuggled or ambiguous request ever reached it, and the proxy stays up throughout.
 */
import assert from "node:assert/strict";
import { rawRequest, startFerry, startUpstream } from "./helpers.ts";

interface Seen {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string;
}

type Expect =
  /** This exact status; `reason` matched against Ferry's JSON reason when given. */
  | { status: number; reason?: RegExp }
  /** Some 4xx, or the connection closed without an answer. */
  | { refused: true }
  /** Forwarded once, and the upstream saw what `check` expects. */
  | { forwarded: (seen: Seen) => boolean };

interface Case {
  name: string;
  /** The whole request, raw; sent as is. */
  request: string;
  expect: Expect;
}

const close = "Connection: close\r\n";
const get = (target: string, headers = "Host: a\r\n") =>
  `GET ${target} HTTP/1.1\r\n${headers}${close}\r\n`;
const smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
const post = (headers: string, body: string) =>
  `POST /p HTTP/1.1\r\nHost: a\r\n${headers}${close}\r\n${body}`;

const CASES: Case[] = [
  // Request smuggling shapes.
  {
    name: "Content-Length with Transfer-Encoding",
    request: post("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", `0\r\n\r\n${smuggled}`),
    expect: { status: 400 },
  },
  {
    name: "Transfer-Encoding before Content-Length",
    request: post("Transfer-Encoding: chunked\r\nContent-Length: 40\r\n", `0\r\n\r\n${smuggled}`),
    expect: { status: 400 },
  },
  {
    name: "two different Content-Lengths",
    request: post("Content-Length: 4\r\nContent-Length: 5\r\n", "abcde"),
    expect: { status: 400 },
  },
  {
    name: "a Content-Length list with different values",
    request: post("Content-Length: 4, 5\r\n", "abcde"),
    expect: { refused: true },
  },
  {
    name: "signed Content-Length",
    request: post("Content-Length: +4\r\n", "abcd"),
    expect: { refused: true },
  },
  {
    name: "negative Content-Length",
    request: post("Content-Length: -1\r\n", ""),
    expect: { refused: true },
  },
  {
    name: "hex Content-Length",
    request: post("Content-Length: 0x4\r\n", "abcd"),
    expect: { refused: true },
  },
  {
    name: "Transfer-Encoding: xchunked",
    request: post("Transfer-Encoding: xchunked\r\n", `0\r\n\r\n${smuggled}`),
    expect: { refused: true },
  },
  {
    name: "Transfer-Encoding: chunked, identity",
    request: post("Transfer-Encoding: chunked, identity\r\n", `0\r\n\r\n${smuggled}`),
    expect: { refused: true },
  },
  {
    name: "Transfer-Encoding: gzip (not ending in chunked)",
    request: post("Transfer-Encoding: gzip\r\n", `0\r\n\r\n${smuggled}`),
    expect: { refused: true },
  },
  {
    name: "Transfer-Encoding with a tab before the value and a CL",
    request: post("Transfer-Encoding:\tchunked\r\nContent-Length: 3\r\n", `0\r\n\r\n`),
    expect: { status: 400 },
  },
  {
    name: "Transfer-Encoding with a space before the colon",
    request: post("Transfer-Encoding : chunked\r\n", `0\r\n\r\n${smuggled}`),
    expect: { refused: true },
  },
  {
    name: "two Transfer-Encoding headers",
    request: post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", `0\r\n\r\n`),
    expect: { refused: true },
  },
  {
    name: "Transfer-Encoding in HTTP/1.0",
    request:
      `POST /p HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
    expect: { refused: true },
  },
  {
    name: "invalid chunk size",
    request: post("Transfer-Encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n"),
    expect: { refused: true },
  },
  {
    name: "chunk size overflow",
    request: post("Transfer-Encoding: chunked\r\n", "ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    expect: { refused: true },
  },
  {
    name: "obs-fold header",
    request: get("/", "Host: a\r\nX-A: b\r\n c\r\n"),
    expect: { status: 400 },
  },
  {
    name: "obs-fold continuing Transfer-Encoding",
    request: post("X-A: b\r\n Transfer-Encoding: chunked\r\n", `0\r\n\r\n${smuggled}`),
    expect: { status: 400 },
  },
  {
    name: "bare CR inside a header line",
    request: get("/", "Host: a\r\nX-A: b\rTransfer-Encoding: chunked\r\n"),
    expect: { refused: true },
  },
  {
    name: "bare CR as a line end",
    request: "GET / HTTP/1.1\rHost: a\r\n\r\n",
    expect: { refused: true },
  },
  {
    name: "bare LF line ends (one reading: RFC 9112 lets a recipient accept them)",
    request: "GET /lf HTTP/1.1\nHost: a\nConnection: close\n\n",
    expect: { forwarded: (s) => s.path === "/lf" && s.method === "GET" },
  },
  {
    name: "NUL in a header value",
    request: get("/", "Host: a\r\nX-A: b\0c\r\n"),
    expect: { refused: true },
  },
  {
    name: "space inside a header name",
    request: get("/", "Host: a\r\nX A: b\r\n"),
    expect: { refused: true },
  },
  {
    name: "header line without a colon",
    request: get("/", "Host: a\r\nXA\r\n"),
    expect: { refused: true },
  },
  // Host and authority.
  { name: "empty Host", request: get("/", "Host: \r\n"), expect: { status: 400, reason: /Host/ } },
  {
    name: "no Host (RFC 9112 3.2)",
    request: get("/", ""),
    expect: { status: 400, reason: /missing Host/ },
  },
  {
    name: "two Host headers",
    request: get("/", "Host: a\r\nHost: b\r\n"),
    expect: { status: 400 },
  },
  { name: "space in Host", request: get("/", "Host: a b\r\n"), expect: { refused: true } },
  {
    name: "userinfo in Host",
    request: get("/", "Host: evil@good.test\r\n"),
    expect: { status: 400, reason: /Host/ },
  },
  {
    name: "non-numeric port in Host",
    request: get("/", "Host: a:b\r\n"),
    expect: { refused: true },
  },
  {
    name: "port out of range in Host",
    request: get("/", "Host: a:99999\r\n"),
    expect: { refused: true },
  },
  { name: "comma in Host", request: get("/", "Host: a,b\r\n"), expect: { refused: true } },
  { name: "unclosed IPv6 Host", request: get("/", "Host: [::1\r\n"), expect: { refused: true } },
  { name: "slash in Host", request: get("/", "Host: a/b\r\n"), expect: { refused: true } },
  {
    name: "absolute-form target overrides Host (RFC 9112 3.2.2): one reading",
    request: get("http://abs.test/abs", "Host: a\r\n"),
    expect: {
      forwarded: (s) => s.path === "/abs" && s.headers["x-forwarded-host"] === "abs.test",
    },
  },
  {
    name: "absolute-form target with userinfo",
    request: get("http://evil@abs.test/", "Host: a\r\n"),
    expect: { refused: true },
  },
  {
    name: "absolute-form target with a non-HTTP scheme",
    request: get("ftp://abs.test/x", "Host: a\r\n"),
    expect: { refused: true },
  },
  // Paths.
  {
    name: "path above the root",
    request: get("/../../etc/passwd"),
    expect: { status: 400, reason: /root/ },
  },
  {
    name: "percent-encoded dot segments above the root",
    request: get("/%2e%2e/%2E%2e/etc/passwd"),
    expect: { status: 400, reason: /root/ },
  },
  {
    name: "dot segments inside the root are resolved before routing",
    request: get("/a/./b/../c"),
    expect: { forwarded: (s) => s.path === "/a/c" },
  },
  {
    name: "percent-encoded dot segments inside the root are resolved",
    request: get("/a/%2e/b/%2E%2E/d"),
    expect: { forwarded: (s) => s.path === "/a/d" },
  },
  {
    name: "dot segments behind encoded slashes",
    request: get("/x/%2e%2e%2f%2e%2e/etc"),
    expect: { status: 400, reason: /encoded slash/ },
  },
  {
    name: "path parameter on a dot segment (Tomcat/Spring read ..; as ..)",
    request: get("/api/..;/admin"),
    expect: { status: 400, reason: /dot segment/ },
  },
  {
    name: "path parameter on a percent-encoded dot segment, encoded semicolon",
    request: get("/api/%2e%2e%3bx/admin"),
    expect: { status: 400, reason: /dot segment/ },
  },
  {
    name: "backslash dot segments",
    request: get("/a/..\\..\\etc"),
    expect: { refused: true },
  },
  {
    name: "invalid percent-encoding",
    request: get("/a%zz"),
    expect: { status: 400, reason: /percent/ },
  },
  {
    name: "truncated percent-encoding",
    request: get("/a%4"),
    expect: { status: 400, reason: /percent/ },
  },
  { name: "lone percent", request: get("/a%"), expect: { status: 400, reason: /percent/ } },
  { name: "encoded NUL", request: get("/a%00b"), expect: { status: 400, reason: /NUL/ } },
  { name: "fragment in the target", request: get("/a#frag"), expect: { refused: true } },
  { name: "target not starting with /", request: get("a/b"), expect: { refused: true } },
  // Over-long input.
  {
    name: "URI over 8 KiB",
    request: get(`/${"a".repeat(9000)}`),
    expect: { status: 414 },
  },
  {
    name: "one header line of 70 KiB",
    request: get("/", `Host: a\r\nX-Long: ${"l".repeat(70 * 1024)}\r\n`),
    expect: { status: 431 },
  },
  {
    name: "200 header lines",
    request: get("/", `Host: a\r\n${"X-M: m\r\n".repeat(200)}`),
    expect: { status: 431 },
  },
  // Methods.
  {
    name: "invalid method token",
    request: "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
    expect: { status: 400 },
  },
  { name: "empty method", request: " / HTTP/1.1\r\nHost: a\r\n\r\n", expect: { refused: true } },
  {
    name: "CONNECT",
    request: `CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n${close}\r\n`,
    expect: { status: 405, reason: /CONNECT/ },
  },
  {
    name: "CONNECT with an origin-form target",
    request: `CONNECT / HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
    expect: { refused: true },
  },
  {
    name: "TRACE",
    request: `TRACE / HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
    expect: { status: 405, reason: /TRACE/ },
  },
  {
    name: "lower-case get (fetch would forward it as GET)",
    request: `get / HTTP/1.1\r\nHost: a\r\n${close}\r\n`,
    expect: { status: 400, reason: /upper case/ },
  },
  // Versions and framing of the request line.
  // A well-formed version Ferry does not speak: 505 (RFC 9110 15.6.6).
  { name: "HTTP/1.2", request: "GET / HTTP/1.2\r\nHost: a\r\n\r\n", expect: { status: 505 } },
  {
    name: "HTTP/2.0 on an HTTP/1 line",
    request: "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    expect: { status: 505 },
  },
  { name: "HTTP/0.9 request", request: "GET /\r\n\r\n", expect: { refused: true } },
  {
    name: "garbage version",
    request: "GET / HTTX/1.1\r\nHost: a\r\n\r\n",
    expect: { refused: true },
  },
  {
    name: "two spaces in the request line",
    request: "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    expect: { refused: true },
  },
  // Non-ASCII bytes.
  { name: "non-ASCII bytes in the path", request: get("/caf\u00e9"), expect: { status: 400 } },
  {
    name: "non-ASCII bytes in the method",
    request: "G\u00c9T / HTTP/1.1\r\nHost: a\r\n\r\n",
    expect: { refused: true },
  },
  {
    name: "non-ASCII bytes in a header name",
    request: get("/", "Host: a\r\nX-\u00e9: v\r\n"),
    expect: { refused: true },
  },
  { name: "non-ASCII Host", request: get("/", "Host: \u00e9.test\r\n"), expect: { refused: true } },
  // Garbage.
  {
    name: "TLS ClientHello on a plain listener",
    request: "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    expect: { refused: true },
  },
  { name: "random binary", request: "\x00\x01\x02\xff\xfe\r\n\r\n", expect: { refused: true } },
];

/** Latin-1 bytes: each char of the case text is one byte on the wire, as an attacker sends. */
function bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
}

Deno.test("hostile corpus: each case is refused with a 4xx or forwarded in its one reading; nothing smuggled reaches the upstream", async () => {
  const seen: Seen[] = [];
  // Recorded on arrival, before the body is read, so a request whose body later fails counts.
  const up = startUpstream(async (req) => {
    const record: Seen = {
      method: req.method,
      path: new URL(req.url).pathname,
      headers: Object.fromEntries(req.headers),
      body: "",
    };
    seen.push(record);
    record.body = req.body ? await req.text() : "";
    return new Response("upstream");
  });
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: all, cluster: u }]
clusters: [{ name: u, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  const outcomes: string[] = [];
  try {
    for (const c of CASES) {
      const before = seen.length;
      const res = await rawRequest(px.port, bytes(c.request), 3000);
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(res)?.[1]);
      const forwarded = seen.slice(before);
      outcomes.push(`${Number.isNaN(status) ? "closed" : status} ${c.name}`);
      const e = c.expect;
      if ("forwarded" in e) {
        assert.equal(status, 200, `${c.name}: got ${res.slice(0, 200)}`);
        assert.equal(forwarded.length, 1, `${c.name}: forwarded once`);
        assert.ok(
          e.forwarded(forwarded[0]!),
          `${c.name}: upstream saw ${JSON.stringify(forwarded[0])}`,
        );
        continue;
      }
      assert.equal(
        forwarded.length,
        0,
        `${c.name}: nothing forwarded, got ${JSON.stringify(forwarded)}`,
      );
      if ("refused" in e) {
        assert.ok(
          Number.isNaN(status) ? res === "" : status >= 400 && status < 500,
          `${c.name}: a 4xx or a close, got ${JSON.stringify(res.slice(0, 200))}`,
        );
        continue;
      }
      assert.equal(status, e.status, `${c.name}: got ${res.slice(0, 200)}`);
      if (e.reason) {
        const body = JSON.parse(res.slice(res.indexOf("\r\n\r\n") + 4));
        assert.match(body.reason, e.reason, c.name);
        assert.ok(body.request_id, `${c.name}: request id in the body`);
      }
    }
    // Across the whole corpus: no smuggled request, nothing ambiguous.
    for (const s of seen) {
      assert.notEqual(s.path, "/smuggled");
      assert.ok(!("transfer-encoding" in s.headers && "content-length" in s.headers));
      assert.ok(!s.path.split("/").includes(".."));
    }
    // And the proxy is still up and serving.
    const ok = await fetch(`http://127.0.0.1:${px.port}/fine`);
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "upstream");
    console.log(outcomes.join("\n"));
    console.log(
      `${CASES.length} hostile cases sent; ${seen.length} forwarded as expected; proxy still serving`,
    );
  } finally {
    await px.close();
    await up.close();
  }
});
