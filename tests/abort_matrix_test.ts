/**
 * Clients that go away at every point of an exchange, over every downstream protocol and on both
 * upstream transports, against one Ferry subprocess: before the request head ends, in the middle
 * of an upload, in the middle of a download; `Accept-Encoding` identity (fetch) and gzip
 * (node:http); HTTP/1.1, h2c, and TLS with either ALPN protocol. After each case the process is
 * alive, the next request succeeds, the upstream carries no breaker or outlier mark, and nothing
 * reached the last line of defence (`ferry_internal_errors_total` is 0).
 */
import assert from "node:assert/strict";
import { startUpstream } from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";
import { assertUnharmed, endpointMarks, startFerryProcess } from "./transport_peers.ts";

type Proto = "http/1.1" | "h2c" | "tls http/1.1" | "tls h2";
const PROTOS: readonly Proto[] = ["http/1.1", "h2c", "tls http/1.1", "tls h2"];
const ENCODINGS = ["identity", "gzip"] as const;
const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function eventually(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** HTTP/2 client preface, an empty SETTINGS frame, and a HEADERS frame cut after 10 of 50 bytes. */
function h2HeadCut(): Uint8Array {
  const preface = enc.encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
  const settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
  const headers = [
    0,
    0,
    50,
    1,
    4,
    0,
    0,
    0,
    1,
    0x83,
    0x86,
    0x84,
    0x41,
    5,
    0x61,
    0x2e,
    0x63,
    0x6f,
    0x6d,
  ];
  return new Uint8Array([...preface, ...settings, ...headers]);
}

Deno.test({
  name:
    "abort matrix: head cut, upload cut, download cut x identity/gzip x HTTP/1.1, h2c, TLS: Ferry unharmed",
  fn: async (t) => {
    const certs = await makeTestCerts();
    let uploads = 0, downloads = 0, downloadsEnded = 0;
    const chunk = new Uint8Array(64 * 1024).fill(120);
    const up = startUpstream(async (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/upload") {
        uploads++;
        await req.arrayBuffer().catch(() => {});
        return new Response("uploaded");
      }
      if (path === "/download") {
        downloads++;
        let sent = 0;
        // Endless unless someone stops reading it: it ends only when cancelled (or at 256 MiB).
        return new Response(
          new ReadableStream<Uint8Array>({
            async pull(c) {
              await sleep(2);
              if (sent >= 256 * 1024 * 1024) {
                downloadsEnded++;
                return c.close();
              }
              sent += chunk.length;
              c.enqueue(chunk);
            },
            cancel() {
              downloadsEnded++;
            },
          }),
        );
      }
      return new Response("ok");
    });
    const ferry = await startFerryProcess(
      `listeners:
  - { name: plain, address: "127.0.0.1:0" }
  - name: secure
    address: "127.0.0.1:0"
    tls: { cert: "${certs.certFile}", key: "${certs.keyFile}" }
admin: { address: "127.0.0.1:0" }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - name: up
    endpoints: ["${up.url}"]
    # One failure opens the breaker, one gateway failure ejects: any abort counted shows.
    circuit_breaker: { failures: 1, open_timeout: 60s }
    outlier_detection: { consecutive_gateway_failure: 1, consecutive_5xx: 1, max_ejection_percent: 100 }
`,
      2,
    );
    const portOf = (name: string) => Number(new URL(ferry.started.listeners.get(name)!).port);
    const plainPort = portOf("plain"), securePort = portOf("secure");
    const clientFor = (proto: Proto) =>
      Deno.createHttpClient({
        http1: proto === "http/1.1" || proto === "tls http/1.1",
        http2: proto === "h2c" || proto === "tls h2",
        ...(proto.startsWith("tls") ? { caCerts: [certs.ca] } : {}),
      });
    const baseFor = (proto: Proto) =>
      proto.startsWith("tls") ? `https://localhost:${securePort}` : `http://127.0.0.1:${plainPort}`;

    async function connect(proto: Proto): Promise<Deno.Conn> {
      if (!proto.startsWith("tls")) {
        return await Deno.connect({ hostname: "127.0.0.1", port: plainPort });
      }
      return await Deno.connectTls({
        hostname: "localhost",
        port: securePort,
        caCerts: [certs.ca],
        alpnProtocols: [proto === "tls h2" ? "h2" : "http/1.1"],
      });
    }

    const phases = {
      /** The connection closes before the request head is complete. */
      async head(proto: Proto, ae: string) {
        const conn = await connect(proto);
        const bytes = proto === "h2c" || proto === "tls h2"
          ? h2HeadCut()
          : enc.encode(`POST /upload HTTP/1.1\r\nHost: a\r\nAccept-Encoding: ${ae}\r\nContent-Le`);
        await conn.write(bytes);
        await sleep(100);
        conn.close();
      },
      /** The client stops its upload once the upstream is reading it. */
      async upload(proto: Proto, ae: string, client: Deno.HttpClient) {
        const before = uploads;
        const ctl = new AbortController();
        const body = new ReadableStream<Uint8Array>({
          async pull(c) {
            await sleep(10);
            c.enqueue(chunk);
          },
        });
        const pending = fetch(`${baseFor(proto)}/upload`, {
          method: "POST",
          body,
          headers: { "accept-encoding": ae },
          client,
          signal: ctl.signal,
        }).catch((e) => e);
        await eventually(() => uploads > before, `${proto} ${ae}: upload reaching the upstream`);
        await sleep(50);
        ctl.abort();
        const res = await pending;
        assert.ok(res instanceof Error, `${proto} ${ae}: aborted upload got a response`);
      },
      /** The client goes away after the first bytes of a download that never ends by itself. */
      async download(proto: Proto, ae: string, client: Deno.HttpClient) {
        const ended = downloadsEnded, before = downloads;
        const ctl = new AbortController();
        const res = await fetch(`${baseFor(proto)}/download`, {
          headers: { "accept-encoding": ae },
          client,
          signal: ctl.signal,
        });
        assert.equal(res.status, 200);
        const reader = res.body!.getReader();
        const first = await reader.read();
        assert.ok(!first.done && first.value.byteLength > 0);
        ctl.abort();
        await reader.read().catch(() => {});
        assert.equal(downloads, before + 1);
        // The upstream is released, not left streaming to nobody.
        await eventually(
          () => downloadsEnded > ended,
          `${proto} ${ae}: upstream download released`,
        );
      },
    };

    try {
      for (const proto of PROTOS) {
        for (const ae of ENCODINGS) {
          for (const [phase, run] of Object.entries(phases)) {
            await t.step(`${phase} cut, ${proto}, accept-encoding ${ae}`, async () => {
              const client = clientFor(proto);
              try {
                await run(proto, ae, client);
                await sleep(150);
                const next = await fetch(`${baseFor(proto)}/ok`, {
                  headers: { "accept-encoding": ae },
                  client,
                });
                const text = await next.text();
                assert.equal(next.status, 200, text);
                assert.equal(text, "ok");
                const [e] = await endpointMarks(ferry.admin, "up");
                assert.deepEqual(e, {
                  origin: up.url,
                  breakerState: "closed",
                  timesOpened: 0,
                  ejections: 0,
                  recentFailures: 0,
                }, "the upstream carries no mark for a client's abort");
                await assertUnharmed(ferry, `${phase} ${proto} ${ae}`);
              } finally {
                client.close();
              }
            });
          }
        }
      }
    } finally {
      await ferry.stop();
      await up.close();
      await certs.remove();
    }
  },
});
