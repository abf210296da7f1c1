/**
 * The terminal handler of a cluster route: picks an endpoint, builds the upstream request with
 * RFC 9110 7.6 semantics and streams both bodies through. Never follows redirects.
 */
import type { ClientIdentity, Handler, RequestContext } from "../pipeline/types.ts";
import { ProxyError, toProxyError } from "../server/errors.ts";
import { forwardedHeaders } from "../server/trust.ts";
import type { Cluster, Endpoint, Members } from "./cluster.ts";
import { endToEndHeaders, endToEndPairs, type HeaderList, isWebSocketUpgrade } from "./headers.ts";
import { h1ResponseParts } from "../h1/connection.ts";
import {
  checkUpstreamHead,
  classifyUpstreamError,
  clientBodyError,
  ClientGoneReason,
  TimeoutReason,
  type Transport,
  watchRequestBody,
} from "./transport.ts";
import {
  backoffMs,
  errorRetriable,
  methodRetriable,
  parseRetryAfter,
  replay,
  replayableBody,
  type RetryPolicy,
  statusRetriable,
} from "../policy/retry.ts";
import type { DeadlineQueue } from "../policy/deadlines.ts";
import type { BreakerStore } from "../policy/circuit_breaker.ts";
import { outcomeOfError, outcomeOfStatus } from "./health/outlier.ts";
import { notAnUpgrade, proxyWebSocket } from "./websocket.ts";
import { relayBody } from "./relay.ts";
import type { ClusterRecorder } from "../observability/metrics.ts";
import {
  activeSpan,
  annotate,
  dropIncomingTraceContext,
  startClientSpan,
} from "../observability/tracing.ts";

/** Header edits compiled from config: names lower-cased, removals before additions. */
export interface HeaderEdits {
  readonly remove: readonly string[];
  readonly set: readonly (readonly [string, string])[];
}

export interface ForwardSettings {
  readonly cluster: Cluster;
  /** Time allowed until upstream response headers arrive; 0 disables. */
  readonly timeoutMs: number;
  /** Time allowed for each attempt when retrying; 0 disables. */
  readonly perTryTimeoutMs: number;
  /** Shared deadline timer (a setTimeout per request costs too much CPU). */
  readonly deadlines: DeadlineQueue;
  readonly retry: RetryPolicy | undefined;
  /** Breakers (the cluster's, or the route's own override) and the slot an endpoint uses. */
  readonly breaker: BreakerStore | undefined;
  /** true: one breaker for the whole cluster (slot 0); false: one per endpoint. */
  readonly breakerPerCluster: boolean;
  /** Cluster thresholds: active requests in the cluster, and per endpoint. */
  readonly maxRequests: number;
  readonly maxRequestsPerEndpoint: number;
  /** Streamed response bodies silent for this long are cut; 0 disables. */
  readonly idleTimeoutMs: number;
  readonly rewritePath: (path: string) => string;
  readonly hostRewrite: string | undefined;
  readonly requestEdits: HeaderEdits | undefined;
  readonly responseEdits: HeaderEdits | undefined;
  readonly websocket: boolean;
  readonly websocketMaxBuffer: number;
  /** Client-side limits for relayed bodies and WebSockets (server section). */
  readonly sendTimeoutMs: number;
  readonly websocketMaxMessageBytes: number;
  /** `Via` pseudonym (RFC 9110 7.6.3). */
  readonly via: string;
  /** The cluster's pre-resolved metric children. */
  readonly metrics: ClusterRecorder;
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
  s: ForwardSettings,
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

export function forwardTo(s: ForwardSettings): Handler {
  const cluster = s.cluster;
  const retry = s.retry;
  const timeoutMessage = `no response within the route timeout of ${s.timeoutMs} ms`;
  const onRouteTimeout = (ctl: AbortController) => ctl.abort(new TimeoutReason(timeoutMessage));
  return async function forward(req: Request, ctx: RequestContext): Promise<Response> {
    ctx.outcome.cluster = cluster.name;
    // One membership for the whole request, even if DNS or a reload changes it meanwhile.
    const m = cluster.members;
    const span = activeSpan();
    annotate(span, "ferry.cluster", cluster.name);
    const path = s.rewritePath(ctx.path);
    const key = cluster.hashKey?.(req, ctx);
    const pickCtx = key === undefined ? undefined : { hashKey: key };

    if (s.websocket && isWebSocketUpgrade(req)) {
      const { endpoint, permit } = admit(cluster.name, m, s, pickCtx, undefined);
      ctx.outcome.endpoint = endpoint.origin;
      ctx.outcome.attempts++;
      // A WebSocket's success, for the breaker, is its upstream handshake.
      try {
        const res = await proxyWebSocket(req, ctx, s, endpoint, path);
        s.breaker?.onSuccess(slotOf(s, endpoint), permit);
        return res;
      } catch (err) {
        s.breaker?.onFailure(slotOf(s, endpoint), permit);
        throw err;
      }
    }

    // Retries need a body that can be sent again: buffer it up to the policy's limit.
    let retries = retry && methodRetriable(retry, req.method) ? retry.retries : 0;
    // Exactly the body the request had, or none (400 for one Ferry was not given).
    let body = requestBody(req);
    let chunks: Uint8Array[] | undefined;
    if (retries > 0 && body) {
      // Only the client's body is read here: any failure is the client's.
      const r = await replayableBody(body, retry!.maxBodyBytes).catch((err) => {
        throw clientBodyError(err);
      });
      if (r.replayable) chunks = r.chunks;
      else {
        body = r.stream;
        retries = 0;
      }
    }

    // One signal for the whole request: the client leaving, or the route timeout passing.
    const ctl = new AbortController();
    const onClientGone = () => ctl.abort(new ClientGoneReason("the client went away"));
    req.signal.addEventListener("abort", onClientGone, { once: true });
    const deadline = s.timeoutMs > 0
      ? s.deadlines.arm(s.timeoutMs, onRouteTimeout, ctl)
      : undefined;

    const tried = retries > 0 ? new Set<Endpoint>() : undefined;
    const budget = cluster.retryBudget;
    if (budget.active >= s.maxRequests) {
      deadline?.cancel();
      s.metrics.overflow("cluster");
      throw new ProxyError(
        "overflow",
        `cluster ${cluster.name} has ${s.maxRequests} requests in flight`,
      );
    }
    budget.active++;
    let holdingRetry = false;
    try {
      for (let attempt = 0;; attempt++) {
        // A retry slot taken for this attempt is held until the attempt has its answer.
        const retrySlot = holdingRetry;
        holdingRetry = false;
        const { endpoint, permit } = admit(cluster.name, m, s, pickCtx, tried);
        tried?.add(endpoint);
        ctx.outcome.endpoint = endpoint.origin;
        ctx.outcome.attempts++;
        annotate(span, "ferry.endpoint", endpoint.origin);
        const headers = upstreamHeaders(req, ctx, s, endpoint);
        // Never a length without its bytes: without a body the transport frames the request.
        if (!body) headers.delete("content-length");
        dropIncomingTraceContext(headers, span);
        const transport = chooseTransport(cluster, headers);
        // A transport that reads the body in JS gets it watched, so that the body's own failure
        // is known by type; fetch reads Deno.serve's body natively (a JS stream in between
        // costs 3-10x upload time, measured) and tells that failure apart itself.
        const watched = body && !chunks && !transport.readsBodyNatively
          ? watchRequestBody(body)
          : undefined;
        const url = endpoint.origin + path + ctx.search;
        // fetch injects traceparent itself when tracing is on; the other transport needs a span.
        const endSpan = transport === cluster.fetch
          ? undefined
          : startClientSpan(headers, req.method, url, span);
        const state = m.states[endpoint.index]!;
        const attemptSignal = s.perTryTimeoutMs > 0 ? perTry(ctl.signal, s, endpoint) : undefined;
        state.inFlight++;
        const sentAt = performance.now();
        let upstream: Response | undefined;
        let failure: ProxyError | undefined;
        let contentLength: string | null = null;
        try {
          const res = await transport.send({
            url,
            method: req.method,
            headers: headers.pairs,
            body: chunks ? replay(chunks) : watched?.stream ?? body,
            signal: attemptSignal?.signal ?? ctl.signal,
            headersOutOfBand: true,
          });
          upstream = res;
          // A 1xx final answer is never relayed; then status range and framing, one check.
          if (res.status < 200) refuseInterim(res);
          // The codec's parser has checked the framing already, more strictly.
          const lines = h1ResponseParts(res)?.headers;
          contentLength = lines
            ? headerLine(lines, "content-length")
            : checkUpstreamHead(res.status, res.headers);
        } catch (err) {
          // A failure of the request body is the client's, whatever the transport made of it.
          failure = watched?.failure() ?? ctx.bodyFailure?.() ?? toProxyError(err);
          if (upstream) {
            upstream.body?.cancel().catch(() => {});
            upstream = undefined;
          }
        } finally {
          const ms = performance.now() - sentAt;
          ctx.outcome.upstreamMs = ms;
          const rec = s.metrics.endpoint(endpoint);
          if (upstream) rec.record(upstream.status, ms / 1000);
          else rec.failed(failure?.kind ?? "internal", ms / 1000);
          endSpan?.(upstream?.status ?? 0);
          state.inFlight--;
          attemptSignal?.done();
          if (retrySlot) budget.release();
        }

        if (failure || !upstream) {
          const pe = failure ?? new ProxyError("internal", "no upstream response");
          const outcome = outcomeOfError(pe.kind);
          if (outcome) m.health.record(endpoint.index, outcome);
          if (clientsFault(pe)) s.breaker?.release(slotOf(s, endpoint), permit);
          else s.breaker?.onFailure(slotOf(s, endpoint), permit);
          if (
            attempt >= retries || ctl.signal.aborted || !errorRetriable(retry!, pe) ||
            !(holdingRetry = takeRetry(budget, ctx, s.metrics))
          ) throw pe;
          await pause(backoffMs(retry!, attempt), ctl.signal);
          continue;
        }

        m.health.record(endpoint.index, outcomeOfStatus(upstream.status));
        if (upstream.status >= 500) s.breaker?.onFailure(slotOf(s, endpoint), permit);
        else s.breaker?.onSuccess(slotOf(s, endpoint), permit);

        if (attempt < retries && statusRetriable(retry!, upstream.status)) {
          const lines = h1ResponseParts(upstream)?.headers;
          const after = parseRetryAfter(
            lines ? headerLine(lines, "retry-after") : upstream.headers.get("retry-after"),
          );
          if (
            (after === undefined || after <= retry!.maxRetryAfterMs) &&
            (holdingRetry = takeRetry(budget, ctx, s.metrics))
          ) {
            await upstream.body?.cancel().catch(() => {});
            await pause(after ?? backoffMs(retry!, attempt), ctl.signal);
            continue;
          }
        }
        // The h1 codec read a small body whole: it leaves as one buffer, no stream around it.
        const h1 = h1ResponseParts(upstream);
        if (h1?.whole) return downstreamResponse(req, ctx, s, upstream, h1.whole, contentLength);
        const out = s.idleTimeoutMs > 0 && upstream.body
          ? upstream.body.pipeThrough(idleGuard(s, ctl))
          : upstream.body;
        const relayed = out &&
          relayBody(
            out,
            req,
            contentLength,
            s.sendTimeoutMs,
            s.deadlines,
            (why) => ctl.abort(why),
          );
        return downstreamResponse(req, ctx, s, upstream, relayed, contentLength);
      }
    } finally {
      deadline?.cancel();
      budget.active--;
      if (holdingRetry) budget.release();
    }
  };
}

/** The first value of `name` among header lines (lower-case names), or null. */
function headerLine(lines: readonly [string, string][], name: string): string | null {
  for (const [n, v] of lines) if (n === name) return v;
  return null;
}

/** A 1xx final answer is never relayed (see notAnUpgrade). */
function refuseInterim(res: Response): never {
  res.body?.cancel().catch(() => {});
  throw notAnUpgrade(res.status);
}

const NULL_BODY_STATUS = new Set([204, 205, 304]);

/**
 * The body to forward, or null. A request that declares a body Ferry was not given is refused:
 * Deno.serve hands no body to GET and HEAD handlers (it reads and drops it), so forwarding its
 * Content-Length would make the upstream read the next request on the connection as the body,
 * and forwarding without it would drop data silently.
 */
function requestBody(req: Request): ReadableStream<Uint8Array> | null {
  if (req.body) return req.body;
  const cl = req.headers.get("content-length");
  if ((cl !== null && !/^\s*0\s*$/.test(cl)) || req.headers.has("transfer-encoding")) {
    throw new ProxyError("bad_request", `a ${req.method} request with a body is not forwarded`);
  }
  return null;
}

/** Failures the client caused (gone, body over the limit): no mark against the endpoint. */
function clientsFault(pe: ProxyError): boolean {
  return pe.kind === "client_closed" || pe.kind === "payload_too_large";
}

/** Takes a retry slot from the cluster's budget; a refusal is flagged URX for the access log. */
function takeRetry(
  budget: Cluster["retryBudget"],
  ctx: RequestContext,
  metrics: ClusterRecorder,
): boolean {
  if (budget.tryAcquire()) {
    metrics.retry();
    return true;
  }
  metrics.budgetExhausted();
  ctx.outcome.flags = "URX";
  return false;
}

/**
 * Picks an endpoint that may take the request: not tried yet (once all were tried, any), under
 * its concurrency limit, and admitted by its breaker. None: 503 saying which guard refused.
 */
function admit(
  clusterName: string,
  m: Members,
  s: ForwardSettings,
  pickCtx: { hashKey: string } | undefined,
  tried: ReadonlySet<Endpoint> | undefined,
): { endpoint: Endpoint; permit: number } {
  let refused: Set<Endpoint> | undefined;
  let exclude: Set<Endpoint> | ReadonlySet<Endpoint> | undefined = tried;
  let why: "breaker" | "limit" | undefined;
  for (let i = 0; i <= m.endpoints.length; i++) {
    const e = m.balancer.pick(pickCtx, exclude) ??
      (tried && tried.size > 0 ? m.balancer.pick(pickCtx, refused) : undefined);
    if (!e) break;
    let permit = 0;
    if (m.states[e.index]!.inFlight >= s.maxRequestsPerEndpoint) why ??= "limit";
    else if (s.breaker && (permit = s.breaker.acquire(slotOf(s, e))) === 0) why = "breaker";
    else return { endpoint: e, permit };
    (refused ??= new Set()).add(e);
    exclude = new Set([...(tried ?? []), ...refused]);
  }
  if (why === "breaker") {
    const wait = Math.min(...m.endpoints.map((e) => s.breaker!.retryAfterMs(slotOf(s, e))));
    throw new ProxyError("breaker_open", `circuit breaker open for cluster ${clusterName}`, {
      headers: { "retry-after": String(Math.max(1, Math.ceil(wait / 1000))) },
    });
  }
  if (why === "limit") {
    s.metrics.overflow("endpoint");
    throw new ProxyError("overflow", `every endpoint of ${clusterName} is at its request limit`);
  }
  throw noEndpoint(clusterName);
}

function slotOf(s: ForwardSettings, e: Endpoint): number {
  return s.breakerPerCluster ? 0 : e.slot;
}

/**
 * Cuts a response body that stays silent longer than the idle timeout: the request's signal is
 * aborted, which ends the upstream fetch and the client's stream.
 */
function idleGuard(
  s: ForwardSettings,
  ctl: AbortController,
): TransformStream<Uint8Array, Uint8Array> {
  const fire = () => ctl.abort(new TimeoutReason(`response body idle for ${s.idleTimeoutMs} ms`));
  let d = s.deadlines.arm(s.idleTimeoutMs, fire);
  return new TransformStream({
    transform(chunk, c) {
      d.cancel();
      d = s.deadlines.arm(s.idleTimeoutMs, fire);
      c.enqueue(chunk);
    },
    flush() {
      d.cancel();
    },
  });
}

/** A per-attempt signal: aborts with the request's signal or when the per-try timeout passes. */
function perTry(parent: AbortSignal, s: ForwardSettings, endpoint: Endpoint) {
  const ctl = new AbortController();
  const follow = () => ctl.abort(parent.reason);
  parent.addEventListener("abort", follow, { once: true });
  const d = s.deadlines.arm(s.perTryTimeoutMs, () =>
    ctl.abort(
      new TimeoutReason(
        `no response from ${endpoint.origin} within ${s.perTryTimeoutMs} ms (per try)`,
      ),
    ));
  return {
    signal: ctl.signal,
    done() {
      d.cancel();
      parent.removeEventListener("abort", follow);
    },
  };
}

/** Waits between attempts; ends early (and throws) when the request is aborted. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(classifyUpstreamError(signal.reason, signal));
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

function downstreamResponse(
  req: Request,
  ctx: RequestContext,
  s: ForwardSettings,
  upstream: Response,
  body: ReadableStream<Uint8Array> | Uint8Array<ArrayBuffer> | null,
  contentLength: string | null,
): Response {
  // The codec's own header lines when it made the response (no Headers object read back).
  const lines = h1ResponseParts(upstream)?.headers;
  const out = lines ? endToEndPairs(lines) : endToEndHeaders(upstream.headers);
  if (contentLength !== null) out.set("content-length", contentLength);
  out.set("x-request-id", ctx.requestId);
  applyEdits(out, s.responseEdits);
  // HEAD, 204, 205 and 304 never carry a body, whatever the upstream sent (RFC 9110 6.4.1).
  const bodyless = req.method === "HEAD" || NULL_BODY_STATUS.has(upstream.status);
  if (bodyless && body instanceof ReadableStream) body.cancel().catch(() => {});
  return new Response(bodyless ? null : body, {
    status: upstream.status,
    statusText: upstream.statusText,
    headers: out.pairs,
  });
}

/**
 * http1 clusters use Ferry's own codec (src/h1/), which passes bytes as they are. fetch decodes
 * compressed bodies unless asked for `identity` (while keeping `content-encoding`), so on fetch
 * clusters (h2c, auto, `transport: fetch`) the request always says identity.
 */
function chooseTransport(cluster: Cluster, headers: HeaderList): Transport {
  if (cluster.h1) return cluster.h1;
  headers.set("accept-encoding", "identity");
  return cluster.fetch;
}

/** Exported for tests: the error raised when no endpoint can be chosen. */
export function noEndpoint(cluster: string): ProxyError {
  return new ProxyError("no_healthy_upstream", `cluster ${cluster} has no endpoint to send to`);
}
