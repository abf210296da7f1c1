/**
 * The connection guard's loopback hop holds little for a client that stops reading: Deno.serve's
 * sockets on it get small fixed kernel buffers instead of autotuned ones of up to tcp_wmem's max
 * (4 MiB), see docs/connections.md ("Clients that stop reading"). A real guard, a real inner
 * Deno.serve streaming 16 MiB, a raw client that reads 1 MiB and then nothing.
 */
import assert from "node:assert/strict";
import { ConnectionGuard } from "../src/server/guard.ts";
import { loopbackSendBuffers } from "../src/server/socket_buffers.ts";
import { createLogger } from "../src/observability/log.ts";

const MiB = 1024 * 1024;

Deno.test({
  name: "guard hop: Deno.serve's sockets behind the guard have a fixed 128 KiB send buffer, " +
    "also while a client that stopped reading holds a large download",
  // The guard's sweep and the stalled stream are stopped by hand below.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const guard = new ConnectionGuard({
      name: "test",
      hostname: "127.0.0.1",
      port: 0,
      limits: () => ({
        headerTimeoutMs: 10_000,
        idleTimeoutMs: 10_000,
        maxConnections: 100,
        maxConnectionsPerIp: 0,
        sendTimeoutMs: 0,
        tunnelIdleTimeoutMs: 0,
        wsMaxFrameBytes: MiB,
        wsMaxMessageBytes: MiB,
        maxStreamsPerConnection: 128,
      }),
      log: createLogger("error", () => {}),
    });
    let produced = 0;
    const stop = new AbortController();
    const handler = guard.wrap(() => {
      const chunk = new Uint8Array(64 * 1024).fill(120);
      return Promise.resolve(
        new Response(
          new ReadableStream<Uint8Array>({
            pull(ctl) {
              if (produced >= 16 * MiB) return ctl.close();
              produced += chunk.length;
              ctl.enqueue(chunk);
            },
          }, { highWaterMark: 1 }),
        ),
      );
    });
    guard.start((port) =>
      Deno.serve({ hostname: "127.0.0.1", port, signal: stop.signal, onListen() {} }, handler)
    );
    const conn = await Deno.connect({ hostname: "127.0.0.1", port: guard.addr.port });
    try {
      await conn.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: t\r\n\r\n"));
      const buf = new Uint8Array(64 * 1024);
      let got = 0;
      while (got < MiB) {
        const n = await conn.read(buf);
        assert.ok(n !== null, "closed before 1 MiB arrived");
        got += n;
      }
      // Let the stall settle: every buffer on the way fills.
      let last = -1;
      for (let i = 0; i < 40 && produced !== last; i++) {
        last = produced;
        await new Promise((r) => setTimeout(r, 250));
      }
      assert.ok(guard.hopBuffersSized(), "the hop's buffers were sized (FFI available)");
      const sockets = loopbackSendBuffers(guard.innerPort()!);
      assert.ok(sockets.some((s) => s.listening), `the inner listener: ${JSON.stringify(sockets)}`);
      assert.ok(sockets.some((s) => !s.listening), "the accepted hop connection");
      for (const s of sockets) {
        // The kernel doubles what was asked (64 KiB) and no longer autotunes it.
        assert.equal(s.sendBuffer, 128 * 1024, JSON.stringify(sockets));
      }
      console.log(`the inner handler produced ${(produced / MiB).toFixed(1)} MiB`);
    } finally {
      conn.close();
      stop.abort();
      await guard.close();
    }
  },
});
