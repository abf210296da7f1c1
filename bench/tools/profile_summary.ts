/**
 * Self time per function from a V8 `.cpuprofile` (what `deno run --cpu-prof` writes): the top N
 * functions by self time, with their share of all samples, and the share of a few groups
 * (garbage collection, idle, Ferry's own src/, fetch, prom-client).
 *
 *     deno run --allow-read bench/tools/profile_summary.ts CPU.123.cpuprofile [N=15]
 */
interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg] = Deno.args;
if (!file) {
  console.error("usage: profile_summary.ts <file.cpuprofile> [N]");
  Deno.exit(2);
}
const top = Number(topArg ?? 15);
const profile: Profile = JSON.parse(Deno.readTextFileSync(file));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));

/** A readable name: function, then the file (repo-relative for Ferry, short for the runtime). */
function label(f: CallFrame): string {
  const name = f.functionName || "(anonymous)";
  if (!f.url) return name;
  const src = f.url.indexOf("/src/");
  const file = src >= 0 ? f.url.slice(src + 1) : f.url.replace(/^.*\/node_modules\//, "npm:")
    .replace(/^file:\/\/.*\/(deno_dir|\.cache)\/.*?\/npm\//, "npm:");
  return `${name} ${file}:${f.lineNumber + 1}`;
}

const self = new Map<string, number>();
let total = 0;
const groups = { gc: 0, idle: 0, program: 0, ferry: 0, fetch: 0, promClient: 0, http: 0 };
for (let i = 0; i < profile.samples.length; i++) {
  const node = byId.get(profile.samples[i]!)!;
  const dt = profile.timeDeltas[i] ?? 0;
  const f = node.callFrame;
  const key = label(f);
  self.set(key, (self.get(key) ?? 0) + dt);
  total += dt;
  if (f.functionName === "(garbage collector)") groups.gc += dt;
  else if (f.functionName === "(idle)") groups.idle += dt;
  else if (f.functionName === "(program)") groups.program += dt;
  if (f.url.includes("/src/")) groups.ferry += dt;
  if (f.url.includes("deno_fetch") || f.functionName.startsWith("op_fetch")) groups.fetch += dt;
  if (f.url.includes("prom-client")) groups.promClient += dt;
  if (f.url.includes("deno_http")) groups.http += dt;
}
const busy = total - groups.idle;
const pct = (v: number, of = busy) => `${(100 * v / of).toFixed(1)} %`;
console.log(
  `samples: ${profile.samples.length}, ${(total / 1e6).toFixed(1)} s, busy ${
    (busy / 1e6).toFixed(1)
  } s`,
);
console.log("shares of busy time (self):");
for (const [k, v] of Object.entries(groups)) if (k !== "idle") console.log(`  ${k}: ${pct(v)}`);
console.log(`\n| # | function | self ms | % of busy |\n| --: | --- | --: | --: |`);
const rows = [...self].filter(([k]) => k !== "(idle)").sort((a, b) => b[1] - a[1]).slice(0, top);
rows.forEach(([k, v], i) =>
  console.log(
    `| ${i + 1} | \`${k.replaceAll("|", "\\|")}\` | ${(v / 1000).toFixed(0)} | ${pct(v)} |`,
  )
);
