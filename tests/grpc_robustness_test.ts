/**
 * A gRPC listener against hostile raw HTTP/2 peers: malformed frames, a SETTINGS flood, a
 * "rapid reset" RST_STREAM flood, a header block that never ends, and a peer that never opens
 * its window. Each gets a GOAWAY (or is held by flow control) and the listener keeps serving.
 */
import assert from "node:assert/strict";
import { startFerry } from "./helpers.ts";
import { echoClient, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";
import {
  CLIENT_PREFACE,
  ErrorCode,
  Flag,
  frame,
  FrameReader,
  FrameType,
  readUint32,
  rstFrame,
  settingsFrame,
} from "../src/h2/frames.ts";
import { HpackEncoder } from "../src/h2/hpack.ts";

const CONFIG = grpcEchoConfig({ prefix: "/" });

/**
 * Sends `bytes` after the preface and SETTINGS; returns the GOAWAY error code, or "431" when
 * stream 1 is answered with status 431 instead, or undefined after 10 s of neither.
 */
async function goawayAfter(
  port: number,
  bytes: Uint8Array[],
): Promise<number | string | undefined> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reader = new FrameReader(1 << 24);
  try {
    await conn.write(CLIENT_PREFACE);
    await conn.write(settingsFrame([]));
    for (const b of bytes) await conn.write(b).catch(() => 0);
    const buf = new Uint8Array(65536);
    const deadline = Date.now() + 10_000;
    const timeout = setTimeout(() => conn.close(), 10_000);
    try {
      while (Date.now() < deadline) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) return undefined;
        reader.push(buf.slice(0, n));
        for (let f = reader.next(); f; f = reader.next()) {
          if (f.type === FrameType.GOAWAY) return readUint32(f.payload, 4);
          if (f.type === FrameType.HEADERS && f.streamId === 1) return "431";
        }
      }
    } finally {
      clearTimeout(timeout);
    }
    return undefined;
  } finally {
    try {
      conn.close();
    } catch { /* closed by the server */ }
  }
}

function request(enc: HpackEncoder, id: number, end = false): Uint8Array {
  const block = enc.encode([
    [":method", "POST"],
    [":scheme", "http"],
    [":path", "/test.Echo/Unary"],
    [":authority", "x"],
    ["content-type", "application/grpc"],
  ]);
  return frame(FrameType.HEADERS, Flag.END_HEADERS | (end ? Flag.END_STREAM : 0), id, block);
}

Deno.test("grpc listener: hostile peers get GOAWAY and the listener keeps serving", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(CONFIG, { PORT: String(server.port) });
  const client = echoClient(ferry.port);
  try {
    // Malformed: a PING of 3 bytes, a WINDOW_UPDATE on stream 0 of 0, DATA on stream 0.
    assert.equal(
      await goawayAfter(ferry.port, [frame(FrameType.PING, 0, 0, new Uint8Array(3))]),
      ErrorCode.FRAME_SIZE_ERROR,
    );
    assert.equal(
      await goawayAfter(ferry.port, [frame(FrameType.DATA, 0, 0, new Uint8Array(4))]),
      ErrorCode.PROTOCOL_ERROR,
    );
    // A frame larger than our SETTINGS_MAX_FRAME_SIZE.
    const huge = new Uint8Array(9);
    huge[0] = 0x01; // 65536 bytes announced
    assert.equal(await goawayAfter(ferry.port, [huge]), ErrorCode.FRAME_SIZE_ERROR);

    // SETTINGS flood.
    const settings = Array.from({ length: 3000 }, () => settingsFrame([[4, 65535]]));
    assert.equal(await goawayAfter(ferry.port, settings), ErrorCode.ENHANCE_YOUR_CALM);

    // Rapid reset: open a stream and reset it at once, thousands of times.
    const enc = new HpackEncoder();
    const rapid: Uint8Array[] = [];
    for (let i = 0; i < 3000; i++) {
      rapid.push(request(enc, 2 * i + 1), rstFrame(2 * i + 1, ErrorCode.CANCEL));
    }
    assert.equal(await goawayAfter(ferry.port, rapid), ErrorCode.ENHANCE_YOUR_CALM);

    // A header block that never ends: CONTINUATION frames past the header-list bound.
    const enc2 = new HpackEncoder();
    const first = frame(FrameType.HEADERS, 0, 1, enc2.encode([[":method", "POST"]]));
    const filler = new Uint8Array(16_000).fill(0x61);
    const conts = Array.from({ length: 20 }, () => frame(FrameType.CONTINUATION, 0, 1, filler));
    assert.equal(await goawayAfter(ferry.port, [first, ...conts]), ErrorCode.ENHANCE_YOUR_CALM);

    // Oversized but complete header list: the stream is answered 431, the connection lives.
    const enc3 = new HpackEncoder();
    const big = enc3.encode([
      [":method", "POST"],
      [":scheme", "http"],
      [":path", "/test.Echo/Unary"],
      [":authority", "x"],
      ["x-big", "v".repeat(70_000)],
    ]);
    const parts = [frame(FrameType.HEADERS, 0, 1, big.subarray(0, 16000))];
    for (let off = 16000; off < big.length; off += 16000) {
      const last = off + 16000 >= big.length;
      parts.push(
        frame(
          FrameType.CONTINUATION,
          last ? Flag.END_HEADERS : 0,
          1,
          big.subarray(off, off + 16000),
        ),
      );
    }
    assert.equal(await goawayAfter(ferry.port, parts), "431");

    // A peer that never opens its window: the proxy holds at most the window, nothing crashes.
    const stingy = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
    await stingy.write(CLIENT_PREFACE);
    await stingy.write(settingsFrame([[4, 0]])); // INITIAL_WINDOW_SIZE 0
    const enc4 = new HpackEncoder();
    await stingy.write(request(enc4, 1));
    const msg = new Uint8Array(5 + 10);
    msg[4] = 10;
    await stingy.write(frame(FrameType.DATA, Flag.END_STREAM, 1, msg));
    await new Promise((r) => setTimeout(r, 300));

    // Through all of that, real calls still work.
    const r = await unary(client, new TextEncoder().encode("still here"));
    assert.equal(r.error, undefined);
    assert.equal(r.value?.toString(), "still here");
    stingy.close();
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});
