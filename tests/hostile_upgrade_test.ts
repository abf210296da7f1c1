/**
 * Upgrade requests a hostile or sloppy client sends to Ferry's own HTTP/1.1 server (a real Ferry
 * process, raw sockets). Only a WebSocket upgrade (GET, `Upgrade: websocket`, `Connection:
 * upgrade`) leaves the server for the inner Deno.serve; any other `Upgrade` is a plain request,
 * so naming a made-up protocol does not move the connection to Deno's parser (bare 400s, no
 * request id, no per-head timeout). A WebSocket handshake Deno cannot complete is refused with
 * the error table's 400 before any upstream is contacted, on both upstream transports.
 */
import assert from "node:assert/strict";
import { readFor, spawnFerry, type Started, startUpstream, tempConfig } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Writes `request` and reads until the peer closes or `ms` pass. */
async function exchange(port: number, request: string, ms = 3_000): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(enc.encode(request));
    let text = "";
    await readFor(conn, ms, (chunk) => text += dec.decode(chunk));
    return text;
  } finally {
    conn.close();
  }
}

/** An upstream that records each request's path and Upgrade header and accepts WebSockets. */
function startRecordingUpstream() {
  const seen: { path: string; upgrade: string | null }[] = [];
  const up = startUpstream((req) => {
    const path = new URL(req.url).pathname;
    seen.push({ path, upgrade: req.headers.get("upgrade") });
    if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => socket.send(e.data);
      return response;
    }
    return new Response(`${req.method} ${path}`);
  });
  return { up, seen };
}

async function start(upstream: string): Promise<{ f: Started; port: number }> {
  const cfg = await tempConfig(`listeners:
  - { name: public, address: "127.0.0.1:0" }
server: { header_timeout: 2s }
routes:
  - { name: refused, match: { path: { prefix: /refused } }, direct_response: { status: 403, body: no } }
  - { name: fetch, match: { path: { prefix: /fetch/ } }, cluster: viafetch }
  - { name: h1, match: { path: { prefix: / } }, cluster: viah1 }
clusters:
  - { name: viah1, endpoints: ["${upstream}"] }
  - { name: viafetch, endpoints: ["${upstream}"], transport: fetch }
`);
  const f = await spawnFerry(["--config", cfg]);
  return { f, port: Number(new URL(f.listeners.get("public")!).port) };
}

async function stop(f: Started): Promise<void> {
  f.child.kill("SIGTERM");
  await f.child.status;
  const escaped = f.logs.filter((l) => /internal error escaped|Uncaught/.test(l));
  assert.deepEqual(escaped, [], "no error escaped a handler");
}

/** Statuses of the responses in `text`, in order. */
function statuses(text: string): number[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => Number(m[1]));
}

Deno.test("hostile upgrade: Upgrade other than WebSocket is a plain request; the next head is still Ferry's to parse", async () => {
  const { up, seen } = startRecordingUpstream();
  const { f, port } = await start(up.url);
  try {
    for (const upgrade of ["foo", "h2c", "websocket2"]) {
      const text = await exchange(
        port,
        `GET /u-${upgrade} HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: ${upgrade}\r\n\r\n` +
          // Two Hosts: Ferry's parser refuses with the error table's JSON and a request id;
          // Deno's (where the connection used to be moved) with a bare 400.
          "GET /second HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
      );
      assert.deepEqual(statuses(text), [200, 400], text);
      assert.match(text, /"reason":"more than one Host header".*"request_id":"[0-9a-f-]{36}"/);
      assert.doesNotMatch(text, /^upgrade:/im, "no Upgrade in the answer to a plain request");
    }
    // A head dripped after such a request is timed like any other head: 408 at header_timeout.
    const slow = await exchange(
      port,
      "GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\nGET /y HTTP/1.1\r\n",
      6_000,
    );
    assert.deepEqual(statuses(slow), [200, 408], slow);
    // A POST naming websocket is no WebSocket handshake: forwarded as a plain POST.
    const post = await exchange(
      port,
      "POST /p HTTP/1.1\r\nHost: a\r\nConnection: upgrade, close\r\nUpgrade: websocket\r\n" +
        "Content-Length: 5\r\n\r\nhello",
    );
    assert.deepEqual(statuses(post), [200], post);
    assert.ok(seen.length >= 5 && seen.every((s) => s.upgrade === null), JSON.stringify(seen));
    assert.ok(!seen.some((s) => s.path === "/second"));
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("hostile upgrade: a WebSocket handshake without Connection: upgrade gets 400 JSON and opens nothing upstream", async () => {
  const { up, seen } = startRecordingUpstream();
  const { f, port } = await start(up.url);
  try {
    const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for (const prefix of ["/h1", "/fetch"]) {
      for (
        const [name, head, reason] of [
          ["no Connection", `Upgrade: websocket\r\n${key}`, /without Connection: upgrade/],
          [
            "no key",
            "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n",
            /without Sec-WebSocket-Key/,
          ],
          [
            "version 8",
            "Upgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
            /Sec-WebSocket-Version: 13/,
          ],
        ] as const
      ) {
        const text = await exchange(
          port,
          `GET ${prefix}/ws HTTP/1.1\r\nHost: a\r\n${head}Connection: close\r\n\r\n`,
        );
        assert.deepEqual(statuses(text), [400], `${prefix} ${name}: ${text}`);
        assert.match(text, reason, `${prefix} ${name}`);
        assert.match(text, /"request_id":"[0-9a-f-]{36}"/);
      }
    }
    assert.deepEqual(seen, [], "no handshake reached the upstream");
    // A real handshake still becomes a WebSocket on both transports.
    for (const prefix of ["/h1", "/fetch"]) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}${prefix}/ok`);
      const echoed = await new Promise<string>((resolve, reject) => {
        ws.onopen = () => ws.send("ping");
        ws.onmessage = (e) => resolve(String(e.data));
        ws.onerror = () => reject(new Error("websocket failed"));
      });
      assert.equal(echoed, "ping");
      const closed = new Promise((r) => ws.onclose = r);
      ws.close();
      await closed;
    }
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("hostile upgrade: a refused WebSocket upgrade ends its connection; what was pipelined after it is never served", async () => {
  const { up, seen } = startRecordingUpstream();
  const { f, port } = await start(up.url);
  try {
    const key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    const after =
      "GET /pipelined HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    // Refused by Ferry (no key: 400) and by the route (403): one answer, then the close.
    for (
      const [head, status] of [
        [
          "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n",
          400,
        ],
        [
          `GET /refused HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n${key}\r\n`,
          403,
        ],
      ] as const
    ) {
      const t0 = Date.now();
      const text = await exchange(port, head + after, 5_000);
      assert.deepEqual(statuses(text), [status], text);
      assert.ok(
        Date.now() - t0 < 3_000,
        `closed after the answer, not by a timeout (${Date.now() - t0} ms)`,
      );
    }
    // A WebSocket upgrade with a body: the error table's 400 (Deno answered a bare one).
    for (
      const framing of [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      ]
    ) {
      const text = await exchange(
        port,
        `GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n${key}${framing}`,
      );
      assert.deepEqual(statuses(text), [400], text);
      assert.match(text, /"reason":"a WebSocket upgrade with a body"/);
    }
    assert.ok(
      !seen.some((s) => s.path === "/pipelined" || s.path === "/two"),
      JSON.stringify(seen),
    );
  } finally {
    await stop(f);
    await up.close();
  }
});
