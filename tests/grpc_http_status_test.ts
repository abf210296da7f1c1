/**
 * An upstream that answers a gRPC call with a plain HTTP error (no grpc-status): the client gets
 * the status the gRPC HTTP-to-status table names, from a real grpc-js client through Ferry.
 */
import assert from "node:assert/strict";
import { startFerry } from "./helpers.ts";
import { echoClient, grpc, grpcEchoConfig, unary } from "./grpc/peers.ts";

Deno.test("gRPC: an upstream's plain HTTP 503 reaches the client as UNAVAILABLE, a 404 as UNIMPLEMENTED", async () => {
  let status = 503;
  // Deno.serve speaks h2c with prior knowledge: a real HTTP/2 upstream that knows no gRPC.
  const up = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    () => new Response("not grpc", { status, headers: { "content-type": "text/plain" } }),
  );
  const px = startFerry(grpcEchoConfig(), { PORT: String(up.addr.port) });
  const client = echoClient(px.port);
  try {
    const busy = await unary(client, new Uint8Array([1]), { deadlineMs: 10_000 });
    assert.equal(busy.error?.code, grpc.status.UNAVAILABLE, String(busy.error));
    assert.match(busy.error?.details ?? "", /HTTP 503/);
    status = 404;
    const missing = await unary(client, new Uint8Array([1]), { deadlineMs: 10_000 });
    assert.equal(missing.error?.code, grpc.status.UNIMPLEMENTED, String(missing.error));
  } finally {
    client.close();
    await px.close();
    await up.shutdown();
  }
});
