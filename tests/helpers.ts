/**
 * End-to-end test fixtures: real upstream servers on port 0 and a real Ferry started in-process
 * from YAML (listeners on 127.0.0.1:0, ports read back).
 */
import { compileConfig } from "../src/server/compile_config.ts";
import { parseConfigText } from "../src/config/load.ts";
import { createLogger } from "../src/observability/log.ts";
import { Ferry } from "../src/server/ferry.ts";
import type { FerryMetrics } from "../src/observability/metrics.ts";
import { isMap, parseDocument } from "yaml";
import { loadAllOptionalParts } from "../src/server/optional_parts.ts";
import { H2Connection } from "../src/h2/connection.ts";
import type { H2Stream } from "../src/h2/stream.ts";

// startFerry compiles synchronously, so what buildSnapshot would import for a config that uses
// node:tls, gRPC, jose or Redis is imported here once (tests/optional_parts_test.ts checks the
// real start-up path loads only what the config uses).
await loadAllOptionalParts();

export interface Upstream {
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/** A real Deno.serve upstream on 127.0.0.1:0. */
export function startUpstream(
  handler: (
    req: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => Response | Promise<Response>,
): Upstream {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    port: server.addr.port,
    close: () => server.shutdown(),
  };
}

/** An upstream that echoes what it received as JSON. */
export function startEchoUpstream(name = "echo"): Upstream {
  return startUpstream(async (req) => {
    const url = new URL(req.url);
    const body = req.body ? await req.text() : "";
    return Response.json({
      upstream: name,
      method: req.method,
      path: url.pathname,
      search: url.search,
      headers: Object.fromEntries(req.headers),
      body,
    });
  });
}

/**
 * One listener on 127.0.0.1:0 and one catch-all route to cluster `up` at `{{UP}}`; `extra` is
 * more top-level YAML (for example a `server:` block).
 */
export function catchAllConfig(extra = ""): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
${extra}routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
clusters:
  - name: up
    endpoints: ["{{UP}}"]
${TEST_TRANSPORT ? `    transport: ${TEST_TRANSPORT}\n` : ""}`;
}

/** FERRY_TEST_TRANSPORT=fetch runs the catch-all tests over fetch instead of the h1 default. */
const TEST_TRANSPORT = Deno.env.get("FERRY_TEST_TRANSPORT");

export interface RunningFerry {
  readonly ferry: Ferry;
  /** `http://127.0.0.1:PORT` of the first listener. */
  readonly url: string;
  readonly port: number;
  readonly adminUrl: string | undefined;
  listenerUrl(name: string): string;
  close(): Promise<void>;
}

/** Starts Ferry from a YAML text; `{{NAME}}` placeholders are replaced from `vars`. */
export function startFerry(
  yaml: string,
  vars: Record<string, string> = {},
  opts: {
    readTextFile?: (p: string) => string;
    metrics?: FerryMetrics;
    env?: (name: string) => string | undefined;
  } = {},
): RunningFerry {
  const text = yaml.replace(/\{\{(\w+)\}\}/g, (_, k: string) => {
    const v = vars[k];
    if (v === undefined) throw new Error(`no value for {{${k}}}`);
    return v;
  });
  const loaded = parseConfigText(text, "test.yaml");
  if (!loaded.ok) {
    throw new Error(`test config invalid:\n${JSON.stringify(loaded.errors, null, 2)}`);
  }
  const snapshot = compileConfig(loaded.config, {
    version: 1,
    source: "test.yaml",
    durations: loaded.durations,
    readTextFile: opts.readTextFile ?? ((p) => Deno.readTextFileSync(p)),
    ...(opts.metrics ? { metrics: opts.metrics } : {}),
    ...(opts.env ? { env: opts.env } : {}),
  });
  const ferry = Ferry.start(snapshot, createLogger("error"));
  const addrs = ferry.addresses();
  const first = Object.values(addrs.listeners)[0]!;
  return {
    ferry,
    url: `http://127.0.0.1:${first.port}`,
    port: first.port,
    adminUrl: addrs.admin ? `http://127.0.0.1:${addrs.admin.port}` : undefined,
    listenerUrl: (name) => `http://127.0.0.1:${addrs.listeners[name]!.port}`,
    close: async () => {
      await ferry.shutdown(2_000);
    },
  };
}

/**
 * The real peers the tests drive, each with the Debian package it comes from. A test that needs
 * one calls `requirePeer` (or `run`, which does it for the commands listed here), so a machine
 * without the package fails with one line naming it and the install command, not a stack trace.
 */
const PEER_PACKAGES = {
  curl: "curl",
  openssl: "openssl",
  h2load: "nghttp2-client",
  nghttp: "nghttp2-client",
  "python3-websockets": "python3-websockets",
  promtool: "prometheus",
  prometheus: "prometheus",
  chromium: "chromium",
} as const;
export type Peer = keyof typeof PEER_PACKAGES;

/** One command that installs every peer (the README quotes it). */
export const PEER_INSTALL_ALL = `sudo apt-get install -y ${
  [...new Set(Object.values(PEER_PACKAGES))].join(" ")
}`;

/** A missing peer: its message is the whole report (the stack is left out on purpose). */
export class MissingPeer extends Error {
  constructor(peer: Peer) {
    const pkg = PEER_PACKAGES[peer];
    super(
      `test peer "${peer}" not found: install Debian package ${pkg} (sudo apt-get install -y ${pkg})`,
    );
    this.name = "MissingPeer";
    this.stack = `${this.name}: ${this.message}`;
  }
}

function onPath(command: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      if (Deno.statSync(`${dir}/${command}`).isFile) return `${dir}/${command}`;
    } catch { /* not in this dir */ }
  }
  return undefined;
}

const peerFound = new Map<Peer, Promise<string | undefined>>();

async function findPeer(peer: Peer): Promise<string | undefined> {
  switch (peer) {
    case "chromium":
      return onPath("chromium") ??
        (await Deno.stat("/usr/bin/chromium").then(() => "/usr/bin/chromium", () => undefined));
    case "python3-websockets":
      for (const py of [onPath("python3"), "/usr/bin/python3"]) {
        if (!py) continue;
        const ok = await new Deno.Command(py, {
          args: ["-c", "import websockets"],
          stdout: "null",
          stderr: "null",
        }).output().then((o) => o.success, () => false);
        if (ok) return py;
      }
      return undefined;
    default:
      return onPath(peer);
  }
}

/**
 * The path of a peer's executable (for `python3-websockets`, a python3 that can import it), or
 * a `MissingPeer` failure naming the Debian package to install.
 */
export async function requirePeer(peer: Peer): Promise<string> {
  let found = peerFound.get(peer);
  if (!found) peerFound.set(peer, found = findPeer(peer));
  const path = await found;
  if (!path) throw new MissingPeer(peer);
  return path;
}

/** Runs a command to completion and returns its stdout/stderr as text. */
export async function run(cmd: string, args: string[], opts: { stdin?: Uint8Array } = {}) {
  if (Object.hasOwn(PEER_PACKAGES, cmd)) await requirePeer(cmd as Peer);
  const child = new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    stdin: opts.stdin ? "piped" : "null",
  }).spawn();
  if (opts.stdin) {
    const w = child.stdin.getWriter();
    await w.write(opts.stdin);
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/**
 * Reads from `conn` until the peer ends the stream (EOF or a failed read) or `ms` pass, handing
 * each chunk to `onChunk`; resolves to whether the peer ended it in time.
 */
export async function readFor(
  conn: Deno.Conn,
  ms: number,
  onChunk: (chunk: Uint8Array) => void,
  bufferBytes = 16 * 1024,
): Promise<boolean> {
  const buf = new Uint8Array(bufferBytes);
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"t">((r) => timer = setTimeout(() => r("t"), deadline - Date.now())),
    ]);
    clearTimeout(timer);
    if (n === "t") return false;
    if (n === null) return true;
    onChunk(buf.subarray(0, n));
  }
  return false;
}

/** Sends raw bytes over TCP and reads until the server closes or `ms` pass. */
export async function rawRequest(
  port: number,
  bytes: string | Uint8Array,
  ms = 2_000,
): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(typeof bytes === "string" ? new TextEncoder().encode(bytes) : bytes);
    const chunks: Uint8Array[] = [];
    const deadline = Date.now() + ms;
    const buf = new Uint8Array(64 * 1024);
    while (Date.now() < deadline) {
      const n = await Promise.race([
        conn.read(buf),
        new Promise<"t">((r) => setTimeout(() => r("t"), Math.max(1, deadline - Date.now()))),
      ]);
      if (n === "t" || n === null) break;
      chunks.push(buf.slice(0, n));
      const text = new TextDecoder().decode(concat(chunks));
      // One full response with a Content-Length body is enough.
      const m = /\r\n\r\n/.exec(text);
      const cl = /content-length: (\d+)/i.exec(text);
      if (m && cl && text.length >= m.index + 4 + Number(cl[1])) break;
    }
    return new TextDecoder().decode(concat(chunks));
  } finally {
    try {
      conn.close();
    } catch { /* closed by peer */ }
  }
}

/** The bytes of `chunks` one after another. */
export function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

/** A raw TCP server on 127.0.0.1:0 (a misbehaving peer); each connection closed after `serve`. */
export interface RawServer {
  readonly url: string;
  readonly port: number;
  /** Stops accepting and closes every connection still open. */
  close(): Promise<void>;
}

export function startRawServer(serve: (conn: Deno.Conn) => Promise<void>): RawServer {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns = new Set<Deno.Conn>();
  const closeQuietly = (c: Deno.Conn) => {
    try {
      c.close();
    } catch { /* closed */ }
  };
  const serving = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      void serve(conn).catch(() => {}).finally(() => {
        conns.delete(conn);
        closeQuietly(conn);
      });
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    async close() {
      listener.close();
      for (const c of conns) closeQuietly(c);
      await serving;
    },
  };
}

/** An HTTP/2 server on 127.0.0.1:0 on Ferry's own stack (src/h2/), for peers Deno.serve cannot be. */
export interface H2Server {
  readonly url: string;
  readonly port: number;
  /** Stops accepting and closes every connection. */
  close(): void;
}

/**
 * Serves each stream with `serve` (its failures are the fixture's own misbehaviour: dropped), on
 * Ferry's HTTP/2 connection, whose sender sends what it is given: misbehaving upstreams.
 */
export function startH2Server(serve: (stream: H2Stream) => Promise<void>): H2Server {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const conns = new Set<H2Connection>();
  (async () => {
    for await (const conn of listener) {
      const h2 = new H2Connection(conn, {
        role: "server",
        onStream: (s) => void serve(s).catch(() => {}),
        onClose: () => conns.delete(h2),
      });
      conns.add(h2);
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    close() {
      listener.close();
      for (const c of conns) c.close();
    },
  };
}

/**
 * Sums the samples of `name` in a Prometheus text exposition whose labels include every pair in
 * `labels`; undefined when no sample matches.
 */
export function metricValue(
  text: string,
  name: string,
  labels: Record<string, string> = {},
): number | undefined {
  let sum: number | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("#") || !line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map<string, string>();
    for (const p of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      have.set(p[1]!, p[2]!);
    }
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) {
      sum = (sum ?? 0) + Number(m[3]);
    }
  }
  return sum;
}

// Ferry as a user runs it: main.ts in a subprocess.
export const DENO = Deno.execPath();
export const MAIN = new URL("../main.ts", import.meta.url).pathname;
export const ROOT = new URL("..", import.meta.url).pathname;
/** `deno run` arguments that start main.ts as `deno task start` does. */
export const RUN = [
  "run",
  "--allow-net",
  "--allow-read",
  "--allow-env",
  "--allow-ffi",
  "--unstable-no-legacy-abort",
  // server.workers > 1 binds listeners with SO_REUSEPORT (reusePort is unstable in Deno 2.9.6).
  "--unstable-net",
  // V8's heap sized as shipped (docs/PERFORMANCE.md, "Memory: where it goes and what was cut").
  "--v8-flags=--max-semi-space-size=4,--heap-growing-percent=100,--single-threaded-gc,--no-allocation-site-pretenuring",
  MAIN,
];

/** Writes a config to a fresh temp folder; returns the file name. */
export async function tempConfig(text: string): Promise<string> {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/ferry.yaml`;
  await Deno.writeTextFile(file, text);
  return file;
}

/**
 * FERRY_TEST_WORKERS=N runs every Ferry that `spawnFerry` starts with `server.workers: N`, so the
 * end-to-end suites can be run against workers (`FERRY_TEST_WORKERS=2 deno task test`). The
 * `--config` file gets `server.workers` (written back in place, so a test that reloads it keeps
 * its path) unless it sets one, has a TLS listener (those need one worker) or does not parse; a
 * Ferry configured from the environment gets PROXY_WORKERS. Ferry started in-process
 * (`startFerry`) is always one isolate.
 */
const TEST_WORKERS = Deno.env.get("FERRY_TEST_WORKERS");

async function withTestWorkers(
  args: readonly string[],
  env: Record<string, string>,
): Promise<Record<string, string>> {
  if (!TEST_WORKERS) return env;
  const at = args.indexOf("--config");
  const file = at >= 0 ? args[at + 1] : undefined;
  if (!file || file === "-") {
    return "PROXY_WORKERS" in env ? env : { ...env, PROXY_WORKERS: TEST_WORKERS };
  }
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch {
    return env;
  }
  const doc = parseDocument(text);
  if (doc.errors.length > 0 || !isMap(doc.contents)) return env;
  const config = doc.toJS() as {
    server?: { workers?: unknown };
    listeners?: { tls?: unknown }[];
  } | null;
  if (config?.server?.workers !== undefined) return env;
  if (config?.listeners?.some((l) => l?.tls !== undefined)) return env;
  doc.setIn(["server", "workers"], Number(TEST_WORKERS));
  await Deno.writeTextFile(file, String(doc));
  return env;
}

export interface Started {
  child: Deno.ChildProcess;
  listeners: Map<string, string>;
  admin: string | undefined;
  logs: string[];
}

/**
 * Spawns Ferry and reads its JSON log until every listener (and admin) says where it bound.
 * `wrapper` runs Deno through another command, for example `["prlimit", "--nofile=256:256"]`.
 */
export async function spawnFerry(
  args: string[],
  env: Record<string, string> = {},
  listeners = 1,
  wrapper: string[] = [],
  /** More `deno run` flags, such as --allow-write. */
  denoFlags: string[] = [],
  /** Another program that starts Ferry (through mod.ts), run with main.ts's flags. */
  script: string = MAIN,
): Promise<Started> {
  env = await withTestWorkers(args, env);
  const [cmd, ...pre] = [...wrapper, DENO];
  const child = new Deno.Command(cmd!, {
    args: [...pre, RUN[0]!, ...denoFlags, ...RUN.slice(1, -1), script, ...args],
    env,
    cwd: ROOT,
    stderr: "piped",
    stdout: "null",
  })
    .spawn();
  const found = new Map<string, string>();
  let admin: string | undefined;
  const logs: string[] = [];
  const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  const deadline = Date.now() + 15_000;
  while (
    Date.now() < deadline &&
    !(found.size >= listeners && logs.some((l) => l.includes("ferry started")))
  ) {
    const { value, done } = await lines.read();
    if (done) break;
    buf += value;
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      logs.push(line);
      try {
        const j = JSON.parse(line);
        if (j.msg === "listening") found.set(j.listener, `http://${j.address}`);
        if (j.msg === "admin listening") admin = `http://${j.address}`;
      } catch { /* not JSON */ }
    }
  }
  // Keep reading stderr (into `logs`) so the child never blocks on a full pipe.
  (async () => {
    try {
      for (let r = await lines.read(); !r.done; r = await lines.read()) {
        buf += r.value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          logs.push(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      }
    } catch { /* closed */ }
  })();
  if (found.size < listeners) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    throw new Error(`ferry did not start:\n${logs.join("\n")}`);
  }
  return { child, listeners: found, admin, logs };
}
