/**
 * How bytes reach an upstream. The default is fetch over one `Deno.HttpClient` pool per cluster.
 *
 * fetch always decompresses gzip/br/deflate bodies unless the request says
 * `Accept-Encoding: identity`, yet keeps `content-encoding`. A proxy must pass compressed bodies
 * through byte for byte, so requests whose client accepts a coding go through `node:http`
 * (which never decodes) on HTTP/1.1 clusters; see docs/design.md "Compressed bodies".
 */
import * as http from "node:http";
import * as https from "node:https";
import { Readable } from "node:stream";
import { ProxyError } from "../server/errors.ts";

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

/** HTTP/1.1 via node:http: used only where bytes must pass through undecoded. */
export class NodeHttpTransport implements Transport {
  readonly #httpAgent: http.Agent;
  readonly #httpsAgent: https.Agent;

  constructor(opts: PoolOptions) {
    const common = { keepAlive: true, maxFreeSockets: opts.maxIdlePerEndpoint };
    this.#httpAgent = new http.Agent(common);
    this.#httpsAgent = new https.Agent({
      ...common,
      ...(opts.caCerts ? { ca: opts.caCerts } : {}),
    });
  }

  send(r: UpstreamRequest): Promise<Response> {
    const url = new URL(r.url);
    const secure = url.protocol === "https:";
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of r.headers) {
      const prev = headers[name];
      if (prev === undefined) headers[name] = value;
      else if (Array.isArray(prev)) prev.push(value);
      else headers[name] = [prev, value];
    }
    const options: http.RequestOptions = {
      method: r.method,
      hostname: url.hostname.replace(/^\[|\]$/g, ""),
      port: url.port || (secure ? 443 : 80),
      path: url.pathname + url.search,
      headers,
      agent: secure ? this.#httpsAgent : this.#httpAgent,
      signal: r.signal,
    };
    return new Promise<Response>((resolve, reject) => {
      const req = (secure ? https : http).request(options, (res) => {
        const out = new Headers();
        const raw = res.rawHeaders;
        for (let i = 0; i + 1 < raw.length; i += 2) out.append(raw[i]!, raw[i + 1]!);
        const status = res.statusCode ?? 502;
        const noBody = r.method === "HEAD" || status === 204 || status === 304;
        const body = noBody ? null : (Readable.toWeb(res) as unknown as ReadableStream<Uint8Array>);
        if (noBody) res.resume();
        resolve(new Response(body, { status, statusText: res.statusMessage ?? "", headers: out }));
      });
      req.on("error", (err) => reject(classifyUpstreamError(err, r.signal)));
      if (r.body) {
        Readable.fromWeb(r.body as unknown as import("node:stream/web").ReadableStream).pipe(req);
      } else {
        req.end();
      }
    });
  }

  close(): void {
    this.#httpAgent.destroy();
    this.#httpsAgent.destroy();
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
