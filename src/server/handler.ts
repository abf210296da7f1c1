/**
 * The entry of every downstream request on a listener: read the snapshot once, validate and
 * normalise authority and path, settle the request id and client address, route, run the
 * route's chain, and map any failure through the one error table.
 */
import type { Snapshot } from "./compile.ts";
import type { RequestContext } from "../pipeline/types.ts";
import { normalizeHost, normalizePath } from "../routing/path.ts";
import { errorResponse, ProxyError, type RecentErrors } from "../pipeline/errors.ts";
import type { FerryMetrics, ListenerRecorder } from "../observability/metrics.ts";
import { activeSpan, annotate } from "../observability/tracing.ts";
import { errorFields, type Logger } from "../observability/log.ts";
import type { AccessLog } from "../observability/access_log.ts";
import { checkHeaderLimits, limitBody } from "./request_limits.ts";
import type { GuardedInfo } from "./guard.ts";
import { pickRequestId } from "./request_id.ts";
import { downstreamTicket } from "../pipeline/downstream.ts";

/** Default longest request target (path + query), as nginx's large_client_header_buffers 8k. */
export const MAX_URI_LENGTH = 8192;

export type ServeHandler = (
  req: Request,
  info: Deno.ServeHandlerInfo<Deno.NetAddr>,
) => Promise<Response>;

export function createListenerHandler(
  listener: string,
  currentSnapshot: () => Snapshot,
  log: Logger,
  recentErrors?: RecentErrors,
  /**
   * With the connection guard: the loopback port of the inner Deno.serve. Deno fills a missing
   * Host with `localhost:<that port>`, an authority no client has reason to name.
   */
  innerPort?: () => number | undefined,
  /** Without the guard: the listener's own bound port, which Deno fills in the same way. */
  ownPort?: () => number | undefined,
): ServeHandler {
  // The listener's recorder, looked up again only if a reload brings another metrics object.
  let metricsOwner: FerryMetrics | undefined;
  let metrics: ListenerRecorder | undefined;
  return async function handle(incoming, info): Promise<Response> {
    let req = incoming;
    const snap = currentSnapshot();
    const limits = snap.config.server;
    if (snap.metrics !== metricsOwner) {
      metricsOwner = snap.metrics;
      metrics = snap.metrics.listener(listener);
    }
    metrics!.inFlight++;
    const plan = snap.listeners.get(listener);
    const peerIp = info.remoteAddr.hostname;
    const peerTrusted = snap.trust.has(peerIp);
    const requestId = pickRequestId(
      req.headers.get("x-request-id"),
      snap.requestIdPolicy,
      peerTrusted,
    );
    const startedAt = performance.now();
    let ctx: RequestContext | undefined;
    let response: Response;
    let overLimit: (() => ProxyError | undefined) | undefined;
    let settled: (() => Promise<void>) | undefined;
    // Ferry's own HTTP/1.1 server: the raw target (its Request.url is normalised) and, for a
    // method Request cannot carry, the method as sent.
    const ticket = downstreamTicket(req);
    const method = ticket?.method ?? req.method;
    try {
      if (!plan) throw new ProxyError("no_route", `listener ${listener} is being removed`);
      checkMethod(method, ticket?.method !== undefined);
      const target = splitTarget(ticket?.url ?? req.url, limits.max_uri_bytes);
      const hidden = innerPort?.();
      if (
        hidden !== undefined
          ? namesPort(target.authority, hidden)
          : lacksHost(req, target.authority, ownPort?.())
      ) {
        // RFC 9112 3.2: an HTTP/1.1 request without Host is a 400 (so is HTTP/2 without
        // :authority, and a client that found and named the hidden port).
        throw new ProxyError("bad_request", "missing Host header");
      }
      checkHeaderLimits(req.headers, limits.max_header_bytes, limits.max_headers);
      const limited = limitBody(req, limits.max_body_bytes);
      if (limited.early) await limited.early;
      req = limited.req;
      overLimit = limited.overLimit;
      settled = limited.settled;
      // An empty Host is invalid too (RFC 9112 3.2). A Host header must be a valid authority
      // itself even when the target is
      // absolute-form: Deno builds req.url by pasting it in, so "Host: a/b" would otherwise move
      // "/b" into the path.
      const hostHeader = req.headers.get("host");
      const host = hostHeader === "" ||
          (hostHeader !== null && hostHeader !== target.authority &&
            normalizeHost(hostHeader) === null)
        ? null
        : normalizeHost(target.authority);
      if (host === null) throw new ProxyError("bad_request", "invalid Host / authority");
      const path = normalizePath(target.path);
      if (!path.ok) throw new ProxyError("bad_request", `invalid path: ${path.reason}`);
      if (hidesDotSegment(path.path)) {
        throw new ProxyError("bad_request", "invalid path: dot segment behind an encoded slash");
      }
      ctx = {
        requestId,
        peerIp,
        clientIp: peerTrusted
          ? snap.trust.clientIp(peerIp, req.headers.get("x-forwarded-for"))
          : peerIp,
        peerTrusted,
        listener,
        scheme: plan.scheme,
        host,
        authority: target.authority,
        path: path.path,
        search: target.search,
        startedAt,
        // Downstream mTLS: the connection guard's verified client certificate, if any.
        identity: (info as GuardedInfo).identity,
        clientCertHeader: plan.clientCertHeader,
        outcome: { attempts: 0 },
        ...(overLimit ? { bodyFailure: overLimit } : {}),
      };
      const route = plan.router.match({
        method: req.method,
        host,
        path: path.path,
        headers: req.headers,
        search: target.search,
      });
      if (!route) {
        throw new ProxyError("no_route", `no route for ${req.method} ${host}${path.path}`);
      }
      ctx.outcome.route = route.name;
      annotate(activeSpan(), "ferry.route", route.name);
      response = await route.handler(req, ctx);
    } catch (thrown) {
      // A body cut at the size limit surfaces as an upstream failure: it is the client's 413.
      const tripped = overLimit?.();
      if (tripped) await settled?.();
      const err = tripped ?? thrown;
      response = errorResponse(
        err,
        requestId,
        undefined,
        recentErrors && { errors: recentErrors, listener, route: ctx?.outcome.route },
      );
      if (response.status >= 500 && response.status !== 499 && log.enabled("warn")) {
        log.warn("proxy error", {
          request_id: requestId,
          status: response.status,
          flag: response.headers.get("x-ferry-flag"),
          route: ctx?.outcome.route,
          endpoint: ctx?.outcome.endpoint,
          ...errorFields(err),
        });
      }
    }
    metrics!.inFlight--;
    metrics!.route(ctx?.outcome.route).record(
      method,
      response.status,
      (performance.now() - startedAt) / 1000,
    );
    const accessLog = snap.accessLog;
    if (accessLog) {
      logWhenDone(
        accessLog,
        req,
        method,
        ctx,
        requestId,
        peerIp,
        listener,
        response,
        startedAt,
        info,
      );
    }
    return response;
  };
}

/** Writes the access-log line once the response is fully sent (or the client has gone). */
function logWhenDone(
  log: AccessLog,
  req: Request,
  method: string,
  ctx: RequestContext | undefined,
  requestId: string,
  peerIp: string,
  listener: string,
  response: Response,
  startedAt: number,
  info: Deno.ServeHandlerInfo<Deno.NetAddr>,
): void {
  const flag = response.headers.get("x-ferry-flag") ?? "-";
  // A response body that fails after its head is noted in the outcome (flags) by then: judged
  // at the end, so sampling never drops a failed one.
  const write = () => {
    if (!log.wants(flag === "-" ? ctx?.outcome.flags ?? flag : flag)) return;
    log.write({
      req,
      method,
      ctx,
      requestId,
      peerIp,
      listener,
      status: response.status,
      flag,
      responseHeaders: response.headers,
      startedAt,
      endedAt: performance.now(),
    });
  };
  info.completed.then(write, write);
}

/**
 * Without the guard: a request with no Host header whose authority is Deno's fill-in for a missing
 * one, `localhost:<the listener's port>` (whatever address it is bound to). An HTTP/2 request has
 * no Host header either, so one whose :authority is exactly that looks the same and is refused too
 * (Deno does not say the HTTP version; docs/design.md, "Known limits").
 */
export function lacksHost(req: Request, authority: string, port: number | undefined): boolean {
  return port !== undefined && authority === `localhost:${port}` && !req.headers.has("host");
}

const LOOPBACK = new Set(["localhost", "127.0.0.1", "[::1]"]);

/** Whether `authority` is a loopback name with exactly this port. */
export function namesPort(authority: string, port: number): boolean {
  const colon = authority.lastIndexOf(":");
  if (colon < 0 || authority.slice(colon + 1) !== String(port)) return false;
  const host = normalizeHost(authority);
  return host !== null && LOOPBACK.has(host);
}

/**
 * CONNECT would turn the proxy into a tunnel and TRACE/TRACK reflect credentials (cross-site
 * tracing); none is proxied. `uncarried`: Request.method could not carry the method as sent (the
 * Request stands in with GET), so it must not pass whatever it is.
 */
function checkMethod(method: string, uncarried: boolean): void {
  if (COMMON_METHODS.has(method) && !uncarried) return;
  if (method === "CONNECT" || method === "TRACE" || method === "TRACK") {
    throw new ProxyError("method_not_allowed", `${method} is not proxied`);
  }
  // Methods are case-sensitive, but fetch upper-cases these six (Fetch standard "normalize a
  // method"): "get" would reach the upstream as a different method. Refuse instead.
  if (FETCH_NORMALISED.has(method.toUpperCase())) {
    throw new ProxyError("bad_request", `method ${method} is not upper case`);
  }
  if (uncarried) throw new ProxyError("bad_request", `method ${method} cannot be proxied`);
}

const COMMON_METHODS = new Set(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]);
const FETCH_NORMALISED = new Set(["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]);

/**
 * `%2F` and `%5C` are kept encoded (they are data, not separators), but an upstream that decodes
 * them would see `/a/..%2F..%2Fetc` as a path that climbs: refuse dot segments hidden that way.
 */
export function hidesDotSegment(path: string): boolean {
  if (!path.includes("%2F") && !path.includes("%5C")) return false;
  const decoded = path.replaceAll("%2F", "/").replaceAll("%5C", "/").replaceAll("%2E", ".");
  return /(^|\/)\.{1,2}(\/|$)/.test(decoded);
}

/**
 * Splits Deno's absolute request URL without the cost of `new URL`: the authority as the
 * client sent it (Host, or the absolute-form target), the raw path and the raw query.
 */
export function splitTarget(
  url: string,
  maxUriBytes = MAX_URI_LENGTH,
): { authority: string; path: string; search: string } {
  // An absolute-form target reaches req.url as sent: only http and https name this proxy.
  if (!url.startsWith("http://") && !url.startsWith("https://")) {
    throw new ProxyError("bad_request", "request target scheme must be http or https");
  }
  const start = url.indexOf("//") + 2;
  let slash = url.indexOf("/", start);
  if (slash < 0) slash = url.length;
  const q = url.indexOf("?", slash);
  const authority = url.slice(start, slash);
  const path = q < 0 ? url.slice(slash) : url.slice(slash, q);
  const search = q < 0 ? "" : url.slice(q);
  if (path.length + search.length > maxUriBytes) {
    throw new ProxyError("uri_too_long", `request target longer than ${maxUriBytes} bytes`);
  }
  if (url.includes("#")) throw new ProxyError("bad_request", "a request target has no fragment");
  return { authority, path: path || "/", search };
}
