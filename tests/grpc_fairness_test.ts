/**
 * One gRPC client cannot starve the others of an upstream endpoint, nor grow Ferry's memory
 * without bound: a client holding more endless calls than the upstream's MAX_CONCURRENT_STREAMS,
 * a client that advertises a zero window on streams with large answers, and a client whose calls
 * wait for an upstream stream slot while sending request data.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { spawnFerry, startFerry, tempConfig } from "./helpers.ts";
import {
  type AnyClient,
  echoClient,
  grpc,
  grpcEchoConfig,
  startEchoServer,
  unary,
} from "./grpc/peers.ts";
import {
  CLIENT_PREFACE,
  Flag,
  frame,
  FrameReader,
  FrameType,
  Setting,
  settingsAck,
  settingsFrame,
} from "../src/h2/frames.ts";
import { HpackEncoder } from "../src/h2/hpack.ts";
import { UPSTREAM_EARLY_CREDIT } from "../src/upstream/h2_pool.ts";
import { FerryMetrics } from "../src/observability/metrics.ts";

/** A client on a connection of its own (grpc-js shares connections between equal clients). */
function ownClient(port: number): AnyClient {
  return echoClient(port, grpc.credentials.createInsecure(), {
    "grpc.use_local_subchannel_pool": 1,
  });
}

async function until(what: string, check: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A server-streaming call read to the end: the bytes received, or the error. */
function readStream(client: AnyClient, request: string, deadlineMs: number) {
  return new Promise<{ bytes: number; error?: grpc.ServiceError }>((resolve) => {
    let bytes = 0;
    const call = client.serverStream(Buffer.from(request), new grpc.Metadata(), {
      deadline: Date.now() + deadlineMs,
    });
    call.on("data", (b: Buffer) => (bytes += b.length));
    call.on("error", (error: grpc.ServiceError) => resolve({ bytes, error }));
    call.on("end", () => resolve({ bytes }));
  });
}

/** Opens `n` endless bidi calls on `client`. */
function holdCalls(client: AnyClient, n: number, into: grpc.ClientDuplexStream<Buffer, Buffer>[]) {
  for (let i = 0; i < n; i++) {
    const call: grpc.ClientDuplexStream<Buffer, Buffer> = client.bidi();
    call.on("error", () => {});
    call.on("data", () => {});
    call.write(Buffer.from("hold"));
    into.push(call);
  }
}

Deno.test("grpc fairness: 261 endless calls (3 connections) fill one upstream connection; another client is still served", async () => {
  const server = await startEchoServer(undefined, { "grpc.max_concurrent_streams": 250 });
  const ferry = startFerry(grpcEchoConfig({ route: "    timeout: 30s\n" }), {
    PORT: String(server.port),
  });
  const attackers = [ownClient(ferry.port), ownClient(ferry.port), ownClient(ferry.port)];
  const victim = ownClient(ferry.port);
  const calls: grpc.ClientDuplexStream<Buffer, Buffer>[] = [];
  try {
    for (const a of attackers) holdCalls(a, 87, calls);
    // The upstream allows 250 streams per connection: all 261 are open only over two.
    await until("the upstream holds the attackers' calls", () => server.open.bidi >= 250);
    const r = await unary(victim, Buffer.from("victim"), { deadlineMs: 5_000 });
    assert.equal(r.error?.message, undefined, "the victim's call is answered");
    assert.equal(r.value?.toString(), "victim");
    await until("every attacker call reached the upstream", () => server.open.bidi >= 261);
  } finally {
    for (const c of calls) c.cancel();
    for (const a of attackers) a.close();
    victim.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc fairness: one client connection holds at most 100 upstream stream slots", async () => {
  // 100 slots per upstream connection, two connections: a client with 250 endless calls would
  // hold every slot the endpoint has if Ferry let it open them all.
  const server = await startEchoServer(undefined, { "grpc.max_concurrent_streams": 100 });
  const ferry = startFerry(
    grpcEchoConfig({
      route: "    timeout: 30s\n",
      cluster: "    http2: { max_connections_per_endpoint: 2 }\n",
    }),
    { PORT: String(server.port) },
  );
  const attacker = ownClient(ferry.port);
  const victim = ownClient(ferry.port);
  const calls: grpc.ClientDuplexStream<Buffer, Buffer>[] = [];
  try {
    holdCalls(attacker, 250, calls);
    await until("the upstream holds 100 of the attacker's calls", () => server.open.bidi >= 100);
    await new Promise((r) => setTimeout(r, 1_000));
    assert.equal(
      server.open.bidi,
      100,
      "the attacker's connection has 100 calls upstream, no more",
    );
    const r = await unary(victim, Buffer.from("victim"), { deadlineMs: 5_000 });
    assert.equal(r.error?.message, undefined, "the victim's call is answered");
    assert.equal(r.value?.toString(), "victim");
  } finally {
    for (const c of calls) c.cancel();
    attacker.close();
    victim.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc fairness: a zero-window client with 16 large answers does not stall others", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(grpcEchoConfig({ route: "    timeout: 30s\n" }), {
    PORT: String(server.port),
  });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: ferry.port });
  const victim = ownClient(ferry.port);
  try {
    // Each attacker stream asks for 4 MiB and grants no window at all (INITIAL_WINDOW_SIZE 0).
    const enc = new HpackEncoder();
    const body = new TextEncoder().encode(`big:64:65536`);
    const msg = new Uint8Array(5 + body.length);
    new DataView(msg.buffer).setUint32(1, body.length);
    msg.set(body, 5);
    await conn.write(CLIENT_PREFACE);
    await conn.write(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0]]));
    const STREAMS = 16;
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
    const reader = new FrameReader(1 << 24);
    const reading = (async () => {
      const buf = new Uint8Array(65536);
      for (;;) {
        const n = await conn.read(buf).catch(() => null);
        if (n === null) return;
        reader.push(buf.slice(0, n));
        for (let f = reader.next(); f; f = reader.next()) {
          if (f.type === FrameType.SETTINGS && !(f.flags & Flag.ACK)) {
            await conn.write(settingsAck()).catch(() => 0);
          }
        }
      }
    })();
    // Let the upstream fill whatever Ferry will take for the stalled streams.
    await until("the upstream started every attacker stream", () => server.big.sent >= STREAMS);
    await new Promise((r) => setTimeout(r, 2_000));
    // Ferry buffers the stalled streams on credit returned early (so the upstream connection's
    // window stays open for others), up to the client's 8 MiB share and no more.
    const early = UPSTREAM_EARLY_CREDIT.used;
    assert.ok(early > 4 << 20 && early <= 8 << 20, `${early} bytes buffered on early credit`);

    const r = await unary(victim, Buffer.from("victim"), { deadlineMs: 5_000 });
    assert.equal(r.error?.message, undefined, "the victim's unary call is answered");
    assert.equal(r.value?.toString(), "victim");
    const s = await readStream(victim, "big:32:65536", 10_000);
    assert.equal(s.error?.message, undefined, "the victim's 2 MiB stream completes");
    assert.equal(s.bytes, 32 * 65536);

    conn.close();
    await reading;
    // Everything buffered on credit returned early is given back once the attacker is gone.
    await until("the early-credit budget is back to 0", () => UPSTREAM_EARLY_CREDIT.used === 0);
  } finally {
    try {
      conn.close();
    } catch { /* closed above */ }
    victim.close();
    await ferry.close();
    await server.stop();
  }
});

/** A raw HTTP/2 client that grants no window at all and counts the resets it gets. */
async function zeroWindowClient(port: number) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const enc = new HpackEncoder();
  const resets = new Map<number, number>();
  await conn.write(CLIENT_PREFACE);
  await conn.write(settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 0]]));
  const reader = new FrameReader(1 << 24);
  const reading = (async () => {
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = await conn.read(buf).catch(() => null);
      if (n === null) return;
      reader.push(buf.slice(0, n));
      for (let f = reader.next(); f; f = reader.next()) {
        if (f.type === FrameType.SETTINGS && !(f.flags & Flag.ACK)) {
          await conn.write(settingsAck()).catch(() => 0);
        }
        if (f.type === FrameType.RST_STREAM) {
          const code = new DataView(f.payload.buffer, f.payload.byteOffset).getUint32(0);
          resets.set(code, (resets.get(code) ?? 0) + 1);
        }
      }
    }
  })();
  let nextId = 1;
  return {
    resets,
    /** Opens `count` server-streaming calls, each asking for `request`. */
    async open(count: number, request: string): Promise<void> {
      const body = new TextEncoder().encode(request);
      const msg = new Uint8Array(5 + body.length);
      new DataView(msg.buffer).setUint32(1, body.length);
      msg.set(body, 5);
      for (let i = 0; i < count; i++) {
        const id = nextId;
        nextId += 2;
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
    },
    async close(): Promise<void> {
      try {
        conn.close();
      } catch { /* closed already */ }
      await reading;
    },
  };
}

Deno.test("grpc fairness: a zero-window client holds at most its share, on no connection's window", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(grpcEchoConfig({ route: "    timeout: 30s\n" }), {
    PORT: String(server.port),
  });
  const attacker = await zeroWindowClient(ferry.port);
  const victim = ownClient(ferry.port);
  try {
    // Waves of 24 non-reading calls to 4 MiB answers each: every wave would fill an upstream
    // connection's early allowance and then its window, and push the next wave onto a new
    // connection, until every connection the endpoint may have (4) is stalled.
    for (let wave = 0; wave < 4; wave++) {
      await attacker.open(24, "big:64:65536");
      await new Promise((r) => setTimeout(r, 1_500));
    }
    const early = UPSTREAM_EARLY_CREDIT.used;
    assert.ok(early <= 8 << 20, `${early} bytes buffered for one client (its share is 8 MiB)`);
    const calm = attacker.resets.get(0xb) ?? 0;
    assert.ok(calm > 0, "the client's calls over its share were reset ENHANCE_YOUR_CALM");

    const r = await unary(victim, Buffer.from("victim"), { deadlineMs: 5_000 });
    assert.equal(r.error?.message, undefined, "the victim's unary call is answered");
    assert.equal(r.value?.toString(), "victim");
    const s = await readStream(victim, "big:32:65536", 10_000);
    assert.equal(s.error?.message, undefined, "the victim's 2 MiB stream completes");
    assert.equal(s.bytes, 32 * 65536);
    await attacker.close();
    await until("the early-credit budget is back to 0", () => UPSTREAM_EARLY_CREDIT.used === 0);
  } finally {
    await attacker.close();
    victim.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc fairness: a call reset for its client's full share is counted RESOURCE_EXHAUSTED, flag DSF", async () => {
  const server = await startEchoServer();
  const metrics = new FerryMetrics();
  const dir = await Deno.makeTempDir();
  const log = `${dir}/access.log`;
  const ferry = startFerry(
    `access_log: { path: "${log}" }\n` + grpcEchoConfig({ route: "    timeout: 30s\n" }),
    { PORT: String(server.port) },
    { metrics },
  );
  const attacker = await zeroWindowClient(ferry.port);
  try {
    // 16 non-reading calls to 4 MiB answers: each buffers up to its 1 MiB stream window, so the
    // client's 8 MiB share runs out and the calls past it are reset ENHANCE_YOUR_CALM.
    await attacker.open(16, "big:64:65536");
    await until("a call was reset for the full share", () => (attacker.resets.get(0xb) ?? 0) > 0);
    await new Promise((r) => setTimeout(r, 500));
    const calm = attacker.resets.get(0xb)!;
    const text = await metrics.expose();
    const exhausted = Number(
      /ferry_grpc_calls_total\{[^}]*grpc_status="RESOURCE_EXHAUSTED"[^}]*\} (\d+)/.exec(text)
        ?.[1] ??
        0,
    );
    assert.equal(exhausted, calm, `${calm} calls reset ENHANCE_YOUR_CALM, counted:\n${text}`);
    assert.doesNotMatch(text, /ferry_grpc_calls_total\{[^}]*grpc_status="UNKNOWN"/);
    await until("the access log has the lines", () => {
      try {
        return Deno.readTextFileSync(log).split("\n").filter((l) => l.includes('"DSF"')).length >=
          calm;
      } catch {
        return false;
      }
    }, 5_000);
    const lines = Deno.readTextFileSync(log).trim().split("\n").map((l) => JSON.parse(l));
    const dsf = lines.filter((l) => l.flags === "DSF");
    assert.equal(dsf.length, calm);
    assert.ok(dsf.every((l) => l.grpc_status === 8));
  } finally {
    await attacker.close();
    await ferry.close();
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]);
}

Deno.test("grpc fairness: 150 calls waiting for an upstream slot hold a bounded amount", async () => {
  // One upstream stream at a time, one connection: every call but the first waits for a slot.
  const server = await startEchoServer(undefined, { "grpc.max_concurrent_streams": 1 });
  const file = await tempConfig(
    grpcEchoConfig({
      endpoints: `["http://127.0.0.1:${server.port}"]`,
      route: "    timeout: 60s\n",
      cluster: "    http2: { max_connections_per_endpoint: 1 }\n",
      // Upstream connection caps are per worker: one worker, so one connection in all.
    }) + "server: { workers: 1 }\n",
  );
  const ferry = await spawnFerry(["--config", file]);
  const port = Number(new URL(ferry.listeners.get("grpc")!).port);
  const pid = ferry.child.pid;
  const holderClient = ownClient(port);
  // Two connections: one may have only 100 calls open at once (src/grpc/listener.ts).
  const clients = [ownClient(port), ownClient(port)];
  const calls: grpc.ClientWritableStream<Buffer>[] = [];
  let holder: grpc.ClientDuplexStream<Buffer, Buffer> | undefined;
  try {
    const warm = await unary(holderClient, Buffer.from("warm"));
    assert.equal(warm.error, undefined);
    const h: grpc.ClientDuplexStream<Buffer, Buffer> = holderClient.bidi();
    holder = h;
    h.on("error", () => {});
    h.on("data", () => {});
    h.write(Buffer.from("hold"));
    await until("the holder has the upstream's only stream", () => server.open.bidi === 1);
    const baseline = rssKiB(pid);

    const MiB = Buffer.alloc(1 << 20, 0x61);
    for (let i = 0; i < 150; i++) {
      const call = clients[i % 2]!.clientStream(() => {});
      call.on("error", () => {});
      call.write(MiB);
      calls.push(call);
    }
    // Long enough for Ferry to take what it will (on main: ~1 MiB for each call).
    await new Promise((r) => setTimeout(r, 4_000));
    const grownMiB = (rssKiB(pid) - baseline) / 1024;
    assert.equal(server.open.clientStreams, 0, "no waiting call reached the upstream");
    // The client's connection window (8 MiB) bounds what its waiting calls can make Ferry hold.
    assert.ok(grownMiB < 64, `Ferry's RSS grew ${grownMiB.toFixed(1)} MiB for 150 waiting calls`);
  } finally {
    for (const c of calls) c.cancel();
    holder?.cancel();
    holderClient.close();
    for (const c of clients) c.close();
    ferry.child.kill("SIGTERM");
    await ferry.child.status;
    await server.stop();
    await Deno.remove(file);
  }
});
