/**
 * A running Ferry: one Deno.serve per listener plus the admin listener, all reading the current
 * snapshot through one reference. Used by main.ts and by the end-to-end tests in-process.
 */
import { type ListenerPlan, type Snapshot, splitAddress } from "../config/compile.ts";
import type { Logger } from "../observability/log.ts";
import { adminHandler } from "./admin.ts";
import { errorResponse, ProxyError, RecentErrors } from "./errors.ts";
import { createListenerHandler } from "./handler.ts";
import { GrpcListener } from "../grpc/listener.ts";
import { ConnectionGuard, guardLimits } from "./guard.ts";

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
  /** Open downstream connections, when the listener counts them (the connection guard does). */
  openConnections?(): number;
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
  #admin: Deno.HttpServer<Deno.NetAddr> | undefined;
  #state: "ready" | "draining" = "ready";
  /** The last proxy-made errors, for the dashboard. */
  readonly recentErrors: RecentErrors = new RecentErrors(50);

  private constructor(snapshot: Snapshot, log: Logger) {
    this.#snapshot = snapshot;
    this.#log = log;
  }

  /** Binds every listener of the snapshot (and the admin listener) and starts serving. */
  static start(snapshot: Snapshot, log: Logger): Ferry {
    const ferry = new Ferry(snapshot, log);
    // Scrape-time gauges (health, breakers, in-flight) read whatever snapshot is serving.
    snapshot.metrics.watch(() => ferry.#snapshot, () => ferry.openConnections());
    snapshot.metrics.setConfigVersion(snapshot.version);
    try {
      for (const plan of snapshot.listeners.values()) {
        ferry.#servers.set(plan.name, ferry.#bind(plan, snapshot));
      }
      const admin = snapshot.config.admin;
      if (admin) {
        const { hostname, port } = splitAddress(admin.address);
        ferry.#admin = Deno.serve(
          {
            hostname,
            port,
            onListen: (a) => log.info("admin listening", { address: `${a.hostname}:${a.port}` }),
          },
          adminHandler({
            state: () => ferry.#state,
            snapshot: () => ferry.#snapshot,
            reload: () => ferry.#adminRoutes.reload?.(),
            reloadStatus: () => ferry.#adminRoutes.reloadStatus?.(),
            recentErrors: ferry.recentErrors,
            address: admin.address,
          }),
        );
      }
    } catch (err) {
      for (const l of ferry.#servers.values()) l.abort();
      void ferry.#admin?.shutdown();
      throw err;
    }
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
    // Turning the connection guard on or off changes how every HTTP listener accepts.
    const guardFlip = prev.config.server.connection_guard !== next.config.server.connection_guard;
    for (const plan of next.listeners.values()) {
      const old = prev.listeners.get(plan.name);
      const rebind = !old || !sameBinding(old, plan) || (guardFlip && plan.protocol === "http");
      if (rebind || !this.#servers.has(plan.name)) start.push(plan);
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
      for (const plan of start) if (!waits(plan)) bound.set(plan.name, this.#bind(plan, next));
    } catch (err) {
      for (const l of bound.values()) l.abort();
      next.discard(prev);
      throw new Error(`cannot bind listener: ${err instanceof Error ? err.message : err}`);
    }
    this.#snapshot = next;
    next.activate();
    for (const name of stop) {
      const outgoing = this.#servers.get(name)!;
      this.#servers.delete(name);
      this.#retire(name, outgoing);
    }
    for (const [name, l] of bound) this.#servers.set(name, l);
    prev.retire(next);
    const failures: string[] = [];
    for (const plan of start) {
      if (bound.has(plan.name)) continue;
      try {
        this.#servers.set(plan.name, await bindWhenFree(() => this.#bind(plan, next)));
      } catch (err) {
        failures.push(`${plan.name}: ${err instanceof Error ? err.message : err}`);
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

  /** Binds `plan` as the snapshot it belongs to says (it may not be serving yet). */
  #bind(plan: ListenerPlan, owner: Snapshot): RunningListener {
    const name = plan.name;
    if (plan.protocol === "grpc") {
      const g = GrpcListener.start(plan, () => this.#snapshot, this.#log);
      return { addr: g.addr, drain: (ms) => g.drain(ms), abort: () => g.close() };
    }
    const stop = new AbortController();
    const log = this.#log;
    const handler = createListenerHandler(
      name,
      () => this.#snapshot,
      log,
      this.recentErrors,
      // Read per request, once `guard` and `server` below exist.
      () => guard ? server.addr.port : undefined,
    );
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
        hostname: plan.hostname,
        port: plan.port,
        tls: plan.tls,
        limits: () => guardLimits(this.#snapshot.config.server),
        log,
      })
      : undefined;
    const server = Deno.serve({
      ...(guard
        ? { hostname: "127.0.0.1", port: 0 }
        : { hostname: plan.hostname, port: plan.port }),
      signal: stop.signal,
      ...(plan.tls && !guard ? { cert: plan.tls.cert, key: plan.tls.key } : {}),
      onListen: (a) => guard ? listening(guard.addr) : listening(a),
      onError: (err) => {
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
      },
    }, guard ? guard.wrap(handler) : handler);
    if (!guard) {
      return { addr: server.addr, drain: () => server.shutdown(), abort: () => stop.abort() };
    }
    guard.start(server.addr.port);
    return {
      addr: guard.addr,
      openConnections: () => guard.openConnections(),
      drain: (ms) => drainGuarded(guard, server, ms),
      abort: () => {
        stop.abort();
        void guard.close();
      },
    };
  }

  /**
   * Open downstream connections, per listener, as the connection guard counts them (for a
   * gauge); listeners without the guard are not listed (Deno.serve does not count).
   */
  openConnections(): Record<string, number> {
    const open: Record<string, number> = {};
    for (const [name, l] of this.#servers) {
      if (l.openConnections) open[name] = l.openConnections();
    }
    return open;
  }

  /**
   * Graceful stop: readiness turns to draining, listeners stop accepting, in-flight requests
   * finish. Resolves when they have, or at the deadline with `clean: false`; the caller then
   * exits, which cuts whatever is still open.
   */
  async shutdown(deadlineMs = 30_000): Promise<{ clean: boolean }> {
    this.#state = "draining";
    const drains = [
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
    await this.#admin?.shutdown();
    this.#snapshot.close();
    return { clean: result === "drained" };
  }
}

/** Admin endpoints that need more than the snapshot (hot reload). */
export interface AdminExtras {
  readonly reload?: () => Promise<unknown>;
  readonly reloadStatus?: () => unknown;
}

function sameBinding(a: ListenerPlan, b: ListenerPlan): boolean {
  return a.hostname === b.hostname && a.port === b.port && a.protocol === b.protocol &&
    a.tls?.cert === b.tls?.cert && a.tls?.key === b.tls?.key &&
    a.tls?.clientCa === b.tls?.clientCa && a.tls?.clientAuth === b.tls?.clientAuth;
}

const WILDCARDS = new Set(["0.0.0.0", "::", "[::]"]);

/** Would `next` collide with the socket `running` (bound for `old`) holds? */
function addressesClash(old: ListenerPlan, next: ListenerPlan, running: RunningListener): boolean {
  const port = next.port === 0 ? -1 : next.port;
  if (port !== running.addr.port) return false;
  return old.hostname === next.hostname || WILDCARDS.has(old.hostname) ||
    WILDCARDS.has(next.hostname);
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
 * Drains a listener behind the connection guard: no new connections; idle ones close now and
 * busy ones once their request is done; WebSockets stay open through the drain window and get
 * 1001 when it ends (just before `ms`, so the close frames go out before the process exits).
 * Without the guard, Deno.serve's shutdown() would close WebSockets at once.
 */
async function drainGuarded(
  guard: ConnectionGuard,
  server: Deno.HttpServer<Deno.NetAddr>,
  ms: number,
): Promise<void> {
  guard.beginDrain();
  const windowEnd = performance.now() + Math.max(0, ms - Math.min(1_000, ms / 10));
  while (performance.now() < windowEnd) {
    const { requests, tunnels } = guard.inUse();
    if (requests === 0 && tunnels === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await server.shutdown();
  // Let the last bytes (WebSocket close frames, final responses) through the pipes before the
  // guard closes what is left.
  const flushBy = performance.now() + 500;
  while (guard.openConnections() > 0 && performance.now() < flushBy) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await guard.close();
}
