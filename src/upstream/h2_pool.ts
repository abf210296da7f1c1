/**
 * Upstream HTTP/2 connections for gRPC: one multiplexed connection per endpoint, opened on first
 * use (h2c with prior knowledge for http://, TLS with ALPN h2 for https://) and replaced when it
 * closes or receives GOAWAY. Requests wait for a connect in progress instead of opening more.
 */
import { H2Connection } from "../h2/connection.ts";
import { ProxyError } from "../server/errors.ts";
import type { Endpoint } from "./cluster.ts";
import { connectUpstreamTls, type UpstreamTls } from "./upstream_tls.ts";

export interface H2PoolOptions {
  readonly caCerts?: string[];
  /** Upstream mTLS: client certificate, server name, expected identities. */
  readonly tls?: UpstreamTls;
}

export class H2Pool {
  readonly #conns = new Map<string, Promise<H2Connection>>();
  readonly #opts: H2PoolOptions;
  #closed = false;

  constructor(opts: H2PoolOptions = {}) {
    this.#opts = opts;
  }

  /** A usable connection to `endpoint`; throws upstream_connect_failure when it cannot connect. */
  async get(endpoint: Pick<Endpoint, "origin" | "url">): Promise<H2Connection> {
    if (this.#closed) throw new ProxyError("no_healthy_upstream", "cluster is being retired");
    const key = endpoint.origin;
    const pending = this.#conns.get(key);
    if (pending) {
      const conn = await pending.catch(() => undefined);
      if (conn?.available) return conn;
      if (this.#conns.get(key) === pending) this.#conns.delete(key);
      // Someone else may already be reconnecting.
      const again = this.#conns.get(key);
      if (again) return again;
    }
    const opening = this.#connect(endpoint);
    this.#conns.set(key, opening);
    opening.then(
      (c) => c.done.then(() => this.#conns.get(key) === opening && this.#conns.delete(key)),
      () => this.#conns.get(key) === opening && this.#conns.delete(key),
    );
    return opening;
  }

  async #connect(endpoint: Pick<Endpoint, "origin" | "url">): Promise<H2Connection> {
    const hostname = endpoint.url.hostname.replace(/^\[|\]$/g, "");
    const port = Number(endpoint.url.port);
    let conn: Deno.Conn;
    try {
      if (endpoint.url.protocol === "https:") {
        const tls = await connectUpstreamTls(hostname, port, ["h2"], {
          ...(this.#opts.caCerts ? { caCerts: this.#opts.caCerts } : {}),
          ...this.#opts.tls,
        }, endpoint.origin);
        if (tls.alpnProtocol !== "h2") {
          tls.conn.close();
          throw new Error(`${endpoint.origin} did not agree to h2 (ALPN ${tls.alpnProtocol})`);
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
    return new H2Connection(conn, { role: "client" });
  }

  /** Connections currently open, by endpoint origin (for tests and /stats). */
  get size(): number {
    return this.#conns.size;
  }

  close(): void {
    this.#closed = true;
    for (const p of this.#conns.values()) {
      p.then((c) => void c.drain(5_000), () => {});
    }
    this.#conns.clear();
  }
}
