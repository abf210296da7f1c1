/**
 * A graceful drain (SIGTERM) must not wait on connections that carry no request: a client can
 * open them at will. Idle HTTP/2 connections (h2c with prior knowledge, TLS with ALPN h2) that
 * never started a stream used to hold the drain until `header_timeout` or `drain_timeout`,
 * whichever came first; idle and half-sent heads on every other listener kind (Ferry's own
 * HTTP/1.1 server, the admin listener, a gRPC listener) are pinned here too. Each case is a real
 * Ferry process, with one worker and with two.
 */
import assert from "node:assert/strict";
import { concat, readFor, spawnFerry, type Started, startUpstream, tempConfig } from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";
import {
  CLIENT_PREFACE as PREFACE,
  Flag,
  frame,
  FrameType,
  settingsFrame,
} from "../src/h2/frames.ts";

const enc = new TextEncoder();
const EMPTY_SETTINGS = settingsFrame([]);
/** HEADERS (END_STREAM, END_HEADERS) on stream 1: GET http://a/ in static-table HPACK. */
const GET_ROOT = frame(
  FrameType.HEADERS,
  Flag.END_STREAM | Flag.END_HEADERS,
  1,
  new Uint8Array([0x82, 0x86, 0x84, 0x41, 1, 0x61]),
);

const join = (...parts: Uint8Array[]) => concat(parts);

/** Reads for `ms` (or until the peer closes); the byte count. */
async function readSome(conn: Deno.Conn, ms: number): Promise<number> {
  let total = 0;
  await readFor(conn, ms, (chunk) => total += chunk.length);
  return total;
}

const DRAIN = "20s";
/** Well under drain_timeout and header_timeout: nothing in flight, so the drain ends at once. */
const PROMPT_MS = 5_000;

async function sigtermTakes(f: Started): Promise<number> {
  const t0 = performance.now();
  f.child.kill("SIGTERM");
  const status = await f.child.status;
  const ms = performance.now() - t0;
  assert.equal(status.code, 0);
  const escaped = f.logs.filter((l) => /internal error escaped|Uncaught/.test(l));
  assert.deepEqual(escaped, [], "no error escaped a handler");
  return ms;
}

for (const workers of [1, 2]) {
  Deno.test(`hostile drain (workers ${workers}): idle h2c, admin, gRPC and half-sent heads do not hold SIGTERM`, async () => {
    const up = startUpstream(() => new Response("ok"));
    const f = await spawnFerry(
      [
        "--config",
        await tempConfig(`listeners:
  - { name: public, address: "127.0.0.1:0" }
  - { name: rpc, address: "127.0.0.1:0", protocol: grpc }
admin: { address: "127.0.0.1:0" }
server: { workers: ${workers}, drain_timeout: ${DRAIN}, header_timeout: 30s, watch_config: false }
routes:
  - { name: web, listeners: [public], match: { path: { prefix: / } }, cluster: web }
  - { name: rpc, listeners: [rpc], match: { path: { prefix: / } }, cluster: rpc }
clusters:
  - { name: web, endpoints: ["${up.url}"] }
  - { name: rpc, endpoints: ["http://127.0.0.1:9"], protocol: h2c }
`),
      ],
      {},
      2,
    );
    const port = (name: string) => Number(new URL(f.listeners.get(name) ?? f.admin!).port);
    const held: Deno.Conn[] = [];
    const open = async (p: number, bytes?: Uint8Array) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: p });
      held.push(c);
      if (bytes) await c.write(bytes);
      return c;
    };
    try {
      // Enough of each that both workers (kernel-balanced) get some.
      for (let i = 0; i < 4; i++) {
        await open(port("public"), join(PREFACE, EMPTY_SETTINGS)); // h2c, no stream
        await open(port("public"), PREFACE.subarray(0, 10)); // half a preface
        await open(port("public"), enc.encode("GET / HTTP/1.1\r\nHost: a\r\n")); // half a head
        await open(port("public")); // silent
        await open(port("rpc"), join(PREFACE, EMPTY_SETTINGS)); // gRPC, no call
        await open(port("rpc"));
        const done = await open(port("public"), join(PREFACE, EMPTY_SETTINGS, GET_ROOT));
        assert.ok(await readSome(done, 300) > 0, "the h2c request was answered");
        const keep = await open(port("public"), enc.encode("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert.ok(await readSome(keep, 300) > 0, "the HTTP/1.1 request was answered");
      }
      const admin = await open(Number(new URL(f.admin!).port));
      await admin.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"));
      assert.ok(await readSome(admin, 300) > 0);
      await open(Number(new URL(f.admin!).port), enc.encode("GET /healthz HTTP/1.1\r\n"));
      const ms = await sigtermTakes(f);
      assert.ok(ms < PROMPT_MS, `drain took ${Math.round(ms)} ms with nothing in flight`);
    } finally {
      for (const c of held) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      try {
        f.child.kill("SIGKILL");
      } catch { /* exited */ }
      await up.close();
    }
  });
}

Deno.test("hostile drain: TLS connections with ALPN h2 and no stream, or no request, do not hold SIGTERM", async () => {
  const certs = await makeTestCerts();
  const up = startUpstream(() => new Response("ok"));
  const f = await spawnFerry([
    "--config",
    await tempConfig(`listeners:
  - { name: tls, address: "127.0.0.1:0", tls: { cert: ${certs.certFile}, key: ${certs.keyFile} } }
server: { drain_timeout: ${DRAIN}, header_timeout: 30s, watch_config: false }
routes:
  - { name: web, match: { path: { prefix: / } }, cluster: web }
clusters:
  - { name: web, endpoints: ["${up.url}"] }
`),
  ]);
  const port = Number(new URL(f.listeners.get("tls")!).port);
  const held: Deno.Conn[] = [];
  try {
    for (const alpn of ["h2", "h2", "http/1.1", "http/1.1"]) {
      const c = await Deno.connectTls({
        hostname: "127.0.0.1",
        port,
        caCerts: [certs.ca],
        alpnProtocols: [alpn],
      });
      held.push(c);
      const hs = await c.handshake();
      assert.equal(hs.alpnProtocol, alpn);
      if (alpn === "h2") await c.write(join(PREFACE, EMPTY_SETTINGS));
    }
    await new Promise((r) => setTimeout(r, 300));
    const ms = await sigtermTakes(f);
    assert.ok(ms < PROMPT_MS, `drain took ${Math.round(ms)} ms with nothing in flight`);
  } finally {
    for (const c of held) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    try {
      f.child.kill("SIGKILL");
    } catch { /* exited */ }
    await up.close();
    await certs.remove();
  }
});
