/**
 * Route rewrites and header edits apply to gRPC calls as to HTTP requests (the same compiled
 * functions, src/server/compile.ts): the upstream sees the rewritten `:path` and the request
 * edits, the client sees the response edits in its metadata; editing gRPC's own fields on a route
 * that serves a grpc listener is a config error at its line.
 */
import assert from "node:assert/strict";
import type { Buffer } from "node:buffer";
import { parseConfigText } from "../src/config/load.ts";
import { startFerry } from "./helpers.ts";
import {
  type AnyClient,
  echoClient,
  grpc,
  grpcEchoConfig,
  OPTIONS,
  startEchoServer,
  unary,
} from "./grpc/peers.ts";

/** A client for `/pkg.Svc/Unary`, a service the echo upstream does not have. */
function pkgSvcClient(port: number): AnyClient {
  const Svc = grpc.makeGenericClientConstructor({
    unary: {
      path: "/pkg.Svc/Unary",
      requestStream: false,
      responseStream: false,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    },
  } as unknown as grpc.ServiceDefinition, "Svc");
  return new Svc(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), OPTIONS) as never;
}

Deno.test("grpc: a prefix rewrite changes the :path the upstream is asked", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(
    grpcEchoConfig({ prefix: "/pkg.Svc/", route: "    rewrite: { prefix: /test.Echo/ }\n" }),
    { PORT: String(server.port) },
  );
  const client = pkgSvcClient(ferry.port);
  try {
    const r = await unary(client, new TextEncoder().encode("hi"));
    assert.equal(r.error?.details, undefined);
    assert.equal(r.value?.toString(), "hi");
    assert.equal(r.headers?.get("seen-path")[0]?.toString(), "/test.Echo/Unary");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: a regex rewrite changes the :path the upstream is asked", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(
    grpcEchoConfig({
      prefix: "/pkg.Svc/",
      route:
        '    rewrite: { regex: { pattern: "^/pkg\\\\.Svc/(.*)$", substitution: "/test.Echo/\\\\1" } }\n',
    }),
    { PORT: String(server.port) },
  );
  const client = pkgSvcClient(ferry.port);
  try {
    const r = await unary(client, new TextEncoder().encode("hi"));
    assert.equal(r.error?.details, undefined);
    assert.equal(r.headers?.get("seen-path")[0]?.toString(), "/test.Echo/Unary");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: request header edits reach the upstream, response edits the client", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(
    grpcEchoConfig({
      route:
        "    request_headers: { add: { x-custom: from-route }, remove: [x-forwarded-host] }\n" +
        "    response_headers: { add: { x-edited: yes }, remove: [seen-x-request-id] }\n",
    }),
    { PORT: String(server.port) },
  );
  const client = echoClient(ferry.port);
  try {
    const md = new grpc.Metadata();
    md.set("x-custom", "from-client");
    const r = await unary(client, new TextEncoder().encode("hi"), { metadata: md });
    assert.equal(r.error?.details, undefined);
    // The upstream echoes x-custom as x-custom-echo: the route's value replaced the client's.
    assert.equal(r.headers?.get("x-custom-echo")[0]?.toString(), "from-route");
    // Removed before the upstream saw it (Ferry sets it, the edit runs last, as on HTTP).
    assert.deepEqual(r.headers?.get("seen-x-forwarded-host"), []);
    assert.equal(r.headers?.get("seen-path")[0]?.toString(), "/test.Echo/Unary");
    // Response edits: added, and the upstream's seen-x-request-id removed.
    assert.equal(r.headers?.get("x-edited")[0]?.toString(), "yes");
    assert.deepEqual(r.headers?.get("seen-x-request-id"), []);
    assert.ok(r.headers?.get("seen-x-forwarded-for").length === 1);
    // A trailers-only answer is the response's headers: the edits apply there too.
    const failed = await unary(client, new TextEncoder().encode("status:5:gone"));
    assert.equal(failed.error?.code, 5);
    assert.equal(failed.trailers?.get("x-edited")[0]?.toString(), "yes");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: editing gRPC's own fields on a route a grpc listener serves is refused at its line", () => {
  const text = `listeners:
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
routes:
  - name: echo
    cluster: echo
    request_headers:
      add:
        te: gzip
        x-fine: ok
      remove: [grpc-timeout]
    response_headers:
      add: { Content-Type: text/plain }
clusters:
  - name: echo
    protocol: h2c
    endpoints: ["http://127.0.0.1:1"]
`;
  const result = parseConfigText(text, "ferry.yaml");
  assert.equal(result.ok, false);
  const errors = result.ok ? [] : result.errors;
  assert.deepEqual(
    errors.map((e) => [e.line, e.path]),
    [
      [8, "routes[0].request_headers.add.te"],
      [10, "routes[0].request_headers.remove[0]"],
      [12, "routes[0].response_headers.add.Content-Type"],
    ],
  );
  assert.match(errors[0]!.message, /'te' cannot be edited on a route that serves grpc listener/);
  // The same edits on a route limited to http listeners are fine.
  const httpOnly = text
    .replace("listeners:\n", 'listeners:\n  - { name: web, address: "127.0.0.1:0" }\n')
    .replace("    cluster: echo\n", "    listeners: [web]\n    cluster: echo\n");
  const ok = parseConfigText(httpOnly, "ferry.yaml");
  assert.equal(ok.ok, true, ok.ok ? "" : JSON.stringify(ok.errors));
});
