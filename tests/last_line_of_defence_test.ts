/**
 * The process's last line of defence (main.ts installs it): an error nothing caught is logged and
 * counted, and the process goes on. The cases in abort_matrix_test.ts and
 * transport_robustness_test.ts assert it is never reached.
 */
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { createLogger } from "../src/observability/log.ts";
import { FerryMetrics } from "../src/observability/metrics.ts";
import { installLastLineOfDefence } from "../src/server/ferry.ts";
import { metricValue } from "./helpers.ts";

Deno.test("an escaped rejection, a throw in a timer and an unheard 'error' event are counted, not fatal", async () => {
  const metrics = new FerryMetrics();
  const lines: string[] = [];
  const uninstall = installLastLineOfDefence(createLogger("error", (l) => lines.push(l)), metrics);
  const count = async (kind: string) =>
    metricValue(await metrics.registry.metrics(), "ferry_internal_errors_total", { kind });
  try {
    assert.equal(await count("unhandledrejection"), 0);
    assert.equal(await count("error"), 0);
    Promise.reject(new Error("nobody awaits this"));
    setTimeout(() => {
      throw new Error("thrown in a timer");
    }, 0);
    setTimeout(() => new EventEmitter().emit("error", new Error("no listener")), 0);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(await count("unhandledrejection"), 1);
    assert.equal(await count("error"), 2);
    assert.equal(lines.length, 3);
    assert.match(lines[0]!, /nobody awaits this/);
  } finally {
    uninstall();
  }
});
