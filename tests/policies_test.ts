/** Circuit breakers, rate limits, fault injection, overflow and idle timeouts, end to end. */
import assert from "node:assert/strict";
import { startFerry, startUpstream } from "./helpers.ts";

Deno.test("a breaker opens at the failure threshold, answers 503 at once, and closes after a probe", async () => {
  let calls = 0;
  let healthy = false;
  const up = startUpstream(() => {
    calls++;
    return healthy ? new Response("ok") : new Response("boom", { status: 500 });
  });
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c }]
clusters:
  - name: c
    endpoints: ["{{U}}"]
    circuit_breaker: { failures: 3, successes: 1, open_timeout: 300ms }
`,
    { U: up.url },
  );
  try {
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${px.url}/x`);
      assert.equal(res.status, 500);
      await res.body?.cancel();
    }
    const open = await fetch(`${px.url}/x`);
    assert.equal(open.status, 503);
    const body = await open.json();
    assert.equal(body.flag, "UO");
    assert.match(body.reason, /circuit breaker open/);
    assert.ok(Number(open.headers.get("retry-after")) >= 1);
    assert.equal(calls, 3, "the open breaker did not call the upstream");
    healthy = true;
    await new Promise((r) => setTimeout(r, 350));
    const probe = await fetch(`${px.url}/x`);
    assert.equal(probe.status, 200, "half-open probe went through");
    await probe.body?.cancel();
    const after = await fetch(`${px.url}/x`);
    assert.equal(after.status, 200, "closed again");
    await after.body?.cancel();
  } finally {
    await px.close();
    await up.close();
  }
});

const LIMITS = `
listeners: [{ name: p, address: "127.0.0.1:0" }]
rate_limits:
  - { name: per-ip, scope: client_ip, rate: 0.5, burst: 3 }
  - { name: shared, scope: global, rate: 0.5, burst: 2 }
  - { name: each-route, scope: route, rate: 0.5, burst: 1 }
routes:
  - { name: ip, match: { path: { prefix: /ip } }, cluster: c, rate_limit: [per-ip] }
  - { name: a, match: { path: { prefix: /a } }, cluster: c, rate_limit: [shared] }
  - { name: b, match: { path: { prefix: /b } }, cluster: c, rate_limit: [shared] }
  - { name: c1, match: { path: { prefix: /c1 } }, cluster: c, rate_limit: [each-route] }
  - { name: c2, match: { path: { prefix: /c2 } }, cluster: c, rate_limit: [each-route] }
clusters: [{ name: c, endpoints: ["{{U}}"] }]
`;

Deno.test("a per-IP token bucket answers 429 with Retry-After and RateLimit headers", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(LIMITS, { U: up.url });
  try {
    const statuses = [];
    let last: Response | undefined;
    for (let i = 0; i < 4; i++) {
      last = await fetch(`${px.url}/ip`);
      statuses.push(last.status);
      if (i < 3) await last.body?.cancel();
    }
    assert.deepEqual(statuses, [200, 200, 200, 429]);
    const body = await last!.json();
    assert.equal(body.flag, "RL");
    assert.match(body.reason, /per-ip/);
    assert.equal(last!.headers.get("retry-after"), "2");
    assert.equal(last!.headers.get("ratelimit-policy"), '"per-ip";q=3;w=6');
    assert.match(last!.headers.get("ratelimit") ?? "", /^"per-ip";r=0;t=\d+$/);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("a global limiter is one bucket across routes; a route-scoped one is a bucket per route", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(LIMITS, { U: up.url });
  const status = async (path: string) => {
    const r = await fetch(`${px.url}${path}`);
    await r.body?.cancel();
    return r.status;
  };
  try {
    assert.deepEqual([await status("/a"), await status("/b"), await status("/a")], [200, 200, 429]);
    assert.deepEqual([await status("/c1"), await status("/c2"), await status("/c1")], [
      200,
      200,
      429,
    ]);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("fault injection aborts with the configured status and delays requests", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes:
  - { name: abort, match: { path: { prefix: /abort } }, cluster: c, fault: { abort: { status: 418, percent: 100 } } }
  - { name: delay, match: { path: { prefix: /delay } }, cluster: c, fault: { delay: { duration: 200ms, percent: 100 } } }
  - { name: never, match: { path: { prefix: /never } }, cluster: c, fault: { abort: { percent: 0 } } }
clusters: [{ name: c, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    const a = await fetch(`${px.url}/abort`);
    assert.equal(a.status, 418);
    assert.equal((await a.json()).flag, "FI");
    const t0 = performance.now();
    const d = await fetch(`${px.url}/delay`);
    assert.equal(await d.text(), "ok");
    assert.ok(performance.now() - t0 >= 190, "delayed");
    const n = await fetch(`${px.url}/never`);
    assert.equal(n.status, 200);
    await n.body?.cancel();
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("an endpoint at its request limit overflows at once with 503 (never queued)", async () => {
  const release = Promise.withResolvers<void>();
  const up = startUpstream(async () => {
    await release.promise;
    return new Response("slow");
  });
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c }]
clusters: [{ name: c, endpoints: ["{{U}}"], limits: { max_requests_per_endpoint: 1 } }]
`,
    { U: up.url },
  );
  try {
    const first = fetch(`${px.url}/1`);
    await new Promise((r) => setTimeout(r, 100));
    const second = await fetch(`${px.url}/2`);
    assert.equal(second.status, 503);
    const body = await second.json();
    assert.equal(body.flag, "UO");
    assert.match(body.reason, /request limit/);
    release.resolve();
    assert.equal(await (await first).text(), "slow");
  } finally {
    release.resolve();
    await px.close();
    await up.close();
  }
});

Deno.test("a streamed body that goes silent past idle_timeout is cut", async () => {
  const up = startUpstream(() =>
    new Response(
      new ReadableStream({
        async start(c) {
          c.enqueue(new TextEncoder().encode("first"));
          await new Promise((r) => setTimeout(r, 1500));
          try {
            c.enqueue(new TextEncoder().encode("late"));
            c.close();
          } catch { /* cancelled */ }
        },
      }),
    )
  );
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c, idle_timeout: 200ms }]
clusters: [{ name: c, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    const t0 = performance.now();
    const res = await fetch(`${px.url}/stream`);
    const text = await res.text().catch(() => "cut");
    assert.ok(!text.includes("late"), `body was not cut: ${text}`);
    assert.ok(performance.now() - t0 < 1400, "cut before the upstream's late chunk");
  } finally {
    await px.close();
    await new Promise((r) => setTimeout(r, 1600));
    await up.close();
  }
});

Deno.test("a cluster-scoped breaker counts failures across endpoints and opens for all", async () => {
  let calls = 0;
  const fail = () => {
    calls++;
    return new Response("boom", { status: 502 });
  };
  const a = startUpstream(fail);
  const b = startUpstream(fail);
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c }]
clusters:
  - name: c
    endpoints: ["{{A}}", "{{B}}"]
    circuit_breaker: { scope: cluster, failures: 4, open_timeout: 10s }
`,
    { A: a.url, B: b.url },
  );
  try {
    for (let i = 0; i < 4; i++) await (await fetch(`${px.url}/x`)).body?.cancel();
    const res = await fetch(`${px.url}/x`);
    assert.equal(res.status, 503);
    assert.equal((await res.json()).flag, "UO");
    assert.equal(calls, 4, "two endpoints, one breaker: opened after 4 failures in all");
  } finally {
    await px.close();
    await a.close();
    await b.close();
  }
});
