# Sourced by the benchmark scripts (needs REPO and DENO set): START_FLAGS is what `deno task start`
# passes to `deno run` before main.ts (permissions, --unstable-net, the V8 heap flags), read from
# deno.json, so a benchmark runs Ferry the way users do.
START_FLAGS=$(cd "$REPO" && "$DENO" eval 'const t = JSON.parse(Deno.readTextFileSync("deno.json")).tasks.start; console.log(t.replace(/^deno run /, "").replace(/ main\.ts$/, ""))')
