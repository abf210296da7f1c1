import assert from "node:assert/strict";
import { ChunkedDecoder, Framing, H1ProtocolError, LIMITS, parseResponseHead } from "./parse.ts";

const enc = new TextEncoder();

/** Latin-1: one byte per char, as on the wire. */
function bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

function head(text: string, method = "GET") {
  const b = bytes(text);
  return parseResponseHead(b, 0, b.length, method);
}

function refused(text: string, why: RegExp, method = "GET") {
  assert.throws(() => head(text, method), (e: unknown) => {
    assert.ok(e instanceof H1ProtocolError, String(e));
    assert.match(e.reason, why);
    return true;
  }, JSON.stringify(text));
}

Deno.test("status line and headers: names lower-cased, values trimmed, Latin-1 kept", () => {
  const h = head(
    "HTTP/1.1 201 Created\r\nX-A:  one \r\nSet-Cookie: a\r\nset-cookie: b\r\n" +
      "X-Bytes: caf\xe9\r\nContent-Length: 3\r\n\r\nabc",
  )!;
  assert.equal(h.status, 201);
  assert.equal(h.reason, "Created");
  assert.deepEqual(h.headers.slice(0, 4), [
    ["x-a", "one"],
    ["set-cookie", "a"],
    ["set-cookie", "b"],
    ["x-bytes", "caf\xe9"],
  ]);
  assert.equal(h.framing, Framing.Length);
  assert.equal(h.contentLength, 3);
  const text = "HTTP/1.1 201 Created\r\nX-A:  one \r\nSet-Cookie: a\r\nset-cookie: b\r\n" +
    "X-Bytes: caf\xe9\r\nContent-Length: 3\r\n\r\n";
  assert.equal(h.size, text.length);
  assert.ok(h.keepAlive);
});

Deno.test("framing per RFC 9112 6.3: HEAD, 1xx, 204, 304 bodiless; chunked; length; close", () => {
  assert.equal(head("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", "HEAD")!.framing, Framing.None);
  assert.equal(head("HTTP/1.1 204 No Content\r\n\r\n")!.framing, Framing.None);
  assert.equal(
    head("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")!.framing,
    Framing.None,
  );
  assert.equal(head("HTTP/1.1 100 Continue\r\n\r\n")!.framing, Framing.None);
  assert.equal(
    head("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n")!.framing,
    Framing.Chunked,
  );
  const close = head("HTTP/1.1 200 OK\r\n\r\n")!;
  assert.equal(close.framing, Framing.Close);
  assert.equal(close.keepAlive, false);
  assert.equal(head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n")!.keepAlive, false);
  assert.equal(
    head("HTTP/1.1 200 OK\r\nConnection: x, close\r\nContent-Length: 1\r\n\r\n")!.keepAlive,
    false,
  );
  assert.equal(head("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")!.reason, "");
});

Deno.test("an incomplete head waits for more bytes", () => {
  assert.equal(head("HTTP/1.1 200 OK\r\nContent-Le"), undefined);
  assert.equal(head("HTTP/1.1 20"), undefined);
  assert.equal(head("HTTP/1.1 200 OK\r\n\r"), undefined);
});

Deno.test("ambiguous or malformed heads are refused with a reason", () => {
  refused("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", /both/);
  refused(
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
    /more than one Content-Length/,
  );
  refused("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", /more than one/);
  refused("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n", /invalid Content-Length/);
  refused("HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n", /invalid Content-Length/);
  refused("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999\r\n\r\n", /invalid Content-Length/);
  refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", /Transfer-Encoding/);
  refused(
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    /Transfer-Encoding/,
  );
  refused("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", /HTTP\/1\.0/);
  refused("HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\n\r\n", /obs-fold/);
  refused("HTTP/1.1 200 OK\nX-A: 1\r\n\r\n", /bare LF/);
  refused("HTTP/1.1 200 OK\r\nX-A: 1\n\r\n", /bare LF/);
  refused("HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\n\r\n", /invalid character/);
  refused("HTTP/1.1 200 OK\r\nX-A: a\0b\r\n\r\n", /invalid character/);
  refused("HTTP/1.1 200 OK\r\nX-A : 1\r\n\r\n", /header name/);
  refused("HTTP/1.1 200 OK\r\n: 1\r\n\r\n", /header name/);
  refused("HTTP/1.1 600 Nope\r\n\r\n", /600 outside 100-599/);
  refused("HTTP/1.1 099 Nope\r\n\r\n", /outside/);
  refused("HTTP/1.1 2000 OK\r\n\r\n", /status code/);
  refused("HTTP/2.0 200 OK\r\n\r\n", /malformed status line|version/);
  refused("HTTP/1.2 200 OK\r\n\r\n", /version/);
  refused("http/1.1 200 OK\r\n\r\n", /malformed status line/);
  refused("HTTP/1.1  200 OK\r\n\r\n", /status/);
  refused("HTTP/1.1 200 OK" + "x".repeat(LIMITS.maxStatusLine), /status line too long/);
  refused(
    "HTTP/1.1 200 OK\r\n" + "X-H: v\r\n".repeat(LIMITS.maxHeaders + 1) + "\r\n",
    /more than 128 headers/,
  );
  refused("HTTP/1.1 200 OK\r\nX-Big: " + "b".repeat(LIMITS.maxHeadBytes) + "\r\n\r\n", /too large/);
  refused("HTTP/1.1 200 OK\r\nX-Big: " + "b".repeat(LIMITS.maxHeadBytes), /too large/);
});

function dechunk(text: string): { body: string; done: boolean; rest: number } {
  const b = enc.encode(text);
  const d = new ChunkedDecoder();
  let pos = 0;
  let body = "";
  while (!d.done) {
    const n = d.step(b, pos, b.length);
    if (n === 0) break;
    if (d.dataTo > d.dataFrom) body += new TextDecoder().decode(b.subarray(d.dataFrom, d.dataTo));
    pos += n;
  }
  return { body, done: d.done, rest: b.length - pos };
}

Deno.test("chunked bodies: extensions, trailers, upper-case hex, partial input", () => {
  assert.deepEqual(dechunk("3\r\nabc\r\nA;x=1\r\n0123456789\r\n0\r\n\r\n"), {
    body: "abc0123456789",
    done: true,
    rest: 0,
  });
  assert.deepEqual(dechunk("2\r\nhi\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nNEXT"), {
    body: "hi",
    done: true,
    rest: 4,
  });
  assert.deepEqual(dechunk("5\r\nab"), { body: "ab", done: false, rest: 0 });
  assert.deepEqual(dechunk("5\r\nabcde\r"), { body: "abcde", done: false, rest: 1 });
});

Deno.test("chunked bodies: overflow, bad sizes, overlong data and bad trailers are refused", () => {
  const bad = (text: string, why: RegExp) =>
    assert.throws(() => dechunk(text), (e: unknown) => {
      assert.ok(e instanceof H1ProtocolError, String(e));
      assert.match(e.reason, why);
      return true;
    }, JSON.stringify(text));
  bad("fffffffffffffffff\r\n", /overflow/);
  bad("zz\r\n", /malformed chunk size/);
  bad("-1\r\n", /malformed chunk size/);
  bad("3 x\r\nabc\r\n", /malformed chunk size/);
  bad("3\r\nabcd\r\n", /longer than its size/);
  bad("3\nabc\r\n", /bare LF/);
  bad("0\r\n folded\r\n\r\n", /obs-fold/);
  bad("0\r\nX-T\r\n\r\n", /malformed trailer/);
  bad("0\r\nX-T: " + "t".repeat(LIMITS.maxTrailerBytes) + "\r\n\r\n", /trailer section too large/);
  bad("1;" + "e".repeat(LIMITS.maxChunkLine) + "\r\n", /too long/);
});
