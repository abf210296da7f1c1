/**
 * RSS growth of a Ferry process while 100 MB go up and 100 MB come down through the h1
 * transport (issue 17 target: under 16 MiB). Ferry runs as a child process (the shipped
 * permissions); the upstream and curl are outside it. Linux only (/proc).
 *
 *     deno run -A bench/tools/h1_rss.ts            # TRANSPORT=fetch to compare
 *
 * GUARD=false runs Ferry without the connection guard; V8_FLAGS passes --v8-flags to Ferry.
 * ONLY=up (or ONLY=down) runs one direction alone, so the other's garbage does not mix in;
 * CHUNKED=1 uploads with chunked framing instead of a Content-Length.
 */
import { spawnFerry, tempConfig } from "../../tests/helpers.ts";

const TOTAL = Number(Deno.env.get("MB") ?? 100) * 1000 * 1000;
const CHUNK = 64 * 1024;

/** User + system CPU seconds of a process so far. */
function cpuSeconds(pid: number): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in clock ticks
}

function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
}

const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
  if (new URL(req.url).pathname === "/warm") return new Response("ok");
  if (req.method === "POST") {
    let n = 0;
    for await (const c of req.body!) n += c.length;
    return new Response(String(n));
  }
  let left = TOTAL;
  return new Response(
    new ReadableStream<Uint8Array>({
      pull(ctl) {
        if (left <= 0) return ctl.close();
        const n = Math.min(CHUNK, left);
        left -= n;
        ctl.enqueue(new Uint8Array(n));
      },
    }, { highWaterMark: 1 }),
    { headers: { "content-length": String(TOTAL) } },
  );
});

const file = await tempConfig(`listeners: [{ name: public, address: "127.0.0.1:0" }]
server: { max_body_bytes: 0, connection_guard: ${Deno.env.get("GUARD") ?? "true"} }
routes: [{ name: all, cluster: up }]
clusters: [{ name: up, endpoints: ["http://127.0.0.1:${upstream.addr.port}"], transport: ${
  Deno.env.get("TRANSPORT") ?? "h1"
} }]
`);
// V8_FLAGS="--max-semi-space-size=1" tries V8 settings on the Ferry process.
const v8Flags = Deno.env.get("V8_FLAGS");
const ferry = await spawnFerry(
  ["--config", file],
  {},
  1,
  [],
  v8Flags ? [`--v8-flags=${v8Flags}`] : [],
);
const base = ferry.listeners.get("public")!;
const pid = ferry.child.pid;

async function curl(args: string[]): Promise<string> {
  const out = await new Deno.Command("curl", { args: ["-sS", "--max-time", "120", ...args] })
    .output();
  return new TextDecoder().decode(out.stdout);
}

const atStart = rssKiB(pid);
// Warm up (JIT, pools), then measure from there.
await curl(["-o", "/dev/null", `${base}/warm`]);
const before = rssKiB(pid);
const cpuBefore = cpuSeconds(pid);
let peak = before;
const sampler = setInterval(() => peak = Math.max(peak, rssKiB(pid)), 50);
const only = Deno.env.get("ONLY");
const down = only === "up"
  ? "0"
  : await curl(["-o", "/dev/null", "-w", "%{size_download}", `${base}/down`]);
const peakAfterDownload = peak;
let up = "0";
if (only !== "down") {
  const upload = await Deno.makeTempFile({ prefix: "ferry-rss-" });
  await Deno.truncate(upload, TOTAL); // 100 MB of zeros, sparse on disk
  const chunked = Deno.env.get("CHUNKED") ? ["-H", "transfer-encoding: chunked"] : [];
  up = await curl([...chunked, "-T", upload, "-X", "POST", `${base}/up`]);
  await Deno.remove(upload);
}
clearInterval(sampler);
const cpu = cpuSeconds(pid) - cpuBefore;
console.log(JSON.stringify({
  transport: Deno.env.get("TRANSPORT") ?? "h1",
  guard: Deno.env.get("GUARD") ?? "true",
  downloaded: Number(down),
  rss_at_start_mib: +(atStart / 1024).toFixed(1),
  rss_before_mib: +(before / 1024).toFixed(1),
  rss_peak_mib: +(peak / 1024).toFixed(1),
  growth_mib: +((peak - before) / 1024).toFixed(1),
  growth_download_mib: +((peakAfterDownload - before) / 1024).toFixed(1),
  uploaded: up,
  ferry_cpu_s: +cpu.toFixed(2),
}));
ferry.child.kill("SIGTERM");
await ferry.child.status;
await upstream.shutdown();
