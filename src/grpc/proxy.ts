/**
 * Proxies one gRPC call: a downstream HTTP/2 stream is routed on its path, sent to an endpoint
 * of the route's cluster over that endpoint's multiplexed connection, and headers (with the
 * route's edits: call_headers.ts), messages and trailers flow back as the upstream sent them. Ferry's own answers (no route, no
 * endpoint, breaker open, timeout) are trailers-only responses with the status from the error
 * table. Deadlines: `grpc-timeout` capped by the route timeout, propagated upstream; on expiry
 * the client gets DEADLINE_EXCEEDED and the upstream stream is reset (CANCEL).
 */
import { ErrorCode } from "../h2/frames.ts";
import type { HeaderField } from "../h2/hpack.ts";
import { headerValue } from "../h2/headers.ts";
import type { H2Stream } from "../h2/stream.ts";
import { StreamReset } from "../h2/stream.ts";
import { ProxyError } from "../pipeline/errors.ts";
import type { Cluster, Endpoint } from "../upstream/cluster.ts";
import {
  type AttemptContext,
  type AttemptOutcome,
  type CallPolicy,
  runCall,
} from "../upstream/call.ts";
import { ClientGoneReason, FIRST_BYTE_HOLD_MS, TimeoutReason } from "../upstream/transport.ts";
import type { Deadline } from "../policy/deadlines.ts";
import { replayBytes } from "../policy/retry.ts";
import type { RouteEdits } from "../upstream/request_headers.ts";
import { type CallContext, cleanHeaders, responseHeaders, upstreamFields } from "./call_headers.ts";

export type { CallContext };
import type { CallFacts, ClientIdentity } from "../pipeline/types.ts";
import { GrpcStatus, grpcStatusOfHttp, parseGrpcTimeout, trailersOnly } from "./status.ts";

/**
 * A cluster route's settings as the gRPC path needs them (compiled once per snapshot): the
 * cluster call's (src/upstream/call.ts), the same object shape the HTTP path uses.
 */
export interface GrpcRoute extends CallPolicy, RouteEdits {
  readonly name: string;
  readonly cluster: Cluster;
  /** Caps the client's deadline; when the client sends none, bounds the wait for headers. */
  readonly timeoutMs: number;
}

/** What one call did, for the access log. */
export interface GrpcCallRecord {
  route?: string;
  cluster?: string;
  endpoint?: string;
  attempts: number;
  grpcStatus?: number;
  flag: string;
  upstreamMs?: number;
}

/** A call with less of its deadline left than this is answered DEADLINE_EXCEEDED at once. */
const MIN_DEADLINE_MS = 1;

/** Answers with a status Ferry decided on: trailers-only when nothing was sent yet. */
function answer(ds: H2Stream, status: number, message: string): void {
  try {
    if (!ds.headersSent) ds.sendHeaders(trailersOnly(status, message), true);
    else {
      void ds.end([["grpc-status", String(status)], ["grpc-message", message]]).catch(() => {});
    }
  } catch { /* the client is gone */ }
}

export function answerError(ds: H2Stream, err: unknown, rec: GrpcCallRecord): void {
  const pe = err instanceof ProxyError
    ? err
    : new ProxyError("internal", "the proxy failed to handle this call", { cause: err });
  rec.grpcStatus = pe.grpcStatus;
  rec.flag = pe.flag;
  answer(ds, pe.grpcStatus, pe.reason);
}

/** What a hash key and the route's policy layers read of a gRPC call. */
export function grpcCallFacts(
  fields: readonly HeaderField[],
  path: string,
  clientIp: string,
  identity: ClientIdentity | undefined,
): CallFacts {
  return {
    method: headerValue(fields, ":method") ?? "POST",
    path,
    header: (name) => headerValue(fields, name),
    clientIp,
    identity,
  };
}

/**
 * Runs a call to the end. Never throws: every failure becomes a gRPC status for the client
 * (or a reset, once messages have flowed) and is written into `rec`.
 */
export async function proxyCall(
  ds: H2Stream,
  fields: readonly HeaderField[],
  route: GrpcRoute,
  ctx: CallContext,
  rec: GrpcCallRecord,
): Promise<void> {
  const cluster = route.cluster;
  rec.route = route.name;
  rec.cluster = cluster.name;
  const clientMs = parseGrpcTimeout(headerValue(fields, "grpc-timeout"));
  const callMs = clientMs === undefined
    ? undefined
    : route.timeoutMs > 0
    ? Math.min(clientMs, route.timeoutMs)
    : clientMs;
  // The deadline runs from the call's arrival (policy layers such as a fault delay ran since).
  const startedAt = ctx.arrivedAt ?? performance.now();

  // One abort for the call: client reset, deadline, or headers timeout. It also ends a retry
  // backoff at once (src/upstream/call.ts), so a cancelled call frees its cluster slot.
  const callCtl = new AbortController();
  let expired: ProxyError | undefined;
  let upstream: H2Stream | undefined;
  const expire = (pe: ProxyError, clientDeadline = false) => {
    if (expired) return;
    expired = pe;
    // A deadline the client chose (`grpc-timeout: 1n`, repeated) makes Ferry reset upstream
    // streams on its behalf: each costs its connection what its own RST_STREAM would.
    if (clientDeadline && upstream && !upstream.isClosed) ds.countProvokedReset();
    upstream?.reset(ErrorCode.CANCEL);
    answerError(ds, pe, rec);
    if (!ds.isClosed) ds.reset(ErrorCode.CANCEL);
    callCtl.abort(pe);
  };
  // Deadlines on the shared queue (one interval for all calls), not a setTimeout per call.
  const deadlines = route.deadlines;
  const timer = callMs === undefined ? undefined : deadlines.armRoundedUp(
    callMs,
    () =>
      expire(
        new ProxyError("upstream_timeout", `deadline of ${Math.round(callMs)} ms exceeded`),
        callMs === clientMs,
      ),
  );
  const headersTimer = callMs === undefined && route.timeoutMs > 0
    ? deadlines.arm(
      route.timeoutMs,
      () => expire(new ProxyError("upstream_timeout", `no response within ${route.timeoutMs} ms`)),
    )
    : undefined;
  const clientGone = () => new ProxyError("client_closed", "the client cancelled the call");
  /** Why the client's stream was reset: it left, or its answer share was full. */
  const clientResetError = () =>
    ds.shareExceeded
      ? new ProxyError(
        "client_share_full",
        "the client's connection holds its whole share of buffered answers unread",
      )
      : clientGone();
  void ds.closed.then((r) => {
    if (!r) return;
    if (r.byPeer) {
      rec.flag = rec.flag === "-" ? "DC" : rec.flag;
      rec.grpcStatus ??= GrpcStatus.CANCELLED;
    } else if (ds.shareExceeded) {
      // Ended by Ferry for its client's share: RESOURCE_EXHAUSTED, as grpc-js reports it.
      const pe = clientResetError();
      rec.flag = pe.flag;
      rec.grpcStatus = pe.grpcStatus;
    }
    // Reset either way (also when the client provoked our reset): nobody reads the answer.
    upstream?.reset(ErrorCode.CANCEL);
    callCtl.abort(new ClientGoneReason("the client cancelled the call"));
  });

  // The request messages go to the current attempt's stream (`sink`) as they come, one write at
  // a time so flow control pushes back on the client. Before a sink is attached they wait in
  // `pending` (at most ~1 MiB, then the client is paused); up to `max_body_bytes` are also kept
  // (within the process-wide replay bound) so a retry can send them again. The client gets
  // flow-control credit back only for bytes forwarded (or dropped), never for bytes merely
  // pending: so what a connection's waiting calls hold is bounded by its connection window.
  const retry = route.retry;
  const kept: Uint8Array[] | undefined = retry && retry.retries > 0 ? [] : undefined;
  let keptBytes = 0;
  let keepOverflow = false;
  let requestTrailers: HeaderField[] | undefined;
  let requestEnded = false;
  let requestFailed = false;
  let sink: H2Stream | undefined;
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  let sinkAttached: (() => void) | undefined;
  let callOver = false;
  ds.holdCredit();
  const pump = (async () => {
    try {
      for await (const chunk of ds.body) {
        if (callOver) {
          ds.release(chunk.length); // nobody will send it: dropped
          continue;
        }
        if (kept && !keepOverflow) {
          if (
            keptBytes + chunk.length > retry!.maxBodyBytes || !replayBytes.tryHold(chunk.length)
          ) keepOverflow = true;
          else {
            keptBytes += chunk.length;
            kept.push(chunk);
          }
        }
        if (sink) {
          await sink.write(chunk).catch(() => {});
          ds.release(chunk.length);
          continue;
        }
        pending.push(chunk);
        pendingBytes += chunk.length;
        if (pendingBytes > 1 << 20) await new Promise<void>((r) => (sinkAttached = r));
      }
      requestTrailers = await ds.trailers;
      requestEnded = true;
      if (sink) await sink.end(requestTrailers).catch(() => {});
    } catch {
      requestFailed = true;
      sink?.reset(ErrorCode.CANCEL);
    }
  })();
  const attach = async (us: H2Stream, replay: boolean) => {
    if (replay) {
      pending = kept!.slice();
      pendingBytes = keptBytes;
    }
    while (pending.length > 0) {
      const c = pending.shift()!;
      pendingBytes -= c.length;
      await us.write(c);
      if (!replay) ds.release(c.length);
    }
    // A replay sent every byte read so far (`kept` holds them all).
    if (replay) ds.release(ds.heldBytes);
    if (requestEnded) await us.end(requestTrailers);
    else if (requestFailed) us.reset(ErrorCode.CANCEL);
    else {
      sink = us;
      sinkAttached?.();
      sinkAttached = undefined;
    }
  };

  const hashKey = cluster.hashKey?.(ctx.facts ?? rawFacts(fields, ctx));
  // Set once the client has its answer from an attempt (headers, or a reset mid-stream).
  let answered = false;

  /** One attempt: a stream to `endpoint`, the messages (replayed after the first), the answer. */
  const attempt = async (
    endpoint: Endpoint,
    a: AttemptContext,
  ): Promise<AttemptOutcome<() => void>> => {
    // The client may have gone (or been reset) meanwhile: then nothing goes upstream.
    if (expired || ds.resetReason) {
      return { error: expired ?? clientResetError(), repeatable: false };
    }
    const remaining = callMs === undefined ? undefined : callMs - (performance.now() - startedAt);
    const out = upstreamFields(fields, endpoint, route, ctx, remaining);
    const sentAt = performance.now();
    let us: H2Stream | undefined;
    let headReceived = false;
    // A per-try timeout (or the call's end) resets this attempt's stream.
    const onAbort = () => us?.reset(ErrorCode.CANCEL);
    a.signal.addEventListener("abort", onAbort, { once: true });
    try {
      us = await cluster.h2.request(endpoint, out, false);
      upstream = us;
      // What the answer buffers unread counts against this client's share (src/h2/stream.ts).
      us.chargeTo(ds);
      if (expired || ds.resetReason) {
        us.reset(ErrorCode.CANCEL);
        return { error: expired ?? clientResetError(), repeatable: false };
      }
      if (a.signal.aborted) us.reset(ErrorCode.CANCEL);
      const sending = attach(us, a.attempt > 0).catch(() => {});

      const head = await us.headers;
      headersTimer?.cancel();
      a.answered();
      rec.upstreamMs = performance.now() - sentAt;
      const httpStatus = Number(headerValue(head, ":status"));
      const stream = us;
      const repeatable = !keepOverflow && !expired;
      const discard = () => {
        sink = undefined;
        stream.reset(ErrorCode.CANCEL);
      };
      const gsField = headerValue(head, "grpc-status");
      if (us.remoteEnded && gsField !== undefined) {
        // Trailers-only: the call's whole answer is in these headers.
        const gs = Number(gsField);
        return {
          value: () => {
            rec.grpcStatus = gs;
            ds.sendHeaders(responseHeaders(head, route), true);
          },
          status: httpStatus,
          grpcStatus: gs,
          repeatable,
          discard,
        };
      }
      if (httpStatus !== 200) {
        // Not a gRPC answer: say so in gRPC terms (the spec's HTTP-to-gRPC mapping).
        return {
          value: () => {
            stream.reset(ErrorCode.CANCEL);
            rec.grpcStatus = grpcStatusOfHttp(httpStatus);
            answer(ds, rec.grpcStatus, `upstream answered HTTP ${httpStatus}`);
          },
          status: httpStatus,
          repeatable,
          discard,
        };
      }
      // The headers wait for the first message (or the end), as HTTP answers wait for their
      // body's first bytes (docs/design.md "Upstream bodies that fail, and retries"): a stream
      // reset before it is still answered with a status (trailers-only UNAVAILABLE), not a reset.
      // Not retried: the upstream answered.
      headReceived = true;
      if (us.receivedBytes === 0 && !us.remoteEnded) {
        let hold: Deadline | undefined;
        const late = new Promise<void>((r) => hold = deadlines.armRoundedUp(FIRST_BYTE_HOLD_MS, r));
        try {
          await us.firstData(late);
        } finally {
          hold!.cancel();
        }
      }
      answered = true;
      ds.sendHeaders(responseHeaders(head, route), false);
      for await (const chunk of us.body) await ds.write(chunk);
      const trailers = await us.trailers;
      const gs = trailers ? Number(headerValue(trailers, "grpc-status") ?? "2") : 2;
      rec.grpcStatus = gs;
      await ds.end(trailers ? cleanHeaders(trailers) : [["grpc-status", "2"]]);
      await sending;
      return { value: () => {}, status: 200, grpcStatus: gs, repeatable: false };
    } catch (err) {
      if (expired) return { error: expired, repeatable: false };
      // (Read again: the stream may have been reset while this attempt awaited.)
      if (ds.resetReason) {
        // The client left, or its stream was reset for what it did (a protocol error, its
        // share full): nothing to answer, nothing learnt about the endpoint.
        us?.reset(ErrorCode.CANCEL);
        return { error: clientResetError(), repeatable: false };
      }
      const pe = a.signal.reason instanceof TimeoutReason
        ? new ProxyError("upstream_timeout", a.signal.reason.message)
        : upstreamError(err, endpoint);
      if (ds.headersSent) {
        // Messages already went out: the honest signal is a reset, as the upstream did.
        answered = true;
        // The upstream broke off an answer the client had begun to get (a deadline is the
        // client's own, and is not counted).
        if (pe.kind === "upstream_reset" || pe.kind === "upstream_protocol_error") {
          route.metrics.bodyFailed(pe.kind);
        }
        rec.grpcStatus = GrpcStatus.UNAVAILABLE;
        rec.flag = pe.flag;
        ds.reset(err instanceof StreamReset ? err.code : ErrorCode.INTERNAL_ERROR);
        return { error: pe, repeatable: false };
      }
      // Whatever this stream was sent is lost: a retry replays the kept messages (unless the
      // upstream had answered).
      sink = undefined;
      return { error: pe, repeatable: !keepOverflow && !headReceived };
    } finally {
      a.signal.removeEventListener("abort", onAbort);
    }
  };

  // A deadline already (or all but) passed gets its answer here, without an upstream stream that
  // could only be reset: under 1 ms left cannot even be sent on (grpc-timeout goes upstream in
  // whole ms, rounded up), and no upstream answers through a proxy hop that fast.
  if (callMs !== undefined && callMs - (performance.now() - startedAt) < MIN_DEADLINE_MS) {
    expire(new ProxyError("upstream_timeout", "the call's deadline had passed when it arrived"));
  }
  try {
    // (expired: the deadline above; nothing goes upstream, nothing is counted for an endpoint.)
    if (expired) return;
    const finish = await runCall(route, {
      hashKey,
      retries: retry?.retries ?? 0,
      signal: callCtl.signal,
      grpc: true,
      record: rec,
    }, attempt);
    if (!expired) finish();
  } catch (err) {
    if (!expired && !answered) answerError(ds, err, rec);
  } finally {
    // What is still pending will not be sent: its credit goes back, and the pump drops the rest.
    callOver = true;
    pending = [];
    pendingBytes = 0;
    ds.release(ds.heldBytes);
    sinkAttached?.();
    sinkAttached = undefined;
    if (keptBytes > 0) replayBytes.release(keptBytes);
    timer?.cancel();
    headersTimer?.cancel();
    void pump;
  }
}

function rawFacts(fields: readonly HeaderField[], ctx: CallContext): CallFacts {
  const rawPath = headerValue(fields, ":path") ?? "/";
  const q = rawPath.indexOf("?");
  return grpcCallFacts(fields, q < 0 ? rawPath : rawPath.slice(0, q), ctx.peerIp, ctx.identity);
}

function upstreamError(err: unknown, endpoint: Endpoint): ProxyError {
  if (err instanceof ProxyError) return err;
  if (err instanceof StreamReset) {
    // A malformed answer caught by our side of the connection (RFC 9113 8.1.1), as on HTTP.
    if (!err.byPeer && err.code === ErrorCode.PROTOCOL_ERROR) {
      return new ProxyError("upstream_protocol_error", `${endpoint.origin}: ${err.message}`, {
        cause: err,
      });
    }
    return new ProxyError(
      "upstream_reset",
      `${endpoint.origin} reset the stream (code ${err.code})`,
      { cause: err },
    );
  }
  return new ProxyError("upstream_reset", `${endpoint.origin}: ${err}`, { cause: err });
}
