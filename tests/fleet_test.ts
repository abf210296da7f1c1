/**
 * A fleet of Ferry processes: a rate limit shared through a real redis-server, and what happens
 * when that Redis dies and comes back (docs/resilience.md, "Shared rate limits").
 */
import assert from "node:assert/strict";
import { metricValue, run, spawnFerry, type Started, tempConfig } from "./helpers.ts";
import { startRedis } from "./redis.ts";

const RATE = 50;
const BURST = 50;
/** rate x (2 x sync_interval + timeout) = 50/s x 400 ms, as src/policy/redis_limiter.ts states. */
const OVERSHOOT = 20;

function fleetConfig(redis: string, prefix: string, failureMode = "open"): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
# One worker each: every worker holds its own Redis leases, so the overshoot bound below counts
# instances as workers (docs/design.md, "Workers").
server: { watch_config: false, workers: 1 }
routes:
  - name: all
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: "ok" }
    rate_limit: [fleet]
rate_limits:
  - name: fleet
    scope: global
    rate: ${RATE}
    burst: ${BURST}
    redis:
      address: "${redis}"
      key_prefix: "${prefix}"
      timeout: 200ms
      failure_mode: ${failureMode}
`;
}

/** h2load --h1 for `seconds`; returns the 2xx and 4xx counts. */
async function load(url: string, seconds: number): Promise<{ ok: number; limited: number }> {
  const r = await run("h2load", ["--h1", "-c", "4", "-D", String(seconds), url + "/"]);
  const codes = r.stdout.match(/status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/);
  assert.ok(codes, r.stdout + r.stderr);
  return { ok: Number(codes[1]), limited: Number(codes[3]) };
}

async function stop(f: Started): Promise<void> {
  f.child.kill("SIGTERM");
  await f.child.status;
}

async function metrics(f: Started): Promise<string> {
  return await (await fetch(`${f.admin}/metrics`)).text();
}

Deno.test({
  name: "two Ferry processes share 50/s through Redis: the sum of 200s over 4 s stays in the bound",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const redis = await startRedis();
    const file = await tempConfig(fleetConfig(redis.address, "fleet1:"));
    const a = await spawnFerry(["--config", file]);
    const b = await spawnFerry(["--config", file]);
    try {
      const started = Date.now();
      const [ra, rb] = await Promise.all([
        load(a.listeners.get("public")!, 4),
        load(b.listeners.get("public")!, 4),
      ]);
      const elapsed = (Date.now() - started) / 1000;
      const sum = ra.ok + rb.ok;
      const bound = BURST + RATE * elapsed + OVERSHOOT;
      console.log(
        `a: ${ra.ok} ok / ${ra.limited} 429; b: ${rb.ok} ok / ${rb.limited} 429; ` +
          `sum ${sum} in ${elapsed.toFixed(2)} s; bound ${bound.toFixed(0)}`,
      );
      assert.ok(sum <= bound, `sum of 200s ${sum} > ${bound}`);
      // Each alone would get the whole budget; together they get it once.
      assert.ok(sum < 2 * (BURST + RATE * 4), `${sum}`);
      assert.ok(ra.limited > 0 && rb.limited > 0, "both processes were limited");
      assert.ok(ra.ok > 0 && rb.ok > 0, "both processes got a share");
      assert.ok(sum >= RATE * 2, `the shared budget was used: ${sum}`);
      assert.equal(await redis.cli("EXISTS", "fleet1:fleet:"), "1");
    } finally {
      await stop(a);
      await stop(b);
      await redis.kill();
    }
  },
});

for (const mode of ["open", "closed"] as const) {
  Deno.test({
    name: `Redis killed under load, failure_mode ${mode}: ${
      mode === "open" ? "local fallback serves" : "429"
    }; restarted: shared limiting resumes; metrics show both transitions`,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      const redis = await startRedis();
      const file = await tempConfig(fleetConfig(redis.address, "fleet2:", mode));
      const f = await spawnFerry(["--config", file]);
      const url = f.listeners.get("public")!;
      try {
        const before = await load(url, 1);
        assert.ok(before.ok > 0);
        assert.equal(
          metricValue(await metrics(f), "ferry_rate_limit_backend_up", { limit: "fleet" }),
          1,
        );

        await redis.kill();
        const down = load(url, 3);
        await new Promise((r) => setTimeout(r, 1_000));
        // While down: what a client sees, with the headers of a local limit in closed mode.
        const probe = await fetch(url + "/");
        await probe.body?.cancel();
        const during = await down;
        console.log(`${mode}, Redis down 3 s: ${during.ok} ok / ${during.limited} 429`);
        if (mode === "open") {
          assert.ok(during.ok > RATE, `local fallback kept requests flowing: ${during.ok}`);
          assert.ok(during.ok <= BURST + RATE * 4, `and still limited: ${during.ok}`);
        } else {
          assert.equal(probe.status, 429);
          assert.ok(probe.headers.get("retry-after"));
          assert.match(probe.headers.get("ratelimit") ?? "", /^"fleet";r=0;t=\d+$/);
          assert.ok(during.ok <= OVERSHOOT, `closed mode refuses: ${during.ok} passed`);
        }
        let m = await metrics(f);
        assert.equal(metricValue(m, "ferry_rate_limit_backend_up", { limit: "fleet" }), 0);
        assert.ok(metricValue(m, "ferry_rate_limit_backend_errors_total", { limit: "fleet" })! > 0);

        await redis.restart();
        const deadline = Date.now() + 5_000;
        while (Date.now() < deadline) {
          await (await fetch(url + "/")).body?.cancel();
          m = await metrics(f);
          if (metricValue(m, "ferry_rate_limit_backend_up", { limit: "fleet" }) === 1) break;
          await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(
          metricValue(m, "ferry_rate_limit_backend_up", { limit: "fleet" }),
          1,
          "back up",
        );
        const after = await load(url, 1);
        assert.ok(after.ok > 0);
        assert.equal(await redis.cli("EXISTS", "fleet2:fleet:"), "1", "shared limiting resumed");
        const said = (msg: string) => f.logs.filter((l) => l.includes(msg)).length;
        assert.equal(said("rate limit backend unreachable"), 1, "one warning going down");
        assert.equal(said("rate limit backend is back"), 1, "one line coming back");
      } finally {
        await stop(f);
        await redis.kill();
      }
    },
  });
}
