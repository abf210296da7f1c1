/**
 * Graceful shutdown of a gRPC listener, two-step GOAWAY (RFC 9113 6.8): a raw HTTP/2 client sees
 * GOAWAY with last-stream-id 2^31-1 and a PING first; a stream it opens before answering the PING
 * is still served; after the PING ACK comes the real GOAWAY naming that stream, later streams are
 * refused, and every call in flight completes with grpc-status 0. A grpc-js client's calls in
 * flight at shutdown complete too.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { startFerry } from "./helpers.ts";
import { echoClient, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";
import {
  CLIENT_PREFACE,
  ErrorCode,
  Flag,
  type Frame,
  frame,
  FrameReader,
  FrameType,
  readUint32,
  settingsAck,
  settingsFrame,
} from "../src/h2/frames.ts";
import { HpackDecoder, HpackEncoder } from "../src/h2/hpack.ts";

const CONFIG = grpcEchoConfig();

/** HEADERS then one length-prefixed message with END_STREAM: a unary call on stream `id`. */
function call(enc: HpackEncoder, id: number, text: string): Uint8Array[] {
  const block = enc.encode([
    [":method", "POST"],
    [":scheme", "http"],
    [":path", "/test.Echo/Unary"],
    [":authority", "x"],
    ["content-type", "application/grpc"],
    ["te", "trailers"],
  ]);
  const body = new TextEncoder().encode(text);
  const msg = new Uint8Array(5 + body.length);
  new DataView(msg.buffer).setUint32(1, body.length);
  msg.set(body, 5);
  return [
    frame(FrameType.HEADERS, Flag.END_HEADERS, id, block),
    frame(FrameType.DATA, Flag.END_STREAM, id, msg),
  ];
}

/** Reads frames off a raw connection; `next(pred)` waits (bounded) for the first that matches. */
function frameSource(conn: Deno.Conn) {
  const reader = new FrameReader(1 << 24);
  const seen: Frame[] = [];
  let closed = false;
  const buf = new Uint8Array(65536);
  const pull = async () => {
    const n = await conn.read(buf).catch(() => null);
    if (n === null) closed = true;
    else {
      reader.push(buf.slice(0, n));
      for (let f = reader.next(); f; f = reader.next()) seen.push(f);
    }
  };
  return {
    seen,
    get closed() {
      return closed;
    },
    async next(pred: (f: Frame) => boolean, what: string, ms = 10_000): Promise<Frame> {
      const deadline = Date.now() + ms;
      let from = 0;
      for (;;) {
        for (; from < seen.length; from++) if (pred(seen[from]!)) return seen[from]!;
        if (closed || Date.now() > deadline) throw new Error(`no ${what} (closed: ${closed})`);
        await pull();
      }
    },
    async untilClosed(ms = 10_000): Promise<void> {
      const timer = setTimeout(() => conn.close(), ms);
      try {
        while (!closed) await pull();
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

Deno.test("grpc shutdown: GOAWAY 2^31-1 + PING, streams opened meanwhile served, then the real GOAWAY", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(CONFIG, { PORT: String(server.port) });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  const frames = frameSource(conn);
  const enc = new HpackEncoder();
  let closing: Promise<void> | undefined;
  try {
    await conn.write(CLIENT_PREFACE);
    await conn.write(settingsFrame([]));
    await frames.next(
      (f) => f.type === FrameType.SETTINGS && (f.flags & Flag.ACK) === 0,
      "SETTINGS",
    );
    await conn.write(settingsAck());
    for (const b of call(enc, 1, "sleep:1500")) await conn.write(b);
    for (let i = 0; i < 250 && server.calls.n < 1; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(server.calls.n, 1, "the slow call reached the upstream");

    closing = ferry.close();
    const first = await frames.next((f) => f.type === FrameType.GOAWAY, "first GOAWAY");
    assert.equal(readUint32(first.payload, 0) & 0x7fffffff, 0x7fffffff);
    assert.equal(readUint32(first.payload, 4), ErrorCode.NO_ERROR);
    const ping = await frames.next(
      (f) => f.type === FrameType.PING && (f.flags & Flag.ACK) === 0,
      "PING after the first GOAWAY",
    );
    // A stream opened while the first GOAWAY is in flight is still served.
    for (const b of call(enc, 3, "in between")) await conn.write(b);
    // Stream 3's frames precede the ACK on the wire, so the server has read them when it ends
    // step one.
    await conn.write(frame(FrameType.PING, Flag.ACK, 0, ping.payload));

    const goaways = () => frames.seen.filter((f) => f.type === FrameType.GOAWAY);
    await frames.next((f) => f.type === FrameType.GOAWAY && f !== first, "second GOAWAY");
    const second = goaways()[1]!;
    assert.equal(readUint32(second.payload, 0) & 0x7fffffff, 3, "the real GOAWAY names stream 3");
    assert.equal(readUint32(second.payload, 4), ErrorCode.NO_ERROR);
    // After the real GOAWAY, a new stream is refused.
    for (const b of call(enc, 5, "too late")) await conn.write(b);
    const refused = await frames.next(
      (f) => f.type === FrameType.RST_STREAM && f.streamId === 5,
      "RST_STREAM for stream 5",
    );
    assert.equal(readUint32(refused.payload, 0), ErrorCode.REFUSED_STREAM);

    await frames.untilClosed();
    const dec = new HpackDecoder();
    const statuses = new Map<number, string | undefined>();
    const messages = new Map<number, string>();
    for (const f of frames.seen) {
      if (f.type === FrameType.HEADERS) {
        const fields = dec.decode(f.payload);
        const gs = fields.find(([n]) => n === "grpc-status")?.[1];
        if (gs !== undefined) statuses.set(f.streamId, gs);
      }
      if (f.type === FrameType.DATA && f.payload.length > 5) {
        messages.set(f.streamId, new TextDecoder().decode(f.payload.subarray(5)));
      }
    }
    assert.equal(statuses.get(1), "0", "the call in flight at shutdown completed");
    assert.equal(messages.get(1), "sleep:1500");
    assert.equal(statuses.get(3), "0", "the call opened between the GOAWAYs was served");
    assert.equal(messages.get(3), "in between");
    assert.equal(goaways().length, 2);
  } finally {
    try {
      conn.close();
    } catch { /* closed by the server */ }
    await (closing ?? ferry.close());
    await server.stop();
  }
});

Deno.test("grpc shutdown: grpc-js calls in flight at shutdown complete", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(CONFIG, { PORT: String(server.port) });
  const client = echoClient(ferry.port);
  try {
    assert.equal((await unary(client, Buffer.from("warm"))).error, undefined);
    const calls = [0, 1, 2].map((i) => unary(client, Buffer.from(`sleep:${800 + i * 100}`)));
    for (let i = 0; i < 250 && server.calls.n < 4; i++) await new Promise((r) => setTimeout(r, 20));
    const closing = ferry.close();
    const results = await Promise.all(calls);
    results.forEach((r, i) => {
      assert.equal(r.error, undefined, String(r.error));
      assert.equal(r.value?.toString(), `sleep:${800 + i * 100}`);
    });
    await closing;
  } finally {
    client.close();
    await server.stop();
  }
});
