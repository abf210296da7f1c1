/**
 * The main isolate's side of `server.workers > 1`. The main isolate serves as worker 0 (every
 * listener, with SO_REUSEPORT) and also runs the admin listener, health checks, DNS discovery and
 * signals; this pool starts workers 1..N-1 (src/workers/worker.ts), hands them every reload (all
 * compile, then all switch; one refusal refuses for all), collects their metrics for one
 * /metrics, drains them on SIGTERM and replaces a worker that dies.
 *
 * Port 0: a listener configured with port 0 is bound by the main isolate first; the workers are
 * given the port it got (`ListenerPorts`), so every worker shares that one port.
 */
import * as client from "../observability/prom.ts";
import { type Snapshot, splitAddress } from "../server/compile.ts";
import type { FerryConfig } from "../config/schema.ts";
import type { Logger } from "../observability/log.ts";
import type { FerryMetrics } from "../observability/metrics.ts";
import type { ReloadPeers } from "../server/ferry.ts";
import type { MetricReader } from "../server/admin_stats.ts";
import type { RecentError } from "../pipeline/errors.ts";
import type { clustersView } from "../server/cluster_view.ts";
import { mergeClusterViews } from "./merge_clusters.ts";
import { nodeTlsListeners } from "./count.ts";
import type { SharedArena } from "../policy/shared_memory.ts";
import type {
  HealthTable,
  WorkerCall,
  WorkerConfig,
  WorkerMethod,
  WorkerMethods,
  WorkerNotice,
  WorkerReply,
} from "./protocol.ts";

/** The ports the main isolate's listeners are bound to, by listener name. */
export type ListenerPorts = ReadonlyMap<string, number>;

export interface WorkerPoolOptions {
  /** Serving isolates in all, the main isolate included: the pool starts `count - 1`. */
  readonly count: number;
  readonly arena: SharedArena;
  /** The config file (paths in the config resolve against it); undefined for <env>. */
  readonly file: string | undefined;
  readonly log: Logger;
  /** The main isolate's metrics: worker restarts are counted here. */
  readonly metrics: FerryMetrics;
  readonly tagResponses?: boolean;
  /**
   * Test hook (FERRY_TEST_HOOKS=1 with FERRY_TEST_FAIL_WORKER_STARTS=N): the next N replacement
   * workers crash while starting, as a worker meeting a broken host would.
   */
  readonly failReplacementStarts?: number;
}

interface Running {
  readonly index: number;
  readonly worker: Worker;
  readonly calls: Map<number, PromiseWithResolvers<unknown>>;
  nextId: number;
  dead: boolean;
  /** performance.now() when it was spawned. */
  readonly spawnedAt: number;
}

/** How long a worker may take to compile and bind before it counts as failed. */
const START_TIMEOUT_MS = 30_000;
/**
 * A worker that dies is started again after this pause, doubled for each death in a row that
 * came soon after its start (a crash loop: a config or a host problem that every new worker
 * meets), up to RESTART_MAX_DELAY_MS; a worker that served RESTART_STABLE_MS resets it.
 */
const RESTART_DELAY_MS = 200;
const RESTART_MAX_DELAY_MS = 30_000;
const RESTART_STABLE_MS = 10_000;
/** How often the main isolate's health verdicts and endpoint lists are compared and sent. */
const FOLLOW_INTERVAL_MS = 200;

export class WorkerPool implements ReloadPeers {
  readonly #opts: WorkerPoolOptions;
  /** The spawned workers by index (1..count-1; 0 is the main isolate). */
  readonly #workers = new Map<number, Running>();
  /** The config serving now, ports resolved; a replacement worker starts with it. */
  #current: WorkerConfig | undefined;
  #prepared: WorkerConfig | undefined;
  #stopping = false;
  readonly #restarts: client.Counter<string>;
  /** Per worker index: deaths in a row soon after a start (the restart backoff's exponent). */
  readonly #quickDeaths = new Map<number, number>();
  readonly #restartTimers = new Set<ReturnType<typeof setTimeout>>();
  /** Test hook: replacement workers that crash at start (see WorkerPoolOptions). */
  #failStartsLeft: number;
  /** What each cluster's followers were last sent (JSON), to send only changes. */
  #sent = new Map<string, string>();
  #followTimer: ReturnType<typeof setInterval> | undefined;
  /** Where the workers' proxy-made errors go (the main isolate's dashboard list). */
  #recentErrors: { add(e: RecentError): void } | undefined;

  constructor(opts: WorkerPoolOptions) {
    this.#opts = opts;
    this.#failStartsLeft = opts.failReplacementStarts ?? 0;
    this.#restarts = new client.Counter({
      name: "ferry_worker_restarts_total",
      help: "Workers (server.workers > 1) that died and were started again, by worker index.",
      labelNames: ["worker"],
      registers: [opts.metrics.registry],
    });
  }

  /**
   * Starts workers 1..count-1 on `snapshot`'s config, on the ports the main isolate's listeners
   * got; rejects (and stops them all) if one fails.
   */
  async start(snapshot: Snapshot, ports: ListenerPorts): Promise<void> {
    const config = this.#workerConfig(snapshot, ports);
    try {
      await Promise.all(
        Array.from({ length: this.#opts.count - 1 }, (_, i) => this.#spawn(i + 1, config)),
      );
    } catch (err) {
      this.#stopping = true;
      for (const w of this.#workers.values()) {
        w.worker.terminate();
        w.dead = true;
      }
      throw err;
    }
    this.#current = config;
  }

  /**
   * Sends the workers the main isolate's health verdicts and discovered endpoint lists now and
   * whenever they change (polled: probes run seconds apart, a change reaches the workers within
   * FOLLOW_INTERVAL_MS).
   */
  follow(current: () => Snapshot): void {
    const send = () => {
      const table: HealthTable = {};
      for (const [name, cluster] of current().clusters) {
        const entry = {
          ...(cluster.discovery
            ? { endpoints: cluster.endpoints.map((e) => ({ url: e.origin, weight: e.weight })) }
            : {}),
          healthy: cluster.health.snapshot().map((h) => [h.origin, h.healthy] as const),
        };
        const text = JSON.stringify(entry);
        if (this.#sent.get(name) !== text) {
          this.#sent.set(name, text);
          table[name] = entry;
        }
      }
      if (Object.keys(table).length === 0) return;
      for (const w of this.#live()) void this.#call(w, "follow", table).catch(() => {});
    };
    send();
    this.#followTimer = setInterval(send, FOLLOW_INTERVAL_MS);
  }

  /** From now on, the workers' proxy-made errors are added to `recent` (the dashboard's). */
  forwardErrorsTo(recent: { add(e: RecentError): void }): void {
    this.#recentErrors = recent;
  }

  async prepare(next: Snapshot, ports: ListenerPorts): Promise<void> {
    const asked = next.config.server.workers;
    if (asked !== undefined && asked !== this.#opts.count) {
      this.#opts.log.warn("server.workers changes on restart only; the reload keeps the workers", {
        workers: this.#opts.count,
        configured: asked,
      });
    }
    // Refused before any worker binds: each would try the port and all but one would fail.
    const nodeTls = this.#opts.count > 1 ? nodeTlsListeners(next) : [];
    if (nodeTls.length > 0) {
      throw new Error(
        `TLS listeners (${nodeTls.join(", ")}) cannot be served by ${this.#opts.count} workers: ` +
          "their TLS (node:tls) cannot share a port; set server.workers: 1 and restart",
      );
    }
    const config = this.#workerConfig(next, ports);
    const results = await Promise.allSettled(
      this.#live().map((w) => this.#call(w, "prepare", config)),
    );
    const refused = results.flatMap((r, i) =>
      r.status === "rejected" ? [`worker ${this.#live()[i]?.index}: ${errorText(r.reason)}`] : []
    );
    if (refused.length > 0) {
      this.abort();
      throw new Error(`config refused by ${refused.join("; ")}`);
    }
    this.#prepared = config;
  }

  async commit(): Promise<void> {
    const results = await Promise.allSettled(
      this.#live().map((w) => this.#call(w, "commit", null)),
    );
    if (this.#prepared) this.#current = this.#prepared;
    this.#prepared = undefined;
    // Clusters the reload rebuilt start from the config: send every verdict again.
    this.#sent.clear();
    const failed = results.flatMap((r, i) =>
      r.status === "rejected" ? [`worker ${this.#live()[i]?.index}: ${errorText(r.reason)}`] : []
    );
    if (failed.length > 0) throw new Error(failed.join("; "));
  }

  abort(): void {
    this.#prepared = undefined;
    for (const w of this.#live()) void this.#call(w, "abort", null).catch(() => {});
  }

  /** Every worker's metrics, merged with the main isolate's, as one exposition. */
  async scrape(): Promise<{ text: string; contentType: string }> {
    const merged = await this.#merged();
    return { text: await merged.metrics(), contentType: merged.contentType };
  }

  /** Reads one metric's process-wide values (the dashboard's /stats and its history). */
  readonly readMetric: MetricReader = async (name) => {
    const merged = await this.#merged();
    return await merged.getSingleMetric(name)?.get() ?? { values: [] };
  };

  /**
   * prom-client's AggregatorRegistry shape (as its cluster mode): each worker sends its
   * registry as JSON, counters and histograms are summed; the process-wide gauges come from
   * the main isolate only (MAIN_ISOLATE_METRICS). A worker that does not answer is left out.
   */
  async #merged(): Promise<client.Registry> {
    const own = await this.#opts.metrics.registry.getMetricsAsJSON();
    const theirs = await Promise.allSettled(
      this.#live().map((w) => this.#call(w, "metrics", null)),
    );
    const all = [own, ...theirs.flatMap((r) => r.status === "fulfilled" ? [r.value] : [])];
    return client.AggregatorRegistry.aggregate(
      all as Parameters<typeof client.AggregatorRegistry.aggregate>[0],
    );
  }

  /** GET /clusters: the main isolate's view with every worker's per-request counters summed in. */
  async clusters(own: ReturnType<typeof clustersView>): Promise<ReturnType<typeof clustersView>> {
    const theirs = await Promise.allSettled(
      this.#live().map((w) => this.#call(w, "clusters", null)),
    );
    return mergeClusterViews(
      own,
      theirs.flatMap((r) =>
        r.status === "fulfilled" ? [r.value as ReturnType<typeof clustersView>] : []
      ),
    );
  }

  /** Drains every worker within `ms`; true when all finished their requests in time. */
  async drain(ms: number): Promise<boolean> {
    this.#stopping = true;
    clearInterval(this.#followTimer);
    for (const t of this.#restartTimers) clearTimeout(t);
    const results = await Promise.allSettled(
      this.#live().map((w) => this.#call(w, "drain", { ms }, ms + 2_000)),
    );
    for (const w of this.#workers.values()) w.worker.terminate();
    return results.every((r) => r.status === "fulfilled" && r.value === true);
  }

  /** Test hook (FERRY_TEST_HOOKS=1): ends worker `index` as a crash would. */
  kill(index: number): boolean {
    const w = this.#workers.get(index);
    if (!w || w.dead) return false;
    w.worker.terminate();
    this.#died(w, "terminated by the test hook");
    return true;
  }

  #live(): Running[] {
    return [...this.#workers.values()].filter((w) => !w.dead);
  }

  #workerConfig(s: Snapshot, ports: ListenerPorts): WorkerConfig {
    return {
      version: s.version,
      config: withPorts(s.config, ports),
      label: s.source,
      file: this.#opts.file,
    };
  }

  async #spawn(index: number, config: WorkerConfig, failStart = false): Promise<void> {
    const worker = new Worker(new URL("./worker.ts", import.meta.url), {
      type: "module",
      name: `ferry-worker-${index}`,
    });
    const running: Running = {
      index,
      worker,
      calls: new Map(),
      nextId: 0,
      dead: false,
      spawnedAt: performance.now(),
    };
    this.#workers.set(index, running);
    worker.onmessage = (e: MessageEvent<WorkerReply | WorkerNotice>) => {
      if ("notice" in e.data) {
        for (const err of e.data.errors) this.#recentErrors?.add(err);
        return;
      }
      const call = running.calls.get(e.data.id);
      if (!call) return;
      running.calls.delete(e.data.id);
      if (e.data.ok) call.resolve(e.data.value);
      else call.reject(new Error(e.data.error));
    };
    worker.onerror = (e: ErrorEvent) => {
      // An error no handler in the worker caught ends it: replace it, keep the process.
      e.preventDefault();
      worker.terminate();
      this.#died(running, e.message);
    };
    await this.#call(running, "start", {
      ...config,
      index,
      arena: this.#opts.arena.buffer,
      logLevel: config.config.log.level,
      tagResponses: this.#opts.tagResponses ?? false,
      ...(failStart ? { failStart } : {}),
    }, START_TIMEOUT_MS);
  }

  #died(w: Running, reason: string): void {
    if (w.dead) return;
    w.dead = true;
    for (const call of w.calls.values()) call.reject(new Error(`worker ${w.index} died`));
    w.calls.clear();
    if (this.#stopping) return;
    this.#restarts.labels(String(w.index)).inc();
    const quick = performance.now() - w.spawnedAt < RESTART_STABLE_MS;
    const inARow = quick ? (this.#quickDeaths.get(w.index) ?? 0) + 1 : 0;
    this.#quickDeaths.set(w.index, inARow);
    const delay = Math.min(RESTART_DELAY_MS * 2 ** Math.max(0, inARow - 1), RESTART_MAX_DELAY_MS);
    this.#opts.log.error("worker died; starting a new one", {
      worker: w.index,
      reason,
      restart_in_ms: delay,
      ...(inARow > 1 ? { deaths_in_a_row: inARow } : {}),
    });
    const timer = setTimeout(() => {
      this.#restartTimers.delete(timer);
      void this.#replace(w.index);
    }, delay);
    this.#restartTimers.add(timer);
  }

  async #replace(index: number): Promise<void> {
    const config = this.#current;
    if (this.#stopping || !config || this.#workers.get(index)?.dead === false) return;
    // The dead worker's connections and requests ended with it (terminated, at least
    // RESTART_DELAY_MS ago): so do their counts in the shared arena, before the new worker
    // takes its index.
    this.#opts.arena.reclaim(index);
    try {
      await this.#spawn(index, config, this.#failStartsLeft-- > 0);
      this.#sent.clear();
      this.#opts.log.info("worker replaced", { worker: index, config_version: config.version });
    } catch (err) {
      const w = this.#workers.get(index);
      if (w) w.worker.terminate();
      if (w && !w.dead) this.#died(w, `replacement failed to start: ${errorText(err)}`);
    }
  }

  #call<M extends WorkerMethod>(
    w: Running,
    method: M,
    args: WorkerMethods[M]["args"],
    timeoutMs = START_TIMEOUT_MS,
  ): Promise<WorkerMethods[M]["result"]> {
    if (w.dead) return Promise.reject(new Error(`worker ${w.index} is not running`));
    const id = w.nextId++;
    const call = Promise.withResolvers<unknown>();
    w.calls.set(id, call);
    const timer = setTimeout(() => {
      if (!w.calls.delete(id)) return;
      call.reject(new Error(`worker ${w.index} did not answer ${method} within ${timeoutMs} ms`));
    }, timeoutMs);
    w.worker.postMessage({ id, method, args } satisfies WorkerCall);
    return call.promise.finally(() => clearTimeout(timer)) as Promise<
      WorkerMethods[M]["result"]
    >;
  }
}

/** The config with each port-0 listener given the port the main isolate's listener got. */
function withPorts(config: FerryConfig, ports: ListenerPorts): FerryConfig {
  const listeners = config.listeners.map((l) => {
    const { hostname, port } = splitAddress(l.address);
    if (port !== 0) return l;
    const bound = ports.get(l.name);
    if (bound === undefined) throw new Error(`listener "${l.name}" has no port to share yet`);
    const host = hostname.includes(":") ? `[${hostname}]` : hostname;
    return { ...l, address: `${host}:${bound}` };
  });
  return { ...config, listeners };
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
