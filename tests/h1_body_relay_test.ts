/**
 * Bodies relayed through reused buffers on Ferry's HTTP/1.1 path (issue 17): request bodies read
 * by the upstream codec straight from the client's connection (src/h1/body_reader.ts), with the
 * size limit, the client-gone watch and backpressure still applied; chunked upstream answers
 * decoded into the response relay. Real sockets on both sides.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { concat, startFerry, startUpstream } from "./helpers.ts";
import { startRawUpstream } from "./h1_upstream.ts";

const enc = new TextEncoder();

function config(extra = ""): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
server: { max_body_bytes: 0${extra} }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - { name: up, endpoints: ["{{UP}}"], transport: h1 }
`;
}

/** Deterministic bytes that are not all alike (a shifted or dropped byte changes the hash). */
function pattern(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed | 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** An upstream that answers with the SHA-256 and length of the body it read. */
function hashingUpstream() {
  return startUpstream(async (req) => {
    const h = createHash("sha256");
    let n = 0;
    for await (const c of req.body!) {
      h.update(c);
      n += c.length;
    }
    return new Response(`${n} ${h.digest("hex")} ${req.headers.get("transfer-encoding") ?? "-"}`);
  });
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

/** Reads until the peer closes or `done(text)` holds, within `ms`; the bytes as Latin-1 text. */
async function readUntil(conn: Deno.Conn, done: (t: string) => boolean, ms = 20_000) {
  let text = "";
  const buf = new Uint8Array(64 * 1024);
  const deadline = Date.now() + ms;
  while (Date.now() < deadline && !done(text)) {
    const n = await conn.read(buf).catch(() => null);
    if (n === null) return { text, closed: true };
    for (let i = 0; i < n; i++) text += String.fromCharCode(buf[i]!);
  }
  return { text, closed: false };
}

/** A whole Content-Length answer is in `t`. */
function whole(t: string): boolean {
  const end = t.indexOf("\r\n\r\n");
  const cl = /content-length: (\d+)/i.exec(t);
  return end >= 0 && cl !== null && t.length >= end + 4 + Number(cl[1]);
}

function directBodies(ferry: ReturnType<typeof startFerry>): number {
  return ferry.ferry.snapshot.clusters.get("up")!.h1!.directBodies;
}

const SIZE = 24 * 1024 * 1024;

Deno.test("body relay: a 24 MiB upload with Content-Length reaches the upstream byte-exact, read straight from the client", async () => {
  const up = hashingUpstream();
  const ferry = startFerry(config(), { UP: up.url });
  const body = pattern(SIZE, 7);
  const expected = createHash("sha256").update(body).digest("hex");
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    await writeAll(
      conn,
      enc.encode(`POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: ${SIZE}\r\n\r\n`),
    );
    for (let off = 0; off < SIZE; off += 1 << 20) {
      await writeAll(conn, body.subarray(off, off + (1 << 20)));
    }
    const { text } = await readUntil(conn, whole);
    assert.match(text, /^HTTP\/1\.1 200/);
    assert.ok(text.endsWith(`${SIZE} ${expected} -`), text.slice(-120));
    assert.equal(directBodies(ferry), 1, "the codec read the body through the direct reader");
  } finally {
    conn.close();
    await ferry.close();
    await up.close();
  }
});

Deno.test("body relay: a 24 MiB chunked upload reaches the upstream byte-exact, chunked", async () => {
  const up = hashingUpstream();
  const ferry = startFerry(config(), { UP: up.url });
  const body = pattern(SIZE, 11);
  const expected = createHash("sha256").update(body).digest("hex");
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    await writeAll(
      conn,
      enc.encode(`POST /up HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n`),
    );
    // Chunks of many sizes (1 byte to 200 KiB), a chunk extension and a trailer on the way.
    const sizes = [1, 2, 17, 4095, 4096, 4097, 65535, 65536, 65537, 200_000, 333];
    let off = 0;
    for (let i = 0; off < SIZE; i++) {
      const n = Math.min(sizes[i % sizes.length]!, SIZE - off);
      const ext = i % 7 === 0 ? ";x=1" : "";
      await writeAll(conn, enc.encode(`${n.toString(16)}${ext}\r\n`));
      await writeAll(conn, body.subarray(off, off + n));
      await writeAll(conn, enc.encode("\r\n"));
      off += n;
    }
    await writeAll(conn, enc.encode("0\r\nx-trailer: yes\r\n\r\n"));
    const { text } = await readUntil(conn, whole);
    assert.match(text, /^HTTP\/1\.1 200/);
    assert.ok(text.endsWith(`${SIZE} ${expected} chunked`), text.slice(-120));
    assert.equal(directBodies(ferry), 1, "the codec read the body through the direct reader");
  } finally {
    conn.close();
    await ferry.close();
    await up.close();
  }
});

Deno.test("body relay: max_body_bytes still answers 413 when a chunked upload passes it mid-stream", async () => {
  let upstreamSaw = "";
  const up = startUpstream(async (req) => {
    try {
      for await (const _ of req.body!) { /* read until it fails */ }
      upstreamSaw = "complete";
    } catch {
      upstreamSaw = "cut";
    }
    return new Response("unexpected");
  });
  const ferry = startFerry(config().replace("max_body_bytes: 0", "max_body_bytes: 1048576"), {
    UP: up.url,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    await writeAll(
      conn,
      enc.encode(`POST /up HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n`),
    );
    const piece = pattern(256 * 1024, 3);
    // 4 MiB offered; the answer may come (and the connection close) before all of it is sent.
    const sending = (async () => {
      for (let i = 0; i < 16; i++) {
        await writeAll(conn, enc.encode(`${piece.length.toString(16)}\r\n`));
        await writeAll(conn, piece);
        await writeAll(conn, enc.encode("\r\n"));
      }
      await writeAll(conn, enc.encode("0\r\n\r\n"));
    })().catch(() => {});
    const { text } = await readUntil(conn, whole);
    await sending;
    assert.match(text, /^HTTP\/1\.1 413/, text.slice(0, 200));
    assert.equal(directBodies(ferry), 1, "the limit was applied on the direct reader");
    for (let i = 0; i < 100 && upstreamSaw === ""; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(upstreamSaw, "cut", "the upstream never gets a complete-looking body");
  } finally {
    conn.close();
    await ferry.close();
    await up.close();
  }
});

Deno.test("body relay: a client that disconnects mid-upload cancels the upstream request", async () => {
  let upstreamGot = -1;
  let upstreamFailed = false;
  const started = Promise.withResolvers<void>();
  const up = startUpstream(async (req) => {
    let n = 0;
    try {
      for await (const c of req.body!) {
        n += c.length;
        if (n >= 1 << 20) started.resolve();
      }
    } catch {
      upstreamFailed = true;
    }
    upstreamGot = n;
    return new Response("done");
  });
  const ferry = startFerry(config(), { UP: up.url });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    const total = 64 * 1024 * 1024;
    await writeAll(
      conn,
      enc.encode(`POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: ${total}\r\n\r\n`),
    );
    const piece = pattern(1 << 20, 5);
    for (let i = 0; i < 4; i++) await writeAll(conn, piece);
    await started.promise;
    conn.close();
    for (let i = 0; i < 200 && upstreamGot < 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.ok(upstreamFailed, `the upstream's body failed (it read ${upstreamGot} bytes)`);
    assert.ok(upstreamGot < total);
    assert.equal(directBodies(ferry), 1);
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
    await ferry.close();
    await up.close();
  }
});

Deno.test("body relay: an upstream that stops reading holds the upload back (bounded buffering)", async () => {
  // A raw upstream that accepts and never reads: only the sockets' buffers can take bytes.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of listener) held.push(c);
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  const ferry = startFerry(config(), { UP: `http://127.0.0.1:${port}` });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  const total = 256 * 1024 * 1024;
  let sent = 0;
  try {
    await writeAll(
      conn,
      enc.encode(`POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: ${total}\r\n\r\n`),
    );
    const piece = new Uint8Array(256 * 1024);
    // Writes until one stalls for 2 s (the buffers are full) or all of it went.
    for (;;) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const stalled = new Promise<"stalled">((r) => timer = setTimeout(() => r("stalled"), 2_000));
      const wrote = await Promise.race([conn.write(piece), stalled]);
      clearTimeout(timer);
      if (wrote === "stalled") break;
      sent += wrote;
      if (sent >= total) break;
    }
    // Kernel socket buffers on loopback hold a few MiB each way; Ferry adds at most its 64 KiB.
    assert.ok(sent < 64 * 1024 * 1024, `the client could send ${sent} bytes to a stalled upstream`);
    assert.equal(directBodies(ferry), 1);
  } finally {
    conn.close();
    await ferry.close();
    listener.close();
    for (const c of held) c.close();
    await accepting;
  }
});

/** A chunked answer from a raw upstream: `chunks` as given, then `tail` (last chunk, trailers). */
function chunkedAnswer(chunks: Uint8Array[], tail: string): Uint8Array {
  const parts: Uint8Array[] = [enc.encode("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")];
  for (const c of chunks) {
    parts.push(enc.encode(`${c.length.toString(16)}\r\n`), c, enc.encode("\r\n"));
  }
  parts.push(enc.encode(tail));
  return concat(parts);
}

/** Decodes a chunked body from Latin-1 text; the chunk count, the bytes, and whether it ended. */
function dechunk(text: string): { chunks: number; body: Uint8Array; ended: boolean } {
  let i = text.indexOf("\r\n\r\n") + 4;
  const out: number[] = [];
  let chunks = 0;
  for (;;) {
    const eol = text.indexOf("\r\n", i);
    if (eol === -1) return { chunks, body: Uint8Array.from(out), ended: false };
    const size = parseInt(text.slice(i, eol), 16);
    if (size === 0) return { chunks, body: Uint8Array.from(out), ended: text.endsWith("\r\n\r\n") };
    if (text.length < eol + 2 + size + 2) {
      return { chunks, body: Uint8Array.from(out), ended: false };
    }
    for (let k = eol + 2; k < eol + 2 + size; k++) out.push(text.charCodeAt(k));
    chunks++;
    i = eol + 2 + size + 2;
  }
}

Deno.test("body relay: a chunked upstream answer of many small chunks and trailers arrives byte-exact, in fewer writes", async () => {
  const source = pattern(3 * 1024 * 1024, 21);
  const chunks: Uint8Array[] = [];
  for (let off = 0, i = 0; off < source.length; i++) {
    const n = Math.min([100, 1, 3000, 17, 512][i % 5]!, source.length - off);
    chunks.push(source.subarray(off, off + n));
    off += n;
  }
  const answer = chunkedAnswer(chunks, "0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\n");
  const up = startRawUpstream(() => ({ bytes: answer }));
  const ferry = startFerry(config(), { UP: up.url });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    await writeAll(conn, enc.encode("GET /down HTTP/1.1\r\nhost: t\r\n\r\n"));
    const { text } = await readUntil(conn, (t) => t.endsWith("\r\n0\r\n\r\n"), 30_000);
    assert.match(text, /^HTTP\/1\.1 200/);
    const got = dechunk(text);
    assert.ok(got.ended, "the answer ends with its last chunk");
    assert.equal(got.body.length, source.length);
    assert.equal(
      createHash("sha256").update(got.body).digest("hex"),
      createHash("sha256").update(source).digest("hex"),
    );
    // Relayed through the buffer, small chunks go out together: far fewer than came in.
    assert.ok(got.chunks < chunks.length / 4, `${got.chunks} chunks out for ${chunks.length} in`);
  } finally {
    conn.close();
    await ferry.close();
    await up.close();
  }
});

Deno.test("body relay: a bad chunk size in the middle of an upstream answer truncates the client's response", async () => {
  const good = [pattern(40_000, 1), pattern(70_000, 2), pattern(5, 3)];
  const answer = chunkedAnswer(good, "zz\r\nnot a chunk\r\n0\r\n\r\n");
  const up = startRawUpstream(() => ({ bytes: answer, close: false }));
  const ferry = startFerry(config(), { UP: up.url });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    await writeAll(conn, enc.encode("GET /down HTTP/1.1\r\nhost: t\r\n\r\n"));
    const { text, closed } = await readUntil(conn, () => false, 15_000);
    assert.ok(closed, "the connection ends");
    assert.match(text, /^HTTP\/1\.1 200/);
    const got = dechunk(text);
    assert.equal(got.ended, false, "no last chunk: the client sees a truncated message");
    assert.ok(!text.includes("not a chunk"));
  } finally {
    conn.close();
    await ferry.close();
    await up.close();
  }
});

Deno.test("body relay: a body read directly is kept and sent again whole when a reused connection turns out closed", async () => {
  // The second request on every upstream connection meets a close without an answer (the
  // keep-alive race), after the upstream has read all of it: PUT, as only an idempotent request
  // is sent again then.
  const up = startRawUpstream((req) =>
    req.index === 1 ? { bytes: null } : { bytes: `HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok` }
  );
  const ferry = startFerry(config(), { UP: up.url });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  const bodies = [pattern(30_000, 31), pattern(50_000, 32), pattern(20_000, 33)];
  try {
    for (const [i, body] of bodies.entries()) {
      const chunked = i === 2;
      await writeAll(
        conn,
        enc.encode(
          `PUT /p${i} HTTP/1.1\r\nhost: t\r\n${
            chunked ? "transfer-encoding: chunked" : `content-length: ${body.length}`
          }\r\n\r\n`,
        ),
      );
      if (chunked) {
        await writeAll(conn, enc.encode(`${body.length.toString(16)}\r\n`));
        await writeAll(conn, body);
        await writeAll(conn, enc.encode("\r\n0\r\n\r\n"));
      } else await writeAll(conn, body);
      const { text } = await readUntil(conn, whole);
      assert.match(text, /^HTTP\/1\.1 200/, `request ${i}: ${text.slice(0, 100)}`);
    }
    assert.equal(ferry.ferry.snapshot.clusters.get("up")!.h1!.staleRetries, 2);
    assert.equal(directBodies(ferry), 3);
    // Each path arrived with its exact body, twice for the two that met a closed connection.
    const hex = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
    for (const [i, body] of bodies.entries()) {
      const got = up.requests.filter((r) => r.head.startsWith(`PUT /p${i} `));
      assert.equal(got.length, i === 0 ? 1 : 2, `attempts of request ${i}`);
      for (const r of got) assert.equal(hex(r.body), hex(body), `request ${i}`);
    }
  } finally {
    conn.close();
    await ferry.close();
    await up.close();
  }
});
