/**
 * A running Ferry: one Deno.serve per listener plus the admin listener, all reading the current
 * snapshot through one reference. Used by main.ts and by the end-to-end tests in-process.
 */
import { type Snapshot, splitAddress } from "../config/compile.ts";
import type { Logger } from "../observability/log.ts";
import { adminHandler } from "./admin.ts";
import { errorResponse, ProxyError, RecentErrors } from "./errors.ts";
import { createListenerHandler } from "./handler.ts";

export interface BoundAddress {
  readonly hostname: string;
  readonly port: number;
}

export class Ferry {
  #snapshot: Snapshot;
  readonly #log: Logger;
  readonly #servers = new Map<
    string,
    { server: Deno.HttpServer<Deno.NetAddr>; stop: AbortController }
  >();
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
    snapshot.metrics.watch(() => ferry.#snapshot);
    snapshot.metrics.setConfigVersion(snapshot.version);
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
          adminHandler({
            state: () => ferry.#state,
            snapshot: () => ferry.#snapshot,
            recentErrors: ferry.recentErrors,
          }),
        );
      }
    } catch (err) {
      for (const { stop } of ferry.#servers.values()) stop.abort();
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
    for (const [name, { server }] of this.#servers) listeners[name] = server.addr;
    return { listeners, admin: this.#admin?.addr };
  }

  #listen(name: string): void {
    const plan = this.#snapshot.listeners.get(name)!;
    const stop = new AbortController();
    const log = this.#log;
    const handler = createListenerHandler(name, () => this.#snapshot, log, this.recentErrors);
    const server = Deno.serve({
      hostname: plan.hostname,
      port: plan.port,
      signal: stop.signal,
      ...(plan.tls ? { cert: plan.tls.cert, key: plan.tls.key } : {}),
      onListen: (a) =>
        log.info("listening", {
          listener: name,
          address: `${a.hostname}:${a.port}`,
          tls: plan.tls !== undefined,
        }),
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
    }, handler);
    this.#servers.set(name, { server, stop });
  }

  /**
   * Graceful stop: readiness turns to draining, listeners stop accepting, in-flight requests
   * finish; whatever is still open at the deadline is cut.
   */
  async shutdown(deadlineMs = 30_000): Promise<{ clean: boolean }> {
    this.#state = "draining";
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
    await this.#admin?.shutdown();
    this.#snapshot.close();
    return { clean: result === "drained" };
  }
}
