/**
 * X-Forwarded-For/-Host on gRPC follow the HTTP rule (src/server/trust.ts): an untrusted client's
 * values are replaced, a trusted proxy's are kept and our peer appended.
 */
import assert from "node:assert/strict";
import { startFerry } from "./helpers.ts";
import { echoClient, grpc, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";

async function seenUpstream(trusted: string): Promise<Record<string, string | undefined>> {
  const server = await startEchoServer();
  const ferry = startFerry(
    `server: { trusted_proxies: [${trusted}] }\n` + grpcEchoConfig(),
    { PORT: String(server.port) },
  );
  const client = echoClient(ferry.port);
  try {
    const md = new grpc.Metadata();
    md.set("x-forwarded-for", "6.6.6.6");
    md.set("x-forwarded-host", "evil.example");
    md.set("x-forwarded-proto", "https");
    const r = await unary(client, new TextEncoder().encode("hi"), { metadata: md });
    assert.equal(r.error, undefined);
    const get = (h: string) => r.headers?.get(`seen-${h}`)[0]?.toString();
    return {
      for: get("x-forwarded-for"),
      host: get("x-forwarded-host"),
      proto: get("x-forwarded-proto"),
      port: String(ferry.port),
    };
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
}

Deno.test("grpc: an untrusted client's X-Forwarded-For and -Host are replaced", async () => {
  const seen = await seenUpstream("");
  assert.equal(seen.for, "127.0.0.1");
  assert.equal(seen.host, `127.0.0.1:${seen.port}`);
  assert.equal(seen.proto, "http");
});

Deno.test("grpc: a trusted proxy's X-Forwarded-For is appended to, its -Host kept", async () => {
  const seen = await seenUpstream('"127.0.0.1/32"');
  assert.equal(seen.for, "6.6.6.6, 127.0.0.1");
  assert.equal(seen.host, "evil.example");
  assert.equal(seen.proto, "https");
});
