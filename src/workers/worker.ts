/**
 * One worker (1..N-1) of `server.workers: N`: a Web Worker running the whole request path (every
 * listener, bound with SO_REUSEPORT so the kernel spreads connections over the main isolate, which
 * is worker 0, and the workers) on a snapshot it compiles itself from the config the main isolate
 * sends. Rate-limit buckets and circuit breakers live in the shared arena; the admin listener,
 * health checks and discovery (whose verdicts the workers follow) and signals belong to the main
 * isolate (src/workers/supervisor.ts).
 */
import type { Snapshot } from "../server/compile.ts";
import { compileConfig } from "../server/compile_config.ts";
import { ConfigProblemsError } from "../config/materials.ts";
import { formatPath } from "../config/config_path.ts";
import { loadExtensions } from "../server/extensions.ts";
import { loadOptionalParts } from "../server/optional_parts.ts";
import { resolveConfigPath } from "../config/files.ts";
import { createLogger, type Logger } from "../observability/log.ts";
import { FerryMetrics } from "../observability/metrics.ts";
import { Ferry, installLastLineOfDefence } from "../server/ferry.ts";
import { clustersView } from "../server/cluster_view.ts";
import { SharedArena } from "../policy/shared_memory.ts";
import { shareReplayBound } from "../policy/retry.ts";
import type { RecentError, RecentErrors } from "../pipeline/errors.ts";
import {
  type HealthTable,
  MAIN_ISOLATE_METRICS,
  type WorkerCall,
  type WorkerConfig,
  type WorkerMethod,
  type WorkerMethods,
  type WorkerNotice,
  type WorkerReply,
  type WorkerStart,
} from "./protocol.ts";

interface WorkerScope {
  onmessage: ((e: MessageEvent<WorkerCall>) => void) | null;
  postMessage(message: WorkerReply | WorkerNotice): void;
}

/** How long proxy-made errors are collected before they go to the main isolate in one message. */
const ERROR_BATCH_MS = 100;

/** Every proxy-made error also goes to the main isolate, whose dashboard lists the process's. */
function forwardRecentErrors(recent: RecentErrors): void {
  let batch: RecentError[] = [];
  const add = recent.add.bind(recent);
  recent.add = (e) => {
    add(e);
    if (batch.length === 0) {
      setTimeout(() => {
        scope.postMessage({ notice: "errors", errors: batch });
        batch = [];
      }, ERROR_BATCH_MS);
    }
    // Every one, so the dashboard's totals and groups count them all (100 ms of errors at most).
    batch.push(e);
  };
}

const scope = self as unknown as WorkerScope;
let ferry: Ferry | undefined;
let log: Logger | undefined;
let metrics: FerryMetrics | undefined;
let memory: SharedArena | undefined;
let pending: Snapshot | undefined;
let index = -1;

/**
 * Test hook (FERRY_TEST_HOOKS=1): worker 1 cannot load a config with a route named
 * `refused-by-worker-1`, standing in for what only one isolate can fail at.
 */
const REFUSED_ROUTE = "refused-by-worker-1";

/** Every log line says which worker wrote it. */
function workerLogger(base: Logger, index: number): Logger {
  const tag = (f?: Record<string, unknown>) => ({ worker: index, ...f });
  return {
    debug: (m, f) => base.debug(m, tag(f)),
    info: (m, f) => base.info(m, tag(f)),
    warn: (m, f) => base.warn(m, tag(f)),
    error: (m, f) => base.error(m, tag(f)),
    enabled: (l) => base.enabled(l),
    setLevel: (l) => base.setLevel(l),
  };
}

/** Compiles a config the main isolate validated; its extension modules are imported here too. */
async function compile(c: WorkerConfig, previous: Snapshot | undefined): Promise<Snapshot> {
  const ext = await loadExtensions(c.config, { configFile: c.file });
  if (!ext.ok) {
    throw new Error(ext.problems.map((p) => `${formatPath(p.path)}: ${p.message}`).join("; "));
  }
  await loadOptionalParts(c.config);
  try {
    return compileConfig(c.config, {
      version: c.version,
      source: c.label,
      readTextFile: (p: string) => Deno.readTextFileSync(c.file ? resolveConfigPath(c.file, p) : p),
      extensions: ext.extensions,
      ...(log ? { log } : {}),
      ...(previous ? { previous } : { metrics: metrics! }),
      ...(memory ? { sharedMemory: memory } : {}),
      followHealth: true,
    });
  } catch (err) {
    if (!(err instanceof ConfigProblemsError)) throw err;
    throw new Error(err.problems.map((p) => `${p.path}: ${p.message}`).join("; "));
  }
}

const methods: { [M in WorkerMethod]: (a: WorkerMethods[M]["args"]) => unknown } = {
  async start(s: WorkerStart) {
    index = s.index;
    if (s.failStart) {
      // Uncaught, as a real crash: the supervisor sees the worker's error event.
      setTimeout(() => {
        throw new Error("test hook: this worker crashes at start");
      });
      return await new Promise<never>(() => {});
    }
    log = workerLogger(createLogger(s.logLevel), s.index);
    // Per-worker counters only; the process's own gauges (memory, fds) come from the main isolate.
    metrics = new FerryMetrics({ processMetrics: false });
    installLastLineOfDefence(log, metrics);
    memory = new SharedArena(s.arena, { index: s.index });
    // The 64 MiB bound on bytes kept for retries is the process's, not each worker's.
    shareReplayBound(memory);
    const snapshot = await compile(s, undefined);
    ferry = Ferry.start(snapshot, log, {
      admin: false,
      reusePort: true,
      ...(s.tagResponses ? { tag: String(s.index) } : {}),
    });
    forwardRecentErrors(ferry.recentErrors);
    const out: Record<string, string> = {};
    for (const [name, a] of Object.entries(ferry.addresses().listeners)) {
      out[name] = `${a.hostname}:${a.port}`;
    }
    return out;
  },
  async prepare(c: WorkerConfig) {
    if (
      index === 1 && Deno.env.get("FERRY_TEST_HOOKS") === "1" &&
      c.config.routes.some((r) => r.name === REFUSED_ROUTE)
    ) throw new Error(`test hook: worker 1 cannot load a route named ${REFUSED_ROUTE}`);
    pending?.discard(ferry!.snapshot);
    pending = await compile(c, ferry!.snapshot);
    return null;
  },
  async commit() {
    const next = pending;
    pending = undefined;
    if (!next) throw new Error("nothing prepared");
    await ferry!.apply(next);
    log!.setLevel(next.config.log.level);
    return null;
  },
  abort() {
    pending?.discard(ferry!.snapshot);
    pending = undefined;
    return null;
  },
  async metrics() {
    const all = await ferry!.snapshot.metrics.registry.getMetricsAsJSON();
    return all.filter((m) => !MAIN_ISOLATE_METRICS.has(m.name));
  },
  follow(table: HealthTable) {
    const clusters = ferry!.snapshot.clusters;
    for (const [name, c] of Object.entries(table)) {
      clusters.get(name)?.follow(c.endpoints, new Map(c.healthy));
    }
    return null;
  },
  clusters() {
    return clustersView(ferry!.snapshot);
  },
  async drain({ ms }: { ms: number }) {
    const { clean } = await ferry!.shutdown(ms);
    return clean;
  },
};

scope.onmessage = async (e) => {
  const { id, method, args } = e.data;
  try {
    // deno-lint-ignore no-explicit-any
    const value = await (methods[method] as (a: any) => unknown)(args);
    scope.postMessage({ id, ok: true, value: value ?? null });
  } catch (err) {
    scope.postMessage({ id, ok: false, error: err instanceof Error ? err.message : String(err) });
  }
};
