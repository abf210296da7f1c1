/**
 * Cluster `limits` on gRPC calls: a slow grpc-js server behind a limit of 2, five concurrent
 * calls; three are refused at once with UNAVAILABLE (what Envoy's overflow 503 maps to) and
 * counted in ferry_upstream_overflow_total, the two admitted ones complete.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { FerryMetrics } from "../src/observability/metrics.ts";
import { metricValue, startFerry } from "./helpers.ts";
import { echoClient, grpc, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";

for (const limit of ["max_requests", "max_requests_per_endpoint"] as const) {
  Deno.test(`grpc limits: ${limit} 2 refuses 3 of 5 concurrent slow calls at once`, async () => {
    const server = await startEchoServer();
    const metrics = new FerryMetrics();
    const ferry = startFerry(
      grpcEchoConfig({ cluster: `    limits: { ${limit}: 2 }\n` }),
      { PORT: String(server.port) },
      { metrics },
    );
    const client = echoClient(ferry.port);
    try {
      // Warm the connection so both admitted calls are in flight before the others arrive.
      assert.equal((await unary(client, Buffer.from("warm"))).error, undefined);
      const slow = [0, 1].map(() => unary(client, Buffer.from("sleep:3000")));
      // Both slow calls must be in flight upstream before the next three are sent.
      for (let i = 0; i < 200 && server.calls.n < 3; i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const started = performance.now();
      const refused = await Promise.all([2, 3, 4].map(() => unary(client, Buffer.from("fast"))));
      const refusedMs = performance.now() - started;
      for (const r of refused) {
        assert.equal(r.error?.code, grpc.status.UNAVAILABLE, String(r.error));
        assert.match(r.error?.details ?? "", /calls in flight|request limit/);
      }
      // Refused at once, not after the slow calls: a generous bound well under their 3 s.
      assert.ok(refusedMs < 2500, `refusals took ${refusedMs} ms`);
      for (const r of await Promise.all(slow)) {
        assert.equal(r.error, undefined);
        assert.equal(r.value?.toString(), "sleep:3000");
      }
      const text = await metrics.expose();
      const which = limit === "max_requests" ? "cluster" : "endpoint";
      assert.equal(
        metricValue(text, "ferry_upstream_overflow_total", { cluster: "echo", limit: which }),
        3,
      );
      assert.equal(
        metricValue(text, "ferry_grpc_calls_total", {
          listener: "grpc",
          route: "echo",
          cluster: "echo",
          grpc_status: "UNAVAILABLE",
        }),
        3,
      );
      // Once the slow calls are done, calls are admitted again.
      assert.equal((await unary(client, Buffer.from("after"))).value?.toString(), "after");
    } finally {
      client.close();
      await ferry.close();
      await server.stop();
    }
  });
}
