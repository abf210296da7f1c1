/**
 * Reloads must not keep the generations they replace: each generation's parts (clusters,
 * breakers, limiters and the closures around them) are collectable once a later reload has
 * replaced them. Run in a child process, since only there can V8's collector be called
 * (`--expose-gc`) to see what is still reachable.
 */
import assert from "node:assert/strict";
import { DENO, run, tempConfig } from "./helpers.ts";

const FIXTURE = new URL("./fixtures/reload_generations.ts", import.meta.url).pathname;

Deno.test("30 reloads leave at most the last replaced generation in memory", async () => {
  const file = await tempConfig("");
  const out = await run(DENO, [
    "run",
    "--allow-all",
    "--unstable-net",
    "--unstable-no-legacy-abort",
    "--v8-flags=--expose-gc",
    FIXTURE,
    file,
    "30",
  ]);
  assert.equal(out.code, 0, out.stderr);
  const line = out.stdout.trim().split("\n").at(-1) ?? "";
  const result = JSON.parse(line) as { replaced: number; alive: number };
  assert.equal(result.replaced, 30);
  // Before the fix every generation stayed reachable from the serving one (30 of 30).
  assert.ok(result.alive <= 1, `${result.alive} of 30 replaced generations still in memory`);
});
