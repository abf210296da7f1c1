/**
 * Upstream HTTP/2 connections for gRPC, per endpoint: opened on first use (h2c with prior
 * knowledge for http://, TLS with ALPN h2 for https://) and dropped when they close or receive
 * GOAWAY. A stream goes on the first connection with a free stream slot whose window is not held
 * by slow readers; when none has, another connection is opened, up to `maxConnectionsPerEndpoint`
 * (so one client holding the upstream's MAX_CONCURRENT_STREAMS, or stalling its window, does not
 * make everyone else wait). At the maximum, a stream queues on the least loaded connection.
 */
import { ByteBudget } from "../h2/budget.ts";
import { H2Connection } from "../h2/connection.ts";
import type { HeaderField } from "../h2/hpack.ts";
import type { H2Stream } from "../h2/stream.ts";
import { ProxyError } from "../pipeline/errors.ts";
import type { Endpoint } from "./endpoint.ts";
import type { EndpointPoolStats } from "../h1/pool.ts";
import { connectUpstreamTls, type UpstreamTls } from "./upstream_tls.ts";

export interface H2PoolOptions {
  readonly caCerts?: string[];
  /** Upstream mTLS: client certificate, server name, expected identities. */
  readonly tls?: UpstreamTls;
  /** Connections one endpoint may get. Default 4. */
  readonly maxConnectionsPerEndpoint?: number;
  /** A connection with no stream and no frame for this long is closed (GOAWAY). 0: never. */
  readonly idleTimeoutMs?: number;
  /**
   * ALPN offered on TLS; default `["h2"]`. An `auto` cluster's HTTP transport also offers
   * `http/1.1`, so that an HTTP/1.1-only upstream answers with it (`NoHttp2`) instead of failing
   * the handshake, and its requests can go over the HTTP/1.1 codec.
   */
  readonly alpn?: readonly string[];
}

/** The upstream's TLS agreed to a protocol other than h2 (ALPN `http/1.1`, or none). */
export class NoHttp2 extends ProxyError {
  constructor(readonly origin: string, readonly alpnProtocol: string | null) {
    super("upstream_connect_failure", `${origin} did not agree to h2 (ALPN ${alpnProtocol})`);
  }
}

/** Our connection receive window upstream (the H2Connection default). */
const CONNECTION_WINDOW = 8 << 20;
/**
 * Response bytes one upstream connection may hold unread on credit already returned: a stalled
 * reader's streams are bounded by their stream windows and cost this, not the connection window.
 */
const EARLY_CREDIT_PER_CONNECTION = 2 * CONNECTION_WINDOW;
/** The same, for all upstream connections of the process together. */
export const UPSTREAM_EARLY_CREDIT = new ByteBudget(128 << 20);
/** How long a new connection may take to send its SETTINGS before it is used anyway. */
const SETTINGS_WAIT_MS = 5_000;

type Target = Pick<Endpoint, "origin" | "url">;

interface EndpointConns {
  readonly conns: H2Connection[];
  connecting: Promise<H2Connection> | undefined;
  /** The endpoint left the cluster: a connection still being opened is drained once open. */
  retired?: boolean;
}

/**
 * How long calls still open on a retired endpoint's connections may go on before they are cut:
 * long enough for any unary call and most streams, short enough that a DNS answer rotating
 * every few seconds cannot pile up connections.
 */
const RETIRED_DRAIN_MS = 300_000;

/**
 * One endpoint's HTTP/2 connections, for /clusters and the pool metrics: the h1 pool's figures
 * (`waiting`: streams waiting for a slot, every connection at the peer's limit; `reused`: streams
 * opened on a connection already open), without WebSocket tunnels.
 */
export type H2EndpointStats = Omit<EndpointPoolStats, "tunnels">;

export class H2Pool {
  readonly #endpoints = new Map<string, EndpointConns>();
  /** Connections opened and streams requested per origin (kept while it is in the cluster). */
  readonly #opened = new Map<string, number>();
  readonly #streams = new Map<string, number>();
  readonly #opts: H2PoolOptions;
  readonly #max: number;
  #closed = false;

  constructor(opts: H2PoolOptions = {}) {
    this.#opts = opts;
    this.#max = Math.max(1, opts.maxConnectionsPerEndpoint ?? 4);
  }

  /**
   * Opens a stream to `endpoint` on a connection with room for it; throws
   * upstream_connect_failure when no connection can be had.
   */
  async request(
    endpoint: Target,
    fields: readonly HeaderField[],
    endStream = false,
  ): Promise<H2Stream> {
    this.#streams.set(endpoint.origin, (this.#streams.get(endpoint.origin) ?? 0) + 1);
    // Choice and stream registration happen in one synchronous step, so concurrent callers see
    // each other's streams and do not all pile onto one connection.
    return (await this.#whenChosen(endpoint, (c) => c.request(fields, endStream)));
  }

  /** A usable connection to `endpoint` (the one `request` would use now). */
  get(endpoint: Target): Promise<H2Connection> {
    return this.#whenChosen(endpoint, (c) => c);
  }

  /** Runs `use` on the chosen connection in the same tick as the choice. */
  async #whenChosen<T>(endpoint: Target, use: (c: H2Connection) => T): Promise<T> {
    for (let round = 0; round <= this.#max; round++) {
      const conn = this.#pickNow(endpoint);
      if (conn) return use(conn);
      const entry = this.#entry(endpoint.origin);
      const opening = entry.connecting ??= this.#open(endpoint, entry);
      try {
        const conn = await opening;
        // The endpoint left meanwhile: the calls that waited for this connection still use it.
        if (entry.retired) return use(conn);
      } catch (err) {
        // Cannot connect: queue on what we have, if anything.
        const still = entry.conns.filter((c) => c.available);
        if (still.length === 0) throw err;
        return use(leastLoaded(still));
      }
    }
    const usable = this.#entry(endpoint.origin).conns.filter((c) => c.available);
    if (usable.length > 0) return use(leastLoaded(usable));
    throw new ProxyError("upstream_connect_failure", `no connection to ${endpoint.origin}`);
  }

  /**
   * A connection to use right now: a free one, or the least loaded once at the maximum;
   * undefined when another should be opened (or one is being opened).
   */
  #pickNow(endpoint: Target): H2Connection | undefined {
    if (this.#closed) throw new ProxyError("no_healthy_upstream", "cluster is being retired");
    const entry = this.#entry(endpoint.origin);
    const usable = entry.conns.filter((c) => c.available);
    const free = usable.find((c) => c.hasStreamSlot && !c.windowHeld);
    if (free) return free;
    if (entry.connecting || usable.length < this.#max) return undefined;
    return leastLoaded(usable);
  }

  #entry(origin: string): EndpointConns {
    let entry = this.#endpoints.get(origin);
    if (!entry) {
      entry = { conns: [], connecting: undefined };
      this.#endpoints.set(origin, entry);
    }
    return entry;
  }

  async #open(endpoint: Target, entry: EndpointConns): Promise<H2Connection> {
    this.#opened.set(endpoint.origin, (this.#opened.get(endpoint.origin) ?? 0) + 1);
    try {
      const conn = await this.#connect(endpoint);
      // Its stream limit must be known before streams are spread over it.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        conn.ready,
        new Promise<void>((r) => (timer = setTimeout(r, SETTINGS_WAIT_MS))),
      ]);
      clearTimeout(timer);
      if (this.#closed) {
        void conn.drain(5_000);
        throw new ProxyError("no_healthy_upstream", "cluster is being retired");
      }
      // Opened for calls that chose the endpoint before it left: they open their streams first
      // (in this tick's continuations), then the connection drains.
      if (entry.retired) setTimeout(() => void conn.drain(RETIRED_DRAIN_MS), 0);
      entry.conns.push(conn);
      void conn.done.then(() => {
        const i = entry.conns.indexOf(conn);
        if (i >= 0) entry.conns.splice(i, 1);
        if (entry.conns.length === 0 && !entry.connecting) {
          if (this.#endpoints.get(endpoint.origin) === entry) {
            this.#endpoints.delete(endpoint.origin);
          }
        }
      });
      return conn;
    } finally {
      entry.connecting = undefined;
    }
  }

  async #connect(endpoint: Target): Promise<H2Connection> {
    const hostname = endpoint.url.hostname.replace(/^\[|\]$/g, "");
    const port = Number(endpoint.url.port);
    let conn: Deno.Conn;
    try {
      if (endpoint.url.protocol === "https:") {
        const tls = await connectUpstreamTls(hostname, port, [...this.#opts.alpn ?? ["h2"]], {
          ...(this.#opts.caCerts ? { caCerts: this.#opts.caCerts } : {}),
          ...this.#opts.tls,
        }, endpoint.origin);
        if (tls.alpnProtocol !== "h2") {
          tls.conn.close();
          throw new NoHttp2(endpoint.origin, tls.alpnProtocol);
        }
        conn = tls.conn;
      } else {
        conn = await Deno.connect({ hostname, port });
      }
    } catch (err) {
      if (err instanceof ProxyError) throw err;
      throw new ProxyError(
        "upstream_connect_failure",
        `cannot connect to ${endpoint.origin}: ${err instanceof Error ? err.message : err}`,
        { cause: err },
      );
    }
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    return new H2Connection(conn, {
      role: "client",
      idleTimeoutMs: this.#opts.idleTimeoutMs ?? 0,
      connectionWindowSize: CONNECTION_WINDOW,
      earlyCredit: { perConnection: EARLY_CREDIT_PER_CONNECTION, shared: UPSTREAM_EARLY_CREDIT },
    });
  }

  /** Endpoints with a connection open (for tests and /stats). */
  get size(): number {
    return this.#endpoints.size;
  }

  /** Connections open to `origin`. */
  connections(origin: string): number {
    return this.#endpoints.get(origin)?.conns.length ?? 0;
  }

  endpointStats(origin: string): H2EndpointStats {
    const conns = this.#endpoints.get(origin)?.conns ?? [];
    let idle = 0, waiting = 0;
    for (const c of conns) {
      waiting += c.waitingStreams;
      if (c.activeStreams === 0) idle++;
    }
    const opened = this.#opened.get(origin) ?? 0;
    const reused = Math.max(0, (this.#streams.get(origin) ?? 0) - opened);
    return { origin, open: conns.length, idle, waiting, opened, reused };
  }

  stats(): H2EndpointStats[] {
    return [...this.#opened.keys()].map((origin) => this.endpointStats(origin));
  }

  /**
   * `origin` left the cluster (DNS, reload): its connections get GOAWAY, finish the calls they
   * carry (for up to RETIRED_DRAIN_MS) and close; the pool forgets the endpoint.
   */
  retire(origin: string): void {
    this.#opened.delete(origin);
    this.#streams.delete(origin);
    const entry = this.#endpoints.get(origin);
    if (!entry) return;
    this.#endpoints.delete(origin);
    entry.retired = true;
    for (const c of entry.conns) void c.drain(RETIRED_DRAIN_MS);
  }

  close(): void {
    this.#closed = true;
    for (const entry of this.#endpoints.values()) {
      for (const c of entry.conns) void c.drain(5_000);
    }
    this.#endpoints.clear();
  }
}

function leastLoaded(conns: readonly H2Connection[]): H2Connection {
  let best = conns[0]!;
  for (const c of conns) if (c.activeStreams < best.activeStreams) best = c;
  return best;
}
