/**
 * gRPC through a `protocol: grpc` listener with real peers nobody here wrote: @grpc/grpc-js as
 * client and server. All four call types, statuses with grpc-message and -bin metadata,
 * trailers-only answers, deadlines, cancellation, 4 MB messages, 1,000 concurrent calls, and
 * Ferry's own answers (UNAVAILABLE, UNIMPLEMENTED).
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { startFerry } from "./helpers.ts";
import {
  echoClient,
  grpc,
  grpcEchoConfig,
  startEchoServer,
  unary,
  unroutedClient,
} from "./grpc/peers.ts";

function grpcConfig(extraRoute = "") {
  return grpcEchoConfig({ route: "    timeout: 10s\n" + extraRoute });
}

async function setup(extraRoute = "") {
  const server = await startEchoServer();
  const ferry = startFerry(grpcConfig(extraRoute), { PORT: String(server.port) });
  const client = echoClient(ferry.port);
  return {
    server,
    ferry,
    client,
    async close() {
      client.close();
      await ferry.close();
      await server.stop();
    },
  };
}

Deno.test("grpc: unary call with request metadata, response headers and -bin trailers", async () => {
  const t = await setup();
  try {
    const md = new grpc.Metadata();
    md.set("x-custom", "hello");
    md.set("x-custom-bin", Buffer.from([1, 2, 3, 0, 255]));
    const r = await unary(t.client, new TextEncoder().encode("ping"), { metadata: md });
    assert.equal(r.error, undefined);
    assert.equal(r.value?.toString(), "ping");
    assert.equal(r.headers?.get("x-custom-echo")[0], "hello");
    assert.deepEqual([...(r.headers?.get("x-custom-echo-bin")[0] as Buffer)], [1, 2, 3, 0, 255]);
    assert.deepEqual([...(r.trailers?.get("x-trailer-bin")[0] as Buffer)], [9, 8, 7]);
  } finally {
    await t.close();
  }
});

Deno.test("grpc: error statuses, grpc-message and -bin trailers pass through a trailers-only answer", async () => {
  const t = await setup();
  try {
    for (const code of [3, 5, 7, 13, 16]) {
      const r = await unary(t.client, new TextEncoder().encode(`status:${code}:bad thing ${code}`));
      assert.equal(r.error?.code, code);
      assert.equal(r.error?.details, `bad thing ${code}`);
      assert.deepEqual([...(r.error?.metadata.get("x-detail-bin")[0] as Buffer)], [0, 1, 2, 255]);
    }
  } finally {
    await t.close();
  }
});

Deno.test("grpc: server streaming, client streaming and bidirectional calls", async () => {
  const t = await setup();
  try {
    const got: string[] = await new Promise((resolve, reject) => {
      const out: string[] = [];
      const call = t.client.serverStream(Buffer.from("50"));
      call.on("data", (b: Buffer) => out.push(b.toString()));
      call.on("end", () => resolve(out));
      call.on("error", reject);
    });
    assert.equal(got.length, 50);
    assert.equal(got[49], "m49");

    const summary: string = await new Promise((resolve, reject) => {
      const call = t.client.clientStream((err: Error | null, v: Buffer) =>
        err ? reject(err) : resolve(v.toString())
      );
      for (let i = 0; i < 20; i++) call.write(Buffer.alloc(1000, i));
      call.end();
    });
    assert.equal(summary, "20:20000");

    const echoed: string[] = await new Promise((resolve, reject) => {
      const out: string[] = [];
      const call = t.client.bidi();
      call.on("data", (b: Buffer) => {
        out.push(b.toString());
        if (out.length < 10) call.write(Buffer.from(`n${out.length}`));
        else call.end();
      });
      call.on("end", () => resolve(out));
      call.on("error", reject);
      call.write(Buffer.from("n0"));
    });
    assert.deepEqual(echoed, Array.from({ length: 10 }, (_, i) => `echo:n${i}`));
  } finally {
    await t.close();
  }
});

Deno.test("grpc: 4 MB messages both ways", async () => {
  const t = await setup();
  try {
    const big = new Uint8Array(4 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
    const r = await unary(t.client, big);
    assert.equal(r.error, undefined);
    assert.equal(r.value?.length, big.length);
    assert.ok(Buffer.from(big).equals(r.value!));
  } finally {
    await t.close();
  }
});

Deno.test("grpc: 1,000 concurrent calls on one client connection", async () => {
  const t = await setup();
  try {
    const calls = Array.from({ length: 1000 }, (_, i) => unary(t.client, Buffer.from(`c${i}`)));
    const results = await Promise.all(calls);
    results.forEach((r, i) => {
      assert.equal(r.error, undefined, `call ${i}: ${r.error?.message}`);
      assert.equal(r.value?.toString(), `c${i}`);
    });
  } finally {
    await t.close();
  }
});

Deno.test("grpc: deadlines are propagated and DEADLINE_EXCEEDED cancels the upstream call", async () => {
  const t = await setup();
  try {
    const ok = await unary(t.client, Buffer.from("x"), { deadlineMs: 5000 });
    const seen = Number(ok.headers?.get("x-deadline-ms")[0]);
    assert.ok(seen > 0 && seen <= 5000, `upstream saw a deadline of ${seen} ms`);

    const slow = await unary(t.client, Buffer.from("sleep:3000"), { deadlineMs: 300 });
    assert.equal(slow.error?.code, grpc.status.DEADLINE_EXCEEDED);
    for (let i = 0; i < 100 && !t.server.cancelled.includes("sleep:3000"); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(t.server.cancelled.includes("sleep:3000"), "upstream call was cancelled");
  } finally {
    await t.close();
  }
});

Deno.test("grpc: without a client deadline, the route timeout bounds the wait for headers", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(grpcConfig().replace("timeout: 10s", "timeout: 400ms"), {
    PORT: String(server.port),
  });
  const client = echoClient(ferry.port);
  try {
    // No deadline on the client: the status comes from Ferry (the shared deadline queue).
    const slow = await unary(client, Buffer.from("sleep:4000"));
    assert.equal(slow.error?.code, grpc.status.DEADLINE_EXCEEDED);
    assert.match(slow.error?.details ?? "", /no response within 400 ms/);
    for (let i = 0; i < 150 && !server.cancelled.includes("sleep:4000"); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(server.cancelled.includes("sleep:4000"), "upstream call was cancelled");
    const ok = await unary(client, Buffer.from("fast"));
    assert.equal(ok.value?.toString(), "fast");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});

Deno.test("grpc: a client's cancellation reaches the upstream server", async () => {
  const t = await setup();
  try {
    const call = t.client.unary(Buffer.from("sleep:5000"), () => {});
    await new Promise((r) => setTimeout(r, 300));
    call.cancel();
    for (let i = 0; i < 150 && !t.server.cancelled.includes("sleep:5000"); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(t.server.cancelled.includes("sleep:5000"));
  } finally {
    await t.close();
  }
});

Deno.test("grpc: UNIMPLEMENTED for no route, UNAVAILABLE when the upstream is down", async () => {
  const t = await setup();
  try {
    const other = unroutedClient(t.ferry.port);
    const code = await new Promise<number>((resolve) =>
      (other as unknown as Record<string, CallableFunction>).m!(
        Buffer.from("x"),
        (e: grpc.ServiceError | null) => resolve(e?.code ?? 0),
      )
    );
    other.close();
    assert.equal(code, grpc.status.UNIMPLEMENTED);

    await t.server.stop();
    const down = await unary(t.client, Buffer.from("x"));
    assert.equal(down.error?.code, grpc.status.UNAVAILABLE);
  } finally {
    await t.close();
  }
});

Deno.test("grpc: retries unavailable on a route that opts in", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(
    `listeners:
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
routes:
  - name: retried
    match: { path: { prefix: /test.Echo/ } }
    cluster: echo
    retry: { retries: 2, retry_on: [unavailable], backoff: { base: 1ms, max: 2ms } }
clusters:
  - name: echo
    protocol: h2c
    endpoints: ["http://127.0.0.1:{{PORT}}"]
`,
    { PORT: String(server.port) },
  );
  const client = echoClient(ferry.port);
  try {
    const before = server.calls.n;
    const r = await unary(client, Buffer.from("status:14:try again"));
    assert.equal(r.error?.code, grpc.status.UNAVAILABLE);
    assert.equal(server.calls.n - before, 3, "one call and two retries reached the server");
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
  }
});
