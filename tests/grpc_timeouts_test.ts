/**
 * Downstream connection protection on a gRPC listener (`listeners[].grpc`): a client that never
 * sends the preface, one that never acknowledges our SETTINGS, and an idle connection each get
 * a GOAWAY with the right code and are closed; a slow call outlives the idle timeout.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { metricValue, startFerry } from "./helpers.ts";
import { echoClient, startEchoServer, unary } from "./grpc/peers.ts";
import {
  CLIENT_PREFACE,
  ErrorCode,
  Flag,
  FrameReader,
  FrameType,
  readUint32,
  settingsAck,
  settingsFrame,
} from "../src/h2/frames.ts";

const CONFIG = `listeners:
  - name: grpc
    address: "127.0.0.1:0"
    protocol: grpc
    grpc: { idle_timeout: 400ms, handshake_timeout: 400ms, settings_timeout: 400ms }
admin: { address: "127.0.0.1:0" }
routes:
  - name: echo
    match: { path: { prefix: / } }
    cluster: echo
clusters:
  - name: echo
    protocol: h2c
    endpoints: ["http://127.0.0.1:{{PORT}}"]
`;

interface Ending {
  goaway: number | undefined;
  closed: boolean;
  ms: number;
}

/** Writes `bytes`, then reads (answering nothing) until the server closes or 10 s pass. */
async function watch(port: number, bytes: Uint8Array[], ackSettings = false): Promise<Ending> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const started = performance.now();
  const reader = new FrameReader(1 << 24);
  let goaway: number | undefined;
  const giveUp = setTimeout(() => conn.close(), 10_000);
  try {
    for (const b of bytes) await conn.write(b);
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) {
        return {
          goaway,
          closed: performance.now() - started < 10_000,
          ms: performance.now() - started,
        };
      }
      reader.push(buf.slice(0, n));
      for (let f = reader.next(); f; f = reader.next()) {
        if (f.type === FrameType.GOAWAY) goaway = readUint32(f.payload, 4);
        if (ackSettings && f.type === FrameType.SETTINGS && !(f.flags & Flag.ACK)) {
          await conn.write(settingsAck());
        }
      }
    }
  } finally {
    clearTimeout(giveUp);
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

Deno.test("grpc listener: handshake, SETTINGS ACK and idle timeouts end connections with GOAWAY", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(CONFIG, { PORT: String(server.port) });
  try {
    // Silent: no preface at all.
    const silent = await watch(ferry.port, []);
    assert.ok(silent.closed, "a silent connection is closed");
    assert.equal(silent.goaway, ErrorCode.PROTOCOL_ERROR);

    // Half a preface, then nothing.
    const half = await watch(ferry.port, [CLIENT_PREFACE.subarray(0, 10)]);
    assert.ok(half.closed);
    assert.equal(half.goaway, ErrorCode.PROTOCOL_ERROR);

    // Preface and SETTINGS, but our SETTINGS are never acknowledged.
    const noAck = await watch(ferry.port, [CLIENT_PREFACE, settingsFrame([])]);
    assert.ok(noAck.closed);
    assert.equal(noAck.goaway, ErrorCode.SETTINGS_TIMEOUT);

    // A well-behaved client that opens no stream: idle, GOAWAY NO_ERROR.
    const idle = await watch(ferry.port, [CLIENT_PREFACE, settingsFrame([])], true);
    assert.ok(idle.closed);
    assert.equal(idle.goaway, ErrorCode.NO_ERROR);
    assert.ok(idle.ms >= 300, `closed after ${Math.round(idle.ms)} ms, not before the timeout`);

    // Each ending is counted by its reason (only the caps were, before).
    const text = await (await fetch(`${ferry.adminUrl}/metrics`)).text();
    const refused = (reason: string) =>
      metricValue(text, "ferry_downstream_refused_total", { listener: "grpc", reason });
    assert.equal(refused("request_timeout"), 2, "silent and half a preface: handshake timeout");
    assert.equal(refused("settings_timeout"), 1);
    assert.equal(refused("idle_timeout"), 1);

    // A call longer than the idle timeout is not cut: the connection has a stream open.
    const client = echoClient(ferry.port);
    try {
      const slow = await unary(client, Buffer.from("sleep:1200"));
      assert.equal(slow.error, undefined, String(slow.error?.message));
      assert.equal(slow.value?.toString(), "sleep:1200");
    } finally {
      client.close();
    }
  } finally {
    await ferry.close();
    await server.stop();
  }
});
