/**
 * A client's share of what Ferry buffers for its calls from upstream streams (H2Stream.chargeTo):
 * over real sockets, a downstream H2Connection (server role) whose streams are answered from an
 * upstream H2Connection (client role) whose answers nobody reads.
 */
import assert from "node:assert/strict";
import { H2Connection } from "./connection.ts";
import { ErrorCode } from "./frames.ts";
import type { H2Stream } from "./stream.ts";

const CHUNK = 32 * 1024;
const REQUEST: [string, string][] = [
  [":method", "POST"],
  [":scheme", "http"],
  [":path", "/s/m"],
  [":authority", "x"],
];

/** Accepts connections on port 0 and runs a server-role H2Connection with `opts` on each. */
function serve(onStream: (s: H2Stream) => void, opts: { clientShare?: number; burst?: number }) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: H2Connection[] = [];
  (async () => {
    for await (const conn of listener) {
      conns.push(
        new H2Connection(conn, {
          role: "server",
          onStream,
          ...(opts.clientShare !== undefined ? { clientShare: opts.clientShare } : {}),
          ...(opts.burst !== undefined
            ? { controlFrameBurst: opts.burst, controlFramesPerSecond: 1 }
            : {}),
        }),
      );
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    conns,
    stop() {
      listener.close();
      for (const c of conns) c.close();
    },
  };
}

async function client(
  port: number,
  onClose?: (r: { code: number; byPeer: boolean }) => void,
): Promise<H2Connection> {
  const conn = new H2Connection(await Deno.connect({ hostname: "127.0.0.1", port }), {
    role: "client",
    ...(onClose ? { onClose } : {}),
  });
  await conn.ready;
  return conn;
}

/** Upstream: every stream gets headers and CHUNK bytes at once, and stays open. */
function upstreamServer() {
  return serve((s) => {
    s.sendHeaders([[":status", "200"]]);
    void s.write(new Uint8Array(CHUNK)).catch(() => {});
  }, {});
}

Deno.test("h2 share: answers nobody reads are held up to the client's share; over it the call is reset, the share comes back", async () => {
  const up = upstreamServer();
  const upstream = await client(up.port);
  const proxied: H2Stream[] = [];
  const down = serve((ds) => {
    void (async () => {
      const us = await upstream.request(REQUEST, true);
      us.chargeTo(ds);
      proxied.push(us); // never read: its answer stays buffered
    })();
  }, { clientShare: 2 * CHUNK });
  const attacker = await client(down.port);
  try {
    const calls: H2Stream[] = [];
    for (let i = 0; i < 4; i++) calls.push(await attacker.request(REQUEST, true));
    const outcomes = await Promise.all(calls.map((c) =>
      Promise.race([
        c.closed.then((r) => r?.code ?? "closed"),
        new Promise((r) => setTimeout(() => r("open"), 3_000)),
      ])
    ));
    // Two answers fit the share; the other two calls were reset ENHANCE_YOUR_CALM.
    assert.deepEqual(
      outcomes.toSorted(),
      [ErrorCode.ENHANCE_YOUR_CALM, ErrorCode.ENHANCE_YOUR_CALM, "open", "open"].toSorted(),
    );
    assert.equal(down.conns[0]!.shareUsed, 2 * CHUNK);
    // Reading (or dropping) what is held gives the share back.
    for (const us of proxied) us.reset(ErrorCode.CANCEL);
    assert.equal(down.conns[0]!.shareUsed, 0);
  } finally {
    attacker.close();
    upstream.close();
    down.stop();
    up.stop();
  }
});

Deno.test("h2 share: calls reset over the share are resets the client provoked, and a flood of them gets GOAWAY", async () => {
  const up = upstreamServer();
  const upstream = await client(up.port);
  const down = serve((ds) => {
    void (async () => {
      const us = await upstream.request(REQUEST, true);
      us.chargeTo(ds);
    })();
  }, { clientShare: CHUNK, burst: 10 });
  let closed: { code: number; byPeer: boolean } | undefined;
  const attacker = await client(down.port, (r) => (closed = r));
  const attackerClosed = attacker.done.then(() => true);
  try {
    // One answer fills the share; each call after it is reset: 10 tokens, then GOAWAY.
    for (let i = 0; i < 30 && !attacker.isClosed; i++) {
      const c = await attacker.request(REQUEST, true).catch(() => undefined);
      if (!c) break;
      await Promise.race([c.closed, new Promise((r) => setTimeout(r, 1_000))]);
    }
    const ended = await Promise.race([
      attackerClosed,
      new Promise<boolean>((r) => setTimeout(() => r(false), 3_000)),
    ]);
    assert.ok(ended, "the client's connection was closed");
    assert.deepEqual(
      { code: closed?.code, byPeer: closed?.byPeer },
      { code: ErrorCode.ENHANCE_YOUR_CALM, byPeer: true },
      "closed by GOAWAY ENHANCE_YOUR_CALM",
    );
  } finally {
    attacker.close();
    upstream.close();
    down.stop();
    up.stop();
  }
});
