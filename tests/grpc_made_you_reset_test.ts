/**
 * "MadeYouReset": a client opens a call and then sends a frame that makes Ferry reset the stream
 * itself (a WINDOW_UPDATE of 0, or one that overflows the window), thousands of times. The resets
 * Ferry is provoked into sending cost the same budget as the client's own RST_STREAMs: GOAWAY
 * ENHANCE_YOUR_CALM, and only a bounded number of calls reach the upstream.
 */
import assert from "node:assert/strict";
import { startFerry } from "./helpers.ts";
import { echoClient, grpcEchoConfig, unary } from "./grpc/peers.ts";
import { H2Connection } from "../src/h2/connection.ts";
import {
  CLIENT_PREFACE,
  ErrorCode,
  Flag,
  frame,
  FrameReader,
  FrameType,
  readUint32,
  settingsAck,
  settingsFrame,
} from "../src/h2/frames.ts";
import { HpackDecoder, HpackEncoder } from "../src/h2/hpack.ts";
import { FerryMetrics } from "../src/observability/metrics.ts";

const ATTEMPTS = 4000;

/**
 * An upstream on Ferry's own HTTP/2 stack that counts every stream opened to it (grpc-js would
 * only count calls whose request message arrived whole) and echoes the request message.
 */
function countingUpstream(answerAfterMs = 0) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<H2Connection>();
  const state = { streams: 0 };
  (async () => {
    for await (const conn of listener) {
      const h2 = new H2Connection(conn, {
        role: "server",
        onStream: (s) => {
          state.streams++;
          void (async () => {
            const parts: Uint8Array[] = [];
            for await (const c of s.body) parts.push(c);
            if (answerAfterMs > 0) await new Promise((r) => setTimeout(r, answerAfterMs));
            s.sendHeaders([[":status", "200"], ["content-type", "application/grpc"]]);
            for (const p of parts) await s.write(p);
            await s.end([["grpc-status", "0"]]);
          })().catch(() => {});
        },
        onClose: () => conns.delete(h2),
      });
      conns.add(h2);
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get streams() {
      return state.streams;
    },
    stop() {
      listener.close();
      for (const c of conns) c.close();
    },
  };
}

function windowUpdate(streamId: number, increment: number): Uint8Array {
  const p = new Uint8Array(4);
  new DataView(p.buffer).setUint32(0, increment);
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, p);
}

Deno.test("grpc: resets the client provokes count like its own (MadeYouReset gets GOAWAY)", async () => {
  const upstream = countingUpstream();
  const ferry = startFerry(grpcEchoConfig(), { PORT: String(upstream.port) });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    const enc = new HpackEncoder();
    const msg = new Uint8Array([0, 0, 0, 0, 1, 0x78]);
    const out: Uint8Array[] = [CLIENT_PREFACE, settingsFrame([]), settingsAck()];
    for (let i = 0; i < ATTEMPTS; i++) {
      const id = 2 * i + 1;
      const block = enc.encode([
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/test.Echo/Unary"],
        [":authority", "x"],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
      ]);
      out.push(frame(FrameType.HEADERS, Flag.END_HEADERS, id, block));
      out.push(frame(FrameType.DATA, Flag.END_STREAM, id, msg));
      // Half the streams: increment 0; the other half: past 2^31-1 (both stream errors).
      out.push(windowUpdate(id, i % 2 === 0 ? 0 : 0x7fffffff));
    }
    const writing = (async () => {
      for (const b of out) await conn.write(b);
    })().catch(() => {});
    const reader = new FrameReader(1 << 24);
    const buf = new Uint8Array(65536);
    let goaway: number | undefined;
    const timeout = setTimeout(() => conn.close(), 20_000);
    try {
      while (goaway === undefined) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) break;
        reader.push(buf.slice(0, n));
        for (let f = reader.next(); f; f = reader.next()) {
          if (f.type === FrameType.GOAWAY) goaway = readUint32(f.payload, 4);
        }
      }
    } finally {
      clearTimeout(timeout);
    }
    await writing;
    assert.equal(goaway, ErrorCode.ENHANCE_YOUR_CALM, "the flood got GOAWAY ENHANCE_YOUR_CALM");
    await new Promise((r) => setTimeout(r, 500));
    // Each provoked reset costs one token of the 1000-frame burst (refilled at 200/s), so at most
    // about that many calls can start upstream (on main: ~1500 of 4000, and no GOAWAY).
    assert.ok(
      upstream.streams < 1300,
      `${upstream.streams} of ${ATTEMPTS} provoked calls reached the upstream`,
    );

    // Others are still served.
    const client = echoClient(ferry.port);
    const r = await unary(client, new TextEncoder().encode("after"));
    client.close();
    assert.equal(r.value?.toString(), "after");
  } finally {
    try {
      conn.close();
    } catch { /* closed by Ferry */ }
    await ferry.close();
    upstream.stop();
  }
});

Deno.test("grpc: a flood of calls whose own grpc-timeout expires upstream gets GOAWAY", async () => {
  // Answers after 300 ms: every call's 5 ms deadline expires while its upstream stream is open,
  // so Ferry resets that stream upstream on the client's behalf. (A deadline already passed on
  // arrival opens no upstream stream at all: the next test.)
  const upstream = countingUpstream(300);
  const ferry = startFerry(grpcEchoConfig({ route: "    timeout: 30s\n" }), {
    PORT: String(upstream.port),
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    const enc = new HpackEncoder();
    const msg = new Uint8Array([0, 0, 0, 0, 1, 0x78]);
    const reader = new FrameReader(1 << 24);
    const buf = new Uint8Array(65536);
    let goaway: number | undefined;
    const reading = (async () => {
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) return;
        reader.push(buf.slice(0, n));
        for (let f = reader.next(); f; f = reader.next()) {
          if (f.type === FrameType.GOAWAY) goaway ??= readUint32(f.payload, 4);
        }
      }
    })();
    await conn.write(CLIENT_PREFACE);
    await conn.write(settingsFrame([]));
    await conn.write(settingsAck());
    // In batches of 100, with a pause, so Ferry keeps up and each batch's deadlines expire.
    for (let i = 0; i < ATTEMPTS && goaway === undefined; i++) {
      const id = 2 * i + 1;
      const block = enc.encode([
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/test.Echo/Unary"],
        [":authority", "x"],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
        ["grpc-timeout", "5m"],
      ]);
      const ok = await conn.write(frame(FrameType.HEADERS, Flag.END_HEADERS, id, block))
        .then(() => conn.write(frame(FrameType.DATA, Flag.END_STREAM, id, msg)))
        .then(() => true, () => false);
      if (!ok) break;
      if (i % 100 === 99) await new Promise((r) => setTimeout(r, 20));
    }
    const deadline = Date.now() + 10_000;
    while (goaway === undefined && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    conn.close();
    await reading;
    assert.equal(goaway, ErrorCode.ENHANCE_YOUR_CALM, "the flood got GOAWAY ENHANCE_YOUR_CALM");
    assert.ok(
      upstream.streams < 3000,
      `${upstream.streams} of ${ATTEMPTS} calls were opened and cancelled upstream`,
    );

    const client = echoClient(ferry.port);
    const r = await unary(client, new TextEncoder().encode("after"));
    client.close();
    assert.equal(r.value?.toString(), "after");
  } finally {
    try {
      conn.close();
    } catch { /* closed above */ }
    await ferry.close();
    upstream.stop();
  }
});

Deno.test("grpc: a call whose deadline has passed on arrival gets DEADLINE_EXCEEDED, no upstream stream", async () => {
  const upstream = countingUpstream();
  const metrics = new FerryMetrics();
  const ferry = startFerry(
    grpcEchoConfig({ route: "    timeout: 30s\n" }),
    { PORT: String(upstream.port) },
    { metrics },
  );
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  try {
    const enc = new HpackEncoder();
    const dec = new HpackDecoder();
    const reader = new FrameReader(1 << 24);
    const buf = new Uint8Array(65536);
    const statuses = new Map<number, string | undefined>();
    const reading = (async () => {
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) return;
        reader.push(buf.slice(0, n));
        for (let f = reader.next(); f; f = reader.next()) {
          if (f.type !== FrameType.HEADERS) continue;
          const fields = dec.decode(f.payload);
          statuses.set(f.streamId, fields.find(([n]) => n === "grpc-status")?.[1]);
        }
      }
    })();
    await conn.write(CLIENT_PREFACE);
    await conn.write(settingsFrame([]));
    await conn.write(settingsAck());
    const timeouts = ["1n", "0n", "0m", "999u", "1n", "0S"];
    for (const [i, t] of timeouts.entries()) {
      const id = 2 * i + 1;
      const block = enc.encode([
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/test.Echo/Unary"],
        [":authority", "x"],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
        ["grpc-timeout", t],
      ]);
      await conn.write(frame(FrameType.HEADERS, Flag.END_HEADERS, id, block));
      await conn.write(frame(FrameType.DATA, Flag.END_STREAM, id, new Uint8Array([0, 0, 0, 0, 0])));
    }
    const deadline = Date.now() + 10_000;
    while (statuses.size < timeouts.length && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual(
      timeouts.map((_, i) => statuses.get(2 * i + 1)),
      timeouts.map(() => "4"),
      "every call answered DEADLINE_EXCEEDED",
    );
    // A live call on the same connection still goes through: the upstream's only stream.
    const block = enc.encode([
      [":method", "POST"],
      [":scheme", "http"],
      [":path", "/test.Echo/Unary"],
      [":authority", "x"],
      ["content-type", "application/grpc"],
      ["te", "trailers"],
      ["grpc-timeout", "10S"],
    ]);
    const live = 2 * timeouts.length + 1;
    await conn.write(frame(FrameType.HEADERS, Flag.END_HEADERS, live, block));
    await conn.write(frame(FrameType.DATA, Flag.END_STREAM, live, new Uint8Array([0, 0, 0, 0, 0])));
    while (statuses.get(live) === undefined && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(statuses.get(live), "0");
    assert.equal(upstream.streams, 1, "only the live call opened an upstream stream");
    assert.match(
      await metrics.expose(),
      /ferry_grpc_calls_total\{[^}]*grpc_status="DEADLINE_EXCEEDED"[^}]*\} 6/,
    );
    conn.close();
    await reading;
  } finally {
    try {
      conn.close();
    } catch { /* closed above */ }
    await ferry.close();
    upstream.stop();
  }
});
