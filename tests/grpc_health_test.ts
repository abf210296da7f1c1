/**
 * Active health checks with the standard `grpc.health.v1.Health/Check` against grpc-js servers
 * that implement the health service (hand-written definition, tests/grpc/peers.ts): an endpoint
 * answering NOT_SERVING goes unhealthy and traffic avoids it; SERVING again brings it back.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { FerryMetrics } from "../src/observability/metrics.ts";
import { metricValue, startFerry } from "./helpers.ts";
import {
  echoClient,
  type EchoServer,
  grpcEchoConfig,
  startEchoServer,
  unary,
} from "./grpc/peers.ts";

async function until(what: string, check: () => Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting until ${what}`);
}

Deno.test("grpc health: Health/Check NOT_SERVING makes an endpoint unhealthy and traffic avoids it", async () => {
  const a = await startEchoServer();
  const b = await startEchoServer();
  const metrics = new FerryMetrics();
  const ferry = startFerry(
    grpcEchoConfig({
      endpoints: `["http://127.0.0.1:{{A}}", "http://127.0.0.1:{{B}}"]`,
      cluster: `    health_check:
      grpc: { service: test.Echo }
      interval: 100ms
      timeout: 2s
      healthy_threshold: 1
      unhealthy_threshold: 1
`,
    }),
    { A: String(a.port), B: String(b.port) },
    { metrics },
  );
  const client = echoClient(ferry.port);
  const healthy = async (s: EchoServer) =>
    metricValue(await metrics.expose(), "ferry_endpoint_healthy", {
      cluster: "echo",
      endpoint: `http://127.0.0.1:${s.port}`,
    });
  /** Sends `n` calls; returns how many reached `a` and `b`. */
  const spread = async (n: number): Promise<[number, number]> => {
    const [a0, b0] = [a.calls.n, b.calls.n];
    for (let i = 0; i < n; i++) {
      assert.equal((await unary(client, Buffer.from("x"))).error, undefined);
    }
    return [a.calls.n - a0, b.calls.n - b0];
  };
  try {
    await until(
      "both servers were probed",
      () => Promise.resolve(a.healthAsked.length > 0 && b.healthAsked.length > 0),
    );
    assert.equal(a.healthAsked[0], "test.Echo", "the configured service name is asked about");
    const [toA, toB] = await spread(10);
    assert.ok(toA > 0 && toB > 0, `both endpoints serve while SERVING (${toA}/${toB})`);

    b.health.status = 2; // NOT_SERVING
    await until("b is marked unhealthy", async () => (await healthy(b)) === 0);
    const [aOnly, none] = await spread(20);
    assert.equal(none, 0, "no call went to the NOT_SERVING endpoint");
    assert.equal(aOnly, 20);

    b.health.status = 1; // SERVING again
    await until("b is healthy again", async () => (await healthy(b)) === 1);
    const [, backToB] = await spread(10);
    assert.ok(backToB > 0, "the endpoint takes traffic again");
  } finally {
    client.close();
    await ferry.close();
    await a.stop();
    await b.stop();
  }
});

Deno.test("grpc health: an endpoint that refuses connections fails the probe, a SERVING one passes", async () => {
  const a = await startEchoServer();
  const metrics = new FerryMetrics();
  // The dead endpoint: a port that was just free (nothing listens there now).
  const free = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (free.addr as Deno.NetAddr).port;
  free.close();
  const ferry = startFerry(
    grpcEchoConfig({
      endpoints: `["http://127.0.0.1:{{A}}", "http://127.0.0.1:{{DEAD}}"]`,
      cluster: `    health_check:
      grpc: { service: "" }
      interval: 100ms
      timeout: 2s
      unhealthy_threshold: 1
`,
    }),
    { A: String(a.port), DEAD: String(deadPort) },
    { metrics },
  );
  try {
    await until(
      "the dead endpoint is unhealthy",
      async () =>
        metricValue(await metrics.expose(), "ferry_endpoint_healthy", {
          endpoint: `http://127.0.0.1:${deadPort}`,
        }) === 0,
    );
    assert.equal(a.healthAsked[0], "", "the empty service name asks about the whole server");
    assert.equal(
      metricValue(await metrics.expose(), "ferry_endpoint_healthy", {
        endpoint: `http://127.0.0.1:${a.port}`,
      }),
      1,
    );
  } finally {
    await ferry.close();
    await a.stop();
  }
});
