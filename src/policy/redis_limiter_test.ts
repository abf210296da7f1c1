/**
 * The shared (Redis) limiter against a real redis-server: the overshoot bound across two
 * limiters, the script reloaded after SCRIPT FLUSH, and both failure modes with recovery.
 */
import assert from "node:assert/strict";
import { RedisLeaseBackend, redisOptions, SharedRateLimit } from "./redis_limiter.ts";
import { TokenBucketStore } from "./token_bucket.ts";
import { RateLimitSchema } from "../config/schema.ts";
import { freePort, startRedis } from "../../tests/redis.ts";
import { makeTestCerts } from "../../tests/fixtures/certs.ts";
import type { RateDecision } from "./token_bucket.ts";

function limiter(
  address: string,
  prefix: string,
  extra: Record<string, unknown> = {},
  events: string[] = [],
) {
  const config = RateLimitSchema.parse({
    name: "shared",
    scope: "global",
    rate: 50,
    burst: 50,
    redis: { address, key_prefix: prefix, timeout: "200ms", ...extra },
  });
  const backend = new RedisLeaseBackend("shared", config.redis!, {
    readTextFile: Deno.readTextFileSync,
    backendMetrics: {
      error: () => events.push("error"),
      up: (up) => events.push(up ? "up" : "down"),
    },
  });
  const local = new TokenBucketStore(1, { rate: config.rate, burst: config.burst });
  return new SharedRateLimit({
    config,
    store: config.redis!,
    backend,
    local: (_k, at) => local.take(0, 1, at),
  });
}

async function decide(l: SharedRateLimit): Promise<RateDecision> {
  const d = l.take("", Date.now());
  return d instanceof Promise ? await d : { ...d };
}

/** Takes from every limiter in turn for `ms`; returns how many each was allowed. */
async function hammer(ls: SharedRateLimit[], ms: number): Promise<number[]> {
  const allowed = ls.map(() => 0);
  const end = Date.now() + ms;
  for (let i = 0; Date.now() < end; i++) {
    for (const [j, l] of ls.entries()) if ((await decide(l)).allowed) allowed[j]!++;
    if (i % 20 === 0) await new Promise((r) => setTimeout(r, 1));
  }
  return allowed;
}

Deno.test({
  name: "two shared limiters on one Redis grant within burst + rate x time + the stated bound",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const redis = await startRedis();
    const a = limiter(redis.address, "t1:");
    const b = limiter(redis.address, "t1:");
    try {
      const started = Date.now();
      const [na, nb] = await hammer([a, b], 2_000);
      const elapsed = Date.now() - started;
      const bound = 50 + (50 * elapsed) / 1000 + a.overshootBound;
      console.log(`allowed a=${na} b=${nb} sum=${na! + nb!} in ${elapsed} ms; bound ${bound}`);
      assert.ok(na! + nb! <= bound, `sum ${na! + nb!} > bound ${bound}`);
      // Both got a share, and the pair did not get two budgets.
      assert.ok(na! > 10 && nb! > 10, `${na} ${nb}`);
      assert.ok(na! + nb! >= 100, `the shared budget is used: ${na! + nb!}`);
      assert.equal(await redis.cli("EXISTS", "t1:shared:"), "1");
    } finally {
      a.close();
      b.close();
      await redis.kill();
    }
  },
});

Deno.test({
  name: "shared limiter: SCRIPT FLUSH is survived by EVALSHA falling back to SCRIPT LOAD",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const redis = await startRedis();
    const events: string[] = [];
    const l = limiter(redis.address, "t2:", {}, events);
    try {
      assert.equal((await decide(l)).allowed, true);
      assert.equal(await redis.cli("SCRIPT", "FLUSH"), "OK");
      const [n] = await hammer([l], 300);
      assert.ok(n! > 0);
      assert.deepEqual(events.filter((e) => e !== "up"), [], "no backend error");
    } finally {
      l.close();
      await redis.kill();
    }
  },
});

for (const mode of ["open", "closed"] as const) {
  Deno.test({
    name: `shared limiter, failure_mode ${mode}: Redis killed -> ${
      mode === "open" ? "local fallback" : "refused"
    }; restarted -> shared again`,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      const redis = await startRedis();
      const events: string[] = [];
      const l = limiter(redis.address, "t3:", { failure_mode: mode }, events);
      try {
        await hammer([l], 300);
        await redis.kill();
        // Spend what is leased, then the next lease fails within the timeout.
        const [during] = await hammer([l], 1_000);
        assert.ok(events.includes("down"), events.join());
        assert.ok(events.includes("error"));
        if (mode === "open") assert.ok(during! > 20, `local fallback allowed ${during}`);
        else assert.ok(during! <= 10, `closed mode allowed ${during} (only leased tokens)`);
        const d = await decide(l);
        assert.equal(d.allowed, mode === "open" ? d.allowed : false);
        await redis.restart();
        const deadline = Date.now() + 8_000;
        while (Date.now() < deadline && events.at(-1) !== "up") await hammer([l], 100);
        assert.equal(events.at(-1), "up", events.join());
        assert.equal(events.filter((e) => e === "down").length, 1, "one transition down");
        await hammer([l], 200);
        assert.equal(await redis.cli("EXISTS", "t3:shared:"), "1", "shared limiting resumed");
      } finally {
        l.close();
        await redis.kill();
      }
    },
  });
}

Deno.test({
  name:
    "shared limiter: a lease answered later than 2 x sync_interval (but within timeout) is used",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const redis = await startRedis();
    const config = RateLimitSchema.parse({
      name: "slow",
      scope: "client_ip",
      rate: 1000,
      burst: 1000,
      redis: { address: redis.address, key_prefix: "t4:", timeout: "1s", sync_interval: "5ms" },
    });
    const backend = new RedisLeaseBackend("slow", config.redis!, {
      readTextFile: Deno.readTextFileSync,
    });
    const l = new SharedRateLimit({
      config,
      store: config.redis!,
      backend,
      local: () => assert.fail("Redis is up: the fallback must not answer"),
    });
    try {
      const first = l.take("a", Date.now());
      assert.ok(first instanceof Promise);
      assert.equal((await first).allowed, true, "connected, first lease");
      // Redis holds every command for 150 ms: the next lease arrives well after 2 x 5 ms.
      assert.equal(await redis.cli("CLIENT", "PAUSE", "150"), "OK");
      const slow = l.take("b", Date.now());
      assert.ok(slow instanceof Promise);
      const d = await slow;
      assert.equal(d.allowed, true, "the lease was not dropped on arrival");
      assert.equal(backend.up, true);
    } finally {
      l.close();
      await redis.kill();
    }
  },
});

Deno.test({
  name: "shared limiter over TLS with a password file; a wrong password is a backend failure",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const certs = await makeTestCerts();
    const tlsPort = freePort();
    const redis = await startRedis([
      ...["--tls-port", String(tlsPort), "--tls-cert-file", certs.certFile],
      ...["--tls-key-file", certs.keyFile, "--tls-ca-cert-file", certs.caFile],
      ...["--tls-auth-clients", "no", "--requirepass", "pw-fleet-123"],
    ]);
    await Deno.writeTextFile(`${certs.dir}/redis.pw`, "pw-fleet-123\n");
    await Deno.writeTextFile(`${certs.dir}/wrong.pw`, "nope\n");
    const make = (pwFile: string, events: string[]) =>
      limiter(`127.0.0.1:${tlsPort}`, "t5:", {
        tls: { ca_file: certs.caFile },
        password_file: `${certs.dir}/${pwFile}`,
      }, events);
    const goodEvents: string[] = [];
    const good = make("redis.pw", goodEvents);
    const badEvents: string[] = [];
    const bad = make("wrong.pw", badEvents);
    try {
      assert.equal((await decide(good)).allowed, true);
      assert.deepEqual(goodEvents, ["up"]);
      const cli = ["-a", "pw-fleet-123", "--no-auth-warning", "EXISTS", "t5:shared:"];
      assert.equal(await redis.cli(...cli), "1", "the lease came through TLS + AUTH");
      await decide(bad);
      assert.ok(badEvents.includes("down"), badEvents.join());
    } finally {
      good.close();
      bad.close();
      await redis.kill();
      await certs.remove();
    }
  },
});

Deno.test("redis store: password_env must be set; password_file's first line is the password", () => {
  const store = (extra: Record<string, unknown>) =>
    RateLimitSchema.parse({
      name: "x",
      scope: "global",
      rate: 1,
      burst: 1,
      redis: { address: "127.0.0.1:6379", ...extra },
    }).redis!;
  assert.throws(
    () => redisOptions(store({ password_env: "FERRY_NO_SUCH_VAR" }), { readTextFile: () => "" }),
    /FERRY_NO_SUCH_VAR is not set/,
  );
  const o = redisOptions(store({ password_file: "pw" }), { readTextFile: () => "s3cret\nignored" });
  assert.equal(o.password, "s3cret");
  assert.equal(o.lazyConnect, true, "--check and dry runs never connect");
});

Deno.test({
  name:
    "shared limiter: a burst of concurrent requests on a cold key gets the burst, not one lease",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const redis = await startRedis();
    // rate 50/s: leases of 5 tokens; burst 50 lets 30 concurrent requests through at once.
    const l = limiter(redis.address, "t6:");
    // A synchronous answer is a reused object: read it at once, as the middleware does.
    const burst = async (n: number) =>
      (await Promise.all(Array.from({ length: n }, () => {
        const d = l.take("", Date.now());
        return d instanceof Promise ? d.then((x) => x.allowed) : d.allowed;
      }))).filter(Boolean).length;
    try {
      const allowed = await burst(30);
      assert.equal(allowed, 30, `${allowed} of 30 allowed`);
      // And the shared bucket knows: 30 of its 50 tokens are gone.
      const alsoAllowed = await burst(30);
      assert.ok(alsoAllowed >= 20 && alsoAllowed <= 20 + l.overshootBound, `${alsoAllowed}`);
    } finally {
      l.close();
      await redis.kill();
    }
  },
});

Deno.test({
  name: "shared limiter: Redis slower than timeout -> failure mode after the timeout; then back",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const redis = await startRedis();
    const events: string[] = [];
    const l = limiter(redis.address, "t7:", { failure_mode: "closed" }, events);
    try {
      assert.equal((await decide(l)).allowed, true);
      // Let the first lease expire (2 x 100 ms + 200 ms), so the next request must ask Redis.
      await new Promise((r) => setTimeout(r, 450));
      assert.equal(await redis.cli("CLIENT", "PAUSE", "800"), "OK");
      const started = Date.now();
      const d = await decide(l);
      const waited = Date.now() - started;
      assert.equal(d.allowed, false, "closed: refused while Redis does not answer");
      assert.ok(waited >= 150 && waited < 700, `answered after the 200 ms timeout: ${waited} ms`);
      assert.deepEqual(events.filter((e) => e !== "error"), ["up", "down"]);
      const deadline = Date.now() + 5_000;
      while (Date.now() < deadline && events.at(-1) !== "up") await hammer([l], 100);
      assert.equal(events.at(-1), "up", events.join());
    } finally {
      l.close();
      await redis.kill();
    }
  },
});
