/**
 * A running Ferry: one Deno.serve per listener plus the admin listener, all reading the current
 * snapshot through one reference. Used by main.ts and by the end-to-end tests in-process.
 */
import { type Snapshot, splitAddress } from "../config/compile.ts";
import type { Logger } from "../observability/log.ts";
import { adminHandler } from "./admin.ts";
import { errorResponse, ProxyError } from "./errors.ts";
import { createListenerHandler } from "./handler.ts";
import { ConnectionGuard, guardLimits } from "./guard.ts";

export interface BoundAddress {
  readonly hostname: string;
  readonly port: number;
}

export class Ferry {
  #snapshot: Snapshot;
  readonly #log: Logger;
  readonly #servers = new Map<
    string,
    { server: Deno.HttpServer<Deno.NetAddr>; stop: AbortController; guard?: ConnectionGuard }
  >();
  #admin: Deno.HttpServer<Deno.NetAddr> | undefined;
  #state: "ready" | "draining" = "ready";

  private constructor(snapshot: Snapshot, log: Logger) {
    this.#snapshot = snapshot;
    this.#log = log;
  }

  /** Binds every listener of the snapshot (and the admin listener) and starts serving. */
  static start(snapshot: Snapshot, log: Logger): Ferry {
    const ferry = new Ferry(snapshot, log);
    try {
      for (const plan of snapshot.listeners.values()) ferry.#listen(plan.name);
      const admin = snapshot.config.admin;
      if (admin) {
        const { hostname, port } = splitAddress(admin.address);
        ferry.#admin = Deno.serve(
          {
            hostname,
            port,
            onListen: (a) => log.info("admin listening", { address: `${a.hostname}:${a.port}` }),
          },
          adminHandler({ state: () => ferry.#state, snapshot: () => ferry.#snapshot }),
        );
      }
    } catch (err) {
      for (const { stop, guard } of ferry.#servers.values()) {
        stop.abort();
        void guard?.close();
      }
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
    for (const [name, { server, guard }] of this.#servers) {
      listeners[name] = guard?.addr ?? server.addr;
    }
    return { listeners, admin: this.#admin?.addr };
  }

  /**
   * Open downstream connections, per listener, as the connection guard counts them (for a
   * gauge); listeners without the guard are not listed (Deno.serve does not count).
   */
  openConnections(): Record<string, number> {
    const open: Record<string, number> = {};
    for (const [name, { guard }] of this.#servers) {
      if (guard) open[name] = guard.openConnections();
    }
    return open;
  }

  #listen(name: string): void {
    const plan = this.#snapshot.listeners.get(name)!;
    const stop = new AbortController();
    const log = this.#log;
    const handler = createListenerHandler(name, () => this.#snapshot, log);
    const listening = (a: Deno.NetAddr) =>
      log.info("listening", {
        listener: name,
        address: `${a.hostname}:${a.port}`,
        tls: plan.tls !== undefined,
      });
    // With the guard, Ferry accepts downstream connections itself and Deno.serve listens on
    // loopback behind it (src/server/guard.ts, docs/connections.md).
    const guard = this.#snapshot.config.server.connection_guard
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
        log.error("unhandled error in listener", { listener: name, error: String(err) });
        return errorResponse(new ProxyError("internal", "unexpected failure"), crypto.randomUUID());
      },
    }, guard ? guard.wrap(handler) : handler);
    guard?.start(server.addr.port);
    this.#servers.set(name, { server, stop, ...(guard ? { guard } : {}) });
  }

  /**
   * Graceful stop: readiness turns to draining, listeners stop accepting, in-flight requests
   * finish; whatever is still open at the deadline is cut.
   */
  async shutdown(deadlineMs = 30_000): Promise<{ clean: boolean }> {
    this.#state = "draining";
    for (const { guard } of this.#servers.values()) guard?.stopAccepting();
    const drains = [...this.#servers.values()].map(({ server }) => server.shutdown());
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
      this.#log.warn("drain deadline reached: closing remaining connections", {
        deadline_ms: deadlineMs,
      });
      for (const { stop } of this.#servers.values()) stop.abort();
      await Promise.allSettled(drains);
    }
    await Promise.all([...this.#servers.values()].map(({ guard }) => guard?.close()));
    await this.#admin?.shutdown();
    this.#snapshot.close();
    return { clean: result === "drained" };
  }
}
