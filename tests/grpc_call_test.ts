/**
 * gRPC calls through the one cluster call and the route's policy layers, end to end through a
 * real Ferry with grpc-js peers: ring_hash stickiness on the hash key, a call cancelled during
 * its retry backoff, and rate limits and fault aborts answered from the one error table.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { FerryMetrics } from "../src/observability/metrics.ts";
import { metricValue, startFerry } from "./helpers.ts";
import {
  type AnyClient,
  echoClient,
  type EchoServer,
  grpc,
  grpcEchoConfig,
  startEchoServer,
  unary,
} from "./grpc/peers.ts";

function keyed(user: string): grpc.Metadata {
  const md = new grpc.Metadata();
  md.set("x-user", user);
  return md;
}

Deno.test("grpc: ring_hash on a header key sends each key to one endpoint", async () => {
  const servers: EchoServer[] = [];
  for (let i = 0; i < 4; i++) servers.push(await startEchoServer());
  const endpoints = `[${servers.map((s) => `"http://127.0.0.1:${s.port}"`).join(", ")}]`;
  const ferry = startFerry(
    grpcEchoConfig({ endpoints, cluster: "    lb: ring_hash\n    hash_key: { header: x-user }\n" }),
  );
  const client = echoClient(ferry.port);
  try {
    for (const user of ["alice", "bob", "carol"]) {
      const before = servers.map((s) => s.calls.n);
      for (let i = 0; i < 8; i++) {
        const r = await unary(client, Buffer.from("hi"), { metadata: keyed(user) });
        assert.equal(r.error, undefined);
      }
      const got = servers.map((s, i) => s.calls.n - before[i]!);
      // Without the key (the old gRPC path) ring_hash picked at random: spread over all four.
      assert.deepEqual(got.filter((n) => n > 0), [8], `${user}: ${got.join(",")}`);
    }
  } finally {
    client.close();
    await ferry.close();
    for (const s of servers) await s.stop();
  }
});

/** A unary call that can be cancelled: the call object and its outcome. */
function cancellable(client: AnyClient, body: string) {
  let call!: grpc.ClientUnaryCall;
  const done = new Promise<grpc.ServiceError | null>((resolve) => {
    call = client.unary(
      Buffer.from(body),
      new grpc.Metadata(),
      (err: grpc.ServiceError | null) => resolve(err),
    );
  });
  return { call, done };
}

Deno.test("grpc: a call cancelled during its retry backoff ends at once upstream and downstream", async () => {
  const server = await startEchoServer();
  const metrics = new FerryMetrics();
  // A 60 s backoff and room for one call in the cluster: the cancelled call must give its slot
  // back at once, not when its backoff would have ended.
  const ferry = startFerry(
    grpcEchoConfig({
      route:
        "    retry: { retries: 3, retry_on: [unavailable], backoff: { base: 60s, max: 60s } }\n",
      cluster: "    limits: { max_requests: 1 }\n",
    }),
    { PORT: String(server.port) },
    { metrics },
  );
  const client = echoClient(ferry.port);
  try {
    const { call, done } = cancellable(client, "status:14:down");
    for (let i = 0; i < 200 && server.calls.n < 1; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(server.calls.n, 1);
    // Now in its backoff (at least ~1 s of 60 s, whatever the jitter, in all but 1 of 60 runs).
    await new Promise((r) => setTimeout(r, 100));
    call.cancel();
    assert.equal((await done)?.code, grpc.status.CANCELLED);
    // Downstream: the call is counted as ended (CANCELLED) within a second, not after 60 s.
    let counted = 0;
    for (let i = 0; i < 100 && counted === 0; i++) {
      await new Promise((r) => setTimeout(r, 10));
      counted = metricValue(await metrics.expose(), "ferry_grpc_calls_total", {
        listener: "grpc",
        route: "echo",
        cluster: "echo",
        grpc_status: "CANCELLED",
      }) ?? 0;
    }
    assert.equal(counted, 1, "the cancelled call ended at once");
    // Upstream: its cluster slot is free, so the next call goes through at once...
    const next = await unary(client, Buffer.from("next"), { deadlineMs: 5000 });
    assert.equal(next.error, undefined, String(next.error));
    assert.equal(next.value?.toString(), "next");
    // ...and the cancelled call never tried again.
    assert.equal(server.calls.n, 2);
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: a rate-limited call answers RESOURCE_EXHAUSTED from the error table", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(
    grpcEchoConfig({ route: "    rate_limit: [one]\n" }) +
      "rate_limits:\n  - { name: one, scope: global, rate: 0.01, burst: 1 }\n",
    { PORT: String(server.port) },
  );
  const client = echoClient(ferry.port);
  try {
    const first = await unary(client, Buffer.from("a"));
    assert.equal(first.error, undefined);
    const second = await unary(client, Buffer.from("b"));
    assert.equal(second.error?.code, grpc.status.RESOURCE_EXHAUSTED, String(second.error));
    assert.match(second.error?.details ?? "", /rate limit one/);
    assert.equal(server.calls.n, 1, "the refused call never reached the upstream");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: a fault abort answers the configured gRPC status, or the table's", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(
    grpcEchoConfig({
      routesBefore: `  - name: chaos
    match: { path: { exact: /test.Echo/Unary }, headers: { x-chaos: "1" } }
    cluster: echo
    fault: { abort: { status: 503, grpc_status: 10, percent: 100 } }
  - name: chaos-default
    match: { path: { exact: /test.Echo/Unary }, headers: { x-chaos: "2" } }
    cluster: echo
    fault: { abort: { status: 503, percent: 100 } }
`,
    }),
    { PORT: String(server.port) },
  );
  const client = echoClient(ferry.port);
  const chaos = (v: string) => {
    const md = new grpc.Metadata();
    md.set("x-chaos", v);
    return md;
  };
  try {
    const aborted = await unary(client, Buffer.from("a"), { metadata: chaos("1") });
    assert.equal(aborted.error?.code, grpc.status.ABORTED, String(aborted.error));
    const byTable = await unary(client, Buffer.from("a"), { metadata: chaos("2") });
    assert.equal(byTable.error?.code, grpc.status.UNAVAILABLE, String(byTable.error));
    assert.match(byTable.error?.details ?? "", /fault injection/);
    assert.equal(server.calls.n, 0);
    const plain = await unary(client, Buffer.from("ok"));
    assert.equal(plain.value?.toString(), "ok");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: per_try_timeout resets a slow attempt upstream and retries it", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(
    grpcEchoConfig({
      route: "    per_try_timeout: 300ms\n" +
        "    retry: { retries: 1, retry_on: [gateway-error], backoff: { base: 1ms, max: 1ms } }\n",
    }),
    { PORT: String(server.port) },
  );
  const client = echoClient(ferry.port);
  try {
    const started = performance.now();
    const r = await unary(client, Buffer.from("sleep:5000"), { deadlineMs: 10_000 });
    const ms = performance.now() - started;
    assert.equal(r.error?.code, grpc.status.DEADLINE_EXCEEDED, String(r.error));
    assert.match(r.error?.details ?? "", /per try/);
    // Two attempts of 300 ms each, not the upstream's 5 s (generous for a loaded machine).
    assert.ok(ms < 3000, `took ${ms} ms`);
    assert.equal(server.calls.n, 2);
    for (let i = 0; i < 100 && server.cancelled.length < 2; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.deepEqual(server.cancelled, ["sleep:5000", "sleep:5000"], "both attempts reset");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: x-request-id follows server.request_id as on HTTP (one picker)", async () => {
  const server = await startEchoServer();
  const seenId = async (policy: string) => {
    const ferry = startFerry(
      `server: { request_id: ${policy} }\n` + grpcEchoConfig(),
      { PORT: String(server.port) },
    );
    const client = echoClient(ferry.port);
    try {
      const md = new grpc.Metadata();
      md.set("x-request-id", "client-id-42");
      const r = await unary(client, Buffer.from("hi"), { metadata: md });
      assert.equal(r.error, undefined);
      return r.headers?.get("seen-x-request-id")[0]?.toString();
    } finally {
      client.close();
      await ferry.close();
    }
  };
  try {
    assert.equal(await seenId("always"), "client-id-42");
    // An untrusted peer's id is replaced by a fresh one (the default policy is `trusted`).
    const fresh = await seenId("trusted");
    assert.notEqual(fresh, "client-id-42");
    assert.match(fresh ?? "", /^[0-9a-f-]{36}$/);
    assert.notEqual(await seenId("never"), "client-id-42");
  } finally {
    await server.stop();
  }
});
