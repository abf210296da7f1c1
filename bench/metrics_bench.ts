/**
 * What recording one request's metrics costs, next to the pipeline's own per-request cost
 * measured in the same run (the pipeline figure already includes the downstream recording).
 * `deno bench --allow-all --unstable-no-legacy-abort bench/metrics_bench.ts`
 */
import { compileConfig } from "../src/server/compile_config.ts";
import { parseConfigText } from "../src/config/load.ts";
import { createLogger } from "../src/observability/log.ts";
import { FerryMetrics } from "../src/observability/metrics.ts";
import { createListenerHandler } from "../src/server/handler.ts";
import { printNoSeed } from "./seeds.ts";

printNoSeed("metrics recording");

const loaded = parseConfigText(
  `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, match: { path: { prefix: /api/ } }, direct_response: { status: 200, body: ok } }]
`,
  "bench.yaml",
);
if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
const snap = compileConfig(loaded.config, {
  version: 1,
  source: "bench",
  readTextFile: () => "",
});
const handler = createListenerHandler("p", () => snap, createLogger("error"));
const info = {
  remoteAddr: { transport: "tcp", hostname: "10.1.2.3", port: 40000 },
  completed: Promise.resolve(),
} as unknown as Deno.ServeHandlerInfo<Deno.NetAddr>;
const req = new Request("http://api.example.test/api/users/42?x=1", {
  headers: { "user-agent": "bench", accept: "*/*" },
});

const metrics = new FerryMetrics();
const listener = metrics.listener("public");
const cluster = metrics.cluster("users");
const endpoints = [
  { slot: 0, origin: "http://10.0.0.1:8080" },
  { slot: 1, origin: "http://10.0.0.2:8080" },
];
let n = 0;

Deno.bench(
  { name: "pipeline: entry + routing + direct response", group: "per request", baseline: true },
  async () => {
    await handler(req, info);
  },
);
Deno.bench(
  {
    name: "metrics: one proxied request (downstream + one upstream attempt)",
    group: "per request",
  },
  () => {
    listener.inFlight++;
    const seconds = 0.001 + (n++ & 7) * 0.003;
    cluster.endpoint(endpoints[n & 1]!).record(200, seconds);
    listener.inFlight--;
    listener.route("users").record("GET", 200, seconds);
  },
);
Deno.bench({ name: "metrics: downstream only", group: "per request" }, () => {
  listener.route("users").record("GET", 200, 0.002);
});
// A gRPC call records the call by grpc_status on its listener and each attempt twice on its
// endpoint (status class + duration, then grpc_status).
Deno.bench(
  { name: "metrics: one gRPC call (call + one upstream attempt)", group: "per request" },
  () => {
    listener.inFlight++;
    const seconds = 0.001 + (n++ & 7) * 0.003;
    const em = cluster.endpoint(endpoints[n & 1]!);
    em.record(200, seconds);
    em.grpcAttempt(0);
    listener.inFlight--;
    listener.grpcCalls("users", "users").inc(0);
  },
);
