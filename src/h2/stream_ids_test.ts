/**
 * RFC 9113 5.1.1 over a real socket: a client's new stream ids must grow. A HEADERS on a lower id
 * never opened is a connection error (GOAWAY PROTOCOL_ERROR); on an id opened and closed it is a
 * stream error (RST_STREAM STREAM_CLOSED) and the connection goes on.
 */
import assert from "node:assert/strict";
import { H2Connection } from "./connection.ts";
import {
  CLIENT_PREFACE,
  ErrorCode,
  FrameReader,
  FrameType,
  headerFrames,
  readUint32,
  settingsAck,
  settingsFrame,
} from "./frames.ts";
import { HpackEncoder } from "./hpack.ts";

function server() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: H2Connection[] = [];
  (async () => {
    for await (const conn of listener) {
      conns.push(
        new H2Connection(conn, {
          role: "server",
          onStream: (s) => s.sendHeaders([[":status", "200"]], true),
        }),
      );
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    stop() {
      listener.close();
      for (const c of conns) c.close();
    },
  };
}

/** A raw client: sends frames, collects what the server answers until `until` says stop. */
async function exchange(
  port: number,
  streams: number[],
  until: (types: { type: number; streamId: number; code?: number }[]) => boolean,
) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const enc = new HpackEncoder();
  const write = (b: Uint8Array) => conn.write(b);
  await write(CLIENT_PREFACE);
  await write(settingsFrame([]));
  await write(settingsAck());
  const seen: { type: number; streamId: number; code?: number }[] = [];
  const reader = new FrameReader(1 << 20);
  const buf = new Uint8Array(65536);
  for (const id of streams) {
    const block = enc.encode([
      [":method", "GET"],
      [":scheme", "http"],
      [":path", "/"],
      [":authority", "x"],
    ]);
    for (const f of headerFrames(id, block, true, 16384)) await write(f);
  }
  // A server that never answers what `until` waits for: the read ends when the socket does.
  const timer = setTimeout(() => conn.close(), 3000);
  try {
    while (!until(seen)) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) break;
      reader.push(buf.slice(0, n));
      for (let f = reader.next(); f; f = reader.next()) {
        const code = f.type === FrameType.GOAWAY
          ? readUint32(f.payload, 4)
          : f.type === FrameType.RST_STREAM
          ? readUint32(f.payload, 0)
          : undefined;
        seen.push({ type: f.type, streamId: f.streamId, ...(code !== undefined ? { code } : {}) });
      }
    }
  } finally {
    clearTimeout(timer);
    try {
      conn.close();
    } catch { /* closed by the timer */ }
  }
  return seen;
}

Deno.test("h2 server: HEADERS on a lower stream id never opened is GOAWAY PROTOCOL_ERROR", async () => {
  const s = server();
  try {
    const seen = await exchange(s.port, [5, 3], (x) => x.some((f) => f.type === FrameType.GOAWAY));
    const goaway = seen.find((f) => f.type === FrameType.GOAWAY);
    assert.ok(goaway, JSON.stringify(seen));
    assert.equal(goaway.code, ErrorCode.PROTOCOL_ERROR);
  } finally {
    s.stop();
  }
});

Deno.test("h2 server: HEADERS again on a stream opened and closed is RST_STREAM STREAM_CLOSED, the connection goes on", async () => {
  const s = server();
  try {
    const seen = await exchange(
      s.port,
      [1, 1, 3],
      (x) => x.some((f) => f.type === FrameType.HEADERS && f.streamId === 3),
    );
    const rst = seen.find((f) => f.type === FrameType.RST_STREAM && f.streamId === 1);
    assert.equal(rst?.code, ErrorCode.STREAM_CLOSED, JSON.stringify(seen));
    assert.ok(!seen.some((f) => f.type === FrameType.GOAWAY), JSON.stringify(seen));
    assert.ok(
      seen.some((f) => f.type === FrameType.HEADERS && f.streamId === 3),
      "stream 3 served",
    );
  } finally {
    s.stop();
  }
});
