/**
 * HTTP/2 floods against the proxy listeners of a real Ferry process (h2c with prior knowledge,
 * through the connection guard's hop and on a listener without the guard): rapid reset
 * (CVE-2023-44487), a CONTINUATION flood (CVE-2024-27316 class), a PING flood and a SETTINGS
 * flood. Each must end or bound the attacking connection, keep the upstream from seeing the
 * flood, and leave other clients served. The gRPC listeners' own HTTP/2 has its limits tested in
 * grpc_robustness_test.ts.
 */
import assert from "node:assert/strict";
import { concat, readFor, spawnFerry, startUpstream, tempConfig } from "./helpers.ts";
import { CLIENT_PREFACE, Flag, frame, FrameType } from "../src/h2/frames.ts";

const { HEADERS, RST_STREAM, SETTINGS, PING, CONTINUATION } = FrameType;
const { END_STREAM, END_HEADERS } = Flag;

/** GET / on http://a: HPACK static entries for :method GET, :scheme http, :path /, then :authority a. */
const REQUEST_BLOCK = new Uint8Array([0x82, 0x86, 0x84, 0x41, 1, 0x61]);

interface Attack {
  /** Frames sent before the server closed the connection (or all of them). */
  sent: number;
  /** Whether the server ended the connection. */
  closed: boolean;
  /** Bytes the server wrote back. */
  received: number;
}

/**
 * Sends the preface and an empty SETTINGS, then `next(i)`'s frames in batches until `frames`
 * are sent or the server closes; the reader drains what the server writes.
 */
async function attack(
  port: number,
  frames: number,
  next: (i: number) => Uint8Array,
  batch = 200,
): Promise<Attack> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const result: Attack = { sent: 0, closed: false, received: 0 };
  const reading = readFor(conn, 120_000, (chunk) => result.received += chunk.length)
    .then(() => void (result.closed = true));
  try {
    await conn.write(concat([CLIENT_PREFACE, frame(SETTINGS, 0, 0, new Uint8Array())]));
    for (let i = 0; i < frames && !result.closed; i += batch) {
      const parts: Uint8Array[] = [];
      for (let j = i; j < Math.min(frames, i + batch); j++) parts.push(next(j));
      await conn.write(concat(parts));
      result.sent = Math.min(frames, i + batch);
    }
  } catch { /* the server closed while we wrote */ }
  // Whatever the server still has to say (GOAWAY) arrives, or the connection stays open.
  await Promise.race([reading, new Promise((r) => setTimeout(r, 1_000))]);
  try {
    conn.close();
  } catch { /* closed */ }
  await reading;
  return result;
}

function config(upstream: string, guard: boolean): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
server: { watch_config: false, connection_guard: ${guard} }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - { name: up, endpoints: ["${upstream}"] }
`;
}

for (const guard of [true, false]) {
  Deno.test(`hostile h2 (guard ${guard}): rapid reset, CONTINUATION, PING and SETTINGS floods end or bound the connection; the upstream never sees the flood; others are served`, async () => {
    let hits = 0;
    const up = startUpstream(async () => {
      hits++;
      await new Promise((r) => setTimeout(r, 20));
      return new Response("ok");
    });
    const f = await spawnFerry(["--config", await tempConfig(config(up.url, guard))]);
    const base = f.listeners.get("public")!;
    const port = Number(new URL(base).port);
    // A bystander asking all along: every one of its requests must be answered.
    let stop = false;
    const bystander = (async () => {
      let served = 0;
      while (!stop) {
        const res = await fetch(`${base}/bystander`);
        assert.equal(res.status, 200);
        await res.text();
        served++;
        await new Promise((r) => setTimeout(r, 50));
      }
      return served;
    })();
    try {
      // Rapid reset: a request opened and cancelled at once, 20,000 times on one connection.
      const reset = await attack(port, 20_000, (i) => {
        const id = 1 + 2 * i;
        return concat([
          frame(HEADERS, END_STREAM | END_HEADERS, id, REQUEST_BLOCK),
          frame(RST_STREAM, 0, id, new Uint8Array([0, 0, 0, 8])),
        ]);
      });
      assert.ok(reset.closed, "rapid reset: the connection was ended");
      assert.ok(reset.sent < 20_000, `rapid reset: ended after ${reset.sent} streams`);
      assert.ok(hits < 2_000, `rapid reset: the upstream saw ${hits} requests`);

      // CONTINUATION flood: one header block that never ends, 16 KB a frame, up to 64 MB.
      const junk = new Uint8Array(16_000).fill(0x40);
      const cont = await attack(
        port,
        4_000,
        (i) =>
          i === 0 ? frame(HEADERS, END_STREAM, 1, REQUEST_BLOCK) : frame(CONTINUATION, 0, 1, junk),
        8,
      );
      assert.ok(cont.closed, "CONTINUATION flood: the connection was ended");
      assert.ok(cont.sent < 4_000, `CONTINUATION flood: ended after ${cont.sent} frames`);

      // PING and SETTINGS floods: answered or refused, never buffered without bound; the
      // process stays up and responsive (the bystander, and the requests below).
      await attack(port, 100_000, () => frame(PING, 0, 0, new Uint8Array(8)), 1_000);
      await attack(port, 50_000, () => frame(SETTINGS, 0, 0, new Uint8Array()), 1_000);

      const res = await fetch(`${base}/after`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "ok");
    } finally {
      stop = true;
      const served = await bystander;
      assert.ok(served > 0, "the bystander was served during the floods");
      f.child.kill("SIGKILL");
      await f.child.status;
      await up.close();
    }
  });
}
