/**
 * Limits on upgraded connections and on 101 answers: WebSocket frames and messages over the
 * limits get close 1009 (raw-socket fragment abuse, python `websockets`, no-guard listeners),
 * an upstream's oversized message (1011 to the client, 1009 upstream), the tunnel idle timeout, an upstream that refuses the upgrade
 * (502 naming its status, flag UPE) and an upstream 101 to a plain request (502, not a tunnel).
 */
import assert from "node:assert/strict";
import {
  catchAllConfig,
  rawRequest,
  run,
  spawnFerry,
  startFerry,
  startUpstream,
  tempConfig,
} from "./helpers.ts";

const HANDSHAKE = "GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

interface Closed {
  code: number;
  reason: string;
}

/**
 * A WebSocket upstream: `/echo` echoes, `/big` sends one 2 MiB message once open, `/stream`
 * sends 24 MiB in 64 KiB messages once open.
 */
function startWsUpstream() {
  const closes: Closed[] = [];
  const up = startUpstream((req) => {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("no upgrade here", { status: 404 });
    }
    const path = new URL(req.url).pathname;
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send(e.data);
    socket.onopen = () => {
      if (path === "/big") socket.send(new Uint8Array(2 * 1024 * 1024));
      // 24 MiB in 64 KiB messages: more than the socket buffers between here and the client.
      if (path === "/stream") {
        for (let i = 0; i < 384; i++) socket.send(new Uint8Array(64 * 1024));
      }
    };
    socket.onclose = (e) => closes.push({ code: e.code, reason: e.reason });
    socket.onerror = () => {};
    return response;
  });
  return { up, closes };
}

async function until(what: string, check: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]);
}

/** A masked client frame header for `len` payload bytes (the payload follows, masked). */
function frameHeader(opcode: number, fin: boolean, len: number): Uint8Array {
  const ext = len < 126 ? 0 : len < 65536 ? 2 : 8;
  const out = new Uint8Array(2 + ext + 4);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = 0x80 | (ext === 0 ? len : ext === 2 ? 126 : 127);
  if (ext === 2) out.set([len >> 8, len & 0xff], 2);
  if (ext === 8) new DataView(out.buffer).setBigUint64(2, BigInt(len));
  return out; // mask key 0: the payload is sent as is
}

/** Reads server frames until a close frame; returns its code and reason. */
async function readClose(conn: Deno.Conn, ms: number): Promise<Closed> {
  const timer = setTimeout(() => conn.close(), ms);
  let buf = new Uint8Array(0);
  try {
    for await (const chunk of conn.readable) {
      const joined = new Uint8Array(buf.length + chunk.length);
      joined.set(buf);
      joined.set(chunk, buf.length);
      buf = joined;
      while (buf.length >= 2) {
        let len = buf[1]! & 0x7f, off = 2;
        if (len === 126) [len, off] = [(buf[2]! << 8) | buf[3]!, 4];
        else if (len === 127) {
          len = Number(new DataView(buf.buffer, buf.byteOffset + 2, 8).getBigUint64(0));
          off = 10;
        }
        if (buf.length < off + len) break;
        if ((buf[0]! & 0x0f) === 0x8) {
          return {
            code: (buf[off]! << 8) | buf[off + 1]!,
            reason: new TextDecoder().decode(buf.subarray(off + 2, off + len)),
          };
        }
        buf = buf.slice(off + len);
      }
    }
  } catch {
    /* closed by the timer */
  } finally {
    clearTimeout(timer);
  }
  throw new Error("no close frame");
}

Deno.test({
  name: "fragments that never end: close 1009 to the client, the upstream told, RSS bounded",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { up, closes } = startWsUpstream();
    // Default limits (1 MiB message); a subprocess so that its RSS is Ferry's own.
    const file = await tempConfig(catchAllConfig().replace("{{UP}}", up.url));
    const ferry = await spawnFerry(["--config", file]);
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: Number(new URL(ferry.listeners.get("public")!).port),
    });
    try {
      await conn.write(new TextEncoder().encode(HANDSHAKE));
      const head = new Uint8Array(512);
      const n = await conn.read(head);
      assert.match(new TextDecoder().decode(head.subarray(0, n ?? 0)), /^HTTP\/1\.1 101/);
      const before = rssKiB(ferry.child.pid);
      const closing = readClose(conn, 20_000);
      // 64 KiB fragments, never a final one, up to 48 MiB or until Ferry stops taking them.
      const payload = new Uint8Array(64 * 1024).fill(97);
      let sent = 0;
      const sending = (async () => {
        try {
          await conn.write(frameHeader(1, false, payload.length));
          await conn.write(payload);
          sent += payload.length;
          while (sent < 48 * 1024 * 1024) {
            await conn.write(frameHeader(0, false, payload.length));
            await conn.write(payload);
            sent += payload.length;
          }
        } catch { /* closed by Ferry */ }
      })();
      const close = await closing;
      const after = rssKiB(ferry.child.pid);
      console.log(
        `close ${close.code} "${close.reason}" after ${(sent / 1048576).toFixed(1)} MiB sent; ` +
          `RSS ${before} -> ${after} KiB`,
      );
      assert.equal(close.code, 1009);
      assert.match(close.reason, /message of \d+\+ bytes over the limit of 1048576/);
      assert.ok(after - before < 16 * 1024, `RSS grew by ${after - before} KiB`);
      // The upstream hears why, with the code itself (the tunnel writes its own close frame).
      await until("the upstream sees the close", () => closes.length > 0);
      assert.equal(closes[0]!.code, 1009);
      assert.match(closes[0]!.reason, /^message of/);
      await sending;
    } finally {
      try {
        conn.close();
      } catch { /* closed */ }
      ferry.child.kill("SIGTERM");
      await ferry.child.status;
      await up.close();
    }
  },
});

Deno.test("a single frame over websocket_max_frame_bytes gets 1009 at its header", async () => {
  const { up, closes } = startWsUpstream();
  const px = startFerry(
    catchAllConfig(
      "server: { websocket_max_frame_bytes: 4096, websocket_max_message_bytes: 65536 }\n",
    ),
    { UP: up.url },
  );
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
  try {
    await conn.write(new TextEncoder().encode(HANDSHAKE));
    const head = new Uint8Array(512);
    await conn.read(head);
    // A small frame echoes (the tunnel works), then a header announcing 5000 bytes.
    await conn.write(frameHeader(1, true, 2));
    await conn.write(new TextEncoder().encode("hi"));
    const closing = readClose(conn, 10_000);
    await new Promise((r) => setTimeout(r, 200));
    await conn.write(frameHeader(2, true, 5000));
    const close = await closing;
    assert.equal(close.code, 1009);
    assert.match(close.reason, /frame of 5000 bytes over the limit of 4096/);
    await until("the upstream sees the close", () => closes.length > 0);
    assert.equal(closes[0]!.code, 1009);
    assert.match(closes[0]!.reason, /^frame of 5000 bytes/);
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
    await px.close();
    await up.close();
  }
});

/** python3 that has the `websockets` module. */
async function pythonWithWebsockets(): Promise<string> {
  for (const py of ["/usr/bin/python3", "python3"]) {
    try {
      if ((await run(py, ["-c", "import websockets"])).code === 0) return py;
    } catch { /* not installed */ }
  }
  throw new Error("no python3 with websockets: apt-get install python3-websockets");
}

const PY_SEND = `
import asyncio, sys, json, websockets
async def main():
    async with websockets.connect(sys.argv[1], max_size=None) as ws:
        small = b"x" * 1000
        await ws.send(small)
        echoed = await ws.recv()
        try:
            await ws.send(b"y" * int(sys.argv[2]))
            await ws.recv()
            print(json.dumps({"echo": len(echoed), "closed": None}))
        except websockets.exceptions.ConnectionClosed as e:
            print(json.dumps({"echo": len(echoed), "closed": e.rcvd.code if e.rcvd else None}))
asyncio.run(main())
`;

for (const guard of [true, false]) {
  Deno.test(`python websockets: a 2 MiB message gets 1009, a small one echoes (guard ${guard})`, async () => {
    const py = await pythonWithWebsockets();
    const { up, closes } = startWsUpstream();
    const px = startFerry(catchAllConfig(`server: { connection_guard: ${guard} }\n`), {
      UP: up.url,
    });
    try {
      const out = await run("timeout", [
        "30",
        py,
        "-c",
        PY_SEND,
        px.url.replace("http", "ws") + "/echo",
        String(2 * 1024 * 1024),
      ]);
      assert.equal(out.code, 0, out.stderr);
      assert.deepEqual(JSON.parse(out.stdout), { echo: 1000, closed: 1009 });
      await until("the upstream sees the close", () => closes.length > 0);
      // Behind the guard a byte tunnel sends the code itself; without it, Deno's client WebSocket
      // can send only 1000 and 3000-4999, so the code travels in the reason.
      if (guard) assert.equal(closes[0]!.code, 1009);
      else assert.match(closes[0]!.reason, /^1009 /);
    } finally {
      await px.close();
      await up.close();
    }
  });
}

Deno.test("an upstream message over the limit: upstream closed with 1009, client with 1011", async () => {
  const { up, closes } = startWsUpstream();
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    const ws = new WebSocket(px.url.replace("http", "ws") + "/big");
    const closed = await new Promise<CloseEvent>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no close")), 10_000);
      ws.onmessage = () => reject(new Error("the 2 MiB message was relayed"));
      ws.onclose = (e) => {
        clearTimeout(timer);
        resolve(e);
      };
    });
    assert.equal(closed.code, 1011);
    assert.match(closed.reason, /upstream message over 1048576 bytes/);
    await until("the upstream sees the close", () => closes.length > 0);
    assert.equal(closes[0]!.code, 1009);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("an idle WebSocket is closed with 1001 after websocket_idle_timeout", async () => {
  const { up, closes } = startWsUpstream();
  const px = startFerry(catchAllConfig("server: { websocket_idle_timeout: 1500ms }\n"), {
    UP: up.url,
  });
  try {
    const ws = new WebSocket(px.url.replace("http", "ws") + "/echo");
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    // Traffic keeps it open past the timeout...
    for (let i = 0; i < 4; i++) {
      await new Promise((r) => setTimeout(r, 600));
      const back = new Promise((r) => ws.onmessage = r);
      ws.send("ping " + i);
      await back;
    }
    // ...silence closes it.
    const t0 = performance.now();
    const closed = await new Promise<CloseEvent>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no close")), 10_000);
      ws.onclose = (e) => {
        clearTimeout(timer);
        resolve(e);
      };
    });
    const took = performance.now() - t0;
    assert.equal(closed.code, 1001);
    assert.match(closed.reason, /idle/);
    assert.ok(took > 1000 && took < 6000, `closed after ${took.toFixed(0)} ms`);
    await until("the upstream sees the close", () => closes.length > 0);
    assert.equal(closes[0]!.code, 1001);
    assert.match(closes[0]!.reason, /^idle/);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("pings do not keep an idle WebSocket open: 1001 after websocket_idle_timeout", async () => {
  const { up } = startWsUpstream();
  const px = startFerry(catchAllConfig("server: { websocket_idle_timeout: 1500ms }\n"), {
    UP: up.url,
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
  try {
    await conn.write(new TextEncoder().encode(HANDSHAKE));
    await conn.read(new Uint8Array(512));
    const t0 = performance.now();
    const closing = readClose(conn, 10_000);
    // A ping every 300 ms (Deno answers each with a pong): bytes flow both ways, no message.
    const timer = setInterval(() => conn.write(frameHeader(9, true, 0)).catch(() => {}), 300);
    try {
      const close = await closing;
      const took = performance.now() - t0;
      assert.equal(close.code, 1001);
      assert.ok(took > 1000 && took < 6000, `closed after ${took.toFixed(0)} ms`);
    } finally {
      clearInterval(timer);
    }
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
    await px.close();
    await up.close();
  }
});

Deno.test("a WebSocket client that stops reading is dropped after send_timeout", async () => {
  const { up, closes } = startWsUpstream();
  // A send buffer larger than the whole stream: only the send timeout can end this.
  const px = startFerry(
    catchAllConfig("server: { send_timeout: 2s, websocket_max_buffer: 67108864 }\n"),
    { UP: up.url },
  );
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
  try {
    await conn.write(new TextEncoder().encode(HANDSHAKE.replace("/echo", "/stream")));
    const head = new Uint8Array(256);
    const n = await conn.read(head);
    assert.match(new TextDecoder().decode(head.subarray(0, n ?? 0)), /^HTTP\/1\.1 101/);
    // This client reads nothing more.
    const t0 = performance.now();
    await until("the upstream sees the close", () => closes.length > 0, 20_000);
    const took = performance.now() - t0;
    console.log(
      `upstream saw ${closes[0]!.code} "${closes[0]!.reason}" after ${took.toFixed(0)} ms`,
    );
    assert.ok(took >= 1500, `closed after ${took.toFixed(0)} ms, before send_timeout`);
    assert.equal(closes[0]!.code, 1001);
    assert.match(closes[0]!.reason, /^client took no data for 2000 ms/);
  } finally {
    conn.close();
    await px.close();
    await up.close();
  }
});

Deno.test("an upstream that answers the upgrade with 403: 502 naming the status, flag UPE", async () => {
  const up = startUpstream(() => new Response("go away", { status: 403 }));
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    const res = await rawRequest(px.port, HANDSHAKE, 8_000);
    assert.match(res, /^HTTP\/1\.1 502/);
    assert.match(res, /\r\nx-ferry-flag: UPE\r\n/i);
    const body = JSON.parse(res.slice(res.indexOf("\r\n\r\n") + 4));
    assert.equal(body.error, "upstream protocol error");
    assert.match(body.reason, /answered the upgrade with 403, not 101/);
  } finally {
    await px.close();
    await up.close();
  }
});

/** A raw upstream that answers every request with a bare 101 and then holds the connection. */
function startBare101Upstream() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns: Deno.Conn[] = [];
  (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      (async () => {
        await conn.read(new Uint8Array(8192));
        await conn.write(new TextEncoder().encode(
          "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
        ));
      })().catch(() => {});
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

for (const encoding of ["identity", "gzip"]) {
  Deno.test(`an upstream 101 to a plain request (accept-encoding ${encoding}) is a 502 UPE, not a tunnel`, async () => {
    const up = startBare101Upstream();
    const px = startFerry(catchAllConfig(), { UP: up.url });
    try {
      const t0 = performance.now();
      const res = await rawRequest(
        px.port,
        `GET /plain HTTP/1.1\r\nHost: t\r\nAccept-Encoding: ${encoding}\r\n\r\n`,
        8_000,
      );
      assert.match(res, /^HTTP\/1\.1 502/, res);
      assert.match(res, /\r\nx-ferry-flag: UPE\r\n/i);
      assert.match(res, /answered 101 to a request that asked for no upgrade/);
      assert.ok(performance.now() - t0 < 5_000);
    } finally {
      await px.close();
      up.close();
    }
  });
}
