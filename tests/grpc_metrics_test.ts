/**
 * gRPC in the Prometheus metrics: calls by listener/route/cluster/grpc_status, and upstream
 * attempts by cluster/endpoint/grpc_status (retries included), read from the text exposition.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { FerryMetrics } from "../src/observability/metrics.ts";
import { metricValue, startFerry } from "./helpers.ts";
import { echoClient, startEchoServer, unary, unroutedClient } from "./grpc/peers.ts";

Deno.test("grpc metrics: calls and upstream attempts are counted by grpc-status", async () => {
  const server = await startEchoServer();
  const metrics = new FerryMetrics();
  const ferry = startFerry(
    `listeners:
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
routes:
  - name: retried
    match: { path: { exact: /test.Echo/Unary } }
    cluster: echo
    retry: { retries: 2, retry_on: [unavailable], backoff: { base: 1ms, max: 2ms } }
  - name: streams
    match: { path: { prefix: /test.Echo/ } }
    cluster: echo
clusters:
  - name: echo
    protocol: h2c
    endpoints: ["http://127.0.0.1:{{PORT}}"]
`,
    { PORT: String(server.port) },
    { metrics },
  );
  const client = echoClient(ferry.port);
  const endpoint = `http://127.0.0.1:${server.port}`;
  try {
    for (let i = 0; i < 3; i++) {
      assert.equal((await unary(client, Buffer.from("ok"))).error, undefined);
    }
    assert.equal((await unary(client, Buffer.from("status:5:gone"))).error?.code, 5);
    assert.equal((await unary(client, Buffer.from("status:14:down"))).error?.code, 14);
    const streamed = await new Promise<number>((resolve, reject) => {
      let n = 0;
      const call = client.serverStream(Buffer.from("3"));
      call.on("data", () => n++);
      call.on("end", () => resolve(n));
      call.on("error", reject);
    });
    assert.equal(streamed, 3);
    const text = await metrics.expose();
    const calls = (route: string, status: string) =>
      metricValue(text, "ferry_grpc_calls_total", {
        listener: "grpc",
        route,
        cluster: "echo",
        grpc_status: status,
      });
    assert.equal(calls("retried", "OK"), 3);
    assert.equal(calls("retried", "NOT_FOUND"), 1);
    assert.equal(calls("retried", "UNAVAILABLE"), 1, "one call, however many attempts");
    assert.equal(calls("streams", "OK"), 1);
    const attempts = (status: string) =>
      metricValue(text, "ferry_grpc_upstream_attempts_total", {
        cluster: "echo",
        endpoint,
        grpc_status: status,
      });
    assert.equal(attempts("OK"), 4);
    assert.equal(attempts("NOT_FOUND"), 1);
    assert.equal(attempts("UNAVAILABLE"), 3, "the call and its two retries");
    assert.equal(metricValue(text, "ferry_upstream_retries_total", { cluster: "echo" }), 2);
    // Attempts are upstream requests too (HTTP 200 on the wire).
    assert.equal(
      metricValue(text, "ferry_upstream_requests_total", { cluster: "echo", status_class: "2xx" }),
      8,
    );

    // Ferry's own answers: no route (UNIMPLEMENTED), upstream gone (UNAVAILABLE, no status).
    const other = unroutedClient(ferry.port);
    await new Promise((resolve) =>
      (other as unknown as Record<string, CallableFunction>).m!(Buffer.from("x"), resolve)
    );
    other.close();
    await server.stop();
    assert.equal((await unary(client, Buffer.from("x"))).error?.code, 14);
    const after = await metrics.expose();
    assert.equal(
      metricValue(after, "ferry_grpc_calls_total", {
        route: "none",
        cluster: "none",
        grpc_status: "UNIMPLEMENTED",
      }),
      1,
    );
    assert.equal(
      metricValue(after, "ferry_grpc_calls_total", {
        route: "retried",
        grpc_status: "UNAVAILABLE",
      }),
      2,
    );
    assert.ok(
      (metricValue(after, "ferry_grpc_upstream_attempts_total", { grpc_status: "none" }) ?? 0) >= 1,
      "a refused connect is an attempt without a grpc-status",
    );
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});
