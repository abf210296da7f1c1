/**
 * The header lists of a proxied gRPC call: what goes upstream (the client's metadata with path
 * and authority rewritten as the route says, deadline, ids and X-Forwarded-* settled, then the
 * route's header edits) and what goes back (connection fields dropped, the route's response
 * edits). The edits are the HTTP path's compiled ones (src/upstream/request_headers.ts).
 */
import type { HeaderField } from "../h2/hpack.ts";
import { headerValue } from "../h2/headers.ts";
import { forwardedHeaders } from "../pipeline/trust.ts";
import type { CallFacts, ClientIdentity } from "../pipeline/types.ts";
import type { Endpoint } from "../upstream/endpoint.ts";
import { HeaderList } from "../upstream/headers.ts";
import { applyEdits, type RouteEdits, xfccElement } from "../upstream/request_headers.ts";
import { formatGrpcTimeout } from "./status.ts";

/** What the header lists read of a route: its edits and whether the client's authority stays. */
export interface CallHeaderSettings extends RouteEdits {
  readonly cluster: { readonly preserveHost: boolean };
}

export interface CallContext {
  readonly peerIp: string;
  /** The peer is in `server.trusted_proxies`: its X-Forwarded-* (and XFCC) are kept. */
  readonly peerTrusted: boolean;
  /**
   * The call as the route's layers saw it (normalised path, the client address Ferry believes):
   * what the cluster's hash key reads. Without it, the raw path and the peer address.
   */
  readonly facts?: CallFacts;
  /** The listener's scheme (`https` with TLS), for X-Forwarded-Proto. */
  readonly scheme: "http" | "https";
  readonly requestId: string;
  /** Downstream mTLS: the client certificate's identity, sent upstream as XFCC. */
  readonly identity?: ClientIdentity | undefined;
  /** `performance.now()` when the call's headers arrived: its deadline starts there. */
  readonly arrivedAt?: number;
  /** The header for the identity upstream; default `x-forwarded-client-cert`. */
  readonly clientCertHeader?: string;
}

const XFCC = "x-forwarded-client-cert";

const HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);

/**
 * Request headers for upstream: the client's, with path and authority rewritten as the route
 * says, deadline and ids settled, then the route's header edits (the same compiled ones as HTTP,
 * src/upstream/request_headers.ts; the loader refuses edits of gRPC's own fields).
 */
export function upstreamFields(
  fields: readonly HeaderField[],
  endpoint: Endpoint,
  route: CallHeaderSettings,
  ctx: CallContext,
  remainingMs: number | undefined,
): HeaderField[] {
  const out: [string, string][] = [];
  const incoming = {
    for: null as string | null,
    proto: null as string | null,
    host: null as string | null,
  };
  let xfcc: string | undefined;
  const certHeader = ctx.clientCertHeader ?? XFCC;
  for (const [n, v] of fields) {
    // Host: the client's :authority (any other Host is refused, src/h2/headers.ts) goes as the
    // route says in :authority; a Host beside it would name the client's choice to the upstream.
    if (HOP.has(n) || n === "host" || n === "grpc-timeout" || n === "x-request-id") continue;
    if (n === ":scheme") out.push([n, endpoint.url.protocol === "https:" ? "https" : "http"]);
    else if (n === ":authority") {
      out.push([n, route.hostRewrite ?? (route.cluster.preserveHost ? v : endpoint.url.host)]);
    } else if (n === ":path") out.push([n, upstreamPath(v, route, ctx)]);
    else if (n === "x-forwarded-for") {
      incoming.for = incoming.for === null ? v : `${incoming.for}, ${v}`;
    } else if (n === "x-forwarded-proto") incoming.proto ??= v;
    else if (n === "x-forwarded-host") incoming.host ??= v;
    else if (n === certHeader) xfcc = ctx.peerTrusted ? v : undefined;
    else out.push([n, v]);
  }
  // The same rule as HTTP (src/server/trust.ts): an untrusted client's values are replaced.
  const fwd = forwardedHeaders(
    ctx.peerTrusted,
    ctx.peerIp,
    ctx.scheme,
    headerValue(fields, ":authority") ?? "",
    incoming,
  );
  out.push(["x-forwarded-for", fwd.for]);
  out.push(["x-forwarded-proto", fwd.proto]);
  out.push(["x-forwarded-host", fwd.host]);
  out.push(["x-request-id", ctx.requestId]);
  // As on the HTTP path: a client-sent XFCC only from a trusted proxy, then this hop's element.
  const element = ctx.identity ? xfccElement(ctx.identity) : undefined;
  const cert = element && xfcc ? `${xfcc},${element}` : element ?? xfcc;
  if (cert !== undefined) out.push([certHeader, cert]);
  if (remainingMs !== undefined) out.push(["grpc-timeout", formatGrpcTimeout(remainingMs)]);
  // Pseudo-headers come first and edits never name them: edited fields stay after them.
  applyEdits(new HeaderList(out), route.requestEdits);
  return out;
}

/**
 * The `:path` upstream: as the client sent it, or, when the route rewrites, the rewrite of the
 * normalised path the route matched (as on HTTP) with the client's query.
 */
function upstreamPath(raw: string, route: CallHeaderSettings, ctx: CallContext): string {
  const path = ctx.facts?.path;
  if (path === undefined) return raw;
  const rewritten = route.rewritePath(path);
  if (rewritten === path) return raw;
  const q = raw.indexOf("?");
  return q < 0 ? rewritten : rewritten + raw.slice(q);
}

/** Response headers as the client gets them: connection fields dropped, the route's edits. */
export function responseHeaders(
  head: readonly HeaderField[],
  route: CallHeaderSettings,
): HeaderField[] {
  const out = cleanHeaders(head);
  if (!route.responseEdits) return out;
  const list = new HeaderList(out.map(([n, v]) => [n, v]));
  applyEdits(list, route.responseEdits);
  return list.pairs;
}

/** Response headers and trailers pass as sent, less connection-specific fields. */
export function cleanHeaders(fields: readonly HeaderField[]): HeaderField[] {
  return fields.filter(([n]) => !HOP.has(n));
}
