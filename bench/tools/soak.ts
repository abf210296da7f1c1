/**
 * Soak: a Ferry process under mixed traffic for a long time, with reloads, watching its memory
 * and open file descriptors. Not a CI test (it runs for minutes); run it by hand:
 *
 *   deno run --allow-all --unstable-no-legacy-abort bench/tools/soak.ts [minutes=10]
 *   (SOAK_RPS=250: requests per second per h2load client; SOAK_WORKERS=2: server.workers)
 *
 * Traffic (h2load, in rounds of 10 s): HTTP/1.1 GETs, h2c GETs, POSTs with a body, requests to a
 * route whose upstream is down (502s), 404s, plus a WebSocket echo every second. Every 2 s a
 * reload, alternating valid configs (one that rebuilds the cluster) and an invalid one.
 *
 * It samples RSS (/proc/<pid>/status VmRSS) and open fds (/proc/<pid>/fd) every 5 s and prints a
 * table and a verdict: after warm-up (the first 20 % of the run), the RSS floor and median of the
 * last third must be within 10 % of the first third's, and the fd count must not trend upward.
 */
import { run } from "../../tests/helpers.ts";
import { spawnFerry, tempConfig } from "../../tests/helpers.ts";

const minutes = Number(Deno.args[0] ?? "10");
const workers = Deno.env.get("SOAK_WORKERS") ?? "1";
const endAt = Date.now() + minutes * 60_000;

const upstream = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
  if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send(e.data);
    return response;
  }
  if (req.body) await req.arrayBuffer();
  return new Response("x".repeat(512));
});
const upUrl = `http://127.0.0.1:${upstream.addr.port}`;

function config(gen: number, valid = true): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false, workers: ${workers} }
routes:
  - name: dead
    match: { path: { prefix: /dead } }
    cluster: dead
  - name: all
    match: { path: { prefix: / } }
    cluster: up
    response_headers: { add: { x-gen: "${gen}" } }
    retry: { retries: 1 }
${valid ? "" : "    broken: yes\n"}clusters:
  - name: up
    endpoints: ["${upUrl}"]
    pool: { idle_timeout: ${gen % 4 === 0 ? "30s" : "45s"} }
    outlier_detection: {}
  - name: dead
    endpoints: ["http://127.0.0.1:1"]
    circuit_breaker: { failures: 5, open_timeout: 2s }
`;
}

const file = await tempConfig(config(0));
const ferry = await spawnFerry(["--config", file]);
const pid = ferry.child.pid;
const url = ferry.listeners.get("public")!;
const bodyFile = await Deno.makeTempFile();
await Deno.writeFile(bodyFile, new Uint8Array(16 * 1024).fill(97));

interface Sample {
  t: number;
  rssMiB: number;
  fds: number;
}
const samples: Sample[] = [];
const startedAt = Date.now();
async function sample(): Promise<void> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const rssKiB = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  let fds = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
  samples.push({ t: (Date.now() - startedAt) / 1000, rssMiB: rssKiB / 1024, fds });
}

let reloads = 0, reloadFailures = 0, requests = 0, failed = 0, wsEchoes = 0;
/** Requests that failed on the rounds that should all succeed (every round but /dead). */
let unexpectedFailures = 0;
/** h2load's "errored" and "timeout" (no answer at all), every round. */
let errored = 0;
const sampler = setInterval(() => void sample(), 5_000);
const reloader = (async () => {
  for (let gen = 1; Date.now() < endAt; gen++) {
    const valid = gen % 5 !== 0;
    await Deno.writeTextFile(file, config(gen, valid));
    const r = await fetch(`${ferry.admin}/reload`, { method: "POST" });
    await r.body?.cancel();
    if (r.status === 200) reloads++;
    else reloadFailures++;
    await new Promise((r) => setTimeout(r, 2_000));
  }
})();
const websocket = (async () => {
  const ws = new WebSocket(url.replace("http:", "ws:") + "/ws");
  await new Promise((r) => (ws.onopen = r));
  ws.onmessage = () => wsEchoes++;
  while (Date.now() < endAt) {
    ws.send("ping");
    await new Promise((r) => setTimeout(r, 1_000));
  }
  ws.close();
})();

// A steady rate (not flat out), so the run measures growth rather than a saturated machine;
// SOAK_RPS sets requests per second per h2load client.
const rps = Deno.env.get("SOAK_RPS") ?? "250";
// A request never answered would hold h2load (and the soak) forever: a connection silent for 10 s
// is closed, and its requests count as timed out.
const quiet = ["-N", "10s"];
const rounds: string[][] = [
  ["--h1", "-c", "8", `--rps=${rps}`, "-D", "10", ...quiet, `${url}/`],
  ["-c", "4", "-m", "8", `--rps=${rps}`, "-D", "10", ...quiet, `${url}/`],
  ["--h1", "-c", "4", `--rps=${rps}`, "-D", "10", ...quiet, "-d", bodyFile, `${url}/upload`],
  ["--h1", "-c", "2", `--rps=${rps}`, "-D", "10", ...quiet, `${url}/dead`],
];
for (let i = 0; Date.now() < endAt; i++) {
  const out = await run("h2load", rounds[i % rounds.length]!);
  const m = /requests: (\d+) total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed/.exec(
    out.stdout,
  );
  const e = /(\d+) errored, (\d+) timeout/.exec(out.stdout);
  requests += Number(m?.[1] ?? 0);
  // h2load counts non-2xx/3xx as failed: the /dead round (502/503) fails by design.
  failed += Number(m?.[2] ?? 0);
  if (i % rounds.length !== 3) unexpectedFailures += Number(m?.[2] ?? 0);
  errored += Number(e?.[1] ?? 0) + Number(e?.[2] ?? 0);
  if (!m) unexpectedFailures++;
}
await Promise.all([reloader, websocket]);
clearInterval(sampler);
await sample();

// RSS saws up and down with garbage collection; growth shows in the floor (the lowest sample,
// just after a collection) and in the middle of the band, so both are compared between the first
// and the last third of the run after warm-up.
const warm = samples.filter((s) => s.t >= minutes * 60 * 0.2);
const third = Math.max(1, Math.floor(warm.length / 3));
const firstPart = warm.slice(0, third), lastPart = warm.slice(-third);
const floor = (xs: Sample[]) => Math.min(...xs.map((s) => s.rssMiB));
const median = (xs: Sample[]) => {
  const v = xs.map((s) => s.rssMiB).sort((a, b) => a - b);
  return v[Math.floor(v.length / 2)]!;
};
const floorGrowth = floor(lastPart) / floor(firstPart) - 1;
const medianGrowth = median(lastPart) / median(firstPart) - 1;
// Shrinking is fine; growing by more than 10 % is not.
const flat = floorGrowth <= 0.1 && medianGrowth <= 0.1;
const fdsFirst = median(firstPart.map((s) => ({ ...s, rssMiB: s.fds })));
const fdsLast = median(lastPart.map((s) => ({ ...s, rssMiB: s.fds })));

console.log("t(s)\tRSS MiB\tfds");
for (const s of samples) console.log(`${s.t.toFixed(0)}\t${s.rssMiB.toFixed(1)}\t${s.fds}`);
console.log(
  `\n${minutes} min, workers: ${workers}: ${requests} requests (${failed} not 2xx/3xx, the /dead ` +
    `round's by design; ${unexpectedFailures} failed on the other rounds, ${errored} errored or ` +
    `timed out), ${reloads} reloads applied, ${reloadFailures} refused, ${wsEchoes} WebSocket ` +
    `echoes on one connection`,
);
const pct = (x: number) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)} %`;
console.log(
  `RSS after warm-up: band ${floor(warm).toFixed(0)}-${
    Math.max(...warm.map((s) => s.rssMiB)).toFixed(0)
  } MiB; ` +
    `first third -> last third: floor ${floor(firstPart).toFixed(1)} -> ${
      floor(lastPart).toFixed(1)
    } MiB ` +
    `(${pct(floorGrowth)}), median ${median(firstPart).toFixed(1)} -> ${
      median(lastPart).toFixed(1)
    } MiB ` +
    `(${pct(medianGrowth)}): ${flat ? "FLAT (no growth over 10 %)" : "GROWING"}`,
);
console.log(
  `open fds after warm-up: median ${fdsFirst} (first third) -> ${fdsLast} (last third), ` +
    `max ${Math.max(...warm.map((s) => s.fds))}`,
);

ferry.child.kill("SIGTERM");
await ferry.child.status;
await upstream.shutdown();
