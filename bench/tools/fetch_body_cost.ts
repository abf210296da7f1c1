/**
 * Ferry's CPU per request on a `transport: fetch` cluster with a small streamed answer (the
 * upstream sends its head, then the body), over HTTP/1.1 (Ferry's own server) and h2c (the inner
 * Deno.serve), with h2load. Ferry runs as a child process from the checkout this script is in.
 * Linux only (/proc).
 *
 *     deno run -A bench/tools/fetch_body_cost.ts      # N=20000 TRANSPORT=h1
 */
import { spawnFerry, tempConfig } from "../../tests/helpers.ts";

const N = Number(Deno.env.get("N") ?? 20_000);

function cpuSeconds(pid: number): number {
  const fields = Deno.readTextFileSync(`/proc/${pid}/stat`).split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

const body = new TextEncoder().encode("x".repeat(1024));
const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, () =>
  new Response(
    new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(body);
        c.close();
      },
    }),
  ));
const file = await tempConfig(`listeners: [{ name: public, address: "127.0.0.1:0" }]
routes: [{ name: all, cluster: up, timeout: 30s }]
clusters: [{ name: up, endpoints: ["http://127.0.0.1:${upstream.addr.port}"], transport: ${
  Deno.env.get("TRANSPORT") ?? "fetch"
} }]
`);
const ferry = await spawnFerry(["--config", file]);
const url = ferry.listeners.get("public")!;
const pid = ferry.child.pid;

async function h2load(args: string[]): Promise<number> {
  const out = await new Deno.Command("h2load", { args: [...args, `${url}/`] }).output();
  const text = new TextDecoder().decode(out.stdout);
  const ok = /(\d+) succeeded/.exec(text);
  return Number(ok?.[1] ?? 0);
}

const result: Record<string, unknown> = { transport: Deno.env.get("TRANSPORT") ?? "fetch" };
for (const [name, args] of [["h1", ["--h1"]], ["h2c", []]] as const) {
  await h2load([...args, "-n", "2000", "-c", "4"]); // warm-up
  const before = cpuSeconds(pid);
  const ok = await h2load([...args, "-n", String(N), "-c", "8", "-m", "4"]);
  result[`${name}_us_per_req`] = Math.round((cpuSeconds(pid) - before) / ok * 1e6);
}
console.log(JSON.stringify(result));
ferry.child.kill("SIGTERM");
await ferry.child.status;
await upstream.shutdown();
