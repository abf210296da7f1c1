/**
 * The whole request path without the network: entry handler (authority/path normalisation,
 * request id), routing, and a route's policy chain (fault injection at 0 %, a per-IP and a
 * global token bucket), ending in a direct response. `deno task bench`.
 */
import { compileConfig } from "../src/server/compile_config.ts";
import { parseConfigText } from "../src/config/load.ts";
import { createLogger } from "../src/observability/log.ts";
import { createListenerHandler } from "../src/server/handler.ts";
import { printNoSeed } from "./seeds.ts";

printNoSeed("the whole request pipeline");

function handlerFor(yaml: string) {
  const loaded = parseConfigText(yaml, "bench.yaml");
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
  const snap = compileConfig(loaded.config, {
    version: 1,
    source: "bench",
    readTextFile: () => "",
  });
  return createListenerHandler("p", () => snap, createLogger("error"));
}

const plain = handlerFor(`
listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, match: { path: { prefix: /api/ } }, direct_response: { status: 200, body: ok } }]
`);
const guarded = handlerFor(`
listeners: [{ name: p, address: "127.0.0.1:0" }]
rate_limits:
  - { name: ip, scope: client_ip, rate: 1000000, burst: 1000000 }
  - { name: all, scope: global, rate: 1000000, burst: 1000000 }
routes:
  - name: r
    match: { path: { prefix: /api/ } }
    direct_response: { status: 200, body: ok }
    fault: { abort: { percent: 0 }, delay: { duration: 1s, percent: 0 } }
    rate_limit: [ip, all]
`);

const info = {
  remoteAddr: { transport: "tcp", hostname: "10.1.2.3", port: 40000 },
  completed: Promise.resolve(),
} as unknown as Deno.ServeHandlerInfo<Deno.NetAddr>;
const req = new Request("http://api.example.test/api/users/42?x=1", {
  headers: { "user-agent": "bench", accept: "*/*" },
});

Deno.bench(
  { name: "entry + routing + direct response", group: "pipeline", baseline: true },
  async () => {
    await plain(req, info);
  },
);
Deno.bench(
  { name: "entry + routing + fault + 2 rate limits + direct", group: "pipeline" },
  async () => {
    await guarded(req, info);
  },
);
