/** HTTP/1.1 through node:http, which never decodes bodies (see transport.ts for why). */
import * as http from "node:http";
import * as https from "node:https";
import { isIP } from "node:net";
import { pipeline, Readable } from "node:stream";
import {
  checkUpstreamHead,
  classifyUpstreamError,
  type PoolOptions,
  type Transport,
  type UpstreamRequest,
} from "./transport.ts";
import { nodeTlsOptions } from "./upstream_tls.ts";
import { notAnUpgrade } from "./websocket.ts";

/** Statuses whose responses have no body (Response refuses one for them). */
const NULL_BODY_STATUS = new Set([101, 204, 205, 304]);

/** HTTP/1.1 via node:http: used only where bytes must pass through undecoded. */
export class NodeHttpTransport implements Transport {
  readonly #httpAgent: http.Agent;
  readonly #httpsAgent: https.Agent;

  constructor(opts: PoolOptions) {
    const common = {
      keepAlive: true,
      maxFreeSockets: opts.maxIdlePerEndpoint,
      // pool.idle_timeout: an idle pooled socket is closed after it (a busy one is not cut:
      // node:http only reports the timeout of a socket in use).
      ...(opts.idleTimeoutMs > 0 ? { timeout: opts.idleTimeoutMs } : {}),
    };
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
    const hostname = url.hostname.replace(/^\[|\]$/g, "");
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of r.headers) {
      const prev = headers[name];
      if (prev === undefined) headers[name] = value;
      else if (Array.isArray(prev)) prev.push(value);
      else headers[name] = [prev, value];
    }
    const options: http.RequestOptions = {
      method: r.method,
      hostname,
      port: url.port || (secure ? 443 : 80),
      path: url.pathname + url.search,
      headers,
      agent: secure ? this.#httpsAgent : this.#httpAgent,
      // TLS names the endpoint, never the forwarded Host: node:http would otherwise take SNI and
      // the certificate check from the Host header (the client's, with preserve_host). "" for an
      // IP address (no SNI; the certificate is checked against the IP).
      ...(secure ? { servername: isIP(hostname) ? "" : hostname } : {}),
      signal: r.signal,
    };
    return new Promise<Response>((resolve, reject) => {
      // Every stream here has its error handled where it starts: an 'error' event without a
      // listener would end the process (node semantics), whatever the request.
      const fail = (err: unknown) => reject(classifyUpstreamError(err, r.signal));
      const req = (secure ? https : http).request(options, (res) => {
        res.on("error", () => {}); // also reported through the body stream or `req`
        const out = new Headers();
        const raw = res.rawHeaders;
        let response: Response;
        try {
          for (let i = 0; i + 1 < raw.length; i += 2) out.append(raw[i]!, raw[i + 1]!);
          const status = res.statusCode ?? 0;
          checkUpstreamHead(status, out);
          const noBody = r.method === "HEAD" || NULL_BODY_STATUS.has(status);
          const body = noBody
            ? null
            : (Readable.toWeb(res) as unknown as ReadableStream<Uint8Array>);
          if (noBody) res.resume();
          response = new Response(body, {
            status,
            statusText: res.statusMessage ?? "",
            headers: out,
          });
        } catch (err) {
          res.destroy();
          req.destroy();
          return fail(err);
        }
        resolve(response);
      });
      req.on("error", fail);
      // A 101 to a request that asked for no upgrade: without this listener node:http neither
      // answers nor fails, and the request would hang past every timeout.
      req.on("upgrade", (res, socket) => {
        socket.destroy();
        fail(notAnUpgrade(res.statusCode ?? 101));
      });
      // Settle on abort whatever node:http makes of it (the route timeout must always answer).
      const onAbort = () => {
        req.destroy();
        fail(r.signal.reason);
      };
      if (r.signal.aborted) onAbort();
      else r.signal.addEventListener("abort", onAbort, { once: true });
      req.once("close", () => r.signal.removeEventListener("abort", onAbort));
      if (r.body) {
        // pipeline, not pipe: a failing body (client gone, size limit) destroys the upstream
        // request instead of leaving it half-sent, and its error is handled here.
        const source = Readable.fromWeb(
          r.body as unknown as import("node:stream/web").ReadableStream,
        );
        pipeline(source, req, (err) => {
          if (err) fail(err);
        });
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
