/**
 * CPU of a Ferry process relaying uploads sent as 1-byte chunks, and how many chunks reach the
 * upstream (a raw upstream that counts chunk-size lines, tests/fixtures/chunk_counting_upstream.ts).
 * Ferry runs as a child process from the checkout this script is in (the shipped flags). Linux
 * only (/proc).
 *
 *     deno run -A bench/tools/tiny_chunks.ts     # PIECES=100000 ROUNDS=5 GUARD=false
 *
 * GUARD=false runs Ferry without the connection guard (Deno.serve reads the body). The client
 * writes the chunks in 16 KiB writes (a burst: the chunks are readable faster than they go out).
 */
import { spawnFerry, tempConfig } from "../../tests/helpers.ts";
import { startChunkCountingUpstream } from "../../tests/fixtures/chunk_counting_upstream.ts";

const PIECES = Number(Deno.env.get("PIECES") ?? 100_000);
const ROUNDS = Number(Deno.env.get("ROUNDS") ?? 5);
const enc = new TextEncoder();
const dec = new TextDecoder();

/** User + system CPU seconds of a process so far. */
function cpuSeconds(pid: number): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks
}

const up = startChunkCountingUpstream();
const file = await tempConfig(`listeners: [{ name: public, address: "127.0.0.1:0" }]
server: { max_body_bytes: 0, connection_guard: ${Deno.env.get("GUARD") ?? "true"} }
routes: [{ name: all, cluster: up, timeout: 120s }]
clusters: [{ name: up, endpoints: ["${up.url}"] }]
`);
const ferry = await spawnFerry(["--config", file]);
const port = Number(new URL(ferry.listeners.get("public")!).port);
const pid = ferry.child.pid;

// The body as 1-byte chunks, in 16 KiB client writes.
const framing = enc.encode("1\r\nx\r\n".repeat(PIECES) + "0\r\n\r\n");
async function upload(): Promise<{ chunks: number; bytes: number }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(
      enc.encode("POST /up HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\n\r\n"),
    );
    for (let i = 0; i < framing.length; i += 16 * 1024) {
      await conn.write(framing.subarray(i, i + 16 * 1024));
    }
    let text = "";
    const buf = new Uint8Array(64 * 1024);
    for (;;) {
      const end = text.indexOf("\r\n\r\n");
      const cl = end >= 0 ? /content-length: (\d+)/i.exec(text.slice(0, end)) : null;
      if (cl && text.length >= end + 4 + Number(cl[1])) {
        const json = JSON.parse(text.slice(end + 4));
        return { chunks: json.chunks, bytes: json.bytes };
      }
      const n = await conn.read(buf);
      if (n === null) throw new Error(`closed: ${text.slice(0, 200)}`);
      text += dec.decode(buf.subarray(0, n));
    }
  } finally {
    conn.close();
  }
}

await upload(); // warm-up
const cpuBefore = cpuSeconds(pid);
const t0 = performance.now();
let chunks = 0;
for (let r = 0; r < ROUNDS; r++) {
  const got = await upload();
  if (got.bytes !== PIECES) throw new Error(`upstream got ${got.bytes} bytes`);
  chunks += got.chunks;
}
const cpu = cpuSeconds(pid) - cpuBefore;
console.log(JSON.stringify({
  guard: Deno.env.get("GUARD") ?? "true",
  pieces: PIECES,
  rounds: ROUNDS,
  upstream_chunks_per_upload: Math.round(chunks / ROUNDS),
  ferry_cpu_s: +cpu.toFixed(2),
  wall_s: +((performance.now() - t0) / 1000).toFixed(2),
}));
ferry.child.kill("SIGTERM");
await ferry.child.status;
await up.close();
