/**
 * A client that opens streams and never sends WINDOW_UPDATE while the upstream streams large
 * responses: Ferry (a subprocess, so its RSS is its own) holds a bounded amount, the upstream is
 * back-pressured, and when the client goes away every upstream call is cancelled.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { spawnFerry, tempConfig } from "./helpers.ts";
import { echoClient, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";
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

const STREAMS = 40;
const MESSAGES = 200;
const SIZE = 64 * 1024; // 40 x 200 x 64 KiB = 500 MiB asked for in all

function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]);
}

async function until(what: string, check: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

Deno.test("grpc zero window: memory stays bounded, the upstream is back-pressured, all is released", async () => {
  const server = await startEchoServer();
  const file = await tempConfig(
    grpcEchoConfig({ endpoints: `["http://127.0.0.1:${server.port}"]` }),
  );
  const ferry = await spawnFerry(["--config", file]);
  const port = Number(new URL(ferry.listeners.get("grpc")!).port);
  const pid = ferry.child.pid;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    // Warm up (JIT, upstream connection) so the baseline is not Ferry before its first call.
    const warm = echoClient(port);
    assert.equal((await unary(warm, Buffer.from("warm"))).error, undefined);
    warm.close();
    const baseline = rssKiB(pid);

    // Default windows (64 KiB for the connection and each stream), never raised.
    const enc = new HpackEncoder();
    const body = new TextEncoder().encode(`big:${MESSAGES}:${SIZE}`);
    const msg = new Uint8Array(5 + body.length);
    new DataView(msg.buffer).setUint32(1, body.length);
    msg.set(body, 5);
    await conn.write(CLIENT_PREFACE);
    await conn.write(settingsFrame([]));
    for (let i = 0; i < STREAMS; i++) {
      const id = 2 * i + 1;
      const block = enc.encode([
        [":method", "POST"],
        [":scheme", "http"],
        [":path", "/test.Echo/ServerStream"],
        [":authority", "x"],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
      ]);
      await conn.write(frame(FrameType.HEADERS, Flag.END_HEADERS, id, block));
      await conn.write(frame(FrameType.DATA, Flag.END_STREAM, id, msg));
    }
    // Read (so TCP is not what pushes back) but grant no credit: only HTTP/2 flow control does.
    let dataBytes = 0;
    const reader = new FrameReader(1 << 24);
    const reading = (async () => {
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) return;
        reader.push(buf.slice(0, n));
        for (let f = reader.next(); f; f = reader.next()) {
          if (f.type === FrameType.DATA) dataBytes += f.payload.length;
          if (f.type === FrameType.SETTINGS && !(f.flags & Flag.ACK)) {
            await conn.write(settingsAck()).catch(() => 0);
          }
        }
      }
    })();

    // Let the upstream push as hard as it can, then look.
    await until("the upstream has started every stream", () => server.big.sent >= STREAMS);
    await new Promise((r) => setTimeout(r, 2_000));
    const sentWhileStuck = server.big.sent;
    const peak = rssKiB(pid);
    await new Promise((r) => setTimeout(r, 1_000));
    assert.equal(server.big.sent - sentWhileStuck <= STREAMS, true, "the upstream has stalled");
    assert.ok(dataBytes <= 65_535, `the client got at most its window (${dataBytes} bytes)`);
    const asked = STREAMS * MESSAGES;
    assert.ok(
      server.big.sent < asked / 4,
      `the upstream was back-pressured: ${server.big.sent} of ${asked} messages written`,
    );
    // Generous: Ferry holds at most 24 MiB per upstream connection (16 MiB on credit returned
    // early, then the 8 MiB connection window); 500 MiB were asked for.
    const grownMiB = (rssKiB(pid) - baseline) / 1024;
    assert.ok(grownMiB < 120, `Ferry's RSS grew ${grownMiB.toFixed(1)} MiB (peak ${peak} kB)`);

    // The client goes away: every upstream call is cancelled, Ferry keeps serving.
    conn.close();
    await reading;
    await until("every upstream call was cancelled", () => server.big.cancelled >= STREAMS);
    const after = echoClient(port);
    const r = await unary(after, Buffer.from("after"));
    after.close();
    assert.equal(r.value?.toString(), "after");
  } finally {
    try {
      conn.close();
    } catch { /* closed above */ }
    ferry.child.kill("SIGTERM");
    await ferry.child.status;
    await server.stop();
    await Deno.remove(file);
  }
});
