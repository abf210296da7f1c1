/** HTTP/1.1 through node:http, which never decodes bodies (see transport.ts for why). */
import * as http from "node:http";
import * as https from "node:https";
import { Readable } from "node:stream";
import {
  classifyUpstreamError,
  type PoolOptions,
  type Transport,
  type UpstreamRequest,
} from "./transport.ts";
import { nodeTlsOptions } from "./upstream_tls.ts";

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
      // Upstream mTLS: client certificate, SNI, and the identity check on each new connection.
      ...(opts.tls ? nodeTlsOptions(opts.tls) : {}),
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

  /**
   * Closes idle sockets now and every busy one as soon as its response ends: a reload retires
   * clusters while responses through them may still be streaming, and those must not be cut.
   */
  close(): void {
    for (const agent of [this.#httpAgent, this.#httpsAgent]) {
      for (const sockets of Object.values(agent.freeSockets)) {
        for (const socket of sockets ?? []) socket.destroy();
      }
      agent.on("free", (socket: { destroy(): void }) => socket.destroy());
    }
  }
}
