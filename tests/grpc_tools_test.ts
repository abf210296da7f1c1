/**
 * The gRPC listener against HTTP/2 tools nobody here wrote (nghttp2's `nghttp` and `h2load`,
 * sending hand-framed gRPC messages), and TLS on both sides with @grpc/grpc-js: a TLS listener
 * (ALPN h2) trusted through the test CA, and an `https://` upstream cluster with `tls.ca_file`.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { run, startFerry } from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";
import { echoClient, grpc, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";

const H2C_CONFIG = grpcEchoConfig();

/** A file holding one gRPC length-prefixed message (uncompressed). */
async function grpcMessageFile(text: string): Promise<string> {
  const msg = new TextEncoder().encode(text);
  const framed = new Uint8Array(5 + msg.length);
  new DataView(framed.buffer).setUint32(1, msg.length);
  framed.set(msg, 5);
  const file = await Deno.makeTempFile({ suffix: ".grpc" });
  await Deno.writeFile(file, framed);
  return file;
}

const GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"];

/** `nghttp -v` prints every received header as `recv (stream_id=N) name: value`. */
function received(verbose: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const m of verbose.matchAll(/recv \(stream_id=\d+\) ([^:\s][^:]*|:[a-z]+): (.*)$/gm)) {
    const list = out.get(m[1]!) ?? [];
    list.push(m[2]!);
    out.set(m[1]!, list);
  }
  return out;
}

Deno.test("grpc tools: nghttp sees headers, message and trailers; trailers-only errors exactly", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(H2C_CONFIG, { PORT: String(server.port) });
  const okFile = await grpcMessageFile("hello-nghttp");
  const errFile = await grpcMessageFile("status:5:no such thing");
  const url = `http://127.0.0.1:${ferry.port}/test.Echo/Unary`;
  try {
    const ok = await run("nghttp", ["-v", "-d", okFile, ...GRPC_HEADERS, url]);
    assert.equal(ok.code, 0, ok.stderr);
    const okSeen = received(ok.stdout);
    assert.deepEqual(okSeen.get(":status"), ["200"]);
    assert.deepEqual(okSeen.get("grpc-status"), ["0"]);
    assert.deepEqual(okSeen.get("x-trailer-bin"), [Buffer.from([9, 8, 7]).toString("base64")]);
    assert.ok(ok.stdout.includes("hello-nghttp"), "the echoed message is in the body");
    // The trailers come in a HEADERS frame of their own, after the DATA.
    assert.ok(
      ok.stdout.indexOf("recv DATA frame") < ok.stdout.indexOf("grpc-status: 0"),
      "grpc-status arrives after the message, as a trailer",
    );

    const err = await run("nghttp", ["-v", "-d", errFile, ...GRPC_HEADERS, url]);
    assert.equal(err.code, 0, err.stderr);
    const errSeen = received(err.stdout);
    assert.deepEqual(errSeen.get(":status"), ["200"]);
    assert.deepEqual(errSeen.get("grpc-status"), ["5"]);
    // Percent-encoded on the wire, as the gRPC spec says and grpc-js sent it.
    assert.deepEqual(errSeen.get("grpc-message"), ["no%20such%20thing"]);
    assert.deepEqual(errSeen.get("x-detail-bin"), [
      Buffer.from([0, 1, 2, 255]).toString("base64"),
    ]);
    assert.ok(!err.stdout.includes("recv DATA frame"), "a trailers-only answer has no DATA");
    assert.match(err.stdout, /recv HEADERS frame <[^>]*flags=0x05/, "one HEADERS with END_STREAM");

    // Ferry's own answer for a path no route serves: trailers-only UNIMPLEMENTED.
    const none = await run("nghttp", [
      "-v",
      "-d",
      okFile,
      ...GRPC_HEADERS,
      `http://127.0.0.1:${ferry.port}/other.Service/M`,
    ]);
    assert.deepEqual(received(none.stdout).get("grpc-status"), [String(grpc.status.UNIMPLEMENTED)]);
  } finally {
    await ferry.close();
    await server.stop();
    await Deno.remove(okFile);
    await Deno.remove(errFile);
  }
});

Deno.test("grpc tools: h2load drives 2,000 gRPC calls over multiplexed streams with 0 failures", async () => {
  const server = await startEchoServer();
  const ferry = startFerry(H2C_CONFIG, { PORT: String(server.port) });
  const file = await grpcMessageFile("0123456789");
  try {
    const before = server.calls.n;
    const r = await run("h2load", [
      "-n",
      "2000",
      "-c",
      "4",
      "-m",
      "50",
      "-d",
      file,
      ...GRPC_HEADERS,
      `http://127.0.0.1:${ferry.port}/test.Echo/Unary`,
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /Application protocol: h2c/);
    assert.match(
      r.stdout,
      /requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout/,
    );
    assert.match(r.stdout, /status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx/);
    // Each answer carries the 15-byte framed echo: 30,000 bytes of DATA in all.
    assert.match(r.stdout, /\(30000\) data/);
    assert.equal(server.calls.n - before, 2000, "every call reached the upstream");
  } finally {
    await ferry.close();
    await server.stop();
    await Deno.remove(file);
  }
});

Deno.test("grpc tls: TLS listener (ALPN h2) and an https:// upstream with tls.ca_file, grpc-js on both ends", async () => {
  const certs = await makeTestCerts();
  // rootCerts given (not null): with null grpc-js passes the whole system root bundle as `ca`,
  // and Deno's node:tls then sends it in the certificate chain, which rustls refuses as an
  // oversized handshake message (HandshakePayloadTooLarge). Our CA alone keeps it small.
  const server = await startEchoServer(
    grpc.ServerCredentials.createSsl(Buffer.from(certs.ca), [{
      private_key: Buffer.from(certs.key),
      cert_chain: Buffer.from(certs.cert),
    }]),
  );
  const ferry = startFerry(
    `listeners:
  - name: grpcs
    address: "127.0.0.1:0"
    protocol: grpc
    tls: { cert: "{{CERT}}", key: "{{KEY}}" }
routes:
  - name: echo
    match: { path: { prefix: /test.Echo/ } }
    cluster: echo
clusters:
  - name: echo
    endpoints: ["https://127.0.0.1:{{PORT}}"]
    tls: { ca_file: "{{CA}}" }
`,
    { PORT: String(server.port), CERT: certs.certFile, KEY: certs.keyFile, CA: certs.caFile },
  );
  // Node's TLS refuses an IP as SNI: dial 127.0.0.1 and check the certificate for localhost.
  const client = echoClient(ferry.port, grpc.credentials.createSsl(Buffer.from(certs.ca)), {
    "grpc.ssl_target_name_override": "localhost",
  });
  const file = await grpcMessageFile("over-tls");
  try {
    const md = new grpc.Metadata();
    md.set("x-custom", "tls");
    const r = await unary(client, Buffer.from("secure"), { metadata: md });
    assert.equal(r.error, undefined, String(r.error?.message));
    assert.equal(r.value?.toString(), "secure");
    assert.equal(r.headers?.get("x-custom-echo")[0], "tls");
    assert.deepEqual([...(r.trailers?.get("x-trailer-bin")[0] as Buffer)], [9, 8, 7]);

    const failed = await unary(client, Buffer.from("status:7:denied over tls"));
    assert.equal(failed.error?.code, grpc.status.PERMISSION_DENIED);
    assert.equal(failed.error?.details, "denied over tls");

    const streamed: string[] = await new Promise((resolve, reject) => {
      const out: string[] = [];
      const call = client.serverStream(Buffer.from("20"));
      call.on("data", (b: Buffer) => out.push(b.toString()));
      call.on("end", () => resolve(out));
      call.on("error", reject);
    });
    assert.equal(streamed.length, 20);

    // A client that does not trust the CA is refused at the handshake, not served.
    const untrusting = echoClient(ferry.port, grpc.credentials.createSsl(), {
      "grpc.ssl_target_name_override": "localhost",
    });
    const refused = await unary(untrusting, Buffer.from("x"), { deadlineMs: 5_000 });
    untrusting.close();
    assert.equal(refused.error?.code, grpc.status.UNAVAILABLE);

    // h2load negotiates h2 through ALPN on the same listener.
    const h2load = await run("h2load", [
      "-n",
      "200",
      "-c",
      "2",
      "-m",
      "10",
      "-d",
      file,
      ...GRPC_HEADERS,
      `https://127.0.0.1:${ferry.port}/test.Echo/Unary`,
    ]);
    assert.match(h2load.stdout, /Application protocol: h2\n/);
    assert.match(h2load.stdout, /200 succeeded, 0 failed, 0 errored, 0 timeout/);
  } finally {
    client.close();
    await ferry.close();
    await server.stop();
    await Deno.remove(file);
    await certs.remove();
  }
});
