/**
 * Unary gRPC calls per second and CPU per call, grpc-js client -> grpc-js server directly and
 * through a Ferry gRPC listener (in its own process), in the same run. Short by design (2-core
 * machine shared with others): quote the ratio, not the absolute numbers.
 *
 *   deno run -A --unstable-no-legacy-abort bench/tools/grpc_throughput.ts [seconds=3] [concurrency=50]
 *
 * FERRY_CPU_PROF=DIR also writes a V8 CPU profile of the Ferry process into DIR.
 */
import { Buffer } from "node:buffer";
import { echoClient, startEchoServer, unary } from "../../tests/grpc/peers.ts";

const seconds = Number(Deno.args[0] ?? 3);
const concurrency = Number(Deno.args[1] ?? 50);
const profDir = Deno.env.get("FERRY_CPU_PROF");
const TICK = 100; // clock ticks per second on Linux

function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]); // utime + stime
}

async function load(port: number): Promise<number> {
  const client = echoClient(port);
  const msg = Buffer.from("x".repeat(100));
  await unary(client, msg);
  let calls = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      const r = await unary(client, msg);
      if (r.error) throw r.error;
      calls++;
    }
  }));
  client.close();
  return calls;
}

const server = await startEchoServer();
const dir = Deno.makeTempDirSync();
const cfg = `${dir}/grpc.yaml`;
Deno.writeTextFileSync(
  cfg,
  `listeners:\n  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }\nroutes:\n  - name: echo\n    cluster: echo\nclusters:\n  - name: echo\n    protocol: h2c\n    endpoints: ["http://127.0.0.1:${server.port}"]\n`,
);
const ferry = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "-A",
    "--unstable-no-legacy-abort",
    ...(profDir ? ["--cpu-prof", `--cpu-prof-dir=${profDir}`] : []),
    "main.ts",
    "--config",
    cfg,
  ],
  stdout: "null",
  stderr: "piped",
}).spawn();
const port = await boundPort(ferry.stderr);

const direct = await load(server.port);
const before = cpuTicks(ferry.pid);
const proxied = await load(port);
const ferryCpuMs = (cpuTicks(ferry.pid) - before) * 1000 / TICK;

console.log(`direct:  ${Math.round(direct / seconds)} calls/s`);
console.log(
  `ferry:   ${Math.round(proxied / seconds)} calls/s (${
    (proxied / direct * 100).toFixed(0)
  }% of direct)`,
);
console.log(`ferry CPU per call: ${(ferryCpuMs * 1000 / proxied).toFixed(1)} us`);
ferry.kill("SIGTERM");
await ferry.status;
await server.stop();
Deno.exit(0);

/** Reads Ferry's JSON log until the listener says where it bound (port 0), then drains it. */
async function boundPort(stderr: ReadableStream<Uint8Array>): Promise<number> {
  const lines = stderr.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await lines.read();
    if (done) throw new Error("ferry exited before listening");
    buf += value;
    const m = /"msg":"listening".*?"address":"[^"]*:(\d+)"/.exec(buf);
    if (m) {
      (async () => {
        while (!(await lines.read()).done) { /* keep the pipe from filling */ }
      })();
      return Number(m[1]);
    }
  }
}
