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
 * It samples the Ferry process's RSS (/proc/<pid>/status; with `workers: 2` the main isolate and
 * both workers are threads of that one process) and open fds (/proc/<pid>/fd) every second, and
 * prints one line per minute and a verdict on the RSS floor (see "The floor" below).
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
  /** RssAnon: heap and other private memory; RssFile: mapped files (the deno binary's pages). */
  anonMiB: number;
  fileMiB: number;
  fds: number;
}
const samples: Sample[] = [];
const startedAt = Date.now();
async function sample(): Promise<void> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? 0);
  let fds = 0;
  for await (const _ of Deno.readDir(`/proc/${pid}/fd`)) fds++;
  samples.push({
    t: (Date.now() - startedAt) / 1000,
    rssMiB: kib("VmRSS") / 1024,
    anonMiB: kib("RssAnon") / 1024,
    fileMiB: kib("RssFile") / 1024,
    fds,
  });
}

let reloads = 0, reloadFailures = 0, requests = 0, failed = 0, wsEchoes = 0;
/** Requests that failed on the rounds that should all succeed (every round but /dead). */
let unexpectedFailures = 0;
/** h2load's "errored" and "timeout" (no answer at all), every round. */
let errored = 0;
const sampler = setInterval(() => void sample(), 1_000);
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

// The floor. RSS saws up and down with each isolate's garbage collection: with two workers, three
// V8 heaps (main isolate and workers) each swing by 20-25 MiB on their own ~1-minute cycles, and
// RSS is at its lowest only when all three have just collected. The lowest single sample of a
// stretch of the run therefore depends on how those cycles happen to line up in it (the
// first-third/last-third floors of one run moved by -6 % to +9 % with the same code, see
// docs/PERFORMANCE.md "Soak: what the RSS floor measures"). So: sample every second, take the
// lowest sample of each minute after a warm-up (the first 2 minutes, or 20 % of a shorter run:
// allocators and heaps grow to their working size there), and compare the median of these
// per-minute floors over the first half of those minutes with the median over the second half.
// Every minute counts once, and one lucky or unlucky alignment does not move a median.
// What it cannot remove: the main isolate allocates little, so it collects rarely (once in the
// 10 minutes of the run in docs/PERFORMANCE.md) and its heap climbs with garbage until then.
const warmUpS = Math.min(120, minutes * 60 * 0.2);
const warm = samples.filter((s) => s.t >= warmUpS);
interface Minute {
  minute: number;
  floor: number;
  median: number;
  max: number;
  anonFloor: number;
  fileMedian: number;
  fdsMedian: number;
  fdsMax: number;
}
const medianOf = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const perMinute: Minute[] = [];
for (let m = 0; m * 60 < (samples.at(-1)?.t ?? 0); m++) {
  const xs = samples.filter((s) => s.t >= m * 60 && s.t < (m + 1) * 60);
  if (xs.length === 0) continue;
  perMinute.push({
    minute: m,
    floor: Math.min(...xs.map((s) => s.rssMiB)),
    median: medianOf(xs.map((s) => s.rssMiB)),
    max: Math.max(...xs.map((s) => s.rssMiB)),
    anonFloor: Math.min(...xs.map((s) => s.anonMiB)),
    fileMedian: medianOf(xs.map((s) => s.fileMiB)),
    fdsMedian: medianOf(xs.map((s) => s.fds)),
    fdsMax: Math.max(...xs.map((s) => s.fds)),
  });
}
// Only whole minutes after the warm-up (the last one may be cut short by the end of traffic).
const counted = perMinute.filter((m) => m.minute * 60 >= warmUpS && m.minute < minutes);
const half = Math.max(1, Math.floor(counted.length / 2));
const firstHalf = counted.slice(0, half), secondHalf = counted.slice(-half);
const floorFrom = medianOf(firstHalf.map((m) => m.floor));
const floorTo = medianOf(secondHalf.map((m) => m.floor));
const medianFrom = medianOf(firstHalf.map((m) => m.median));
const medianTo = medianOf(secondHalf.map((m) => m.median));
const floorGrowth = floorTo / floorFrom - 1;
const medianGrowth = medianTo / medianFrom - 1;
const fdsFrom = medianOf(firstHalf.map((m) => m.fdsMedian));
const fdsTo = medianOf(secondHalf.map((m) => m.fdsMedian));
// The target: the floor flat within 5 %.
const flat = floorGrowth <= 0.05;
// The measure used before (lowest sample of the first and of the last third after warm-up),
// printed to compare with earlier runs.
const third = Math.max(1, Math.floor(warm.length / 3));
const lowest = (xs: Sample[]) => Math.min(...xs.map((s) => s.rssMiB));
const oldFirst = lowest(warm.slice(0, third)), oldLast = lowest(warm.slice(-third));

console.log("minute\tRSS floor\tmedian\tmax\tanon floor\tfile\tfds median\tfds max");
for (const m of perMinute) {
  console.log(
    [m.minute, m.floor, m.median, m.max, m.anonFloor, m.fileMedian]
      .map((x, i) => i === 0 ? String(x) : x.toFixed(1)).join("\t") +
      `\t${m.fdsMedian}\t${m.fdsMax}`,
  );
}
console.log(
  `\n${minutes} min, workers: ${workers}: ${requests} requests (${failed} not 2xx/3xx, the /dead ` +
    `round's by design; ${unexpectedFailures} failed on the other rounds, ${errored} errored or ` +
    `timed out), ${reloads} reloads applied, ${reloadFailures} refused, ${wsEchoes} WebSocket ` +
    `echoes on one connection`,
);
const pct = (x: number) => `${x >= 0 ? "+" : ""}${(x * 100).toFixed(1)} %`;
const minuteSpan = (ms: Minute[]) =>
  ms.length > 0 ? `${ms[0]!.minute}-${ms.at(-1)!.minute}` : "none";
console.log(
  `RSS floor (median of per-minute floors after ${warmUpS} s of warm-up, minutes ` +
    `${minuteSpan(firstHalf)} -> ${minuteSpan(secondHalf)}): ${floorFrom.toFixed(1)} -> ` +
    `${floorTo.toFixed(1)} MiB (${pct(floorGrowth)}); median RSS ${medianFrom.toFixed(1)} -> ` +
    `${medianTo.toFixed(1)} MiB (${pct(medianGrowth)}): ` +
    `${flat ? "FLAT (floor within 5 %)" : "GROWING (floor over 5 %)"}`,
);
console.log(
  `earlier measure (lowest sample, first -> last third after warm-up): ${oldFirst.toFixed(1)} -> ` +
    `${oldLast.toFixed(1)} MiB (${pct(oldLast / oldFirst - 1)})`,
);
console.log(
  `open fds: median of per-minute medians ${fdsFrom} -> ${fdsTo}, ` +
    `max ${Math.max(...warm.map((s) => s.fds))}`,
);

ferry.child.kill("SIGTERM");
await ferry.child.status;
await upstream.shutdown();
