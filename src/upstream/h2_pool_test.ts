/**
 * H2Pool against a real HTTP/2 server on Ferry's own stack that allows 2 streams per connection:
 * more connections open when streams run out, never more than the maximum (further streams
 * wait for a slot), and idle connections close.
 */
import assert from "node:assert/strict";
import { H2Connection } from "../h2/connection.ts";
import type { H2Stream } from "../h2/stream.ts";
import { H2Pool } from "./h2_pool.ts";

function limitedServer(maxConcurrentStreams: number) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const state = { connections: 0, open: new Set<H2Connection>() };
  (async () => {
    for await (const conn of listener) {
      state.connections++;
      const h2 = new H2Connection(conn, {
        role: "server",
        maxConcurrentStreams,
        // Answers once the request ends: a stream is held as long as the client keeps it open.
        onStream: (s) =>
          void s.trailers.then(() => s.sendHeaders([[":status", "200"]], true)).catch(() => {}),
        onClose: () => state.open.delete(h2),
      });
      state.open.add(h2);
    }
  })().catch(() => {});
  const port = (listener.addr as Deno.NetAddr).port;
  const origin = `http://127.0.0.1:${port}`;
  return {
    state,
    endpoint: { origin, url: new URL(origin) },
    stop() {
      listener.close();
      for (const c of state.open) c.close();
    },
  };
}

const REQUEST: [string, string][] = [
  [":method", "POST"],
  [":scheme", "http"],
  [":path", "/x"],
  [":authority", "x"],
];

Deno.test("H2Pool: opens connections as streams run out, up to the maximum, and closes idle ones", async () => {
  const server = limitedServer(2);
  const pool = new H2Pool({ maxConnectionsPerEndpoint: 2, idleTimeoutMs: 300 });
  try {
    // Four streams at once: two connections of two streams each.
    const held = await Promise.all(
      Array.from({ length: 4 }, () => pool.request(server.endpoint, REQUEST)),
    );
    assert.equal(pool.connections(server.endpoint.origin), 2);
    assert.equal(server.state.connections, 2);

    // A fifth waits for a slot instead of opening a third connection.
    let fifth: H2Stream | undefined;
    const waiting = pool.request(server.endpoint, REQUEST).then((s) => (fifth = s));
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(fifth, undefined, "the fifth stream waits");
    assert.equal(server.state.connections, 2, "no third connection");

    // One finishes: the fifth gets its slot.
    await held[0]!.end();
    await held[0]!.closed;
    await waiting;
    assert.ok(fifth);
    for (const s of [...held.slice(1), fifth!]) {
      await s.end();
      await s.closed;
    }

    // Idle for longer than the idle timeout: both connections are closed and forgotten.
    const deadline = Date.now() + 5_000;
    while (pool.connections(server.endpoint.origin) > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(pool.connections(server.endpoint.origin), 0);
  } finally {
    pool.close();
    server.stop();
  }
});

Deno.test("H2Pool: a retired endpoint's connections finish their streams, then close", async () => {
  const server = limitedServer(10);
  // No idle timeout: only retiring closes the connections.
  const pool = new H2Pool({ maxConnectionsPerEndpoint: 2, idleTimeoutMs: 0 });
  try {
    const inFlight = await pool.request(server.endpoint, REQUEST);
    assert.equal(server.state.open.size, 1);
    pool.retire(server.endpoint.origin);
    assert.equal(pool.size, 0, "the pool forgot the endpoint");
    // The stream open at retirement still gets its answer.
    await inFlight.end();
    const head = await inFlight.headers;
    assert.equal(head.find(([n]) => n === ":status")?.[1], "200");
    const deadline = Date.now() + 5_000;
    while (server.state.open.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(server.state.open.size, 0, "the upstream saw its connection close");
  } finally {
    pool.close();
    server.stop();
  }
});
