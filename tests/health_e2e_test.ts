/**
 * Active health checks against real upstreams: a backend that is killed and restarted on the
 * same port, a health path that flips to 500, and probes while the cluster's own HTTP/2 pool is
 * saturated. Every wait is bounded; every server and client is closed.
 */
import assert from "node:assert/strict";
import { ActiveHealthChecker } from "../src/upstream/health/active.ts";
import { EndpointHealth } from "../src/upstream/health/manager.ts";
import { createEndpointState } from "../src/upstream/balancers/types.ts";

/** A Deno.serve backend that can be shut down and started again on the same port. */
class Backend {
  /** The `/healthz` status, or a function of the hit number (0, 1, ...). */
  healthStatus: number | ((hit: number) => number) = 200;
  healthHits = 0;
  /** Pending `/slow` requests wait on this gate. */
  #release: () => void = () => {};
  #gate: Promise<void> = Promise.resolve();
  #server: Deno.HttpServer<Deno.NetAddr> | undefined;
  port = 0;

  start(): this {
    this.#server = Deno.serve(
      { hostname: "127.0.0.1", port: this.port, onListen: () => {} },
      async (req) => {
        const path = new URL(req.url).pathname;
        if (path === "/healthz") {
          const s = this.healthStatus;
          const status = typeof s === "number" ? s : s(this.healthHits);
          this.healthHits++;
          return new Response(null, { status });
        }
        if (path === "/slow") await this.#gate;
        return new Response("ok");
      },
    );
    this.port = this.#server.addr.port;
    return this;
  }

  get origin(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Makes `/slow` requests wait until `releaseSlow()`. */
  holdSlow(): void {
    this.#gate = new Promise((r) => this.#release = r);
  }

  releaseSlow(): void {
    this.#release();
  }

  async stop(): Promise<void> {
    this.releaseSlow();
    await this.#server?.shutdown();
    this.#server = undefined;
  }
}

interface Transition {
  readonly index: number;
  readonly healthy: boolean;
  readonly reason: string;
  readonly at: number;
}

/** Collects transitions; `next()` waits (bounded) for the next one matching. */
function transitions() {
  const seen: Transition[] = [];
  const waiters: { match: (t: Transition) => boolean; resolve: (t: Transition) => void }[] = [];
  return {
    seen,
    listener(index: number, healthy: boolean, reason: string) {
      const t = { index, healthy, reason, at: performance.now() };
      seen.push(t);
      for (const w of waiters.splice(0)) {
        if (w.match(t)) w.resolve(t);
        else waiters.push(w);
      }
    },
    next(index: number, healthy: boolean, withinMs: number): Promise<Transition> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`no transition of ${index} to ${healthy} in ${withinMs} ms`)),
          withinMs,
        );
        waiters.push({
          match: (t) => t.index === index && t.healthy === healthy,
          resolve: (t) => {
            clearTimeout(timer);
            resolve(t);
          },
        });
      });
    },
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("active checks mark a killed backend unhealthy, then healthy after restart", async () => {
  const a = new Backend().start();
  const b = new Backend().start();
  const log = transitions();
  const checker = new ActiveHealthChecker(
    [{ index: 0, origin: a.origin }, { index: 1, origin: b.origin }],
    {
      path: "/healthz",
      intervalMs: 200,
      timeoutMs: 150,
      unhealthyThreshold: 2,
      healthyThreshold: 2,
      onTransition: log.listener,
    },
  );
  try {
    checker.start();
    await sleep(300);
    assert.equal(checker.healthy(0), true);
    assert.ok(a.healthHits >= 1);

    await a.stop();
    const killedAt = performance.now();
    const down = await log.next(0, false, 3_000);
    const toUnhealthy = down.at - killedAt;
    assert.ok(toUnhealthy < 1_500, `unhealthy after ${toUnhealthy} ms`);
    assert.match(down.reason, /2 consecutive failures, last: connection (refused|reset)/);

    a.start(); // the same port
    const restartedAt = performance.now();
    const up = await log.next(0, true, 3_000);
    const toHealthy = up.at - restartedAt;
    assert.ok(toHealthy < 1_500, `healthy after ${toHealthy} ms`);
    assert.match(up.reason, /2 consecutive successes, last: status 200/);
    assert.deepEqual(log.seen.filter((t) => t.index === 1), [], "b never changed");
    console.log(
      `  killed -> unhealthy ${toUnhealthy.toFixed(0)} ms; ` +
        `restarted -> healthy ${toHealthy.toFixed(0)} ms (interval 200 ms, thresholds 2/2)`,
    );
  } finally {
    await checker.stop();
    await a.stop();
    await b.stop();
  }
});

Deno.test("a lone 500 does not flip health; a health path stuck at 500 does", async () => {
  const a = new Backend().start();
  const log = transitions();
  const checker = new ActiveHealthChecker([{ index: 0, origin: a.origin }], {
    path: "/healthz",
    intervalMs: 100,
    jitterFraction: 0,
    unhealthyThreshold: 2,
    onTransition: log.listener,
  });
  try {
    checker.start();
    a.healthStatus = (hit) => hit % 2 ? 500 : 200; // never two failures in a row
    await sleep(800);
    assert.deepEqual(log.seen, []);
    assert.ok(checker.status(0).probes >= 5, `probes: ${checker.status(0).probes}`);
    a.healthStatus = 500;
    const down = await log.next(0, false, 2_000);
    assert.match(down.reason, /last: status 500/);
  } finally {
    await checker.stop();
    await a.stop();
  }
});

Deno.test("probes keep passing while the cluster's own pool is saturated", async () => {
  const a = new Backend().start();
  a.holdSlow();
  // The cluster's pool: prior-knowledge HTTP/2, one connection, streams capped by the server.
  const clusterPool = Deno.createHttpClient({ http1: false, http2: true });
  const abort = new AbortController();
  const states = [createEndpointState(1)];
  const health = new EndpointHealth([{ index: 0, origin: a.origin, weight: 1 }], states, {
    active: {
      path: "/healthz",
      intervalMs: 100,
      timeoutMs: 300,
      unhealthyThreshold: 1,
    },
  });
  const userTraffic = Array.from(
    { length: 400 },
    () =>
      fetch(`${a.origin}/slow`, { client: clusterPool, signal: abort.signal })
        .then((r) => r.text())
        .catch(() => "aborted"),
  );
  try {
    health.start();
    await sleep(300);
    const hitsBefore = a.healthHits;
    // Through the saturated pool a request queues behind the held streams ...
    const viaPool = await fetch(`${a.origin}/healthz`, {
      client: clusterPool,
      signal: AbortSignal.timeout(500),
    }).then((r) => `status ${r.status}`, (e: Error) => e.name);
    // ... while the probes, on their own client, kept landing.
    const probes = a.healthHits - hitsBefore;
    assert.ok(probes >= 3, `probes during saturation: ${probes}`);
    assert.equal(health.snapshot()[0]!.healthy, true);
    assert.equal(health.snapshot()[0]!.lastProbe, "status 200");
    assert.equal(states[0]!.eligible, true);
    console.log(`  via the saturated cluster pool: ${viaPool}; probes meanwhile: ${probes} ok`);
  } finally {
    a.releaseSlow();
    const drained = Promise.all(userTraffic);
    await Promise.race([drained, sleep(2_000)]);
    abort.abort(); // only if draining took too long
    await drained;
    await health.close();
    clusterPool.close();
    await a.stop();
  }
});
