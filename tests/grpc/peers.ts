/**
 * Real gRPC peers for the tests, from `@grpc/grpc-js` (no protobuf: messages are raw bytes).
 * Service `test.Echo`: Unary, ServerStream, ClientStream, Bidi; a unary request "status:N:msg"
 * fails with code N, "sleep:MS" answers after MS ms (and records cancellation).
 */
import * as grpc from "@grpc/grpc-js";
import { Buffer } from "node:buffer";

const raw = { serialize: (b: Buffer) => b, deserialize: (b: Buffer) => b };
const method = (path: string, requestStream: boolean, responseStream: boolean) => ({
  path,
  requestStream,
  responseStream,
  requestSerialize: raw.serialize,
  requestDeserialize: raw.deserialize,
  responseSerialize: raw.serialize,
  responseDeserialize: raw.deserialize,
});

export const ECHO_SERVICE = {
  unary: method("/test.Echo/Unary", false, false),
  serverStream: method("/test.Echo/ServerStream", false, true),
  clientStream: method("/test.Echo/ClientStream", true, false),
  bidi: method("/test.Echo/Bidi", true, true),
} as const;

/**
 * The standard health service, hand-written (no protobuf library): the request is
 * HealthCheckRequest{service = 1}, the answer HealthCheckResponse{status = 1} with
 * SERVING = 1, NOT_SERVING = 2.
 */
export const HEALTH_SERVICE = {
  check: method("/grpc.health.v1.Health/Check", false, false),
} as const;

/** HealthCheckRequest's service name (field 1, short names only: one-byte length). */
function healthServiceName(req: Buffer): string {
  return req.length >= 2 && req[0] === 0x0a ? req.subarray(2, 2 + req[1]!).toString() : "";
}

export const OPTIONS = {
  "grpc.max_receive_message_length": -1,
  "grpc.max_send_message_length": -1,
};

export interface EchoServer {
  readonly port: number;
  readonly cancelled: string[];
  readonly calls: { n: number };
  /** What the health service answers: 1 SERVING, 2 NOT_SERVING. */
  readonly health: { status: number };
  /** Service names the health checks asked about, in order. */
  readonly healthAsked: string[];
  /** ServerStream "big:N:SIZE" calls: messages handed to grpc-js, and calls cancelled. */
  readonly big: { sent: number; cancelled: number };
  /** Bidi calls open now, and ClientStream calls started. */
  readonly open: { bidi: number; clientStreams: number };
  stop(): Promise<void>;
}

/** `credentials`: TLS for the server (default plaintext h2c); `options`: more grpc-js options. */
export async function startEchoServer(
  credentials: grpc.ServerCredentials = grpc.ServerCredentials.createInsecure(),
  options: grpc.ServerOptions = {},
): Promise<EchoServer> {
  const server = new grpc.Server({ ...OPTIONS, ...options });
  const open = { bidi: 0, clientStreams: 0 };
  const cancelled: string[] = [];
  const calls = { n: 0 };
  const health = { status: 1 };
  const healthAsked: string[] = [];
  const big = { sent: 0, cancelled: 0 };
  server.addService(HEALTH_SERVICE as unknown as grpc.ServiceDefinition, {
    check: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      healthAsked.push(healthServiceName(call.request));
      cb(null, Buffer.from([0x08, health.status]));
    },
  });
  server.addService(ECHO_SERVICE as unknown as grpc.ServiceDefinition, {
    unary: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      calls.n++;
      const text = call.request.length < 100 ? call.request.toString() : "";
      const md = new grpc.Metadata();
      const custom = call.metadata.get("x-custom")[0];
      if (custom) md.set("x-custom-echo", String(custom));
      const clientCert = call.metadata.get("x-forwarded-client-cert")[0];
      if (clientCert) md.set("x-client-cert-echo", String(clientCert));
      const bin = call.metadata.get("x-custom-bin")[0];
      if (bin) md.set("x-custom-echo-bin", bin as Buffer);
      // What the proxy said about the client, as the upstream saw it.
      for (
        const h of ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id"]
      ) {
        const seen = call.metadata.get(h);
        if (seen.length > 0) md.set(`seen-${h}`, seen.map(String).join(" | "));
      }
      // The :path the upstream was asked (route rewrites).
      md.set("seen-path", call.getPath());
      const deadline = call.getDeadline();
      if (deadline !== Infinity) md.set("x-deadline-ms", String(Number(deadline) - Date.now()));
      if (text.startsWith("status:")) {
        const [, code, msg] = text.split(":");
        const trailer = new grpc.Metadata();
        trailer.set("x-detail-bin", Buffer.from([0, 1, 2, 255]));
        return cb({ code: Number(code), details: msg ?? "", metadata: trailer });
      }
      if (text.startsWith("sleep:")) {
        call.on("cancelled", () => cancelled.push(text));
        const t = setTimeout(() => cb(null, call.request), Number(text.slice(6)));
        call.on("cancelled", () => clearTimeout(t));
        return;
      }
      call.sendMetadata(md);
      const trailer = new grpc.Metadata();
      trailer.set("x-trailer-bin", Buffer.from([9, 8, 7]));
      cb(null, call.request, trailer);
    },
    serverStream: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      const text = call.request.toString();
      if (text.startsWith("big:")) return void bigStream(call, text, big);
      const n = Number(text);
      for (let i = 0; i < n; i++) call.write(Buffer.from(`m${i}`));
      call.end();
    },
    clientStream: (
      call: grpc.ServerReadableStream<Buffer, Buffer>,
      cb: grpc.sendUnaryData<Buffer>,
    ) => {
      open.clientStreams++;
      let total = 0;
      let count = 0;
      call.on("data", (b: Buffer) => {
        total += b.length;
        count++;
      });
      call.on("end", () => cb(null, Buffer.from(`${count}:${total}`)));
    },
    bidi: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      open.bidi++;
      let closed = false;
      const close = () => {
        if (!closed) open.bidi--;
        closed = true;
      };
      call.on("cancelled", close);
      call.on("finish", close);
      call.on("data", (b: Buffer) => call.write(Buffer.concat([Buffer.from("echo:"), b])));
      call.on("end", () => call.end());
      call.on("cancelled", () => cancelled.push("bidi"));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      "127.0.0.1:0",
      credentials,
      (err, p) => err ? reject(err) : resolve(p),
    )
  );
  return {
    port,
    cancelled,
    calls,
    health,
    healthAsked,
    big,
    open,
    stop: () =>
      new Promise<void>((resolve) => {
        server.forceShutdown();
        resolve();
      }),
  };
}

/** N messages of SIZE bytes, each written only when grpc-js accepts more (backpressure). */
async function bigStream(
  call: grpc.ServerWritableStream<Buffer, Buffer>,
  text: string,
  big: { sent: number; cancelled: number },
): Promise<void> {
  const [, n, size] = text.split(":").map(Number);
  let cancelled = false;
  call.on("cancelled", () => {
    cancelled = true;
    big.cancelled++;
  });
  const chunk = Buffer.alloc(size!, 0x5a);
  for (let i = 0; i < n! && !cancelled; i++) {
    big.sent++;
    if (!call.write(chunk)) {
      await new Promise<void>((resolve) => {
        call.once("drain", resolve);
        call.once("cancelled", resolve);
      });
    }
  }
  if (!cancelled) call.end();
}

export const EchoClient = grpc.makeGenericClientConstructor(
  ECHO_SERVICE as unknown as grpc.ServiceDefinition,
  "Echo",
);

// deno-lint-ignore no-explicit-any
export type AnyClient = grpc.Client & Record<string, any>;

export function echoClient(
  port: number,
  credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
  options: grpc.ChannelOptions = {},
): AnyClient {
  return new EchoClient(`127.0.0.1:${port}`, credentials, { ...OPTIONS, ...options }) as never;
}

/** A client for `/other.Service/M`, a method no test route matches (Ferry answers it). */
export function unroutedClient(port: number): AnyClient {
  const Other = grpc.makeGenericClientConstructor({
    m: {
      path: "/other.Service/M",
      requestStream: false,
      responseStream: false,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    },
  } as unknown as grpc.ServiceDefinition, "Other");
  return new Other(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as never;
}

export interface UnaryResult {
  value: Buffer | undefined;
  error: grpc.ServiceError | undefined;
  headers: grpc.Metadata | undefined;
  trailers: grpc.Metadata | undefined;
}

export function unary(
  client: AnyClient,
  body: Uint8Array,
  opts: { metadata?: grpc.Metadata; deadlineMs?: number } = {},
): Promise<UnaryResult> {
  return new Promise((resolve) => {
    let headers: grpc.Metadata | undefined;
    let trailers: grpc.Metadata | undefined;
    const callOpts = opts.deadlineMs ? { deadline: Date.now() + opts.deadlineMs } : {};
    const call = client.unary(
      Buffer.from(body),
      opts.metadata ?? new grpc.Metadata(),
      callOpts,
      (error: grpc.ServiceError | null, value?: Buffer) => {
        // The status event comes after the callback on some paths: give it a tick.
        setTimeout(() => resolve({ error: error ?? undefined, value, headers, trailers }), 5);
      },
    );
    call.on("metadata", (m: grpc.Metadata) => (headers = m));
    call.on("status", (s: grpc.StatusObject) => (trailers = s.metadata));
  });
}

export { grpc };

export interface EchoConfigOptions {
  /** The echo route's path prefix; default `/test.Echo/`. */
  readonly prefix?: string;
  /** More lines (indented 4) for the echo route. */
  readonly route?: string;
  /** More routes, before it (they match first). */
  readonly routesBefore?: string;
  /** The echo cluster's endpoints (YAML flow list); default the `{{PORT}}` placeholder. */
  readonly endpoints?: string;
  /** More lines (indented 4) for the echo cluster. */
  readonly cluster?: string;
}

/** A gRPC listener on port 0 with a route to an h2c `echo` cluster: the tests' common config. */
export function grpcEchoConfig(o: EchoConfigOptions = {}): string {
  return `listeners:
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
routes:
${o.routesBefore ?? ""}  - name: echo
    match: { path: { prefix: ${o.prefix ?? "/test.Echo/"} } }
    cluster: echo
${o.route ?? ""}clusters:
  - name: echo
    protocol: h2c
    endpoints: ${o.endpoints ?? '["http://127.0.0.1:{{PORT}}"]'}
${o.cluster ?? ""}`;
}
