/**
 * A running Ferry: one Deno.serve per listener plus the admin listener, all reading the current
 * snapshot through one reference. Used by main.ts and by the end-to-end tests in-process.
 *
 * One piece past 500 lines: binding a listener, a reload's swap (which listeners are kept,
 * rebound, given new TLS material or retired) and the drain all act on the one table of running
 * listeners and the snapshot reference; apart, each would reach into the others' state.
 */
import type { ListenerPlan, Snapshot } from "./compile.ts";
import { scrapeSources } from "./registry.ts";
import { errorFields, type Logger } from "../observability/log.ts";
import type { FerryMetrics } from "../observability/metrics.ts";
import { adminHandler, type AdminView } from "./admin.ts";
import { type AdminListener, startAdminListener } from "./admin_listener.ts";
import { type MetricReader, StatsHistory } from "./admin_stats.ts";
import { errorResponse, ProxyError, RecentErrors } from "../pipeline/errors.ts";
import { createListenerHandler } from "./handler.ts";
import { StreamReset } from "../h2/stream.ts";
import { grpcListenerPart } from "./optional_parts.ts";
import { ConnectionGuard, drainGuarded, guardLimits } from "./guard.ts";
import {
  acceptErrorReason,
  type Admission,
  type ConnectionCaps,
  connectionCaps,
  RebindingServer,
  sharedAdmission,
} from "./admission.ts";
import { type ListenerTls, registerCertificateExpiry } from "./tls_material.ts";

export interface BoundAddress {
  readonly hostname: string;
  readonly port: number;
}

/** A bound listener of either kind: Deno.serve (HTTP) or Ferry's own HTTP/2 (gRPC). */
interface RunningListener {
  readonly addr: Deno.NetAddr;
  /** Stops accepting; resolves once in-flight work is done (gRPC: GOAWAY, bounded by `ms`). */
  drain(ms: number): Promise<void>;
  /** Hard stop, for a listener that has not begun draining. */
  abort(): void;
  /** Open downstream connections, when the listener counts them (the guard and gRPC do). */
  openConnections?(): number;
  /** New TLS material for new handshakes (node:tls listeners); absent: a change rebinds. */
  updateTls?(tls: ListenerTls): void;
}

/**
 * Which part of the process this Ferry is (src/workers/): with `server.workers: 1` one Ferry does
 * everything (the defaults); with more, every isolate serves the listeners with `SO_REUSEPORT`,
 * and the main isolate also serves the admin listener and reloads with its `peers` (the others).
 */
export interface FerryRole {
  /** Serve the admin listener. Default true. */
  readonly admin?: boolean;
  /** Bind listeners with `reusePort`, sharing each port with the other workers. */
  readonly reusePort?: boolean;
  /** Other isolates that take every reload with this one, or none does. */
  readonly peers?: ReloadPeers;
  /** Where the dashboard reads metrics when they are spread over workers (merged). */
  readonly readMetric?: MetricReader;
  /** Debug: every response says which worker served it (`x-ferry-worker: <tag>`). */
  readonly tag?: string;
}

/** The workers, as the main isolate's reload sees them (src/workers/supervisor.ts). */
export interface ReloadPeers {
  /**
   * Every peer compiles `next`'s config, its port-0 listeners on the ports this isolate's got
   * (`ports`, by listener); rejects, with every peer's errors, if one cannot.
   */
  prepare(next: Snapshot, ports: ReadonlyMap<string, number>): Promise<void>;
  /** Every peer switches to what it prepared; rejects naming the peers that failed to. */
  commit(): Promise<void>;
  /** Every peer drops what it prepared. */
  abort(): void;
  /** Every peer drains within `ms`; resolves whether all finished their requests in time. */
  drain(ms: number): Promise<boolean>;
}

/** How long a listener removed by a reload may finish its requests before it is cut. */
const LISTENER_DRAIN_MS = 30_000;

export class Ferry {
  #snapshot: Snapshot;
  readonly #log: Logger;
  readonly #servers = new Map<string, RunningListener>();
  /** Listeners removed or rebound by a reload, finishing their requests. */
  readonly #retiring = new Map<RunningListener, Promise<void>>();
  #adminRoutes: AdminExtras = {};
  #admin: AdminListener | undefined;
  #state: "ready" | "draining" = "ready";
  readonly #role: FerryRole;
  /** The last proxy-made errors, for the dashboard. */
  readonly recentErrors: RecentErrors = new RecentErrors(50);
  /** 15 minutes of per-route totals, for the dashboard's history. */
  readonly statsHistory: StatsHistory = new StatsHistory();

  private constructor(snapshot: Snapshot, log: Logger, role: FerryRole) {
    this.#snapshot = snapshot;
    this.#log = log;
    this.#role = role;
  }

  /** Binds every listener of the snapshot (and the admin listener) and starts serving. */
  static start(snapshot: Snapshot, log: Logger, role: FerryRole = {}): Ferry {
    const ferry = new Ferry(snapshot, log, role);
    // Scrape-time gauges (health, breakers, in-flight) read whatever snapshot is serving.
    snapshot.metrics.watch({
      ...scrapeSources(() => ferry.#snapshot.parts),
      connections: () => ferry.#connectionsWithAdmin(),
    });
    registerCertificateExpiry(snapshot.metrics.registry, () => ferry.#snapshot.certificates);
    snapshot.metrics.setConfigVersion(snapshot.version);
    try {
      for (const plan of snapshot.listeners.values()) {
        ferry.#servers.set(plan.name, ferry.#bindNamed(plan, snapshot));
      }
      const admin = role.admin === false ? undefined : snapshot.config.admin;
      if (admin) {
        const handler = adminHandler({
          state: () => ferry.#state,
          snapshot: () => ferry.#snapshot,
          reload: () => ferry.#adminRoutes.reload?.(),
          reloadStatus: () => ferry.#adminRoutes.reloadStatus?.(),
          submitConfig: (text, opts) => ferry.#adminRoutes.submitConfig?.(text, opts),
          metrics: () => ferry.#adminRoutes.metrics?.(),
          clusters: (own) => ferry.#adminRoutes.clusters?.(own),
          killWorker: (index) => ferry.#adminRoutes.killWorker?.(index),
          recentErrors: ferry.recentErrors,
          statsHistory: ferry.statsHistory,
          ...(role.readMetric ? { readMetric: role.readMetric } : {}),
          address: admin.address,
          port: () => ferry.#admin?.fillInPort(),
        });
        ferry.#admin = bindOrName("admin", admin.address, () =>
          startAdminListener({
            address: admin.address,
            handler,
            config: () => ferry.#snapshot.config,
            metrics: () => ferry.#snapshot.metrics,
            log,
          }));
      }
    } catch (err) {
      for (const l of ferry.#servers.values()) l.abort();
      void ferry.#admin?.shutdown();
      throw err;
    }
    // Health checks, DNS discovery and the access-log file start once the listeners are bound.
    snapshot.activate();
    ferry.statsHistory.start(() => ferry.#snapshot, role.readMetric);
    return ferry;
  }

  get snapshot(): Snapshot {
    return this.#snapshot;
  }

  get state(): "ready" | "draining" {
    return this.#state;
  }

  addresses(): { listeners: Record<string, BoundAddress>; admin: BoundAddress | undefined } {
    const listeners: Record<string, BoundAddress> = {};
    for (const [name, l] of this.#servers) listeners[name] = l.addr;
    return { listeners, admin: this.#admin?.addr };
  }

  /** Hooks the admin listener calls into (set by main once the reloader exists). */
  setAdminExtras(extras: AdminExtras): void {
    this.#adminRoutes = extras;
  }

  /**
   * Switches to `next` in one step: listeners new in `next` are bound first (a failure leaves
   * everything as it was and discards `next`), then the snapshot reference is swapped, then
   * listeners `next` no longer has are drained. Unchanged listeners keep their sockets and
   * connections, including WebSockets. Requests already running finish on the old snapshot.
   */
  async apply(next: Snapshot): Promise<void> {
    const prev = this.#snapshot;
    if (this.#state !== "ready") {
      next.discard(prev);
      throw new Error("shutting down");
    }
    const start: ListenerPlan[] = [];
    const stop: string[] = [];
    /** Listeners kept whose certificates changed: swapped in place once `next` is live. */
    const retls: ListenerPlan[] = [];
    // Turning the connection guard on or off changes how every HTTP listener accepts.
    const guardFlip = prev.config.server.connection_guard !== next.config.server.connection_guard;
    for (const plan of next.listeners.values()) {
      const old = prev.listeners.get(plan.name);
      const running = this.#servers.get(plan.name);
      const material = old !== undefined && !sameTlsMaterial(old, plan);
      const rebind = !old || !sameBinding(old, plan) || (guardFlip && plan.protocol === "http") ||
        (material && !running?.updateTls);
      if (rebind || !running) start.push(plan);
      else if (material) retls.push(plan);
    }
    for (const name of this.#servers.keys()) {
      const plan = next.listeners.get(name);
      if (!plan || start.includes(plan)) stop.push(name);
    }
    // A new listener on an address an outgoing one holds can bind only after that one stops.
    const waits = (p: ListenerPlan) =>
      stop.some((n) => addressesClash(prev.listeners.get(n)!, p, this.#servers.get(n)!));
    const bound = new Map<string, RunningListener>();
    try {
      for (const plan of start) {
        if (!waits(plan)) bound.set(plan.name, this.#bindNamed(plan, next));
      }
      // Every worker compiles the config before any switches: one that cannot refuses for all.
      // Port-0 listeners never wait for a clash: each has its port here to share.
      const ports = new Map<string, number>();
      for (const plan of next.listeners.values()) {
        const l = bound.get(plan.name) ??
          (stop.includes(plan.name) ? undefined : this.#servers.get(plan.name));
        if (l) ports.set(plan.name, l.addr.port);
      }
      await this.#role.peers?.prepare(next, ports);
    } catch (err) {
      for (const l of bound.values()) l.abort();
      next.discard(prev);
      throw err;
    }
    this.#snapshot = next;
    next.activate();
    for (const name of stop) {
      const outgoing = this.#servers.get(name)!;
      this.#servers.delete(name);
      this.#retire(name, outgoing);
    }
    for (const [name, l] of bound) this.#servers.set(name, l);
    for (const plan of retls) {
      this.#servers.get(plan.name)?.updateTls?.(plan.tls!);
      this.#log.info("listener certificates replaced", {
        listener: plan.name,
        certificates: [plan.tls!.defaultPair, ...plan.tls!.sni].map((p) => ({
          server_names: p.serverNames.length ? p.serverNames.join(",") : "(default)",
          sha256: p.fingerprint256,
          not_after: new Date(p.notAfter).toISOString(),
        })),
      });
    }
    prev.retire(next);
    const failures: string[] = [];
    await this.#role.peers?.commit().catch((err) => failures.push(String(err)));
    for (const plan of start) {
      if (bound.has(plan.name)) continue;
      try {
        this.#servers.set(plan.name, await bindWhenFree(() => this.#bind(plan, next)));
      } catch (err) {
        failures.push(bindFailure(plan.name, planAddress(plan), err).message);
      }
    }
    if (failures.length > 0) {
      throw new Error(`config applied, but listeners failed to bind: ${failures.join("; ")}`);
    }
  }

  /** Drains a listener in the background: stops accepting now, cut after the drain window. */
  #retire(name: string, l: RunningListener): void {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = Promise.race([
      l.drain(LISTENER_DRAIN_MS),
      new Promise<void>((resolve) => {
        // Deno.serve cannot be cut once its shutdown began (see shutdown()): stop waiting.
        timer = setTimeout(() => {
          this.#log.warn("removed listener still has requests after the drain window", {
            listener: name,
          });
          resolve();
        }, LISTENER_DRAIN_MS);
      }),
    ]).finally(() => {
      clearTimeout(timer);
      this.#retiring.delete(l);
    });
    this.#retiring.set(l, done);
    this.#log.info("listener removed", { listener: name });
  }

  /**
   * With workers (the shared arena), a listener's connection caps count every worker's
   * connections (src/server/admission.ts); undefined: the listener counts its own (one isolate,
   * or an arena too full, which is logged). Counted by listener name, the one key every isolate
   * shares (a port-0 listener's configured address is not its bound one); connections a reload's
   * rebinding left open on the old socket count until they close.
   */
  #processWideAdmission(
    plan: ListenerPlan,
    owner: Snapshot,
    caps: () => ConnectionCaps,
  ): Admission | undefined {
    const memory = owner.parts.sharedMemory;
    if (!memory) return undefined;
    const admission = sharedAdmission(memory, plan.name, caps);
    if (!admission) {
      this.#log.warn("shared memory full: this listener's connection caps count per worker", {
        listener: plan.name,
      });
    }
    return admission;
  }

  /** `#bind`, with a failure that names the listener and its address. */
  #bindNamed(plan: ListenerPlan, owner: Snapshot): RunningListener {
    return bindOrName(plan.name, planAddress(plan), () => this.#bind(plan, owner));
  }

  /** Binds `plan` as the snapshot it belongs to says (it may not be serving yet). */
  #bind(plan: ListenerPlan, owner: Snapshot): RunningListener {
    const name = plan.name;
    const caps = () => connectionCaps(this.#snapshot.config.server);
    const admission = this.#processWideAdmission(plan, owner, caps);
    if (plan.protocol === "grpc") {
      const g = grpcListenerPart.get().GrpcListener.start(plan, () => this.#snapshot, this.#log, {
        ...(this.#role.reusePort ? { reusePort: true } : {}),
        caps,
        admission,
        onAcceptError: (reason) => this.#snapshot.metrics.acceptError(name, "listener", reason),
        onRefused: (reason) => this.#snapshot.metrics.downstreamRefusal(name, reason),
      });
      return {
        addr: g.addr,
        openConnections: () => g.openConnections(),
        drain: (ms) => g.drain(ms),
        abort: () => g.close(),
        ...(plan.tls ? { updateTls: (tls: ListenerTls) => g.updateTls(tls) } : {}),
      };
    }
    const stop = new AbortController();
    const log = this.#log;
    const handler = createListenerHandler(
      name,
      () => this.#snapshot,
      log,
      this.recentErrors,
      // Read per request, once `guard` below has started its inner server.
      () => guard?.innerPort(),
      () => ownPort?.(),
    );
    let ownPort: (() => number) | undefined;
    const tag = this.#role.tag;
    const served: typeof handler = tag === undefined ? handler : async (req, info) => {
      const res = await handler(req, info);
      try {
        res.headers.set("x-ferry-worker", tag);
      } catch { /* immutable headers (an upgrade): left untagged */ }
      return res;
    };
    const listening = (a: Deno.NetAddr) =>
      log.info("listening", {
        listener: name,
        address: `${a.hostname}:${a.port}`,
        tls: plan.tls !== undefined,
      });
    // With the guard, Ferry accepts downstream connections itself and Deno.serve listens on
    // loopback behind it (src/server/guard.ts, docs/connections.md).
    const guard = owner.config.server.connection_guard
      ? new ConnectionGuard({
        name,
        hostname: plan.hostname,
        port: plan.port,
        tls: plan.tls,
        ...(this.#role.reusePort ? { reusePort: true } : {}),
        limits: () => guardLimits(this.#snapshot.config.server),
        admission,
        log,
        onAcceptError: (socket, reason) => this.#snapshot.metrics.acceptError(name, socket, reason),
        onRefused: (reason) => this.#snapshot.metrics.downstreamRefusal(name, reason),
      })
      : undefined;
    const onError = (err: unknown) => {
      // A response body the upstream broke after its head went out: Deno.serve reports its
      // stream's error here. It is no internal error: the transport noted the failure's flag
      // for the access log, and the client saw the answer cut (src/upstream/forward.ts).
      if (err instanceof ProxyError || err instanceof StreamReset) {
        log.debug("response body cut after its head", { listener: name, error: String(err) });
        return new Response(null, { status: 502 });
      }
      // The same request id and flag in the log line as in the response the client gets.
      const requestId = crypto.randomUUID();
      const res = errorResponse(
        new ProxyError("internal", "unexpected failure"),
        requestId,
        undefined,
        { errors: this.recentErrors, listener: name },
      );
      log.error("unhandled error in listener", {
        listener: name,
        request_id: requestId,
        flag: res.headers.get("x-ferry-flag"),
        error: String(err),
      });
      return res;
    };
    if (!guard) {
      const server = new RebindingServer(
        (port) =>
          Deno.serve({
            hostname: plan.hostname,
            port,
            ...(this.#role.reusePort ? { reusePort: true } : {}),
            signal: stop.signal,
            ...(plan.tls ? { cert: plan.tls.cert, key: plan.tls.key } : {}),
            onListen: listening,
            onError,
          }, served),
        plan.port,
        (err) => {
          this.#snapshot.metrics.acceptError(name, "listener", acceptErrorReason(err));
          log.warn("listener stopped accepting; binding it again", {
            listener: name,
            error: String(err),
          });
        },
      );
      ownPort = () => server.addr.port;
      return {
        get addr() {
          return server.addr;
        },
        drain: () => server.shutdown(),
        abort: () => stop.abort(),
      };
    }
    const wrapped = guard.wrap(served);
    try {
      // HTTP/1.1 is served by Ferry's own server inside the guard; the inner Deno.serve takes
      // HTTP/2 and upgrades (WebSocket) over the loopback hop.
      guard.start(
        (port) =>
          Deno.serve({
            hostname: "127.0.0.1",
            port,
            signal: stop.signal,
            onListen: () => {},
            onError,
          }, wrapped),
        { handler: served, onError },
      );
    } catch (err) {
      void guard.close();
      throw err;
    }
    listening(guard.addr);
    return {
      addr: guard.addr,
      openConnections: () => guard.openConnections(),
      ...(plan.tls ? { updateTls: (tls: ListenerTls) => guard.updateTls(tls) } : {}),
      drain: (ms) => drainGuarded(guard, ms),
      abort: () => {
        stop.abort();
        void guard.close();
      },
    };
  }

  /**
   * Open downstream connections, per listener, as the connection guard and the gRPC listeners
   * count them (for a gauge); HTTP listeners without the guard are not listed (Deno.serve does
   * not count).
   */
  openConnections(): Record<string, number> {
    const open: Record<string, number> = {};
    for (const [name, l] of this.#servers) {
      if (l.openConnections) open[name] = l.openConnections();
    }
    return open;
  }

  /** openConnections() and the admin listener's, for the gauge (listener="admin"). */
  #connectionsWithAdmin(): Record<string, number> {
    const open = this.openConnections();
    if (this.#admin) open.admin = this.#admin.openConnections();
    return open;
  }

  /**
   * Graceful stop: readiness turns to draining, listeners stop accepting, in-flight requests
   * finish. Resolves when they have, or at the deadline with `clean: false`; the caller then
   * exits, which cuts whatever is still open.
   */
  async shutdown(deadlineMs = 30_000): Promise<{ clean: boolean }> {
    this.#state = "draining";
    let peersClean = true;
    const drains = [
      // The workers (server.workers > 1) drain their listeners, each within the same deadline.
      ...(this.#role.peers
        ? [this.#role.peers.drain(deadlineMs).then((clean) => void (peersClean = clean))]
        : []),
      // gRPC connections get GOAWAY; each is cut by its own drain at the deadline.
      ...[...this.#servers.values()].map((l) => l.drain(deadlineMs)),
      ...this.#retiring.values(),
    ];
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<"deadline">((resolve) => {
      timer = setTimeout(() => resolve("deadline"), deadlineMs);
    });
    const result = await Promise.race([
      Promise.all(drains).then(() => "drained" as const),
      deadline,
    ]);
    clearTimeout(timer);
    if (result === "deadline") {
      // Aborting a Deno.serve whose shutdown() has begun neither cuts its requests nor fails
      // cleanly (an uncaught BadResource from Deno's own listener, measured on 2.9.6), so the
      // connections still open are cut by the process exiting, which main.ts does next.
      this.#log.warn("drain deadline reached: exiting with connections still open", {
        deadline_ms: deadlineMs,
      });
    }
    this.statsHistory.stop();
    await this.#admin?.shutdown();
    this.#snapshot.close();
    return { clean: result === "drained" && peersClean };
  }
}

/** Admin endpoints that need more than the snapshot (hot reload). */
export interface AdminExtras {
  readonly reload?: () => Promise<unknown>;
  readonly reloadStatus?: () => unknown;
  /** PUT /config and POST /config/validate (see Reloader.submit). */
  readonly submitConfig?: AdminView["submitConfig"];
  /** GET /metrics for the whole process when workers serve (src/workers/supervisor.ts). */
  readonly metrics?: AdminView["metrics"];
  /** GET /clusters with the workers' per-request counters. */
  readonly clusters?: AdminView["clusters"];
  /** Test hook: POST /debug/kill-worker (only with FERRY_TEST_HOOKS=1). */
  readonly killWorker?: AdminView["killWorker"];
}

/** Same socket and handshake settings: only the certificates may differ (see sameTlsMaterial). */
function sameBinding(a: ListenerPlan, b: ListenerPlan): boolean {
  return a.hostname === b.hostname && a.port === b.port && a.protocol === b.protocol &&
    (a.tls === undefined) === (b.tls === undefined) &&
    (a.tls?.clientCa === undefined) === (b.tls?.clientCa === undefined) &&
    a.tls?.clientAuth === b.tls?.clientAuth && a.tls?.minVersion === b.tls?.minVersion &&
    a.tls?.handshakeTimeoutMs === b.tls?.handshakeTimeoutMs;
}

/** The certificates, keys, SNI names and client CA, as read from their files. */
function sameTlsMaterial(a: ListenerPlan, b: ListenerPlan): boolean {
  if (!a.tls || !b.tls) return a.tls === b.tls;
  const pairs = (t: ListenerTls) =>
    JSON.stringify([t.defaultPair, ...t.sni].map((p) => [p.cert, p.key, p.serverNames]));
  return a.tls.clientCa === b.tls.clientCa && pairs(a.tls) === pairs(b.tls);
}

const WILDCARDS = new Set(["0.0.0.0", "::", "[::]"]);

/** Would `next` collide with the socket `running` (bound for `old`) holds? */
function addressesClash(old: ListenerPlan, next: ListenerPlan, running: RunningListener): boolean {
  const port = next.port === 0 ? -1 : next.port;
  if (port !== running.addr.port) return false;
  return old.hostname === next.hostname || WILDCARDS.has(old.hostname) ||
    WILDCARDS.has(next.hostname);
}

/** The OS error of a failed bind names neither the listener nor the address: this does. */
function bindFailure(listener: string, address: string, err: unknown): Error {
  const why = err instanceof Error ? err.message : String(err);
  return new Error(`cannot bind listener "${listener}" on ${address}: ${why}`, { cause: err });
}

function bindOrName<T>(listener: string, address: string, bind: () => T): T {
  try {
    return bind();
  } catch (err) {
    throw bindFailure(listener, address, err);
  }
}

function planAddress(plan: ListenerPlan): string {
  const host = plan.hostname.includes(":") ? `[${plan.hostname}]` : plan.hostname;
  return `${host}:${plan.port}`;
}

/** Binding right after a shutdown can race the old socket's close: retry briefly. */
async function bindWhenFree(bind: () => RunningListener): Promise<RunningListener> {
  for (let attempt = 0;; attempt++) {
    try {
      return bind();
    } catch (err) {
      if (!(err instanceof Deno.errors.AddrInUse) || attempt >= 20) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/**
 * The process's last line of defence: an error no handler caught (a rejected promise nobody
 * awaited, an 'error' event without a listener) is logged and counted in
 * `ferry_internal_errors_total`, and Ferry keeps serving instead of exiting with every client's
 * connection. Every such error is a bug to fix at its source; tests assert the count stays 0.
 */
export function installLastLineOfDefence(log: Logger, metrics: FerryMetrics): () => void {
  const report = (kind: "unhandledrejection" | "error", err: unknown) => {
    metrics.internalErrors.labels(kind).inc();
    log.error("internal error escaped every handler; still serving", {
      kind,
      ...errorFields(err),
      ...(err instanceof Error && err.stack ? { stack: err.stack } : {}),
    });
  };
  const onRejection = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    report("unhandledrejection", e.reason);
  };
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    report("error", e.error ?? e.message);
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  globalThis.addEventListener("error", onError);
  return () => {
    globalThis.removeEventListener("unhandledrejection", onRejection);
    globalThis.removeEventListener("error", onError);
  };
}
