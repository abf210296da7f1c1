/**
 * WebSocket proxying end to end: echo, subprotocols, handshake headers, close codes both ways,
 * a client we did not write (python `websockets`), a dead upstream and the bounded send buffer.
 */
import assert from "node:assert/strict";
import {
  catchAllConfig,
  rawRequest,
  requirePeer,
  run,
  startFerry,
  startUpstream,
  type Upstream,
} from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";

const CONFIG = catchAllConfig("server: { websocket_max_buffer: 1048576 }\n");

interface Handshake {
  path: string;
  offered: string | null;
  chose: string | undefined;
  cookie: string | null;
  authorization: string | null;
}
interface CloseSeen {
  path: string;
  code: number;
  reason: string;
  at: number;
}

/**
 * A Deno.serve WebSocket upstream. `/echo` echoes; `/close?code=C&reason=R` closes as soon as
 * it is open; `/flood`, once told "go", sends 64 KiB binary frames as fast as its own buffer
 * allows until closed.
 */
function startWsUpstream() {
  const handshakes: Handshake[] = [];
  const closes: CloseSeen[] = [];
  const flood = { sent: 0 };
  const closed = new EventTarget();
  const up: Upstream = startUpstream((req) => {
    const url = new URL(req.url);
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("not a websocket", { status: 400 });
    }
    const offered = req.headers.get("sec-websocket-protocol");
    const list = (offered ?? "").split(",").map((s) => s.trim());
    const chose = list.includes("b") ? "b" : undefined;
    handshakes.push({
      path: url.pathname,
      offered,
      chose,
      cookie: req.headers.get("cookie"),
      authorization: req.headers.get("authorization"),
    });
    const { socket, response } = Deno.upgradeWebSocket(req, chose ? { protocol: chose } : {});
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => {
      if (url.pathname === "/echo") socket.send(e.data);
      if (url.pathname === "/flood" && e.data === "go") startFlood();
    };
    socket.onclose = (e) => {
      closes.push({ path: url.pathname, code: e.code, reason: e.reason, at: performance.now() });
      closed.dispatchEvent(new Event("close"));
    };
    socket.onerror = () => {};
    socket.onopen = () => {
      if (url.pathname === "/close") {
        socket.close(Number(url.searchParams.get("code")), url.searchParams.get("reason") ?? "");
      }
    };
    function startFlood() {
      const frame = new Uint8Array(64 * 1024);
      const pump = () => {
        if (socket.readyState !== WebSocket.OPEN) return;
        // Stay ahead of Ferry without growing this process without bound.
        while (socket.bufferedAmount < 4 * 1024 * 1024 && flood.sent < 512 * 1024 * 1024) {
          socket.send(frame);
          flood.sent += frame.length;
        }
        setTimeout(pump, 1);
      };
      pump();
    }
    return response;
  });
  /** Resolves with the first close the upstream sees on `path`, or rejects after `ms`. */
  function closeOn(path: string, ms = 10_000): Promise<CloseSeen> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const c = closes.find((x) => x.path === path);
        if (!c) return false;
        clearTimeout(timer);
        closed.removeEventListener("close", check);
        resolve(c);
        return true;
      };
      const timer = setTimeout(() => {
        closed.removeEventListener("close", check);
        reject(new Error(`upstream saw no close on ${path} within ${ms} ms`));
      }, ms);
      if (!check()) closed.addEventListener("close", check);
    });
  }
  return { up, handshakes, closes, flood, closeOn };
}

function wsUrl(httpUrl: string, path: string): string {
  return httpUrl.replace(/^http/, "ws") + path;
}

function opened(ws: WebSocket, ms = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("did not open")), ms);
    ws.onopen = () => {
      clearTimeout(timer);
      resolve();
    };
    ws.onerror = (e) => {
      clearTimeout(timer);
      reject(new Error(`WebSocket error: ${(e as ErrorEvent).message}`));
    };
  });
}

function nextMessage(ws: WebSocket, ms = 10_000): Promise<string | ArrayBuffer> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no message")), ms);
    ws.onmessage = (e) => {
      clearTimeout(timer);
      ws.onmessage = null;
      resolve(e.data);
    };
  });
}

function closedEvent(ws: WebSocket, ms = 10_000): Promise<CloseEvent> {
  return new Promise((resolve, reject) => {
    if (ws.readyState === WebSocket.CLOSED) return reject(new Error("already closed"));
    const timer = setTimeout(() => reject(new Error("no close")), ms);
    ws.addEventListener("close", (e) => {
      clearTimeout(timer);
      resolve(e);
    });
  });
}

async function withFerry(
  fn: (ctx: ReturnType<typeof startWsUpstream> & { url: string; port: number }) => Promise<void>,
  config = CONFIG,
) {
  const u = startWsUpstream();
  const px = startFerry(config, { UP: u.up.url });
  try {
    await fn({ ...u, url: px.url, port: px.port });
  } finally {
    await px.close();
    await u.up.close();
  }
}

Deno.test("text and binary frames echo through Ferry", async () => {
  await withFerry(async ({ url }) => {
    const ws = new WebSocket(wsUrl(url, "/echo"));
    ws.binaryType = "arraybuffer";
    await opened(ws);
    ws.send("héllo ✓");
    assert.equal(await nextMessage(ws), "héllo ✓");
    const bin = new Uint8Array(70_000).map((_, i) => i % 251);
    ws.send(bin);
    const back = await nextMessage(ws);
    assert.ok(back instanceof ArrayBuffer, "binary came back as text");
    assert.deepEqual(new Uint8Array(back), bin);
    const done = closedEvent(ws);
    ws.close(1000, "bye");
    assert.equal((await done).code, 1000);
  });
});

Deno.test("the subprotocol the upstream picks is the one the client gets", async () => {
  await withFerry(async ({ url, handshakes }) => {
    const ws = new WebSocket(wsUrl(url, "/echo"), ["a", "b"]);
    await opened(ws);
    assert.equal(ws.protocol, "b");
    assert.equal(handshakes[0]?.offered, "a, b");
    const done = closedEvent(ws);
    ws.close();
    await done;
  });
});

Deno.test("cookies and Authorization reach the upstream handshake", async () => {
  await withFerry(async ({ url, handshakes }) => {
    const ws = new WebSocket(wsUrl(url, "/echo"), {
      headers: { cookie: "session=abc; theme=dark", authorization: "Bearer t0ken" },
    });
    await opened(ws);
    assert.equal(handshakes.length, 1);
    assert.equal(handshakes[0]!.cookie, "session=abc; theme=dark");
    assert.equal(handshakes[0]!.authorization, "Bearer t0ken");
    const done = closedEvent(ws);
    ws.close();
    await done;
  });
});

Deno.test("close code and reason propagate upstream -> client (4001, 1011)", async () => {
  await withFerry(async ({ url }) => {
    for (const [code, reason] of [[4001, "bye"], [1011, "upstream broke"]] as const) {
      const ws = new WebSocket(
        wsUrl(url, `/close?code=${code}&reason=${encodeURIComponent(reason)}`),
      );
      const done = closedEvent(ws);
      const e = await done;
      assert.equal(e.code, code);
      assert.equal(e.reason, reason);
    }
  });
});

Deno.test("close code and reason propagate client -> upstream (4002 done)", async () => {
  await withFerry(async ({ url, closeOn }) => {
    const ws = new WebSocket(wsUrl(url, "/echo"));
    await opened(ws);
    const done = closedEvent(ws);
    ws.close(4002, "done");
    const seen = await closeOn("/echo");
    assert.equal(seen.code, 4002);
    assert.equal(seen.reason, "done");
    assert.equal((await done).code, 4002);
  });
});

Deno.test("python websockets client echoes through Ferry", async () => {
  const py = await requirePeer("python3-websockets");
  await withFerry(async ({ url }) => {
    const script = new URL("./fixtures/ws_echo_client.py", import.meta.url).pathname;
    const out = await run("timeout", ["30", py, script, wsUrl(url, "/echo"), "from python ✓"]);
    assert.equal(out.code, 0, out.stderr);
    const got = JSON.parse(out.stdout);
    assert.equal(got.text, "from python ✓");
    const hex = Array.from(
      new TextEncoder().encode("from python ✓"),
      (b) => b.toString(16).padStart(2, "0"),
    )
      .join("");
    assert.equal(got.binary_hex, hex);
  });
});

Deno.test("an upgrade to a dead upstream gets 502 UF promptly, not a hang", async () => {
  // A port that was just free: bind, read it back, release.
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dead = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  const px = startFerry(CONFIG, { UP: dead });
  try {
    const t0 = performance.now();
    const res = await rawRequest(
      px.port,
      "GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
      8_000,
    );
    const took = performance.now() - t0;
    assert.match(res, /^HTTP\/1\.1 502/);
    assert.match(res, /\r\nx-ferry-flag: UF\r\n/i);
    assert.ok(took < 5_000, `took ${took.toFixed(0)} ms`);
    // Deno's own client sees a failed handshake (error + close), not an open socket.
    const ws = new WebSocket(wsUrl(px.url, "/echo"));
    await assert.rejects(opened(ws), /WebSocket error/);
  } finally {
    await px.close();
  }
});

/** Reads server frames (unmasked) until a close frame; returns its code and the bytes before. */
async function readUntilClose(conn: Deno.Conn, ms: number) {
  const deadline = setTimeout(() => conn.close(), ms);
  let buf = new Uint8Array(0);
  let before = 0;
  try {
    for await (const chunk of conn.readable) {
      const joined = new Uint8Array(buf.length + chunk.length);
      joined.set(buf);
      joined.set(chunk, buf.length);
      buf = joined;
      for (;;) {
        if (buf.length < 2) break;
        const opcode = buf[0]! & 0x0f;
        let len = buf[1]! & 0x7f, off = 2;
        if (len === 126) {
          if (buf.length < 4) break;
          len = (buf[2]! << 8) | buf[3]!;
          off = 4;
        } else if (len === 127) {
          if (buf.length < 10) break;
          len = Number(new DataView(buf.buffer, buf.byteOffset + 2, 8).getBigUint64(0));
          off = 10;
        }
        if (buf.length < off + len) break;
        if (opcode === 0x8) {
          const code = len >= 2 ? (buf[off]! << 8) | buf[off + 1]! : 1005;
          return { code, before };
        }
        before += len;
        buf = buf.slice(off + len);
      }
    }
  } finally {
    clearTimeout(deadline);
  }
  throw new Error(`connection ended without a close frame after ${before} bytes`);
}

/** A client-to-server text frame (RFC 6455 5.2: FIN, opcode 1, masked). */
function maskedTextFrame(text: string): Uint8Array {
  const payload = new TextEncoder().encode(text);
  assert.ok(payload.length < 126);
  const mask = crypto.getRandomValues(new Uint8Array(4));
  const frame = new Uint8Array(6 + payload.length);
  frame.set([0x81, 0x80 | payload.length, ...mask]);
  payload.forEach((b, i) => frame[6 + i] = b ^ mask[i % 4]!);
  return frame;
}

// Without the guard frames are relayed between two Deno WebSockets, with a bounded send buffer.
Deno.test({
  name:
    "no guard: a client that never reads is closed (1008 to it, 4008 upstream) instead of buffering",
  fn: async () => {
    await withFerry(async ({ port, closeOn, flood }) => {
      // A hand-made handshake, then this client never reads again.
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(new TextEncoder().encode(
          "GET /flood HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ));
        const buf = new Uint8Array(512);
        const n = await conn.read(buf);
        assert.match(new TextDecoder().decode(buf.subarray(0, n ?? 0)), /^HTTP\/1\.1 101/);
        // Both sides are open now; "go" (a masked text frame) starts the flood.
        const t0 = performance.now();
        await conn.write(maskedTextFrame("go"));
        const seen = await closeOn("/flood", 20_000);
        console.log(
          `flood closed after ${(seen.at - t0).toFixed(0)} ms, upstream had sent ` +
            `${(flood.sent / 1024 / 1024).toFixed(1)} MiB`,
        );
        assert.equal(seen.code, 4008);
        // The reason tells the bufferedAmount check from the before-open queue limit.
        assert.match(seen.reason, /not reading/);
        assert.ok(flood.sent < 256 * 1024 * 1024, "the upstream was never stopped");
        // Now read: behind what was already buffered comes a close frame with 1008.
        const close = await readUntilClose(conn, 10_000);
        assert.equal(close.code, 1008);
        console.log(`client read ${(close.before / 1024 / 1024).toFixed(1)} MiB before the close`);
      } finally {
        try {
          conn.close();
        } catch { /* closed by the reader */ }
      }
    }, catchAllConfig("server: { websocket_max_buffer: 1048576, connection_guard: false }\n"));
  },
});

// Behind the guard the tunnel holds no send buffer: the upstream is held back by TCP, and the
// send timeout ends a client that reads nothing.
Deno.test({
  name: "a client that never reads holds the upstream back and is dropped after send_timeout",
  fn: async () => {
    await withFerry(async ({ port, closeOn, flood }) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(new TextEncoder().encode(
          "GET /flood HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ));
        const buf = new Uint8Array(512);
        const n = await conn.read(buf);
        assert.match(new TextDecoder().decode(buf.subarray(0, n ?? 0)), /^HTTP\/1\.1 101/);
        const t0 = performance.now();
        await conn.write(maskedTextFrame("go"));
        const seen = await closeOn("/flood", 20_000);
        const took = seen.at - t0;
        console.log(
          `flood closed after ${took.toFixed(0)} ms, upstream had sent ` +
            `${(flood.sent / 1024 / 1024).toFixed(1)} MiB`,
        );
        assert.equal(seen.code, 1001);
        assert.match(seen.reason, /client took no data for 2000 ms/);
        assert.ok(took >= 1500, `closed after ${took.toFixed(0)} ms, before send_timeout`);
        assert.ok(flood.sent < 64 * 1024 * 1024, "the upstream was not held back");
      } finally {
        try {
          conn.close();
        } catch { /* closed */ }
      }
    }, catchAllConfig("server: { send_timeout: 2s }\n"));
  },
});

/** A masked client close frame with `code` and `reason` (RFC 6455 5.5.1). */
function maskedCloseFrame(code: number, reason: string): Uint8Array {
  const text = new TextEncoder().encode(reason);
  const payload = new Uint8Array([code >> 8, code & 0xff, ...text]);
  const mask = crypto.getRandomValues(new Uint8Array(4));
  const frame = new Uint8Array(6 + payload.length);
  frame.set([0x88, 0x80 | payload.length, ...mask]);
  payload.forEach((b, i) => frame[6 + i] = b ^ mask[i % 4]!);
  return frame;
}

// Deno's client WebSocket cannot send 1001, 1008 or 1011: over the h1 codec's byte tunnel the
// client's own close frame reaches the upstream as it was sent.
Deno.test("close codes 1001, 1008 and 1011 arrive upstream as the client sent them", async () => {
  await withFerry(async ({ port, closeOn }) => {
    for (const code of [1001, 1008, 1011]) {
      const path = `/close-${code}`;
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(new TextEncoder().encode(
          `GET ${path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ));
        const head = new Uint8Array(512);
        const n = await conn.read(head);
        assert.match(new TextDecoder().decode(head.subarray(0, n ?? 0)), /^HTTP\/1\.1 101/);
        await conn.write(maskedCloseFrame(code, `why ${code}`));
        const seen = await closeOn(path);
        assert.equal(seen.code, code);
        assert.equal(seen.reason, `why ${code}`);
        // The upstream's answering close comes back through the tunnel.
        assert.equal((await readUntilClose(conn, 10_000)).code, code);
      } finally {
        try {
          conn.close();
        } catch { /* closed by the reader */ }
      }
    }
  });
});

Deno.test("subprotocol and permessage-deflate are negotiated end to end (python both ends)", async () => {
  const py = await requirePeer("python3-websockets");
  const server = new Deno.Command(py, {
    args: [new URL("./fixtures/ws_deflate_server.py", import.meta.url).pathname],
    stdout: "piped",
    stderr: "null",
  }).spawn();
  try {
    const reader = server.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const first = await reader.read();
    const upPort = Number(first.value?.trim());
    assert.ok(upPort > 0, `python server printed ${first.value}`);
    const px = startFerry(CONFIG, { UP: `http://127.0.0.1:${upPort}` });
    try {
      const script = new URL("./fixtures/ws_deflate_client.py", import.meta.url).pathname;
      const out = await run("timeout", ["30", py, script, wsUrl(px.url, "/chat")]);
      assert.equal(out.code, 0, out.stderr);
      const got = JSON.parse(out.stdout);
      assert.equal(got.subprotocol, "chat");
      assert.deepEqual(got.extensions, ["permessage-deflate"]);
      assert.equal(got.echo_matches, true);
      assert.equal(got.upstream.subprotocol, "chat");
      assert.deepEqual(got.upstream.extensions, ["permessage-deflate"]);
      assert.match(got.upstream.offered, /permessage-deflate/);
    } finally {
      await px.close();
    }
    reader.releaseLock();
  } finally {
    server.kill();
    await server.status;
    await server.stdout.cancel().catch(() => {});
  }
});

Deno.test("a wss:// (TLS) upstream: the tunnel carries frames and a 1001 close both ways", async () => {
  const certs = await makeTestCerts();
  const closes: { code: number; reason: string }[] = [];
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, cert: certs.cert, key: certs.key, onListen() {} },
    (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => socket.send(`tls:${e.data}`);
      socket.onclose = (e) => closes.push({ code: e.code, reason: e.reason });
      socket.onerror = () => {};
      return response;
    },
  );
  const yaml = catchAllConfig().replace(
    `endpoints: ["{{UP}}"]\n`,
    `endpoints: ["https://127.0.0.1:${server.addr.port}"]\n    tls: { ca_file: "${certs.caFile}" }\n`,
  );
  const px = startFerry(yaml);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
  try {
    await conn.write(new TextEncoder().encode(
      "GET /tls HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ));
    const head = new Uint8Array(512);
    const n = await conn.read(head);
    assert.match(new TextDecoder().decode(head.subarray(0, n ?? 0)), /^HTTP\/1\.1 101/);
    await conn.write(maskedTextFrame("hi"));
    const reply = new Uint8Array(64);
    const got = await conn.read(reply);
    // An unmasked text frame: FIN + opcode 1, length 6, "tls:hi".
    assert.deepEqual([...reply.subarray(0, got ?? 0)], [
      0x81,
      6,
      ...new TextEncoder().encode("tls:hi"),
    ]);
    await conn.write(maskedCloseFrame(1001, "bye"));
    assert.equal((await readUntilClose(conn, 10_000)).code, 1001);
    const deadline = Date.now() + 10_000;
    while (closes.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.deepEqual(closes[0], { code: 1001, reason: "bye" });
  } finally {
    try {
      conn.close();
    } catch { /* closed by the reader */ }
    await px.close();
    await server.shutdown();
    await certs.remove();
  }
});
