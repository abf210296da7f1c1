/**
 * Chaos with real backends: three upstreams under steady load, one killed and later restarted.
 * Errors may happen only until health checking takes the dead one out; after that, none; the
 * restarted one is re-admitted. The test prints the measured times (docs/resilience.md).
 */
import assert from "node:assert/strict";
import { startFerry } from "./helpers.ts";

function serve(port: number, name: string): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, () => new Response(name));
}

Deno.test("a killed backend stops getting traffic within interval x threshold and returns after restart", async () => {
  const a = serve(0, "a");
  const b = serve(0, "b");
  let c = serve(0, "c");
  const cPort = c.addr.port;
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c, timeout: 2s }]
clusters:
  - name: c
    endpoints: ["http://127.0.0.1:${a.addr.port}", "http://127.0.0.1:${b.addr.port}", "http://127.0.0.1:${cPort}"]
    health_check: { path: /, interval: 200ms, timeout: 150ms, jitter: 0, unhealthy_threshold: 2, healthy_threshold: 2 }
    outlier_detection: { consecutive_gateway_failure: 3, base_ejection_time: 5s }
    slow_start: { window: 1s }
`,
    {},
  );
  const t0 = performance.now();
  const events: { t: number; ok: boolean; body: string }[] = [];
  let running = true;
  const worker = async () => {
    while (running) {
      try {
        const res = await fetch(`${px.url}/x`);
        const body = await res.text();
        events.push({ t: performance.now() - t0, ok: res.ok, body });
      } catch {
        events.push({ t: performance.now() - t0, ok: false, body: "" });
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  const workers = Array.from({ length: 4 }, worker);
  try {
    await new Promise((r) => setTimeout(r, 500));
    const killedAt = performance.now() - t0;
    await c.shutdown();
    await new Promise((r) => setTimeout(r, 1500));
    const restartedAt = performance.now() - t0;
    c = serve(cPort, "c");
    await new Promise((r) => setTimeout(r, 2000));
    running = false;
    await Promise.all(workers);

    const failures = events.filter((e) => !e.ok);
    const lastFailure = failures.length ? Math.max(...failures.map((e) => e.t)) : killedAt;
    const firstBack = events.find((e) => e.t > restartedAt && e.body === "c");
    const ejectMs = Math.round(lastFailure - killedAt);
    const readmitMs = firstBack ? Math.round(firstBack.t - restartedAt) : -1;
    // After the restart, c's share grows as slow start ramps its weight up.
    const shareOfC = (from: number, to: number) => {
      const w = events.filter((e) => e.t >= from && e.t < to && e.ok);
      return w.filter((e) => e.body === "c").length / Math.max(1, w.length);
    };
    const early = firstBack ? shareOfC(firstBack.t, firstBack.t + 300) : 0;
    const late = firstBack ? shareOfC(firstBack.t + 1100, firstBack.t + 1600) : 0;
    console.log(
      `requests ${events.length}, failed ${failures.length}, last failure ${ejectMs} ms after the kill, ` +
        `c back ${readmitMs} ms after restart, c share first 300 ms ${(early * 100).toFixed(0)}% ` +
        `vs after the ramp ${(late * 100).toFixed(0)}%`,
    );
    assert.ok(
      ejectMs < 1000,
      `errors continued ${ejectMs} ms after the kill (interval x threshold = 400 ms)`,
    );
    assert.ok(firstBack, "the restarted endpoint got traffic again");
    assert.ok(readmitMs < 1500, `re-admitted after ${readmitMs} ms`);
    assert.ok(late > early, "slow start: its share grew after re-admission");
  } finally {
    running = false;
    await px.close();
    await Promise.all([a.shutdown(), b.shutdown(), c.shutdown()]);
  }
});
