/**
 * A request body that comes in many tiny pieces (1-byte chunks, one DATA frame per byte) reaches
 * an HTTP/1.1 upstream through the h1 codec in far fewer, larger chunks: what is already readable
 * is gathered into one upstream chunk (bounded), never waiting for more, so a slow drip is still
 * forwarded piece by piece as it comes. Checked on Ferry's own HTTP/1.1 server (the direct body
 * reader), on Deno.serve (`connection_guard: false`) and with HTTP/2 clients (ReadableStream
 * bodies), against a raw upstream that counts the chunk-size lines it receives.
 */
import assert from "node:assert/strict";
import { concat, startFerry } from "./helpers.ts";
import {
  CLIENT_PREFACE,
  Flag,
  frame,
  FrameReader,
  FrameType,
  settingsAck,
  settingsFrame,
} from "../src/h2/frames.ts";
import { HpackEncoder } from "../src/h2/hpack.ts";
import { type ChunkCount, startChunkCountingUpstream } from "./fixtures/chunk_counting_upstream.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const PIECES = 3000;

function config(guard: boolean): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
server: { watch_config: false${guard ? "" : ", connection_guard: false"} }
routes:
  - { name: r, match: { path: { prefix: / } }, cluster: up, timeout: 20s }
clusters:
  - { name: up, endpoints: ["{{UP}}"] }
`;
}

function bodyText(n: number): string {
  let s = "";
  for (let i = 0; i < n; i++) s += String.fromCharCode(97 + (i % 26));
  return s;
}

/** Reads one response with a Content-Length body from `conn`. */
async function readAnswer(conn: Deno.Conn): Promise<{ status: number; json: ChunkCount }> {
  let text = "";
  const buf = new Uint8Array(64 * 1024);
  const deadline = Date.now() + 20_000;
  for (;;) {
    const end = text.indexOf("\r\n\r\n");
    const cl = end >= 0 ? /\r\ncontent-length: (\d+)/i.exec(text.slice(0, end)) : null;
    if (cl && text.length >= end + 4 + Number(cl[1])) {
      return {
        status: Number(text.slice(9, 12)),
        json: JSON.parse(text.slice(end + 4, end + 4 + Number(cl[1]))),
      };
    }
    if (Date.now() > deadline) throw new Error(`no answer: ${text.slice(0, 300)}`);
    const n = await conn.read(buf);
    if (n === null) throw new Error(`closed: ${text.slice(0, 300)}`);
    text += dec.decode(buf.subarray(0, n));
  }
}

/**
 * POSTs `body` chunked as 1-byte chunks: `writes` client writes in all (1: every chunk in one
 * write; PIECES: a write per chunk).
 */
async function postTinyChunks(port: number, body: string, writes: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  try {
    await conn.write(
      enc.encode("POST /up HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n"),
    );
    const per = Math.ceil(body.length / writes);
    for (let i = 0; i < body.length; i += per) {
      let piece = "";
      for (const ch of body.slice(i, i + per)) piece += `1\r\n${ch}\r\n`;
      await conn.write(enc.encode(piece));
    }
    await conn.write(enc.encode("0\r\n\r\n"));
    return await readAnswer(conn);
  } finally {
    conn.close();
  }
}

for (const guard of [true, false]) {
  const where = guard ? "Ferry's own HTTP/1.1 server" : "Deno.serve (connection_guard: false)";
  Deno.test(`${where}: ${PIECES} one-byte chunks reach the upstream in far fewer chunks, intact`, async () => {
    const up = startChunkCountingUpstream();
    const px = startFerry(config(guard), { UP: up.url });
    try {
      const body = bodyText(PIECES);
      for (const writes of [1, PIECES]) {
        const { status, json } = await postTinyChunks(px.port, body, writes);
        assert.equal(status, 200);
        assert.equal(json.body, body, "the body arrives whole and in order");
        assert.ok(
          json.chunks <= PIECES / 10,
          `${writes} client writes: ${json.chunks} upstream chunks for ${PIECES} client chunks`,
        );
      }
    } finally {
      await px.close();
      await up.close();
    }
  });

  Deno.test(`${where}: a slow drip of chunks is forwarded as it comes, before the client ends`, async () => {
    const up = startChunkCountingUpstream();
    const px = startFerry(config(guard), { UP: up.url });
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
    try {
      await conn.write(
        enc.encode("POST /up HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n"),
      );
      for (let i = 1; i <= 4; i++) {
        await conn.write(enc.encode(`1\r\n${i}\r\n`));
        const until = Date.now() + 5_000;
        while (up.received() !== i && Date.now() < until) {
          await new Promise((r) => setTimeout(r, 10));
        }
        assert.equal(up.received(), i, `piece ${i} reached the upstream while the client waits`);
      }
      await conn.write(enc.encode("0\r\n\r\n"));
      const { json } = await readAnswer(conn);
      assert.equal(json.body, "1234");
    } finally {
      conn.close();
      await px.close();
      await up.close();
    }
  });
}

/**
 * A raw HTTP/2 client (prior knowledge, through the guard to the inner Deno.serve): one POST whose
 * body is `body.length` DATA frames of one byte each, all in one write. Returns the answer's body.
 */
async function h2OneBytePerFrame(port: number, body: Uint8Array): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const block = new HpackEncoder().encode([
      [":method", "POST"],
      [":scheme", "http"],
      [":path", "/up"],
      [":authority", "a"],
    ]);
    const out: Uint8Array[] = [
      CLIENT_PREFACE,
      settingsFrame([]),
      frame(FrameType.HEADERS, Flag.END_HEADERS, 1, block),
    ];
    for (let i = 0; i < body.length; i++) {
      out.push(frame(FrameType.DATA, 0, 1, body.slice(i, i + 1)));
    }
    out.push(frame(FrameType.DATA, Flag.END_STREAM, 1));
    await conn.write(concat(out));
    const reader = new FrameReader(1 << 20);
    const buf = new Uint8Array(64 * 1024);
    let answer = "";
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline) {
      const n = await conn.read(buf);
      if (n === null) break;
      reader.push(buf.slice(0, n));
      for (let f = reader.next(); f; f = reader.next()) {
        if (f.type === FrameType.SETTINGS && !(f.flags & Flag.ACK)) await conn.write(settingsAck());
        if (f.type === FrameType.DATA && f.streamId === 1) {
          answer += dec.decode(f.payload);
          if (f.flags & Flag.END_STREAM) return answer;
        }
        if (f.type === FrameType.RST_STREAM || f.type === FrameType.GOAWAY) {
          throw new Error(`frame type ${f.type}: ${answer}`);
        }
      }
    }
    throw new Error(`no complete answer: ${answer}`);
  } finally {
    conn.close();
  }
}

Deno.test("HTTP/2 client: a body sent as one DATA frame per byte reaches an HTTP/1.1 upstream in far fewer chunks; a drip stays live", async () => {
  const up = startChunkCountingUpstream();
  const px = startFerry(config(true), { UP: up.url });
  const client = Deno.createHttpClient({ http1: false, http2: true });
  try {
    const body = bodyText(PIECES);
    const json: ChunkCount = JSON.parse(await h2OneBytePerFrame(px.port, enc.encode(body)));
    assert.equal(json.body, body);
    assert.ok(json.chunks <= PIECES / 10, `${json.chunks} upstream chunks for ${PIECES} frames`);

    // The drip: each piece reaches the upstream before the next one is sent.
    let n = 0;
    let controller!: ReadableStreamDefaultController<Uint8Array>;
    const answer = fetch(`${px.url}/up`, {
      method: "POST",
      client,
      body: new ReadableStream<Uint8Array>({ start: (c) => void (controller = c) }),
    });
    for (n = 1; n <= 3; n++) {
      controller.enqueue(enc.encode(String(n)));
      const until = Date.now() + 5_000;
      while (up.received() !== n && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 10));
      }
      assert.equal(up.received(), n, `piece ${n} reached the upstream while the client waits`);
    }
    controller.close();
    assert.equal(((await (await answer).json()) as ChunkCount).body, "123");
  } finally {
    client.close();
    await px.close();
    await up.close();
  }
});
