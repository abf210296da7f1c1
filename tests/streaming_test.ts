/**
 * Bodies stream through Ferry: 100+ MB each way without buffering (RSS of a separate Ferry
 * process measured), compressed bodies byte for byte, and chunked responses incrementally.
 */
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { catchAllConfig, rawRequest, run, startFerry, startUpstream } from "./helpers.ts";

const MB = 1024 * 1024;

/** The most a loopback connection's kernel buffers can hold (receive + send maxima, Linux). */
function kernelBufferMax(): number {
  try {
    const max = (f: string) => Number(Deno.readTextFileSync(f).trim().split(/\s+/)[2]);
    return max("/proc/sys/net/ipv4/tcp_rmem") + max("/proc/sys/net/ipv4/tcp_wmem");
  } catch {
    return 36 * MB;
  }
}
/**
 * A stalled transfer crosses three connections (client-guard, guard-Deno.serve, Ferry-upstream)
 * whose kernel buffers autotune up to `kernelBufferMax()` each (36 MiB here): the body must be
 * larger than all of them, or "the upstream finished while the client stalled" proves nothing.
 */
const BODY_SIZE = Math.max(100 * MB, Math.ceil((3 * kernelBufferMax() + 32 * MB) / MB) * MB);
const CHUNK = 64 * 1024;

const SIMPLE = catchAllConfig();

/** `total` bytes made on the fly, CHUNK at a time (counted in `progress`); never all held. */
function generated(total: number, progress = { n: 0 }): ReadableStream<Uint8Array> {
  let left = total;
  return new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (left <= 0) return ctl.close();
      const n = Math.min(CHUNK, left);
      const chunk = new Uint8Array(n);
      chunk[0] = left & 0xff;
      left -= n;
      progress.n += n;
      ctl.enqueue(chunk);
    },
  }, { highWaterMark: 1 });
}

async function countBytes(body: ReadableStream<Uint8Array> | null): Promise<number> {
  let n = 0;
  if (!body) return n;
  for await (const chunk of body) n += chunk.byteLength;
  return n;
}

function kib(text: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(text);
  return m ? Number(m[1]) : NaN;
}

/** Ferry as its own process, started by main.ts from a temp YAML file. */
async function spawnFerry(yaml: string) {
  const dir = await Deno.makeTempDir({ prefix: "ferry-stream-" });
  const file = `${dir}/ferry.yaml`;
  await Deno.writeTextFile(file, yaml);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-no-legacy-abort", "main.ts", "--config", file],
    cwd: new URL("..", import.meta.url).pathname,
    stdout: "null",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const lines: string[] = [];
  const port = Promise.withResolvers<number>();
  const drained = (async () => {
    let rest = "";
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      rest += text;
      let i;
      while ((i = rest.indexOf("\n")) >= 0) {
        const line = rest.slice(0, i);
        rest = rest.slice(i + 1);
        lines.push(line);
        const m = /"msg":"listening".*"address":"127\.0\.0\.1:(\d+)"/.exec(line);
        if (m) port.resolve(Number(m[1]));
      }
    }
    port.reject(new Error(`ferry exited before listening:\n${lines.join("\n")}${rest}`));
  })();
  const timer = setTimeout(
    () => port.reject(new Error("ferry did not listen within 30 s")),
    30_000,
  );
  const close = async () => {
    clearTimeout(timer);
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    await drained;
    await Deno.remove(dir, { recursive: true });
  };
  try {
    const p = await port.promise;
    clearTimeout(timer);
    return { pid: child.pid, port: p, url: `http://127.0.0.1:${p}`, lines, close };
  } catch (err) {
    await close();
    throw err;
  }
}

function procStatus(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/status`);
}

/** Samples a process's VmRSS every 20 ms from construction until `stop()`. */
class RssSampler {
  readonly beforeKiB: number;
  peakKiB: number;
  readonly #timer: ReturnType<typeof setInterval>;
  constructor(readonly pid: number) {
    this.beforeKiB = this.peakKiB = kib(procStatus(pid), "VmRSS");
    this.#timer = setInterval(() => this.sample(), 20);
  }
  sample(): void {
    this.peakKiB = Math.max(this.peakKiB, kib(procStatus(this.pid), "VmRSS"));
  }
  /** Peak growth so far, in MiB. */
  get growthMiB(): number {
    return (this.peakKiB - this.beforeKiB) / 1024;
  }
  stop(): number {
    this.sample();
    clearInterval(this.#timer);
    return this.growthMiB;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const STALL_MS = 1_500;
/**
 * What may sit between client and upstream while one side stalls: kernel buffers of three loopback
 * connections (see BODY_SIZE) and the test process's read-ahead. Measured 8-74 MiB (the most under
 * load); never the whole body. Kernel buffers are outside Ferry's RSS, so the stall RSS
 * figure below is the sharper check (a Ferry that buffered the upload showed +300 MiB).
 */
const MAX_IN_FLIGHT = BODY_SIZE - 4 * MB;
/** Ferry's own RSS growth while one side stalls: what it holds itself (measured 0-12 MiB). */
const MAX_STALL_GROWTH_MIB = 40;
/**
 * Over a whole 100 MB transfer RSS mostly counts garbage V8 has not collected yet (64 KiB chunks
 * are freed at the next GC, and V8 lets external memory grow tens of MiB before collecting; a
 * bare Deno client uploading 100 MB grows ~50 MiB the same way). Measured on a fresh Ferry:
 * 0-50 MiB through fetch, 60-80 MiB through the h1 transport (bench/tools/h1_rss.ts), flat when
 * repeated and the same for 400 MB. So this
 * bound only guards against leaks; the stall figures above are what show nothing is buffered.
 */
const MAX_RSS_GROWTH_MIB = 150;

Deno.test({
  name: `${
    BODY_SIZE / MB
  } MiB up and down stream through a separate Ferry process, backpressured, bounded RSS`,
  fn: async (t) => {
    let gate = Promise.withResolvers<void>();
    const produced = { n: 0 };
    const up = startUpstream(async (req) => {
      const url = new URL(req.url);
      if (req.method === "POST") {
        await gate.promise; // the upstream stalls before reading the upload
        return Response.json({ received: await countBytes(req.body) });
      }
      const size = Number(url.searchParams.get("size"));
      return new Response(generated(size, produced), {
        headers: { "content-type": "application/octet-stream" },
      });
    });
    // The body is over the default 10 MiB body limit: this test is about streaming, so no limit.
    const px = await spawnFerry(
      catchAllConfig("server: { max_body_bytes: 0 }\n").replace("{{UP}}", up.url) +
        "log: { level: info }\n",
    );
    const figures: string[] = [];
    try {
      // Warm up both codings so the baseline includes the code paths' own memory.
      gate.resolve();
      for (const ae of ["identity", "gzip"]) {
        const r = await fetch(`${px.url}/d?size=1000000`, { headers: { "accept-encoding": ae } });
        assert.equal(await countBytes(r.body), 1_000_000);
      }
      const hwmStart = kib(procStatus(px.pid), "VmHWM");
      // Both through the cluster's transport (h1 by default; FERRY_TEST_TRANSPORT=fetch for
      // fetch), with and without a coding the client accepts.
      for (const ae of ["identity", "gzip"]) {
        await t.step(`upload ${BODY_SIZE / MB} MiB (accept-encoding ${ae})`, async () => {
          gate = Promise.withResolvers<void>();
          const sent = { n: 0 };
          const whole = new RssSampler(px.pid);
          const pending = fetch(`${px.url}/u`, {
            method: "POST",
            headers: { "accept-encoding": ae, "content-type": "application/octet-stream" },
            body: generated(BODY_SIZE, sent),
            signal: AbortSignal.timeout(120_000),
          });
          await sleep(STALL_MS);
          const inFlight = sent.n, stallGrowth = whole.growthMiB;
          gate.resolve();
          const res = await pending;
          assert.equal(res.status, 200);
          const { received } = await res.json();
          const growth = whole.stop();
          figures.push(
            `upload/${ae}: ${(inFlight / MB).toFixed(1)} MiB in flight while the ` +
              `upstream stalled (RSS +${stallGrowth.toFixed(1)} MiB), whole transfer RSS ` +
              `+${growth.toFixed(1)} MiB`,
          );
          assert.equal(received, BODY_SIZE);
          assert.ok(
            inFlight < MAX_IN_FLIGHT,
            `Ferry took ${inFlight} bytes the upstream never read`,
          );
          assert.ok(
            stallGrowth < MAX_STALL_GROWTH_MIB,
            `RSS +${stallGrowth.toFixed(1)} MiB in the stall`,
          );
          assert.ok(growth < MAX_RSS_GROWTH_MIB, `Ferry RSS grew ${growth.toFixed(1)} MiB`);
        });
        await t.step(`download ${BODY_SIZE / MB} MiB (accept-encoding ${ae})`, async () => {
          produced.n = 0;
          const whole = new RssSampler(px.pid);
          const res = await fetch(`${px.url}/d?size=${BODY_SIZE}`, {
            headers: { "accept-encoding": ae },
            signal: AbortSignal.timeout(120_000),
          });
          assert.equal(res.status, 200);
          await sleep(STALL_MS); // the client stalls before reading
          const inFlight = produced.n, stallGrowth = whole.growthMiB;
          const received = await countBytes(res.body);
          const growth = whole.stop();
          figures.push(
            `download/${ae}: ${(inFlight / MB).toFixed(1)} MiB in flight while the ` +
              `client stalled (RSS +${stallGrowth.toFixed(1)} MiB), whole transfer RSS ` +
              `+${growth.toFixed(1)} MiB`,
          );
          assert.equal(received, BODY_SIZE);
          assert.ok(
            inFlight < MAX_IN_FLIGHT,
            `Ferry pulled ${inFlight} bytes the client never read`,
          );
          assert.ok(
            stallGrowth < MAX_STALL_GROWTH_MIB,
            `RSS +${stallGrowth.toFixed(1)} MiB in the stall`,
          );
          assert.ok(growth < MAX_RSS_GROWTH_MIB, `Ferry RSS grew ${growth.toFixed(1)} MiB`);
        });
      }
      const hwmEnd = kib(procStatus(px.pid), "VmHWM");
      figures.push(`VmHWM ${hwmStart} kB -> ${hwmEnd} kB over 400 MB`);
    } finally {
      console.log(`ferry (pid ${px.pid}) per 100 MB transfer:\n  ${figures.join("\n  ")}`);
      await px.close();
      await up.close();
    }
  },
});

const TEXT = "Ferry passes compressed bodies through untouched.\n".repeat(2_000);
const GZIPPED = new Uint8Array(gzipSync(new TextEncoder().encode(TEXT)));

async function sha256(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A raw HTTP/1.1 exchange that keeps the body as bytes (helpers' rawRequest decodes text). */
async function rawBytes(port: number, request: string, ms = 5_000) {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const chunks: Uint8Array[] = [];
  try {
    await conn.write(new TextEncoder().encode(request));
    const timer = setTimeout(() => conn.close(), ms);
    try {
      for await (const c of conn.readable) chunks.push(c);
    } catch { /* closed by the timer */ }
    clearTimeout(timer);
  } finally {
    try {
      conn.close();
    } catch { /* already closed */ }
  }
  const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) all.set(c, (o += c.length) - c.length);
  let end = -1;
  for (let i = 0; i + 3 < all.length; i++) {
    if (all[i] === 13 && all[i + 1] === 10 && all[i + 2] === 13 && all[i + 3] === 10) {
      end = i;
      break;
    }
  }
  assert.ok(end > 0, "no response head");
  return { head: new TextDecoder().decode(all.subarray(0, end)), body: all.subarray(end + 4) };
}

Deno.test("gzip passes through byte for byte; no Accept-Encoding is added", async () => {
  const seenAE: (string | null)[] = [];
  const up = startUpstream((req) => {
    const ae = req.headers.get("accept-encoding");
    seenAE.push(ae);
    if (ae && /\bgzip\b/.test(ae)) {
      return new Response(GZIPPED, {
        headers: {
          "content-type": "text/plain",
          "content-encoding": "gzip",
          "content-length": String(GZIPPED.length),
          "vary": "accept-encoding",
        },
      });
    }
    return new Response(TEXT, {
      headers: { "content-type": "text/plain", "vary": "accept-encoding" },
    });
  });
  const px = startFerry(SIMPLE, { UP: up.url });
  const dir = await Deno.makeTempDir({ prefix: "ferry-gzip-" });
  try {
    const want = await sha256(GZIPPED);

    // curl WITHOUT --compressed: raw bytes to a file, over HTTP/1.1 and h2c.
    for (const proto of ["--http1.1", "--http2-prior-knowledge"]) {
      const file = `${dir}/body${proto}.gz`;
      const out = await run("curl", [
        "-sS",
        "--max-time",
        "15",
        proto,
        "-H",
        "Accept-Encoding: gzip",
        "-D",
        "-",
        "-o",
        file,
        `${px.url}/z`,
      ]);
      assert.equal(out.code, 0, out.stderr);
      assert.match(out.stdout, /\r\ncontent-encoding: gzip\r\n/i, out.stdout);
      assert.match(out.stdout, new RegExp(`\\r\\ncontent-length: ${GZIPPED.length}\\r\\n`, "i"));
      assert.equal(await sha256(await Deno.readFile(file)), want, `${proto}: bytes changed`);
    }
    assert.deepEqual(seenAE.splice(0), ["gzip", "gzip"]);

    // Raw HTTP/1.1: the exact bytes, and helpers' rawRequest for the head.
    const raw = await rawBytes(
      px.port,
      "GET /z HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    );
    assert.match(raw.head, /^HTTP\/1\.1 200/);
    assert.match(raw.head, /\r\ncontent-encoding: gzip/i);
    assert.match(raw.head, new RegExp(`\\r\\ncontent-length: ${GZIPPED.length}(\\r|$)`, "im"));
    assert.doesNotMatch(raw.head, /transfer-encoding/i);
    assert.equal(raw.body.length, GZIPPED.length);
    assert.equal(await sha256(raw.body), want);
    const head = await rawRequest(
      px.port,
      "GET /z HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip, br\r\nConnection: close\r\n\r\n",
    );
    assert.match(head, /^HTTP\/1\.1 200/);
    assert.match(head, new RegExp(`\\r\\ncontent-length: ${GZIPPED.length}\\r\\n`, "i"));
    assert.deepEqual(seenAE.splice(0), ["gzip", "gzip, br"]);

    // No Accept-Encoding at all: a valid identity body.
    const plain = await run("curl", [
      "-sS",
      "--max-time",
      "15",
      "-D",
      "/dev/stderr",
      `${px.url}/z`,
    ]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, TEXT);
    assert.doesNotMatch(plain.stderr, /content-encoding/i);
    assert.deepEqual(seenAE.splice(0), [null], "the h1 transport adds no Accept-Encoding");

    // And fetch (which decodes) ends up with the right text either way.
    const decoded = await fetch(`${px.url}/z`);
    assert.equal(await decoded.text(), TEXT);
  } finally {
    await px.close();
    await up.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a chunked response arrives incrementally, not after the upstream finishes", async () => {
  const STEPS = 5;
  const producedAt: number[] = [];
  const up = startUpstream(() => {
    let i = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(ctl) {
        if (i > 0) await new Promise((r) => setTimeout(r, 250));
        if (i === STEPS) return ctl.close();
        producedAt.push(performance.now());
        ctl.enqueue(new TextEncoder().encode(`chunk ${i++}\n`));
      },
    }, { highWaterMark: 0 });
    return new Response(body, { headers: { "content-type": "application/octet-stream" } });
  });
  const px = startFerry(SIMPLE, { UP: up.url });
  try {
    // With and without a coding the client accepts (fetch clusters send identity either way).
    for (const ae of ["identity", "gzip"]) {
      producedAt.length = 0;
      const res = await fetch(`${px.url}/s`, {
        headers: { "accept-encoding": ae },
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("content-length"), null);
      let firstAt = 0;
      let text = "";
      const dec = new TextDecoder();
      for await (const c of res.body!) {
        if (!firstAt) firstAt = performance.now();
        text += dec.decode(c, { stream: true });
      }
      assert.equal(text, Array.from({ length: STEPS }, (_, i) => `chunk ${i}\n`).join(""));
      assert.equal(producedAt.length, STEPS);
      const last = producedAt[STEPS - 1]!;
      assert.ok(
        firstAt < last,
        `${ae}: first chunk arrived ${(firstAt - last).toFixed(0)} ms after the last was produced`,
      );
    }
  } finally {
    await px.close();
    await up.close();
  }
});
