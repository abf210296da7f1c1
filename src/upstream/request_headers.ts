/**
 * The headers sent upstream for a request, shared by HTTP forwarding, WebSocket upgrades and
 * (the client-certificate element) gRPC: end-to-end headers of the client's request, then
 * `host`, `x-forwarded-*`, `x-forwarded-client-cert`, `x-request-id`, `via` and the route's edits.
 */
import type { ClientIdentity, RequestContext } from "../pipeline/types.ts";
import { forwardedHeaders } from "../pipeline/trust.ts";
import type { Endpoint } from "./endpoint.ts";
import { endToEndHeaders, type HeaderList } from "./headers.ts";

/** Header edits compiled from config: names lower-cased, removals before additions. */
export interface HeaderEdits {
  readonly remove: readonly string[];
  readonly set: readonly (readonly [string, string])[];
}

/**
 * A route's rewrites and header edits, compiled once (src/server/compile.ts) and applied by the
 * HTTP path (forward.ts, websocket.ts) and the gRPC path (src/grpc/proxy.ts) alike.
 */
export interface RouteEdits {
  /** The normalised request path (no query) to the path sent upstream. */
  readonly rewritePath: (path: string) => string;
  readonly hostRewrite: string | undefined;
  readonly requestEdits: HeaderEdits | undefined;
  readonly responseEdits: HeaderEdits | undefined;
}

/** What `upstreamHeaders` reads of a route's forwarding settings. */
export interface UpstreamHeaderSettings {
  readonly cluster: { readonly preserveHost: boolean };
  readonly hostRewrite: string | undefined;
  readonly requestEdits: HeaderEdits | undefined;
  /** `Via` pseudonym (RFC 9110 7.6.3). */
  readonly via: string;
}

export function applyEdits(headers: HeaderList, edits: HeaderEdits | undefined): void {
  if (!edits) return;
  for (const name of edits.remove) headers.delete(name);
  for (const [name, value] of edits.set) headers.set(name, value);
}

/** The headers sent upstream for a request, shared by HTTP forwarding and WebSocket upgrades. */
export function upstreamHeaders(
  req: Request,
  ctx: RequestContext,
  s: UpstreamHeaderSettings,
  endpoint: Endpoint,
  alsoDrop?: ReadonlySet<string>,
): HeaderList {
  const h = endToEndHeaders(req.headers, alsoDrop);
  h.set("host", s.hostRewrite ?? (s.cluster.preserveHost ? ctx.authority : endpoint.url.host));
  // Incoming X-Forwarded-* are believed only from trusted proxies; otherwise they are replaced.
  const fwd = forwardedHeaders(ctx.peerTrusted, ctx.peerIp, ctx.scheme, ctx.authority, {
    for: h.get("x-forwarded-for"),
    proto: h.get("x-forwarded-proto"),
    host: h.get("x-forwarded-host"),
  });
  h.set("x-forwarded-for", fwd.for);
  h.set("x-forwarded-proto", fwd.proto);
  h.set("x-forwarded-host", fwd.host);
  // Downstream mTLS: the verified client certificate in Envoy's x-forwarded-client-cert format.
  // A client-sent one is believed (and appended to) only from a trusted proxy.
  const certHeader = ctx.clientCertHeader;
  const priorCert = ctx.peerTrusted ? h.get(certHeader) : null;
  if (!ctx.peerTrusted) h.delete(certHeader);
  if (ctx.identity) {
    const element = xfccElement(ctx.identity);
    h.set(certHeader, priorCert ? `${priorCert},${element}` : element);
  }
  h.set("x-request-id", ctx.requestId);
  h.appendValue("via", `1.1 ${s.via}`);
  applyEdits(h, s.requestEdits);
  return h;
}

/** One XFCC element: `Hash=<sha256>;URI=<spiffe id>` (or `DNS=`, or `Subject="CN=..."`). */
export function xfccElement(id: ClientIdentity): string {
  const quote = (v: string) => /[,;="]/.test(v) ? `"${v.replaceAll('"', '\\"')}"` : v;
  const name = id.kind === "spiffe"
    ? `URI=${quote(id.id)}`
    : id.kind === "dns"
    ? `DNS=${quote(id.id)}`
    : `Subject=${quote(`CN=${id.id}`)}`;
  return id.certHash ? `Hash=${id.certHash};${name}` : name;
}
