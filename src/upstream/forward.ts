/**
 * The terminal handler of a cluster route: picks an endpoint, builds the upstream request with
 * RFC 9110 7.6 semantics and streams both bodies through. Never follows redirects.
 */
import type { Handler, RequestContext } from "../pipeline/types.ts";
import { httpCallFacts } from "../pipeline/route_chain.ts";
import { ProxyError, toProxyError } from "../pipeline/errors.ts";
import type { Cluster } from "./cluster.ts";
import { endToEndHeaders, endToEndPairs, type HeaderList, isWebSocketUpgrade } from "./headers.ts";
import { h1ResponseParts } from "../h1/connection.ts";
import { responseFor } from "../h1/response_out.ts";
import { applyEdits, type RouteEdits, upstreamHeaders } from "./request_headers.ts";
import {
  checkUpstreamHead,
  clientBodyError,
  ClientGoneReason,
  FIRST_BYTE_HOLD_MS,
  firstBytesWait,
  TimeoutReason,
  type Transport,
  watchRequestBody,
} from "./transport.ts";
import {
  methodRetriable,
  parseRetryAfter,
  replay,
  replayableBody,
  replayBytes,
} from "../policy/retry.ts";
import { type AttemptOutcome, type CallPolicy, runCall } from "./call.ts";
import type { Deadline } from "../policy/deadlines.ts";
import { notAnUpgrade, proxyWebSocket } from "./websocket.ts";
import { relayBody } from "./relay.ts";
import {
  activeSpan,
  annotate,
  dropIncomingTraceContext,
  startClientSpan,
} from "../observability/tracing.ts";

/**
 * A cluster route's HTTP settings: the cluster call's (src/upstream/call.ts: limits, breaker,
 * retry policy, per-try timeout, metrics) and what only HTTP has.
 */
export interface ForwardSettings extends CallPolicy, RouteEdits {
  readonly cluster: Cluster;
  /** Time allowed until upstream response headers arrive; 0 disables. */
  readonly timeoutMs: number;
  /** Streamed response bodies silent for this long are cut; 0 disables. */
  readonly idleTimeoutMs: number;
  readonly websocket: boolean;
  readonly websocketMaxBuffer: number;
  /** Client-side limits for relayed bodies and WebSockets (server section). */
  readonly sendTimeoutMs: number;
  readonly websocketMaxMessageBytes: number;
  /** `Via` pseudonym (RFC 9110 7.6.3). */
  readonly via: string;
}

export function forwardTo(s: ForwardSettings): Handler {
  const cluster = s.cluster;
  const retry = s.retry;
  const timeoutMessage = `no response within the route timeout of ${s.timeoutMs} ms`;
  const onRouteTimeout = (ctl: AbortController) => ctl.abort(new TimeoutReason(timeoutMessage));
  const bodyTimeoutMessage =
    `request body not received within the route timeout of ${s.timeoutMs} ms`;
  const onBodyTimeout = (ctl: AbortController) =>
    ctl.abort(new ProxyError("request_timeout", bodyTimeoutMessage));
  return async function forward(req: Request, ctx: RequestContext): Promise<Response> {
    ctx.outcome.cluster = cluster.name;
    const span = activeSpan();
    annotate(span, "ferry.cluster", cluster.name);
    const path = s.rewritePath(ctx.path);
    const hashKey = cluster.hashKey?.(httpCallFacts(req, ctx));

    if (s.websocket && isWebSocketUpgrade(req)) {
      // A WebSocket's success, for the breaker, is its upstream handshake: one attempt, no retry.
      return await runCall(s, {
        hashKey,
        retries: 0,
        signal: req.signal,
        record: ctx.outcome,
      }, async (endpoint) => {
        try {
          const res = await proxyWebSocket(req, ctx, s, endpoint, path);
          return { value: res, status: res.status };
        } catch (err) {
          return { error: toProxyError(err) };
        }
      });
    }

    // Retries need a body that can be sent again: buffer it up to the policy's limit (and the
    // process-wide replay bound).
    let retries = retry && methodRetriable(retry, req.method) ? retry.retries : 0;
    // Exactly the body the request had, or none (400 for one Ferry was not given).
    let body = requestBody(req);
    let chunks: Uint8Array[] | undefined;
    let held = 0;
    if (retries > 0 && body) {
      // Only the client's body is read here: any failure is the client's. It must arrive within
      // the route timeout (which starts after it): a body dripped a byte at a time held the
      // connection, and its bytes in the replay bound, with no time limit at all.
      const late = new AbortController();
      const bodyDeadline = s.timeoutMs > 0
        ? s.deadlines.arm(s.timeoutMs, onBodyTimeout, late)
        : undefined;
      const r = await replayableBody(body, retry!.maxBodyBytes, undefined, late.signal).catch(
        (err) => {
          throw clientBodyError(err);
        },
      ).finally(() => bodyDeadline?.cancel());
      if (r.replayable) {
        chunks = r.chunks;
        held = r.held;
      } else {
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
    const routeEndsAt = s.timeoutMs > 0 ? performance.now() + s.timeoutMs : Infinity;
    try {
      const answer = await runCall<Answer>(s, {
        hashKey,
        retries,
        signal: ctl.signal,
        record: ctx.outcome,
      }, async (endpoint, attempt): Promise<AttemptOutcome<Answer>> => {
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
        const sentAt = performance.now();
        let upstream: Response | undefined;
        let headReceived = false;
        try {
          upstream = await transport.send({
            url,
            method: req.method,
            headers: headers.pairs,
            body: chunks ? replay(chunks) : watched?.stream ?? body,
            signal: attempt.signal,
            headersOutOfBand: true,
            record: ctx.outcome,
            bodyErrors: s.metrics,
          });
          // A 1xx final answer is never relayed; then status range and framing, one check.
          if (upstream.status < 200) refuseInterim(upstream);
          // The codec's parser has checked the framing already, more strictly; its header
          // lines are read as they came (no Headers object filled per request).
          const lines = h1ResponseParts(upstream)?.headers;
          const contentLength = lines
            ? headerLine(lines, "content-length")
            : checkUpstreamHead(upstream.status, upstream.headers);
          const res = upstream;
          // The head is held back until the body's first bytes are at hand (a short wait, and
          // never past the route timeout): a body that fails before its first byte is then still
          // answered with the error table's 502, as nothing has reached the client. The upstream
          // has answered, so that failure is not retried (as Envoy and nginx).
          const firstBytes = firstBytesWait(res);
          // The body to relay when the wait replaced the Response's (fetch); `res.body` is not
          // touched otherwise (a body the codec read whole has no stream, and gets none).
          let replaced: ReadableStream<Uint8Array> | undefined;
          if (firstBytes && !bodylessAnswer(req.method, res.status)) {
            const holdMs = Math.min(FIRST_BYTE_HOLD_MS, routeEndsAt - performance.now() - 5);
            if (holdMs > 0) {
              attempt.answered();
              headReceived = true;
              let hold: Deadline | undefined;
              const late = new Promise<void>((r) => hold = s.deadlines.armRoundedUp(holdMs, r));
              try {
                replaced = await firstBytes(late) ?? undefined;
              } finally {
                hold!.cancel();
              }
            }
          }
          return {
            value: { res, contentLength, body: replaced },
            status: res.status,
            retryAfterMs: parseRetryAfter(
              lines ? headerLine(lines, "retry-after") : res.headers.get("retry-after"),
            ),
            discard: () => void (replaced ?? res.body)?.cancel().catch(() => {}),
          };
        } catch (err) {
          upstream?.body?.cancel().catch(() => {});
          // A failure of the request body is the client's, whatever the transport made of it.
          return {
            error: watched?.failure() ?? ctx.bodyFailure?.() ?? toProxyError(err),
            repeatable: !headReceived,
          };
        } finally {
          ctx.outcome.upstreamMs = performance.now() - sentAt;
          endSpan?.(upstream?.status ?? 0);
        }
      });
      const upstream = answer.res;
      // The h1 codec read a small body whole: it leaves as one buffer, no stream around it.
      const whole = h1ResponseParts(upstream)?.whole;
      if (whole) return downstreamResponse(req, ctx, s, upstream, whole, answer.contentLength);
      const resBody = answer.body ?? upstream.body;
      const out = s.idleTimeoutMs > 0 && resBody ? resBody.pipeThrough(idleGuard(s, ctl)) : resBody;
      const relayed = out &&
        relayBody(
          out,
          req,
          answer.contentLength,
          s.sendTimeoutMs,
          s.deadlines,
          (why) => ctl.abort(why),
        );
      return downstreamResponse(req, ctx, s, upstream, relayed, answer.contentLength);
    } finally {
      deadline?.cancel();
      if (held > 0) replayBytes.release(held);
    }
  };
}

/** An HTTP attempt's answer: the response head, the one Content-Length and the body to relay. */
interface Answer {
  readonly res: Response;
  readonly contentLength: string | null;
  /** The body to relay instead of the Response's (see firstBytesWait); undefined: its own. */
  readonly body: ReadableStream<Uint8Array> | undefined;
}

/** An answer that carries no body whatever the upstream sent (see downstreamResponse). */
function bodylessAnswer(method: string, status: number): boolean {
  return method === "HEAD" || NULL_BODY_STATUS.has(status);
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

/**
 * Cuts a response body that stays silent longer than the idle timeout: the request's signal is
 * aborted, which ends the upstream fetch and the client's stream.
 */
function idleGuard(
  s: ForwardSettings,
  ctl: AbortController,
): TransformStream<Uint8Array, Uint8Array> {
  const fire = () => {
    // The upstream let the body stall after its head went out: counted here, as the abort makes
    // the transports leave it uncounted (see noteBodyFailure).
    s.metrics.bodyFailed("upstream_timeout");
    ctl.abort(new TimeoutReason(`response body idle for ${s.idleTimeoutMs} ms`));
  };
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
  const bodyless = bodylessAnswer(req.method, upstream.status);
  if (bodyless && body instanceof ReadableStream) body.cancel().catch(() => {});
  return responseFor(req, bodyless ? null : body, {
    status: upstream.status,
    statusText: upstream.statusText,
    headers: out.pairs,
  });
}

/**
 * Ferry's own clients (the h1 codec, src/h1/; the h2 transport, which on auto clusters hands
 * HTTP/1.1 endpoints to the codec) pass bytes as they are. fetch decodes compressed bodies unless
 * asked for `identity` (while keeping `content-encoding`), so requests it carries
 * (`transport: fetch`) always say identity.
 */
function chooseTransport(cluster: Cluster, headers: HeaderList): Transport {
  if (cluster.h1) return cluster.h1;
  if (cluster.h2Transport) return cluster.h2Transport;
  headers.set("accept-encoding", "identity");
  return cluster.fetch;
}
