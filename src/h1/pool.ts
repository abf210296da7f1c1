/**
 * Connections to one upstream endpoint: at most `maxConnections` open, at most `maxIdle` kept
 * idle (most recently used first), idle ones closed after `idleTimeoutMs`, each retired after
 * `maxRequestsPerConnection` exchanges. Requests beyond the limit wait in order.
 */
import { type ConnectionOwner, H1Connection } from "./connection.ts";
import { checksPeer, connectUpstreamTls, type UpstreamTls } from "../upstream/upstream_tls.ts";
import { ProxyError } from "../pipeline/errors.ts";

export interface H1PoolOptions {
  readonly maxIdlePerEndpoint: number;
  readonly maxConnectionsPerEndpoint: number;
  readonly idleTimeoutMs: number;
  /** 0: unlimited. */
  readonly maxRequestsPerConnection: number;
  readonly connectTimeoutMs: number;
  /** TLS towards https endpoints: CA, client certificate, server name, expected identities. */
  readonly tls?: UpstreamTls;
}

export interface EndpointPoolStats {
  readonly origin: string;
  readonly open: number;
  readonly idle: number;
  readonly waiting: number;
  readonly opened: number;
  readonly reused: number;
  /** Upgraded connections (WebSocket tunnels) open now; outside the pool's limits. */
  readonly tunnels: number;
}

interface Waiter {
  resolve(c: H1Connection): void;
  reject(err: unknown): void;
}

/** Connect failures carry this so the transport can name them. */
export class ConnectError extends Error {
  constructor(message: string, readonly timedOut: boolean, cause?: unknown) {
    super(message, { cause });
    this.name = "ConnectError";
  }
}

export class EndpointPool implements ConnectionOwner {
  readonly #idle: H1Connection[] = [];
  readonly #waiters: Waiter[] = [];
  readonly #hostname: string;
  readonly #port: number;
  readonly #tls: boolean;
  #open = 0;
  #closed = false;
  /** The endpoint left its cluster: no connection is parked again (see retire). */
  #retired = false;
  #sweeper: ReturnType<typeof setInterval> | undefined;
  opened = 0;
  reused = 0;
  tunnels = 0;

  constructor(readonly origin: string, readonly opts: H1PoolOptions) {
    const url = new URL(origin);
    this.#tls = url.protocol === "https:";
    this.#hostname = url.hostname.replace(/^\[|\]$/g, "");
    this.#port = Number(url.port) || (this.#tls ? 443 : 80);
  }

  stats(): EndpointPoolStats {
    return {
      origin: this.origin,
      open: this.#open,
      idle: this.#idle.length,
      waiting: this.#waiters.length,
      opened: this.opened,
      reused: this.reused,
      tunnels: this.tunnels,
    };
  }

  /** The most recently used idle connection, if any (no promise: the common case). */
  takeIdle(): H1Connection | undefined {
    let c: H1Connection | undefined;
    while ((c = this.#idle.pop())) {
      if (c.isClosed) continue;
      c.idle = false;
      this.reused++;
      return c;
    }
    return undefined;
  }

  /** An idle connection (unless `fresh`), a new one, or the next one freed when at the limit. */
  acquire(signal: AbortSignal, fresh: boolean): Promise<H1Connection> {
    const idle = fresh ? undefined : this.takeIdle();
    if (idle) return Promise.resolve(idle);
    if (this.#open < this.opts.maxConnectionsPerEndpoint) return this.#connect();
    return new Promise<H1Connection>((resolve, reject) => {
      const onAbort = () => {
        const i = this.#waiters.indexOf(waiter);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(signal.reason);
      };
      const waiter: Waiter = {
        resolve: (c) => {
          signal.removeEventListener("abort", onAbort);
          resolve(c);
        },
        reject: (e) => {
          signal.removeEventListener("abort", onAbort);
          reject(e);
        },
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  async #connect(): Promise<H1Connection> {
    this.#open++;
    this.opened++;
    try {
      return new H1Connection(await this.#dial(), this);
    } catch (err) {
      this.#open--;
      this.#serveWaiter();
      throw err;
    }
  }

  /**
   * A connection of its own for an upgrade (WebSocket): never pooled, and not counted against
   * the pool's limits, so long-lived tunnels do not starve requests. `done` once it is closed.
   */
  async dialTunnel(): Promise<{ conn: Deno.Conn; done: () => void }> {
    if (this.#closed) throw new Error("the cluster was closed");
    const conn = await this.#dial();
    this.tunnels++;
    let done = false;
    return {
      conn,
      done: () => {
        if (done) return;
        done = true;
        this.tunnels--;
      },
    };
  }

  /** A socket to the endpoint (TLS when https), within the connect timeout. */
  async #dial(): Promise<Deno.Conn> {
    const ctl = new AbortController();
    let handshaking: Deno.TlsConn | undefined;
    // The timeout covers the TLS handshake too: closing the socket ends a handshake that hangs.
    const timer = setTimeout(() => {
      ctl.abort();
      try {
        handshaking?.close();
      } catch { /* closed */ }
    }, this.opts.connectTimeoutMs);
    let conn: Deno.Conn;
    const tls = this.#tls ? this.opts.tls : undefined;
    try {
      if (tls && (tls.cert !== undefined || checksPeer(tls))) {
        // A client certificate (Deno.startTls takes none) or a peer identity to check (Deno
        // shows no peer certificate): connectUpstreamTls picks Deno.connectTls or node:tls.
        const made = connectUpstreamTls(this.#hostname, this.#port, ["http/1.1"], tls, this.origin)
          .then((m) => {
            if (ctl.signal.aborted) m.conn.close(); // too late: the timeout already answered
            return m.conn;
          });
        conn = await Promise.race([
          made,
          new Promise<never>((_, reject) =>
            ctl.signal.addEventListener("abort", () => reject(new Error("connect timeout")), {
              once: true,
            })
          ),
        ]);
      } else {
        const tcp = await Deno.connect({
          hostname: this.#hostname,
          port: this.#port,
          signal: ctl.signal,
        });
        // A request's head and its body go out in separate writes: with Nagle's algorithm the
        // body waits for the head's ACK, which the upstream delays (40 ms on Linux) until it has
        // something to send.
        tcp.setNoDelay(true);
        if (this.#tls) {
          // The endpoint's host name is the TLS server name, checked against the cluster's CA.
          const started = await Deno.startTls(tcp, {
            hostname: this.#hostname,
            ...(tls?.caCerts ? { caCerts: tls.caCerts } : {}),
          });
          handshaking = started;
          await started.handshake(); // here, not lazily at the first write: within the timeout
          conn = started;
        } else conn = tcp;
      }
    } catch (err) {
      // An upstream identity that does not match has its own kind and flag (UI).
      if (err instanceof ProxyError) throw err;
      throw new ConnectError(
        ctl.signal.aborted
          ? `no connection to ${this.origin} within ${this.opts.connectTimeoutMs} ms`
          : `connecting to ${this.origin} failed`,
        ctl.signal.aborted,
        err,
      );
    } finally {
      clearTimeout(timer);
    }
    return conn;
  }

  /** A waiter gets a new connection when one closed below the limit. */
  #serveWaiter(): void {
    if (this.#closed || this.#waiters.length === 0) return;
    if (this.#open >= this.opts.maxConnectionsPerEndpoint) return;
    const w = this.#waiters.shift()!;
    this.#connect().then(w.resolve, w.reject);
  }

  release(c: H1Connection): void {
    const max = this.opts.maxRequestsPerConnection;
    if (this.#closed || c.isClosed || (max > 0 && c.requests >= max)) {
      c.close();
      return;
    }
    const w = this.#waiters.shift();
    if (w) {
      c.start = c.end = 0;
      this.reused++;
      w.resolve(c);
      return;
    }
    if (this.#retired || this.#idle.length >= this.opts.maxIdlePerEndpoint) {
      c.close();
      return;
    }
    c.park();
    this.#idle.push(c);
    this.#armSweeper();
  }

  closed(c: H1Connection): void {
    this.#open--;
    const i = this.#idle.indexOf(c);
    if (i >= 0) this.#idle.splice(i, 1);
    this.#serveWaiter();
  }

  /** One timer per endpoint (not per connection) closes connections idle too long. */
  #armSweeper(): void {
    if (this.#sweeper !== undefined || this.opts.idleTimeoutMs <= 0) return;
    const every = Math.max(250, Math.min(this.opts.idleTimeoutMs / 4, 5000));
    const sweeper = setInterval(() => {
      const cutoff = performance.now() - this.opts.idleTimeoutMs;
      for (const c of [...this.#idle]) if (c.idleSince <= cutoff) c.close();
      if (this.#idle.length === 0) {
        clearInterval(this.#sweeper);
        this.#sweeper = undefined;
      }
    }, every);
    Deno.unrefTimer(sweeper);
    this.#sweeper = sweeper;
  }

  /**
   * The endpoint left its cluster (DNS, reload): idle connections close now, busy ones when their
   * exchange ends; requests already waiting for a connection are still served.
   */
  retire(): void {
    this.#retired = true;
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    for (const c of [...this.#idle]) c.close();
  }

  /** Closes idle connections now; busy ones close when their exchange ends. */
  close(): void {
    this.#closed = true;
    if (this.#sweeper !== undefined) clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    for (const c of [...this.#idle]) c.close();
    for (const w of this.#waiters.splice(0)) w.reject(new Error("the cluster was closed"));
  }
}
