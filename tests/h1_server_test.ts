/**
 * Ferry's own HTTP/1.1 server inside the connection guard (src/h1/server.ts), over raw sockets and
 * curl: hostile framing gets the error table's JSON answer and a close, pipelined requests are
 * answered in order, HTTP/1.0 gets a close-delimited body, Expect: 100-continue, HEAD, a client
 * that leaves cancels the upstream, and a body that fails half-way is never completed.
 */
import assert from "node:assert/strict";
import { startFerry, startUpstream } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Latin-1 bytes: one byte per char, as on the wire. */
function bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0) & 0xff);
}

/** Sends `request` and reads until the server closes (closed: true) or `ms` pass. */
async function exchange(
  port: number,
  request: string | Uint8Array,
  ms = 3_000,
  keepReading?: (text: string) => boolean,
): Promise<{ text: string; closed: boolean }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(typeof request === "string" ? bytes(request) : request);
    return await readUntilClose(conn, ms, keepReading);
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

async function readUntilClose(
  conn: Deno.Conn,
  ms: number,
  keepReading?: (text: string) => boolean,
): Promise<{ text: string; closed: boolean }> {
  const deadline = Date.now() + ms;
  const buf = new Uint8Array(64 * 1024);
  let text = "";
  while (Date.now() < deadline) {
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"t">((r) => setTimeout(() => r("t"), Math.max(1, deadline - Date.now()))),
    ]);
    if (n === "t") break;
    if (n === null) return { text, closed: true };
    text += dec.decode(buf.subarray(0, n));
    if (keepReading && !keepReading(text)) break;
  }
  return { text, closed: false };
}

const CATCH_ALL = `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes:
  - { name: direct, match: { path: { prefix: /direct } }, direct_response: { status: 200, body: "direct" } }
  - { name: all, cluster: u }
clusters: [{ name: u, endpoints: ["{{U}}"] }]
`;

const post = (headers: string, body: string) =>
  `POST /p HTTP/1.1\r\nHost: a\r\n${headers}\r\n${body}`;

const HOSTILE: [name: string, request: string, status: number, reason: RegExp][] = [
  [
    "CL with TE",
    post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n"),
    400,
    /both Content-Length and Transfer-Encoding/,
  ],
  [
    "two equal Content-Lengths",
    post("Content-Length: 1\r\nContent-Length: 1\r\n", "a"),
    400,
    /more than one Content-Length/,
  ],
  ["Content-Length list", post("Content-Length: 1, 1\r\n", "a"), 400, /invalid Content-Length/],
  [
    "Transfer-Encoding: chunked, identity",
    post("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
    400,
    /final coding is not chunked/,
  ],
  [
    "Transfer-Encoding: gzip, chunked",
    post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
    501,
    /unsupported Transfer-Encoding/,
  ],
  [
    "Transfer-Encoding on a folded line",
    post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"),
    400,
    /obs-fold/,
  ],
  [
    "space before the colon",
    post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
    400,
    /malformed header name/,
  ],
  ["bare CR in a value", post("X-A: b\rc\r\n", ""), 400, /invalid character/],
  ["NUL in a value", post("X-A: b\0c\r\n", ""), 400, /invalid character/],
  [
    "negative chunk size",
    post("Transfer-Encoding: chunked\r\n", "-1\r\nabc\r\n0\r\n\r\n"),
    400,
    /malformed chunk size/,
  ],
  [
    "chunk size overflow",
    post("Transfer-Encoding: chunked\r\n", "fffffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    400,
    /chunk size overflow/,
  ],
  [
    "oversized chunk extension",
    post("Transfer-Encoding: chunked\r\n", `3;x=${"e".repeat(5000)}\r\nabc\r\n0\r\n\r\n`),
    400,
    /chunk size line too long/,
  ],
  [
    "oversized trailers",
    post("Transfer-Encoding: chunked\r\n", `0\r\nX-T: ${"t".repeat(20_000)}\r\n\r\n`),
    400,
    /trailer section too large/,
  ],
  ["HTTP/1.2", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, /version/],
  ["HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n", 400, /missing Host/],
  ["two Host headers", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, /more than one Host/],
  ["asterisk target on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, /request target/],
  [
    "head over 60 KiB",
    `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${"b".repeat(62 * 1024)}\r\n\r\n`,
    431,
    /request head over/,
  ],
  [
    "125 header lines",
    `GET / HTTP/1.1\r\nHost: a\r\n${"X-M: m\r\n".repeat(123)}\r\n`,
    431,
    /request head over/,
  ],
];

Deno.test("hostile framing: the error table's JSON answer with reason and request id, then the close; no request reaches the upstream whole", async () => {
  // A chunked body's framing is checked as far as it came with the head; a fault further in
  // (a long extension past the first read, oversized trailers) is found while the body streams:
  // the head may have gone upstream, but its body never completes there.
  let completed = 0;
  const up = startUpstream(async (req) => {
    try {
      await req.arrayBuffer();
      completed++;
    } catch { /* the body failed: expected */ }
    return new Response("upstream");
  });
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    for (const [name, request, status, reason] of HOSTILE) {
      const { text, closed } = await exchange(px.port, request);
      assert.match(text, new RegExp(`^HTTP/1\\.1 ${status} `), `${name}: ${text.slice(0, 300)}`);
      assert.match(text, /\r\nconnection: close\r\n/i, name);
      const body = JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4));
      assert.match(body.reason, reason, `${name}: ${body.reason}`);
      assert.match(body.request_id, /^[0-9a-f-]{36}$/, name);
      assert.equal(/x-request-id: ([0-9a-f-]+)/.exec(text)?.[1], body.request_id, name);
      assert.ok(closed, `${name}: the connection closes after the answer`);
    }
    assert.equal(completed, 0, "no request reached the upstream whole");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("pipelined requests in one write are answered in order, one at a time", async () => {
  let inFlight = 0;
  let most = 0;
  const up = startUpstream(async (req) => {
    inFlight++;
    most = Math.max(most, inFlight);
    const path = new URL(req.url).pathname;
    // The first one is the slowest: answers in arrival order would still put it first.
    await new Promise((r) => setTimeout(r, path === "/1" ? 300 : 10));
    const body = req.body ? await req.text() : "";
    inFlight--;
    return new Response(`${path}:${body}`);
  });
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    const request = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n" +
      "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc" +
      "POST /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n" +
      "GET /4 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    const { text, closed } = await exchange(px.port, request, 5_000);
    const bodies = [...text.matchAll(/\r\n\r\n(\/\d:[a-z]*)/g)].map((m) => m[1]);
    assert.deepEqual(bodies, ["/1:", "/2:abc", "/3:xy", "/4:"], text);
    assert.equal(most, 1, "one request at a time reaches the upstream");
    assert.ok(closed, "Connection: close on the last one ends the connection");
  } finally {
    await px.close();
    await up.close();
  }
});

/** An upstream whose body comes in two parts, with no length. */
function streamingUpstream() {
  return startUpstream(() =>
    new Response(
      new ReadableStream({
        async start(c) {
          c.enqueue(enc.encode("part one;"));
          await new Promise((r) => setTimeout(r, 50));
          c.enqueue(enc.encode("part two"));
          c.close();
        },
      }),
    )
  );
}

Deno.test("a body of unknown length: close-delimited to an HTTP/1.0 client, chunked to HTTP/1.1", async () => {
  const up = streamingUpstream();
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    const old = await exchange(px.port, "GET /s HTTP/1.0\r\nHost: a\r\n\r\n");
    const [head10, body10] = old.text.split("\r\n\r\n");
    assert.match(head10!, /^HTTP\/1\.1 200/);
    assert.doesNotMatch(head10!, /content-length|transfer-encoding/i);
    assert.equal(body10, "part one;part two");
    assert.ok(old.closed, "the close ends the body");

    const now = await exchange(
      px.port,
      "GET /s HTTP/1.1\r\nHost: a\r\n\r\n",
      3_000,
      (t) => !t.endsWith("0\r\n\r\n"),
    );
    assert.match(now.text, /\r\ntransfer-encoding: chunked\r\n/i);
    assert.match(now.text, /\r\n\r\n[0-9a-f]+\r\npart one;\r\n/);
    assert.ok(now.text.endsWith("0\r\n\r\n"));
    assert.ok(!now.closed, "HTTP/1.1 stays open");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("HTTP/1.0 keep-alive only when asked; a Host is required on 1.0 too", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    const two = await exchange(
      px.port,
      "GET /a HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\nHost: a\r\n\r\n",
    );
    assert.equal(two.text.match(/HTTP\/1\.1 200/g)?.length, 2, two.text);
    assert.match(two.text, /connection: keep-alive/i);
    assert.ok(two.closed);
    const noHost = await exchange(px.port, "GET / HTTP/1.0\r\n\r\n");
    assert.match(noHost.text, /^HTTP\/1\.1 400/);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("HEAD gets the head only, and the connection carries on", async () => {
  const up = startUpstream(() => new Response("twelve bytes"));
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    const { text } = await exchange(
      px.port,
      "HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /g HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    const [head1, rest] = [
      text.slice(0, text.indexOf("\r\n\r\n")),
      text.slice(text.indexOf("\r\n\r\n") + 4),
    ];
    assert.match(head1, /^HTTP\/1\.1 200/);
    assert.match(head1, /content-length: 12/i);
    assert.match(rest, /^HTTP\/1\.1 200/, "the next response follows the HEAD head directly");
    assert.ok(rest.endsWith("\r\n\r\ntwelve bytes"));
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("Expect: 100-continue with curl: 100 when the body is read; a direct answer without it", async () => {
  let got = 0;
  const up = startUpstream(async (req) => {
    got = (await req.arrayBuffer()).byteLength;
    return new Response("stored");
  });
  const px = startFerry(CATCH_ALL, { U: up.url });
  const file = await Deno.makeTempFile();
  try {
    await Deno.writeFile(file, new Uint8Array(20_000).fill(97));
    const out = await new Deno.Command("curl", {
      args: [
        "-sv",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "30",
        "--data-binary",
        `@${file}`,
        `${px.url}/upload`,
      ],
    }).output();
    const stderr = dec.decode(out.stderr);
    assert.match(stderr, /< HTTP\/1\.1 100 Continue/);
    assert.equal(dec.decode(out.stdout), "stored");
    assert.equal(got, 20_000);

    // A direct response reads no body: the answer comes without waiting for curl's 30 s.
    const started = performance.now();
    const direct = await new Deno.Command("curl", {
      args: [
        "-sv",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "30",
        "--data-binary",
        `@${file}`,
        `${px.url}/direct`,
      ],
    }).output();
    assert.equal(dec.decode(direct.stdout), "direct");
    assert.doesNotMatch(dec.decode(direct.stderr), /100 Continue/);
    assert.ok(performance.now() - started < 20_000);
  } finally {
    await Deno.remove(file);
    await px.close();
    await up.close();
  }
});

Deno.test("a client that leaves in the middle of a streamed response cancels the upstream", async () => {
  let cancelled: (() => void) | undefined;
  const gone = new Promise<void>((r) => cancelled = r);
  const up = startUpstream(() => {
    let timer: ReturnType<typeof setInterval> | undefined;
    return new Response(
      new ReadableStream({
        start(c) {
          timer = setInterval(() => c.enqueue(enc.encode("tick\n")), 20);
        },
        cancel() {
          clearInterval(timer);
          cancelled!();
        },
      }),
    );
  });
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
    await conn.write(bytes("GET /stream HTTP/1.1\r\nHost: a\r\n\r\n"));
    const first = await readUntilClose(conn, 3_000, (t) => !t.includes("tick"));
    assert.match(first.text, /tick/);
    conn.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const outcome = await Promise.race([
      gone.then(() => "cancelled"),
      new Promise((r) => timer = setTimeout(() => r("still streaming"), 5_000)),
    ]);
    clearTimeout(timer);
    assert.equal(outcome, "cancelled");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("a response body that fails half-way ends the connection without the last chunk", async () => {
  // A raw upstream: promises 100 bytes in chunks, sends one chunk, then closes.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = (async () => {
    for await (const c of listener) {
      const buf = new Uint8Array(4096);
      await c.read(buf);
      await c.write(
        enc.encode("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"),
      );
      await new Promise((r) => setTimeout(r, 50));
      c.close();
    }
  })().catch(() => {});
  const px = startFerry(CATCH_ALL, {
    U: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
  });
  try {
    const { text, closed } = await exchange(px.port, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 5_000);
    assert.match(text, /^HTTP\/1\.1 200/);
    assert.match(text, /hello/);
    assert.ok(!text.endsWith("0\r\n\r\n"), `no last chunk: ${JSON.stringify(text)}`);
    assert.ok(closed, "the connection ends");
  } finally {
    await px.close();
    listener.close();
    await serving;
  }
});

Deno.test("a small unread request body is drained and the connection carries on", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    const { text } = await exchange(
      px.port,
      `POST /direct HTTP/1.1\r\nHost: a\r\nContent-Length: 10000\r\n\r\n${"x".repeat(10_000)}` +
        "GET /direct/2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert.equal(text.match(/HTTP\/1\.1 200/g)?.length, 2, text);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("every request head on a keep-alive connection gets the header timeout (408), not only the first", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    CATCH_ALL.replace("routes:", "server: { header_timeout: 1s, idle_timeout: 30s }\nroutes:"),
    { U: up.url },
  );
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
    await conn.write(bytes("GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"));
    const first = await readUntilClose(conn, 3_000, (t) => !t.endsWith("\r\n\r\nok"));
    assert.match(first.text, /^HTTP\/1\.1 200/);
    // A second head that starts and never ends.
    await conn.write(bytes("GET /2 HTTP/1.1\r\nHo"));
    const started = performance.now();
    const second = await readUntilClose(conn, 8_000);
    conn.close();
    assert.match(second.text, /^HTTP\/1\.1 408 /, second.text);
    assert.match(second.text, /"reason":"request head not complete within 1000 ms"/);
    assert.ok(second.closed);
    assert.ok(performance.now() - started < 6_000, "cut by the header timeout, not the idle one");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("OPTIONS * reaches routing as the path /*, as through Deno.serve", async () => {
  let seen = "";
  const up = startUpstream((req) => {
    seen = `${req.method} ${new URL(req.url).pathname}`;
    return new Response("ok");
  });
  const px = startFerry(CATCH_ALL, { U: up.url });
  try {
    const { text } = await exchange(
      px.port,
      "OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert.match(text, /^HTTP\/1\.1 200/);
    assert.equal(seen, "OPTIONS /*");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("a head that arrives in parts across the read buffer's end is still read (regression)", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    CATCH_ALL.replace("routes:", "server: { header_timeout: 3s }\nroutes:"),
    { U: up.url },
  );
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
    // The first request fills most of the 4 KiB read buffer; the second starts behind it, so the
    // read that completes it moves the buffered bytes to the buffer's start.
    const first = `GET /1 HTTP/1.1\r\nHost: a\r\nX-Pad: ${"p".repeat(3000)}\r\n\r\n`;
    const second = `GET /2 HTTP/1.1\r\nHost: a\r\nX-Pad: ${
      "q".repeat(2000)
    }\r\nConnection: close\r\n\r\n`;
    await conn.write(bytes(first + second.slice(0, 900)));
    const one = await readUntilClose(conn, 3_000, (t) => !t.endsWith("\r\n\r\nok"));
    assert.match(one.text, /^HTTP\/1\.1 200/);
    await conn.write(bytes(second.slice(900)));
    const two = await readUntilClose(conn, 6_000);
    conn.close();
    assert.match(two.text, /^HTTP\/1\.1 200/, two.text.slice(0, 200));
  } finally {
    await px.close();
    await up.close();
  }
});
