// What importing one module costs a bare Deno process: for each specifier, a fresh
// `deno run` imports it alone, collects garbage, and reports its RSS, its anonymous and
// file-backed resident memory (/proc/self/smaps_rollup) and V8's heap (Deno.memoryUsage()).
// ROUNDS (3) fresh processes per specifier; the median is printed.
//   deno run -A bench/tools/import_rss.ts                       # the default list below
//   deno run -A bench/tools/import_rss.ts prom-client ./src/server/ferry.ts
const repo = new URL("../../", import.meta.url);
const defaults = [
  "(nothing)",
  "node:crypto",
  "node:net",
  "node:tls",
  "node:http2",
  "prom-client",
  "zod",
  "yaml",
  "jose",
  "re2js",
  "ioredis",
  "@opentelemetry/api",
  "./src/observability/metrics.ts",
  "./src/config/load.ts",
  "./src/server/node_tls.ts",
  "./src/policy/jwt.ts",
  "./src/policy/redis_limiter.ts",
  "./src/grpc/listener.ts",
  "./src/server/ferry.ts",
  "./src/server/build.ts",
  "./src/workers/supervisor.ts",
  "main.ts's imports",
];
const specs = Deno.args.length > 0 ? Deno.args : defaults;
const rounds = Number(Deno.env.get("ROUNDS") ?? 3);

// Every module main.ts imports, without running main().
const mainImports = () =>
  [...Deno.readTextFileSync(new URL("main.ts", repo)).matchAll(/^import .* from "(\.[^"]+)";$/gm)]
    .map((m) => new URL(m[1]!, repo).href);

// The child: import, settle, collect, then report. `--v8-flags=--expose-gc` for a full GC, so
// the figure is what stays, not what the import's parse left behind.
const probe = (spec: string) => {
  const importLine = spec === "(nothing)"
    ? ""
    : spec === "main.ts's imports"
    ? mainImports().map((u) => `await import(${JSON.stringify(u)});`).join("\n")
    : spec.startsWith("./")
    ? `await import(${JSON.stringify(new URL(spec, repo).href)});`
    : `await import(${JSON.stringify(spec)});`;
  return `${importLine}
await new Promise((r) => setTimeout(r, 300));
globalThis.gc?.(); globalThis.gc?.();
await new Promise((r) => setTimeout(r, 100));
const kib = (name) => Number(Deno.readTextFileSync("/proc/self/smaps_rollup").match(new RegExp("^" + name + ":\\\\s+(\\\\d+)", "m"))?.[1] ?? 0);
const m = Deno.memoryUsage();
console.log(JSON.stringify({ rss: kib("Rss"), anon: kib("Anonymous"), file: kib("Rss") - kib("Anonymous"),
  heapUsed: m.heapUsed >> 10, heapTotal: m.heapTotal >> 10, external: m.external >> 10 }));
`;
};

type Sample = Record<"rss" | "anon" | "file" | "heapUsed" | "heapTotal" | "external", number>;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const mib = (kib: number) => (kib / 1024).toFixed(1).padStart(6);

console.log(
  "| import | RSS MiB | anon MiB | file-backed MiB | V8 heap used MiB | heap total MiB | external MiB |",
);
console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
for (const spec of specs) {
  const samples: Sample[] = [];
  for (let i = 0; i < rounds; i++) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        "--unstable-net",
        "--unstable-no-legacy-abort",
        "--v8-flags=--expose-gc",
        `--config=${new URL("deno.json", repo).pathname}`,
        "-",
      ],
      cwd: repo.pathname,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const w = out.stdin.getWriter();
    await w.write(new TextEncoder().encode(probe(spec)));
    await w.close();
    const done = await out.output();
    const text = new TextDecoder().decode(done.stdout).trim().split("\n").at(-1) ?? "";
    if (!done.success || !text.startsWith("{")) {
      console.error(spec, new TextDecoder().decode(done.stderr));
      break;
    }
    samples.push(JSON.parse(text));
  }
  if (samples.length === 0) continue;
  const col = (k: keyof Sample) => mib(median(samples.map((s) => s[k])));
  console.log(
    `| \`${spec}\` | ${col("rss")} | ${col("anon")} | ${col("file")} | ${col("heapUsed")} | ${
      col("heapTotal")
    } | ${col("external")} |`,
  );
}
