/** Retries, budgets, per-try timeouts and balancing against real failing upstreams. */
import assert from "node:assert/strict";
import { startFerry, startUpstream } from "./helpers.ts";

function deadUrl(): string {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  return url;
}

const ROUTE = (retry: string, extra = "") => `
listeners: [{ name: p, address: "127.0.0.1:0" }]
routes:
  - name: r
    cluster: c
    retry: ${retry}
${extra}
clusters:
  - name: c
    endpoints: [{{EPS}}]
    {{CLUSTER}}
`;

Deno.test("a refused endpoint is retried on another: every request succeeds", async () => {
  const live = startUpstream(() => new Response("live"));
  const px = startFerry(ROUTE("{ retries: 1, retry_on: [connect-failure] }"), {
    EPS: `"${deadUrl()}", "${live.url}"`,
    CLUSTER: "",
  });
  try {
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${px.url}/x`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "live");
    }
  } finally {
    await px.close();
    await live.close();
  }
});

Deno.test("a 503 is retried (GET) and the third attempt's answer is returned", async () => {
  let calls = 0;
  const up = startUpstream(() =>
    ++calls < 3 ? new Response("busy", { status: 503 }) : new Response("ok")
  );
  const px = startFerry(
    ROUTE("{ retries: 2, retry_on: [gateway-error], backoff: { base: 1ms, max: 5ms } }"),
    {
      EPS: `"${up.url}"`,
      CLUSTER: "",
    },
  );
  try {
    const res = await fetch(`${px.url}/x`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok");
    assert.equal(calls, 3);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("POST is not retried unless the route opts in; with opt-in its body is replayed", async () => {
  const bodies: string[] = [];
  const up = startUpstream(async (req) => {
    bodies.push(await req.text());
    return bodies.length % 2 === 1 ? new Response("busy", { status: 503 }) : new Response("ok");
  });
  const policy = "{ retries: 1, retry_on: [gateway-error], backoff: { base: 1ms, max: 2ms } }";
  const px = startFerry(ROUTE(policy), { EPS: `"${up.url}"`, CLUSTER: "" });
  try {
    const res = await fetch(`${px.url}/x`, { method: "POST", body: "payload" });
    assert.equal(res.status, 503, "not retried");
    await res.body?.cancel();
    assert.deepEqual(bodies, ["payload"]);
  } finally {
    await px.close();
  }
  bodies.length = 0;
  const px2 = startFerry(ROUTE(policy.replace("retries: 1", "retries: 1, non_idempotent: true")), {
    EPS: `"${up.url}"`,
    CLUSTER: "",
  });
  try {
    const res = await fetch(`${px2.url}/x`, { method: "POST", body: "payload" });
    assert.equal(res.status, 200);
    await res.body?.cancel();
    assert.deepEqual(bodies, ["payload", "payload"], "the same body was sent twice");
  } finally {
    await px2.close();
    await up.close();
  }
});

Deno.test("a per-try timeout moves a slow attempt to another endpoint", async () => {
  const slow = startUpstream(async () => {
    await new Promise((r) => setTimeout(r, 800));
    return new Response("slow");
  });
  const fast = startUpstream(() => new Response("fast"));
  const px = startFerry(
    ROUTE(
      "{ retries: 1, retry_on: [gateway-error], backoff: { base: 1ms, max: 2ms } }",
      "    per_try_timeout: 100ms",
    ),
    { EPS: `"${slow.url}", "${fast.url}"`, CLUSTER: "" },
  );
  try {
    for (let i = 0; i < 4; i++) {
      const t0 = performance.now();
      const res = await fetch(`${px.url}/x`);
      assert.equal(await res.text(), "fast");
      assert.ok(performance.now() - t0 < 700, "did not wait for the slow endpoint");
    }
  } finally {
    await px.close();
    await new Promise((r) => setTimeout(r, 900));
    await slow.close();
    await fast.close();
  }
});

Deno.test("the retry budget bounds upstream attempts when every upstream fails", async () => {
  const attempts = async (budget: string) => {
    let calls = 0;
    const up = startUpstream(async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 50));
      return new Response("down", { status: 503 });
    });
    const px = startFerry(
      ROUTE("{ retries: 3, retry_on: [gateway-error], backoff: { base: 1ms, max: 2ms } }"),
      { EPS: `"${up.url}"`, CLUSTER: `retry_budget: ${budget}` },
    );
    try {
      const all = await Promise.all(
        Array.from({ length: 40 }, () => fetch(`${px.url}/x`).then((r) => r.body?.cancel())),
      );
      assert.equal(all.length, 40);
    } finally {
      await px.close();
      await up.close();
    }
    return calls;
  };
  const unbounded = await attempts("{ percent: 100, min_retries: 100 }");
  const bounded = await attempts("{ percent: 10, min_retries: 1 }");
  assert.equal(unbounded, 160, "40 requests x 4 attempts without a budget");
  assert.ok(bounded >= 40 && bounded <= 60, `budgeted attempts ${bounded} should be 40..60`);
  console.log(
    `40 requests, all failing: ${unbounded} attempts unbudgeted, ${bounded} with a 10% budget`,
  );
});

Deno.test("ring_hash keeps a key on one endpoint", async () => {
  const ups = ["a", "b", "c"].map((n) => startUpstream(() => new Response(n)));
  const px = startFerry(ROUTE("{ retries: 0 }"), {
    EPS: ups.map((u) => `"${u.url}"`).join(", "),
    CLUSTER: "lb: ring_hash\n    hash_key: { header: x-user }",
  });
  try {
    const seen = new Map<string, Set<string>>();
    for (let i = 0; i < 60; i++) {
      const user = `user-${i % 6}`;
      const res = await fetch(`${px.url}/x`, { headers: { "x-user": user } });
      const set = seen.get(user) ?? new Set();
      set.add(await res.text());
      seen.set(user, set);
    }
    for (const [user, set] of seen) assert.equal(set.size, 1, `${user} moved between endpoints`);
  } finally {
    await px.close();
    for (const u of ups) await u.close();
  }
});

Deno.test("an endpoint that resets connections is retried on another (retry_on: reset)", async () => {
  // A raw TCP listener that reads the request and closes without answering.
  const resetter = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let resets = 0;
  (async () => {
    for await (const conn of resetter) {
      await conn.read(new Uint8Array(4096)).catch(() => null);
      resets++;
      conn.close();
    }
  })().catch(() => {});
  const live = startUpstream(() => new Response("live"));
  const px = startFerry(
    ROUTE("{ retries: 1, retry_on: [reset], backoff: { base: 1ms, max: 2ms } }"),
    {
      EPS: `"http://127.0.0.1:${(resetter.addr as Deno.NetAddr).port}", "${live.url}"`,
      CLUSTER: "",
    },
  );
  try {
    for (let i = 0; i < 6; i++) {
      const res = await fetch(`${px.url}/x`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "live");
    }
    assert.ok(resets >= 2, `the resetting endpoint was tried (${resets} resets)`);
  } finally {
    await px.close();
    await live.close();
    resetter.close();
  }
});

Deno.test("gateway-error retries 502, 503 and 504 answers: the fourth attempt's 200 is returned", async () => {
  const answers = [502, 503, 504, 200];
  let calls = 0;
  const up = startUpstream(() => {
    const status = answers[calls++] ?? 500;
    return new Response(`attempt ${calls}`, { status });
  });
  const px = startFerry(
    ROUTE("{ retries: 3, retry_on: [gateway-error], backoff: { base: 1ms, max: 5ms } }"),
    { EPS: `"${up.url}"`, CLUSTER: "" },
  );
  try {
    const res = await fetch(`${px.url}/x`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "attempt 4");
    assert.equal(calls, 4, "502, 503 and 504 were each retried");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("an upstream's Retry-After is waited for between retries; one over max_retry_after is returned at once", async () => {
  const seen: number[] = [];
  const up = startUpstream((req) => {
    seen.push(performance.now());
    const after = new URL(req.url).searchParams.get("after")!;
    return seen.length % 2 === 1
      ? new Response("busy", { status: 503, headers: { "retry-after": after } })
      : new Response("ok");
  });
  const px = startFerry(
    ROUTE(
      "{ retries: 1, retry_on: [gateway-error], backoff: { base: 1ms, max: 2ms }, " +
        "max_retry_after: 3s }",
    ),
    { EPS: `"${up.url}"`, CLUSTER: "" },
  );
  try {
    const res = await fetch(`${px.url}/x?after=1`);
    assert.equal(await res.text(), "ok");
    assert.equal(seen.length, 2);
    // The backoff alone would be under 2 ms; Retry-After: 1 asks for a second.
    const gap = seen[1]! - seen[0]!;
    assert.ok(gap >= 950, `second attempt ${gap.toFixed(0)} ms after the first`);

    const tooLong = await fetch(`${px.url}/x?after=60`);
    assert.equal(tooLong.status, 503, "Retry-After over max_retry_after: the 503 is returned");
    assert.equal(tooLong.headers.get("retry-after"), "60");
    await tooLong.body?.cancel();
    assert.equal(seen.length, 3, "and not retried");
  } finally {
    await px.close();
    await up.close();
  }
});
