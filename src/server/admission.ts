/**
 * What every listener that accepts its own connections shares (the connection guard for HTTP,
 * the gRPC listener): the caps `server.max_connections` / `max_connections_per_ip`, and an
 * accept loop that no accept error ends. See docs/connections.md ("Descriptors").
 */
import type { Logger } from "../observability/log.ts";
import type { DownstreamRefusal } from "../observability/metrics.ts";
import type { SharedCounts, SharedKeyedCounts, SharedMemory } from "../policy/shared_memory.ts";

export interface ConnectionCaps {
  /** 0: no cap. */
  readonly maxConnections: number;
  /** 0: no cap. */
  readonly maxConnectionsPerIp: number;
}

/** The caps from the `server:` config section. */
export function connectionCaps(server: {
  readonly max_connections: number;
  readonly max_connections_per_ip: number;
}): ConnectionCaps {
  return {
    maxConnections: server.max_connections,
    maxConnectionsPerIp: server.max_connections_per_ip,
  };
}

/** Why a connection was refused, as the client is told. */
export type Refusal = "too many connections" | "too many connections from you";

/** The metrics label of a cap's refusal. */
export function refusalLabel(refusal: Refusal): DownstreamRefusal {
  return refusal === "too many connections"
    ? "too_many_connections"
    : "too_many_connections_per_ip";
}

/** What a listener asks at each accepted connection and tells at each close. */
export interface Admission {
  /** This isolate's open connections admitted here (a gauge; summed over workers). */
  readonly open: number;
  /** Counts a connection from `ip` in, or says which cap refuses it (nothing is counted then). */
  admit(ip: string): Refusal | undefined;
  /** Once per admitted connection, when it closes. */
  release(ip: string): void;
}

/**
 * Slots per worker in a listener's table of client addresses (workers > 1): 4096 addresses with
 * connections open in one worker before one may go unchecked (src/policy/shared_memory.ts).
 */
const ADDRESS_SLOTS = 4096;

/**
 * The caps of one listener for the whole process: with `server.workers > 1` its connections
 * are counted in the shared arena, so `max_connections: 1000` is 1000 over every worker, not
 * per worker. `key` names the listener (the same in every worker). Undefined when the arena is
 * full (the caller counts per worker then). With one worker, ConnectionAdmission does the same
 * with plain numbers.
 */
export function sharedAdmission(
  memory: SharedMemory,
  key: string,
  caps: () => ConnectionCaps,
): Admission | undefined {
  const total = memory.counts(`connections ${key}`, 1);
  const perIp = memory.keyedCounts(`connections per ip ${key}`, ADDRESS_SLOTS);
  return total && perIp ? new SharedConnectionAdmission(caps, total, perIp) : undefined;
}

class SharedConnectionAdmission implements Admission {
  readonly #caps: () => ConnectionCaps;
  readonly #total: SharedCounts;
  readonly #perIp: SharedKeyedCounts;

  constructor(
    caps: () => ConnectionCaps,
    total: SharedCounts,
    perIp: SharedKeyedCounts,
  ) {
    this.#caps = caps;
    this.#total = total;
    this.#perIp = perIp;
  }

  get open(): number {
    return this.#total.own(0);
  }

  admit(ip: string): Refusal | undefined {
    const caps = this.#caps();
    if (!this.#total.take(0, caps.maxConnections || Number.POSITIVE_INFINITY)) {
      return "too many connections";
    }
    if (!this.#perIp.take(ip, caps.maxConnectionsPerIp)) {
      this.#total.add(0, -1);
      return "too many connections from you";
    }
    return undefined;
  }

  release(ip: string): void {
    this.#perIp.release(ip);
    this.#total.add(0, -1);
  }
}

/** Counts one listener's open connections, in total and per client address (one isolate). */
export class ConnectionAdmission implements Admission {
  readonly #caps: () => ConnectionCaps;
  readonly #perIp = new Map<string, number>();
  #open = 0;

  /** `caps` is read at every admission, so a reload changes them without a restart. */
  constructor(caps: () => ConnectionCaps) {
    this.#caps = caps;
  }

  get open(): number {
    return this.#open;
  }

  /** Counts a connection from `ip` in, or says which cap refuses it (nothing is counted then). */
  admit(ip: string): Refusal | undefined {
    const caps = this.#caps();
    const fromIp = this.#perIp.get(ip) ?? 0;
    if (caps.maxConnections > 0 && this.#open >= caps.maxConnections) {
      return "too many connections";
    }
    if (caps.maxConnectionsPerIp > 0 && fromIp >= caps.maxConnectionsPerIp) {
      return "too many connections from you";
    }
    this.#open++;
    this.#perIp.set(ip, fromIp + 1);
    return undefined;
  }

  /** Once per admitted connection, when it closes. */
  release(ip: string): void {
    this.#open--;
    const left = (this.#perIp.get(ip) ?? 1) - 1;
    if (left <= 0) this.#perIp.delete(ip);
    else this.#perIp.set(ip, left);
  }
}

/** EMFILE (this process's descriptors), ENFILE (the system's), or anything else. */
export type AcceptErrorReason = "emfile" | "enfile" | "other";

export function acceptErrorReason(err: unknown): AcceptErrorReason {
  const text = String(err);
  // ENFILE's text ("Too many open files in system") contains EMFILE's: test it first.
  if (/os error 23\b|in system|file table overflow/i.test(text)) return "enfile";
  if (/os error 24\b|too many open files/i.test(text)) return "emfile";
  return "other";
}

/** Retry delays after a failed accept: short at first, so a freed descriptor is used soon. */
const RETRY_FIRST_MS = 20;
const RETRY_MAX_MS = 500;
/** A burst of failures ends after this long without one. */
const BURST_QUIET_MS = 2_000;

/**
 * One warning when failures start and one line when they have stopped, however many there are
 * in between: under descriptor exhaustion accepts fail and succeed in turn many times a second.
 */
export class FailureBursts {
  #failures = 0;
  #firstAt = 0;
  #lastAt = 0;

  constructor(
    private readonly log: Logger,
    private readonly fields: Record<string, unknown>,
    private readonly failingMsg: string,
    private readonly recoveredMsg: string,
  ) {}

  failed(details: Record<string, unknown>): void {
    const now = performance.now();
    if (this.#failures++ === 0) {
      this.#firstAt = now;
      this.log.warn(this.failingMsg, { ...this.fields, ...details });
    }
    this.#lastAt = now;
  }

  succeeded(): void {
    if (this.#failures === 0) return;
    const now = performance.now();
    if (now - this.#lastAt < BURST_QUIET_MS) return;
    this.log.info(this.recoveredMsg, {
      ...this.fields,
      failures: this.#failures,
      lasted_ms: Math.round(this.#lastAt - this.#firstAt),
    });
    this.#failures = 0;
  }
}

export interface AcceptLoopOptions {
  readonly listener: Deno.Listener;
  /** The listener's config name, for logs. */
  readonly name: string;
  readonly log: Logger;
  /** True once the owner closed the listener on purpose: the loop ends quietly. */
  readonly stopped: () => boolean;
  readonly onConnection: (conn: Deno.Conn) => void;
  /** Called for every failed accept (a metric). */
  readonly onError?: (reason: AcceptErrorReason) => void;
}

/**
 * Accepts until `stopped()`. A failed accept (out of descriptors, or anything else) never ends
 * the loop: the open connections keep being served, the loop waits briefly (doubling up to
 * 500 ms) and tries again; the pending connections wait in the kernel's backlog meanwhile. One
 * warning per burst of failures and one line once it is over (see FailureBursts).
 */
export async function acceptLoop(o: AcceptLoopOptions): Promise<void> {
  const bursts = new FailureBursts(
    o.log,
    { listener: o.name },
    "accept failing; retrying",
    "accepting again",
  );
  let delay = RETRY_FIRST_MS;
  while (!o.stopped()) {
    let conn: Deno.Conn;
    try {
      conn = await o.listener.accept();
    } catch (err) {
      // A listener closed under us cannot accept again; retrying would spin.
      if (o.stopped() || err instanceof Deno.errors.BadResource) return;
      const reason = acceptErrorReason(err);
      o.onError?.(reason);
      bursts.failed({ reason, error: String(err) });
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, RETRY_MAX_MS);
      continue;
    }
    bursts.succeeded();
    delay = RETRY_FIRST_MS;
    try {
      o.onConnection(conn);
    } catch (err) {
      // The owner could not set the connection up (for example no descriptor for its next
      // step): that connection is lost, the loop is not.
      o.log.warn("could not serve an accepted connection", {
        listener: o.name,
        error: String(err),
      });
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }
}

/**
 * A Deno.serve that is bound again whenever its own accept loop dies. Out of descriptors,
 * Deno.serve (2.9.6) closes its listener and rejects `finished`; unobserved, that rejection
 * ends the process. Here it is observed and the same port is bound again as soon as a
 * descriptor is free (measured: binding the port of the dead listener works while its accepted
 * connections are still open). The dead server keeps serving the connections it has until they
 * close, but it is let go: `shutdown()` reaches only the live one (behind the guard, the guard
 * itself drains and closes every connection).
 */
export class RebindingServer {
  readonly #bind: (port: number) => Deno.HttpServer<Deno.NetAddr>;
  readonly #port: number;
  readonly #onDeath: (err: unknown) => void;
  #current: Deno.HttpServer<Deno.NetAddr>;
  #stopped = false;

  /**
   * `bind(port)` serves on `port` and throws on failure, as Deno.serve does; the first failure is
   * the caller's. `port` is the configured one (0: any).
   */
  constructor(
    bind: (port: number) => Deno.HttpServer<Deno.NetAddr>,
    port: number,
    onDeath: (err: unknown) => void,
  ) {
    this.#bind = bind;
    this.#port = port;
    this.#onDeath = onDeath;
    this.#current = this.#start(port);
  }

  get addr(): Deno.NetAddr {
    return this.#current.addr;
  }

  #start(port: number): Deno.HttpServer<Deno.NetAddr> {
    const server = this.#bind(port);
    server.finished.catch((err) => this.#rebind(err));
    return server;
  }

  async #rebind(err: unknown): Promise<void> {
    if (this.#stopped) return;
    this.#onDeath(err);
    const previous = this.#current.addr.port;
    for (let delay = RETRY_FIRST_MS; !this.#stopped; delay = Math.min(delay * 2, RETRY_MAX_MS)) {
      await new Promise((r) => setTimeout(r, delay));
      if (this.#stopped) return;
      try {
        this.#current = this.#start(previous);
        return;
      } catch (bindErr) {
        // Someone else took a port we had been given by the system: any port will do.
        if (bindErr instanceof Deno.errors.AddrInUse && this.#port === 0) {
          try {
            this.#current = this.#start(0);
            return;
          } catch { /* no descriptor yet */ }
        }
        // Otherwise most likely still no descriptor for a listening socket: wait for one.
      }
    }
  }

  /** Deno.HttpServer.shutdown() of the live server; no binding again after this. */
  async shutdown(): Promise<void> {
    this.#stopped = true;
    await this.#current.shutdown().catch(() => {});
  }
}
