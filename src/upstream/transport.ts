/**
 * How bytes reach an upstream. The default is fetch over one `Deno.HttpClient` pool per cluster.
 *
 * fetch always decompresses gzip/br/deflate bodies unless the request says
 * `Accept-Encoding: identity`, yet keeps `content-encoding`. A proxy must pass compressed bodies
 * through byte for byte, so requests whose client accepts a coding go through `node:http`
 * (which never decodes) on HTTP/1.1 clusters; see docs/design.md "Compressed bodies".
 */
import { ProxyError } from "../server/errors.ts";
import { denoTlsOptions, type UpstreamTls } from "./upstream_tls.ts";

export interface UpstreamRequest {
  /** Absolute URL: endpoint origin + path + query. */
  readonly url: string;
  readonly method: string;
  /** Lower-case [name, value] pairs (see headers.ts for why not a Headers object). */
  readonly headers: readonly [string, string][];
  readonly body: ReadableStream<Uint8Array> | null;
  readonly signal: AbortSignal;
}

export interface Transport {
  send(request: UpstreamRequest): Promise<Response>;
  close(): void;
}

export interface PoolOptions {
  readonly maxIdlePerEndpoint: number;
  readonly idleTimeoutMs: number;
  readonly protocol: "http1" | "h2c" | "auto";
  readonly caCerts?: string[];
  /** Client certificate, server name, expected identities (upstream mTLS). */
  readonly tls?: UpstreamTls;
}

export class FetchTransport implements Transport {
  readonly #client: Deno.HttpClient;

  constructor(opts: PoolOptions) {
    this.#client = Deno.createHttpClient({
      poolMaxIdlePerHost: opts.maxIdlePerEndpoint,
      poolIdleTimeout: opts.idleTimeoutMs,
      // h2c is prior knowledge: no HTTP/1.1 at all. "auto" lets TLS ALPN decide.
      http1: opts.protocol !== "h2c",
      http2: opts.protocol !== "http1",
      // Without allowHost fetch silently replaces the Host header we set.
      allowHost: true,
      ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
      // The client certificate for upstream mTLS (fetch cannot check the peer's identity).
      ...denoTlsOptions(opts.tls),
    });
  }

  get client(): Deno.HttpClient {
    return this.#client;
  }

  send(r: UpstreamRequest): Promise<Response> {
    // No async wrapper: one promise fewer per request on the hottest path.
    return fetch(r.url, {
      method: r.method,
      headers: r.headers,
      body: r.body,
      client: this.#client,
      redirect: "manual",
      signal: r.signal,
    }).catch((err) => {
      throw classifyUpstreamError(err, r.signal);
    });
  }

  close(): void {
    this.#client.close();
  }
}

/**
 * The byte-exact transport, loaded on first use: node:http pulls in Node's compatibility layer,
 * which costs memory (and GC work) that clients never asking for compression should not pay.
 */
export class LazyNodeTransport implements Transport {
  #loading: Promise<Transport> | undefined;
  #loaded: Transport | undefined;
  #closed = false;
  constructor(readonly opts: PoolOptions) {}

  async send(r: UpstreamRequest): Promise<Response> {
    if (!this.#loaded) {
      this.#loading ??= import("./node_transport.ts").then((m) =>
        new m.NodeHttpTransport(this.opts)
      );
      this.#loaded = await this.#loading;
      if (this.#closed) this.#loaded.close();
    }
    return await this.#loaded.send(r);
  }

  close(): void {
    this.#closed = true;
    this.#loaded?.close();
  }
}

/** Reasons the signal may carry; `forward.ts` aborts with one of these. */
export class TimeoutReason extends Error {}
export class ClientGoneReason extends Error {}

/** Maps transport failures onto the error table: refused, reset, timeout, protocol. */
export function classifyUpstreamError(err: unknown, signal: AbortSignal): ProxyError {
  if (err instanceof ProxyError) return err;
  if (signal.aborted) {
    if (signal.reason instanceof TimeoutReason) {
      return new ProxyError("upstream_timeout", signal.reason.message, { cause: err });
    }
    return new ProxyError("client_closed", "the client went away", { cause: err });
  }
  const text = describe(err);
  if (/refused|ECONNREFUSED|dns error|ENOTFOUND|EHOSTUNREACH|No route|unreachable/i.test(text)) {
    return new ProxyError("upstream_connect_failure", "the upstream refused the connection", {
      cause: err,
    });
  }
  if (/certificate|tls|ssl|handshake/i.test(text)) {
    return new ProxyError("upstream_connect_failure", "TLS handshake with the upstream failed", {
      cause: err,
    });
  }
  if (
    /reset|ECONNRESET|closed|EPIPE|broken pipe|incomplete|connection error|socket hang up/i.test(
      text,
    )
  ) {
    return new ProxyError("upstream_reset", "the upstream closed the connection", { cause: err });
  }
  return new ProxyError("upstream_protocol_error", "the upstream response was not valid HTTP", {
    cause: err,
  });
}

function describe(err: unknown): string {
  const parts: string[] = [];
  let e: unknown = err;
  for (let depth = 0; e && depth < 5; depth++) {
    if (e instanceof Error) {
      parts.push(e.message, (e as { code?: string }).code ?? "");
      e = e.cause;
    } else {
      parts.push(String(e));
      break;
    }
  }
  return parts.join(" | ");
}
