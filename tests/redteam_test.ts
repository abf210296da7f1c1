/**
 * Hostile inputs found by attacking a running Ferry from outside (`deno task start`'s flags, a
 * real config in a temp folder): each test is one attack that used to hurt the process, and
 * checks that it is refused with a reason while Ferry keeps serving.
 */
import assert from "node:assert/strict";
import { metricValue, spawnFerry, type Started, tempConfig } from "./helpers.ts";
import { JwtProvider } from "../src/policy/jwt.ts";
import { JwtProviderSchema } from "../src/config/schema.ts";

const ADMIN_CONFIG = `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false }
routes:
  - name: all
    direct_response: { status: 200, body: "served" }
`;

async function stop(f: Started): Promise<void> {
  f.child.kill("SIGTERM");
  await f.child.status;
}

/** Ferry is alive, serves a request, and nothing escaped to the last line of defence. */
async function stillServing(f: Started): Promise<void> {
  const res = await fetch(`${f.listeners.get("public")}/`, { signal: AbortSignal.timeout(5_000) });
  assert.equal(await res.text(), "served");
  const metrics = await (await fetch(`${f.admin}/metrics`)).text();
  assert.equal(metricValue(metrics, "ferry_internal_errors_total"), 0);
}

/** conn.write may take part of the buffer: loop until all of it is written. */
async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
}

async function validate(f: Started, body: string, ms = 10_000) {
  const res = await fetch(`${f.admin}/config/validate`, {
    method: "POST",
    body,
    signal: AbortSignal.timeout(ms),
  });
  return { status: res.status, body: await res.json() as Record<string, unknown> };
}

Deno.test({
  name: "admin: a chunked config body over 4 MiB gets 413 while it is still being sent",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const f = await spawnFerry(["--config", await tempConfig(ADMIN_CONFIG)]);
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: Number(new URL(f.admin!).port),
    });
    try {
      await conn.write(new TextEncoder().encode(
        "POST /config/validate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
      ));
      // 64 MiB in 64 KiB chunks and never the last chunk: only a reader that counts as it
      // reads can answer; one that waits for the whole body answers nothing.
      const chunk = new TextEncoder().encode(`10000\r\n${"a".repeat(0x10000)}\r\n`);
      let answer = "";
      const reading = (async () => {
        const buf = new Uint8Array(4096);
        const n = await conn.read(buf).catch(() => null);
        if (n) answer = new TextDecoder().decode(buf.subarray(0, n));
      })();
      for (let i = 0; i < 1024 && answer === ""; i++) {
        const sent = await Promise.race([
          writeAll(conn, chunk).then(() => true, () => false),
          new Promise<boolean>((r) => setTimeout(() => r(false), 5_000)),
        ]);
        if (!sent) break;
      }
      await Promise.race([reading, new Promise((r) => setTimeout(r, 10_000))]);
      assert.match(answer, /^HTTP\/1\.1 413/);
    } finally {
      try {
        conn.close();
      } catch { /* closed by Ferry */ }
    }
    try {
      await stillServing(f);
    } finally {
      await stop(f);
    }
  },
});

Deno.test({
  name: "config text nested thousands deep ([[[..., - - -...) is refused at once, not parsed",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const f = await spawnFerry(["--config", await tempConfig(ADMIN_CONFIG)]);
    try {
      const depth = 1_000_000; // 4 MiB with its closing brackets: the API's size limit
      for (
        const bomb of [
          `listeners: ${"[".repeat(depth)}${"]".repeat(depth)}\n`,
          `listeners:\n${"- ".repeat(depth)}x\n`,
        ]
      ) {
        // Parsing took 9 s with the event loop blocked and 2.3 GB of memory.
        const r = await validate(f, bomb);
        assert.equal(r.status, 400);
        assert.match(String(r.body.error), /<request>:\d+:\d+: YAML: nested more than 64 levels/);
      }
      // A config of ordinary depth still validates.
      assert.equal((await validate(f, ADMIN_CONFIG)).status, 200);
      await stillServing(f);
    } finally {
      await stop(f);
    }
  },
});

Deno.test({
  name:
    "extension module that is a FIFO (file: URL) or over 16 MiB is refused; reloads keep working",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const file = await tempConfig(ADMIN_CONFIG);
    const dir = file.slice(0, file.lastIndexOf("/"));
    const fifo = `${dir}/fifo.ts`;
    const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.equal(mkfifo.code, 0);
    const huge = `${dir}/huge.ts`;
    await Deno.writeFile(huge, new Uint8Array());
    await Deno.truncate(huge, 20 * 1024 * 1024); // sparse: costs no disk
    const withModule = (spec: string) =>
      ADMIN_CONFIG.replace(
        `direct_response: { status: 200, body: "served" }`,
        `direct_response: { status: 200, body: "served" }\n    middleware: [{ module: "${spec}" }]`,
      );
    const f = await spawnFerry(["--config", file]);
    try {
      // A read of a FIFO never ends: the dry run hung, and every later reload queued behind it.
      const r = await validate(f, withModule(`file://${fifo}`));
      assert.equal(r.status, 400);
      assert.match(String(r.body.error), /not a regular file/);
      for (const spec of [huge, `file://${huge}`]) {
        const big = await validate(f, withModule(spec));
        assert.equal(big.status, 400);
        assert.match(String(big.body.error), /more than the limit of 16777216/);
      }
      const reload = await fetch(`${f.admin}/reload`, {
        method: "POST",
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(reload.status, 200, await reload.text());
      await stillServing(f);
    } finally {
      await stop(f);
    }
  },
});

Deno.test({
  name: "WebSocket: an unmasked client frame closes the tunnel with 1002; nothing reaches upstream",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const received: string[] = [];
    const up = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
      const { socket, response } = Deno.upgradeWebSocket(req);
      socket.onmessage = (e) => {
        received.push(String(e.data));
        socket.send(e.data);
      };
      return response;
    });
    const f = await spawnFerry([
      "--config",
      await tempConfig(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
routes:
  - name: ws
    cluster: up
clusters:
  - name: up
    endpoints: ["http://127.0.0.1:${up.addr.port}"]
`),
    ]);
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: Number(new URL(f.listeners.get("public")!).port),
    });
    try {
      await writeAll(
        conn,
        new TextEncoder().encode(
          "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ),
      );
      const buf = new Uint8Array(4096);
      let text = "";
      while (!text.includes("\r\n\r\n")) {
        const n = await conn.read(buf);
        assert.ok(n !== null, "closed before the 101");
        text += new TextDecoder().decode(buf.subarray(0, n));
      }
      assert.match(text, /^HTTP\/1\.1 101/);
      // A text frame "hello" without the mask bit and mask key.
      await writeAll(conn, new Uint8Array([0x81, 0x05, ...new TextEncoder().encode("hello")]));
      const frames: Uint8Array[] = [];
      const deadline = Date.now() + 5_000;
      while (Date.now() < deadline) {
        const n = await Promise.race([
          conn.read(buf).catch(() => null),
          new Promise<null>((r) => setTimeout(() => r(null), deadline - Date.now())),
        ]);
        if (n === null) break;
        frames.push(buf.slice(0, n));
      }
      const got = frames.flatMap((b) => [...b]);
      // The first frame back is the close (opcode 8) with code 1002, not an echo of "hello".
      assert.equal(got[0]! & 0x0f, 8, `first frame back: ${got.slice(0, 12)}`);
      assert.equal((got[2]! << 8) | got[3]!, 1002);
      assert.deepEqual(received, []);
    } finally {
      try {
        conn.close();
      } catch { /* closed by Ferry */ }
      await stop(f);
      await up.shutdown();
    }
  },
});

Deno.test("JWKS: an endpoint that streams a body over 1 MiB is refused, not read to the end", async () => {
  // 64 MiB, then the stream ends: a reader without a bound holds it all, then fails on JSON.
  const chunk = new Uint8Array(1024 * 1024).fill(0x20);
  let served = 0;
  const jwks = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () =>
    new Response(
      new ReadableStream({
        pull(c) {
          if (served >= 64) return c.close();
          served++;
          c.enqueue(chunk);
        },
      }),
    ));
  const provider = new JwtProvider(
    JwtProviderSchema.parse({
      name: "corp",
      issuer: "x",
      jwks_url: `http://127.0.0.1:${jwks.addr.port}/jwks`,
      fetch_timeout: "10s",
    }),
    {},
  );
  try {
    await provider.refresh();
    assert.match(String(provider.status().last_error), /JWKS document larger than 1048576 bytes/);
    assert.ok(served < 64, `read ${served} MiB of 64`);
  } finally {
    provider.close();
    await jwks.shutdown();
  }
});

Deno.test("HTTP/2: one connection gets at most server.max_streams_per_connection requests in flight; the rest get 503 DO", async () => {
  const { startFerry, startUpstream, run } = await import("./helpers.ts");
  // Answers are held until released, so every stream stays in flight while h2load opens more.
  let release!: () => void;
  const held = new Promise<void>((r) => release = r);
  let reached = 0;
  const up = startUpstream(async () => {
    reached++;
    await held;
    return new Response("ok");
  });
  const px = startFerry(
    `server: { max_streams_per_connection: 10 }
listeners: [{ name: web, address: "127.0.0.1:0" }]
clusters: [{ name: up, endpoints: ["{{UP}}"] }]
routes: [{ name: all, match: { path: { prefix: / } }, cluster: up }]
`,
    { UP: up.url },
  );
  try {
    const load = run("h2load", ["-n", "40", "-c", "1", "-m", "40", `${px.url}/`]);
    for (let i = 0; i < 100 && reached < 10; i++) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 300));
    release();
    const out = (await load).stdout;
    const codes = out.match(/status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/);
    assert.ok(codes, out);
    assert.equal(Number(codes[1]), 10, `at most 10 served at once: ${out}`);
    assert.equal(Number(codes[4]), 30, out);
    assert.equal(reached, 10, "the refused streams never reached the upstream");
  } finally {
    await px.close();
    await up.close();
  }
});
