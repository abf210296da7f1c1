/**
 * The terminal handler of a cluster route: picks an endpoint, builds the upstream request with
 * RFC 9110 7.6 semantics and streams both bodies through. Never follows redirects.
 */
import type { Handler, RequestContext } from "../pipeline/types.ts";
import { ProxyError } from "../server/errors.ts";
import type { Cluster, Endpoint } from "./cluster.ts";
import { endToEndHeaders, type HeaderList, isWebSocketUpgrade } from "./headers.ts";
import { ClientGoneReason, TimeoutReason, type Transport } from "./transport.ts";
import type { DeadlineQueue } from "../policy/deadlines.ts";
import { proxyWebSocket } from "./websocket.ts";

/** Header edits compiled from config: names lower-cased, removals before additions. */
export interface HeaderEdits {
  readonly remove: readonly string[];
  readonly set: readonly (readonly [string, string])[];
}

export interface ForwardSettings {
  readonly cluster: Cluster;
  /** Time allowed until upstream response headers arrive; 0 disables. */
  readonly timeoutMs: number;
  /** Shared deadline timer (a setTimeout per request costs too much CPU). */
  readonly deadlines: DeadlineQueue;
  readonly rewritePath: (path: string) => string;
  readonly hostRewrite: string | undefined;
  readonly requestEdits: HeaderEdits | undefined;
  readonly responseEdits: HeaderEdits | undefined;
  readonly websocket: boolean;
  readonly websocketMaxBuffer: number;
  /** `Via` pseudonym (RFC 9110 7.6.3). */
  readonly via: string;
}

const IDENTITY = /^\s*identity\s*$/i;

export function applyEdits(headers: HeaderList, edits: HeaderEdits | undefined): void {
  if (!edits) return;
  for (const name of edits.remove) headers.delete(name);
  for (const [name, value] of edits.set) headers.set(name, value);
}

/** The headers sent upstream for a request, shared by HTTP forwarding and WebSocket upgrades. */
export function upstreamHeaders(
  req: Request,
  ctx: RequestContext,
  s: ForwardSettings,
  endpoint: Endpoint,
  alsoDrop?: ReadonlySet<string>,
): HeaderList {
  const h = endToEndHeaders(req.headers, alsoDrop);
  h.set("host", s.hostRewrite ?? (s.cluster.preserveHost ? ctx.authority : endpoint.url.host));
  // Incoming X-Forwarded-* are believed only from trusted proxies; otherwise they are replaced.
  const priorFor = ctx.peerTrusted ? h.get("x-forwarded-for") : null;
  h.set("x-forwarded-for", priorFor ? `${priorFor}, ${ctx.peerIp}` : ctx.peerIp);
  if (!ctx.peerTrusted || !h.has("x-forwarded-proto")) h.set("x-forwarded-proto", ctx.scheme);
  if (!ctx.peerTrusted || !h.has("x-forwarded-host")) h.set("x-forwarded-host", ctx.authority);
  h.set("x-request-id", ctx.requestId);
  h.appendValue("via", `1.1 ${s.via}`);
  applyEdits(h, s.requestEdits);
  return h;
}

export function forwardTo(s: ForwardSettings): Handler {
  const cluster = s.cluster;
  return async function forward(req: Request, ctx: RequestContext): Promise<Response> {
    const endpoint = cluster.balancer.pick();
    ctx.outcome.cluster = cluster.name;
    ctx.outcome.endpoint = endpoint.origin;
    ctx.outcome.attempts++;
    const path = s.rewritePath(ctx.path);

    if (s.websocket && isWebSocketUpgrade(req)) {
      return await proxyWebSocket(req, ctx, s, endpoint, path);
    }

    const headers = upstreamHeaders(req, ctx, s, endpoint);
    const transport = chooseTransport(cluster, headers);

    const ctl = new AbortController();
    const onClientGone = () => ctl.abort(new ClientGoneReason("the client went away"));
    req.signal.addEventListener("abort", onClientGone, { once: true });
    const deadline = s.timeoutMs > 0
      ? s.deadlines.arm(
        s.timeoutMs,
        () =>
          ctl.abort(
            new TimeoutReason(`no response from ${endpoint.origin} within ${s.timeoutMs} ms`),
          ),
      )
      : undefined;

    let upstream: Response;
    try {
      upstream = await transport.send({
        url: endpoint.origin + path + ctx.search,
        method: req.method,
        headers: headers.pairs,
        body: req.body,
        signal: ctl.signal,
      });
    } finally {
      deadline?.cancel();
    }

    const out = endToEndHeaders(upstream.headers);
    out.set("x-request-id", ctx.requestId);
    applyEdits(out, s.responseEdits);
    // HEAD, 204 and 304 never carry a body, whatever the upstream sent (RFC 9110 6.4.1).
    const bodyless = req.method === "HEAD" || upstream.status === 204 || upstream.status === 304;
    if (bodyless && upstream.body) await upstream.body.cancel().catch(() => {});
    return new Response(bodyless ? null : upstream.body, {
      status: upstream.status,
      statusText: upstream.statusText,
      headers: out.pairs,
    });
  };
}

/**
 * fetch decodes compressed bodies unless asked for `identity`, so: no Accept-Encoding or identity
 * goes through fetch (saying identity explicitly, since fetch would add gzip); any other coding
 * goes through the byte-exact transport where the cluster has one, else is downgraded to identity.
 */
function chooseTransport(cluster: Cluster, headers: HeaderList): Transport {
  const ae = headers.get("accept-encoding");
  if (ae === null || IDENTITY.test(ae)) {
    headers.set("accept-encoding", "identity");
    return cluster.fetch;
  }
  if (cluster.passthrough) return cluster.passthrough;
  headers.set("accept-encoding", "identity");
  return cluster.fetch;
}

/** Exported for tests: the error raised when no endpoint can be chosen. */
export function noEndpoint(cluster: string): ProxyError {
  return new ProxyError("no_healthy_upstream", `cluster ${cluster} has no endpoint to send to`);
}
