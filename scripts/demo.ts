/**
 * `deno task demo`: three demo HTTP upstreams, a WebSocket echo upstream and Ferry in front of
 * them (config/demo.yaml), then lines to try: curl over HTTP/1.1 and h2c, a WebSocket client,
 * /explain and the dashboard. Each HTTP upstream answers with its own name, the path it saw and
 * the headers Ferry added.
 *
 * Ports: by default those written in config/demo.yaml (Ferry :8080, admin :9901, upstreams
 * :9101-:9104). `--port-base N` (or FERRY_DEMO_PORT_BASE=N) moves them to N (Ferry), N+1 (admin)
 * and N+2..N+5 (upstreams), for a machine where those are taken:
 *
 *   deno task demo --port-base 18080
 */
const CONFIG = new URL("../config/demo.yaml", import.meta.url);
const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** The ports config/demo.yaml is written with, in the order `--port-base` assigns them. */
const DEFAULT_PORTS = {
  ferry: 8080,
  admin: 9901,
  alpha: 9101,
  bravo: 9102,
  charlie: 9103,
  ws: 9104,
};
type Ports = typeof DEFAULT_PORTS;

function portsFrom(args: string[], env: string | undefined): Ports {
  const i = args.findIndex((a) => a === "--port-base" || a.startsWith("--port-base="));
  const text = i < 0 ? env : args[i]!.includes("=") ? args[i]!.split("=")[1] : args[i + 1];
  if (text === undefined) return DEFAULT_PORTS;
  const base = Number(text);
  if (!Number.isInteger(base) || base < 1 || base > 65530) {
    console.error(`demo: --port-base wants a port from 1 to 65530, got ${JSON.stringify(text)}`);
    Deno.exit(2);
  }
  const names = Object.keys(DEFAULT_PORTS) as (keyof Ports)[];
  return Object.fromEntries(names.map((n, k) => [n, base + k])) as Ports;
}

const ports = portsFrom(Deno.args, Deno.env.get("FERRY_DEMO_PORT_BASE"));

function httpUpstream(name: string, port: number) {
  return Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, (req) => {
    const url = new URL(req.url);
    return Response.json({
      upstream: name,
      method: req.method,
      path: url.pathname + url.search,
      host: req.headers.get("host"),
      x_forwarded_for: req.headers.get("x-forwarded-for"),
      x_request_id: req.headers.get("x-request-id"),
    });
  });
}

/** Echoes every message back, prefixed with what the upstream saw the path as. */
function wsUpstream(port: number) {
  return Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, (req) => {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("WebSocket only\n", { status: 426, headers: { upgrade: "websocket" } });
    }
    const { socket, response } = Deno.upgradeWebSocket(req);
    const path = new URL(req.url).pathname;
    socket.onmessage = (e) => socket.send(`echo from ws upstream (${path}): ${e.data}`);
    return response;
  });
}

const servers = [
  httpUpstream("alpha", ports.alpha),
  httpUpstream("bravo", ports.bravo),
  httpUpstream("charlie", ports.charlie),
  wsUpstream(ports.ws),
];

// The shipped demo config with its ports moved (a no-op with the default ports).
let configText = await Deno.readTextFile(CONFIG);
for (const [name, port] of Object.entries(DEFAULT_PORTS)) {
  configText = configText.replaceAll(
    `127.0.0.1:${port}`,
    `127.0.0.1:${ports[name as keyof Ports]}`,
  );
}
const configDir = await Deno.makeTempDir({ prefix: "ferry-demo-" });
const configFile = `${configDir}/demo.yaml`;
await Deno.writeTextFile(configFile, configText);

const proxy = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--allow-net",
    "--allow-read",
    "--allow-env",
    "--allow-ffi",
    "--unstable-no-legacy-abort",
    // server.workers > 1 shares each port between workers (reusePort is unstable in Deno 2.9.6).
    "--unstable-net",
    "--v8-flags=--max-semi-space-size=4,--heap-growing-percent=100,--single-threaded-gc,--no-allocation-site-pretenuring",
    MAIN,
    "--config",
    configFile,
  ],
  stdout: "inherit",
  stderr: "inherit",
}).spawn();

/** Ferry's admin /ready answers 200 once it serves; the lines below are printed only then. */
async function waitReady(): Promise<boolean> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`http://127.0.0.1:${ports.admin}/ready`);
      await res.body?.cancel();
      if (res.ok) return true;
    } catch { /* not listening yet */ }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

const stop = async (code: number) => {
  try {
    proxy.kill("SIGTERM");
  } catch { /* already gone */ }
  await proxy.status;
  await Promise.all(servers.map((s) => s.shutdown()));
  await Deno.remove(configDir, { recursive: true }).catch(() => {});
  Deno.exit(code);
};
Deno.addSignalListener("SIGINT", () => void stop(0));
Deno.addSignalListener("SIGTERM", () => void stop(0));

if (!await Promise.race([waitReady(), proxy.status.then(() => false)])) {
  console.error("demo: Ferry did not become ready (see its log above)");
  await stop(1);
}

const F = `http://127.0.0.1:${ports.ferry}`;
const A = `http://127.0.0.1:${ports.admin}`;
const WS = `ws://127.0.0.1:${ports.ferry}/ws/chat`;
console.log(`
Ferry demo: Ferry on ${F}, admin on ${A}
upstreams alpha :${ports.alpha}, bravo :${ports.bravo}, charlie :${ports.charlie}, WebSocket echo :${ports.ws}

Round robin over three upstreams (run it a few times):
  for i in 1 2 3 4 5 6; do curl -s ${F}/users/42; echo; done
Weighted (bravo gets 3 of every 4):
  for i in 1 2 3 4 5 6 7 8; do curl -s ${F}/orders/7 | grep -o '"upstream":"[a-z]*"'; done
HTTP/2 without TLS (h2c, prior knowledge):
  curl -s --http2-prior-knowledge -o /dev/null -w '%{http_version} %{response_code}\\n' ${F}/users/1
Header routing and prefix rewrite (canary sees /v2/orders/7):
  curl -s -H 'x-canary: 1' ${F}/orders/7
Redirect and direct response:
  curl -si ${F}/docs/old/intro | head -3
  curl -si ${F}/teapot
No route (404 with a reason and request id), dot segments normalised before routing:
  curl -si --path-as-is ${F}/users/../admin
WebSocket through Ferry (echoed by the upstream):
  deno eval 'const ws = new WebSocket("${WS}"); ws.onopen = () => ws.send("hello"); ws.onmessage = (e) => { console.log(e.data); ws.close(); }'
Which route a request would take, and why (/explain; request headers as x-explain-<name>):
  curl -s '${A}/explain?method=GET&path=/orders/7' -H 'x-explain-x-canary: 1'
Dashboard (open in a browser):
  ${A}/dashboard
Readiness: curl -s ${A}/ready

Ctrl-C stops everything.
`);

await proxy.status;
await stop(0);
