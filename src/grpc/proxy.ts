/**
 * Proxies one gRPC call: a downstream HTTP/2 stream is routed on its path, sent to an endpoint
 * of the route's cluster over that endpoint's multiplexed connection, and headers, messages and
 * trailers flow back exactly as the upstream sent them. Ferry's own answers (no route, no
 * endpoint, breaker open, timeout) are trailers-only responses with the status from the error
 * table. Deadlines: `grpc-timeout` capped by the route timeout, propagated upstream; on expiry
 * the client gets DEADLINE_EXCEEDED and the upstream stream is reset (CANCEL).
 */
import { ErrorCode } from "../h2/frames.ts";
import type { HeaderField } from "../h2/hpack.ts";
import { headerValue } from "../h2/headers.ts";
import type { H2Stream } from "../h2/stream.ts";
import { StreamReset } from "../h2/stream.ts";
import { ProxyError } from "../server/errors.ts";
import { forwardedHeaders } from "../server/trust.ts";
import type { Cluster, Endpoint, Members } from "../upstream/cluster.ts";
import type { BreakerStore } from "../policy/circuit_breaker.ts";
import type { DeadlineQueue } from "../policy/deadlines.ts";
import type { ClusterRecorder } from "../observability/metrics.ts";
import { outcomeOfError, outcomeOfStatus } from "../upstream/health/outlier.ts";
import { xfccElement } from "../upstream/forward.ts";
import type { ClientIdentity } from "../pipeline/types.ts";
import {
  formatGrpcTimeout,
  GrpcStatus,
  grpcStatusOfHttp,
  outcomeOfGrpcStatus,
  parseGrpcTimeout,
  trailersOnly,
} from "./status.ts";

/** A cluster route's settings as the gRPC path needs them (compiled once per snapshot). */
export interface GrpcRoute {
  readonly name: string;
  readonly cluster: Cluster;
  /** Caps the client's deadline; when the client sends none, bounds the wait for headers. */
  readonly timeoutMs: number;
  readonly retry: GrpcRetry | undefined;
  readonly breaker: BreakerStore | undefined;
  readonly breakerPerCluster: boolean;
  /** Cluster `limits`: calls in flight on the cluster, and per endpoint (Infinity: none). */
  readonly maxRequests: number;
  readonly maxRequestsPerEndpoint: number;
  /** The snapshot's shared deadline queue (carried across reloads). */
  readonly deadlines: DeadlineQueue;
  /** Upstream attempts, retries and budget refusals (the cluster's metrics). */
  readonly metrics: ClusterRecorder;
}

export interface GrpcRetry {
  readonly retries: number;
  /** gRPC statuses retried when the upstream answers trailers-only with them. */
  readonly statuses: ReadonlySet<number>;
  readonly connectFailure: boolean;
  readonly reset: boolean;
  readonly maxBodyBytes: number;
  readonly baseMs: number;
  readonly maxMs: number;
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

const XFCC = "x-forwarded-client-cert";

const HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);

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

export interface CallContext {
  readonly peerIp: string;
  /** The peer is in `server.trusted_proxies`: its X-Forwarded-* (and XFCC) are kept. */
  readonly peerTrusted: boolean;
  /** The listener's scheme (`https` with TLS), for X-Forwarded-Proto. */
  readonly scheme: "http" | "https";
  readonly requestId: string;
  /** Downstream mTLS: the client certificate's identity, sent upstream as XFCC. */
  readonly identity?: ClientIdentity | undefined;
  /** The header for the identity upstream; default `x-forwarded-client-cert`. */
  readonly clientCertHeader?: string;
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
  // The cluster's max_requests, counted as on the HTTP path (calls in flight on the cluster,
  // HTTP requests included): overflow is answered at once, UNAVAILABLE as Envoy does.
  if (cluster.retryBudget.active >= route.maxRequests) {
    route.metrics.overflow("cluster");
    const reason = `cluster ${cluster.name} has ${route.maxRequests} calls in flight`;
    return answerError(ds, new ProxyError("overflow", reason), rec);
  }
  const clientMs = parseGrpcTimeout(headerValue(fields, "grpc-timeout"));
  const callMs = clientMs === undefined
    ? undefined
    : route.timeoutMs > 0
    ? Math.min(clientMs, route.timeoutMs)
    : clientMs;
  const startedAt = performance.now();

  // One abort for the call: client reset, deadline, or headers timeout.
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
  void ds.closed.then((r) => {
    if (!r) return;
    if (r.byPeer) {
      rec.flag = rec.flag === "-" ? "DC" : rec.flag;
      rec.grpcStatus ??= GrpcStatus.CANCELLED;
    }
    // Reset either way (also when the client provoked our reset): nobody reads the answer.
    upstream?.reset(ErrorCode.CANCEL);
  });

  // The request messages go to the current attempt's stream (`sink`) as they come, one write at
  // a time so flow control pushes back on the client. Before a sink is attached they wait in
  // `pending` (at most ~1 MiB, then the client is paused); up to `maxBodyBytes` are also kept
  // so a retry can send them again. The client gets flow-control credit back only for bytes
  // forwarded (or dropped), never for bytes merely pending: so what a connection's waiting calls
  // hold is bounded by its connection window, not by 1 MiB per call.
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
          keptBytes += chunk.length;
          if (keptBytes > retry!.maxBodyBytes) keepOverflow = true;
          else kept.push(chunk);
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

  const tried = new Set<Endpoint>();
  // One membership for the whole call, even if DNS or a reload changes it meanwhile.
  const members = cluster.members;
  const budget = cluster.retryBudget;
  // Active calls size the retry budget (a percentage of them), as on the HTTP path.
  budget.active++;
  // A retry slot taken for the next attempt is held until that attempt has its answer.
  let holdingRetry = false;
  const takeRetry = (): boolean => {
    if (budget.tryAcquire()) {
      route.metrics.retry();
      return (holdingRetry = true);
    }
    route.metrics.budgetExhausted();
    rec.flag = "URX";
    return false;
  };
  try {
    for (let attempt = 0;; attempt++) {
      let retrySlot = holdingRetry;
      holdingRetry = false;
      const releaseRetry = () => {
        if (retrySlot) budget.release();
        retrySlot = false;
      };
      if (expired) {
        releaseRetry();
        return;
      }
      let endpoint: Endpoint, permit: number;
      try {
        ({ endpoint, permit } = admit(route, members, tried));
      } catch (err) {
        releaseRetry();
        throw err;
      }
      tried.add(endpoint);
      rec.endpoint = endpoint.origin;
      rec.attempts++;
      const state = members.states[endpoint.index]!;
      const slot = route.breakerPerCluster ? 0 : endpoint.slot;
      const remaining = callMs === undefined ? undefined : callMs - (performance.now() - startedAt);
      const out = upstreamFields(fields, endpoint, cluster, ctx, remaining);
      state.inFlight++;
      const sentAt = performance.now();
      let outcome: ReturnType<typeof outcomeOfStatus> | undefined;
      let retriable = false;
      // What this attempt got, for the endpoint's metrics.
      let attemptHttp = 0;
      let attemptGrpc: number | undefined;
      let attemptError = "internal";
      try {
        // The client may have gone (or been reset) meanwhile: then nothing goes upstream.
        if (expired || ds.resetReason) return;
        const us = await cluster.h2.request(endpoint, out, false);
        upstream = us;
        // What the answer buffers unread counts against this client's share (src/h2/stream.ts).
        us.chargeTo(ds);
        if (expired || ds.resetReason) return us.reset(ErrorCode.CANCEL);
        const sending = attach(us, attempt > 0).catch(() => {});

        const head = await us.headers;
        headersTimer?.cancel();
        releaseRetry();
        rec.upstreamMs = performance.now() - sentAt;
        const httpStatus = Number(headerValue(head, ":status"));
        attemptHttp = httpStatus;
        if (us.remoteEnded && headerValue(head, "grpc-status") !== undefined) {
          // Trailers-only: the call's whole answer is in these headers.
          const gs = Number(headerValue(head, "grpc-status"));
          attemptGrpc = gs;
          outcome = httpStatus === 200 ? outcomeOfGrpcStatus(gs) : outcomeOfStatus(httpStatus);
          if (
            retry && attempt < retry.retries && retry.statuses.has(gs) && !keepOverflow &&
            !expired && takeRetry()
          ) {
            retriable = true;
            sink = undefined;
            us.reset(ErrorCode.CANCEL);
            continue;
          }
          rec.grpcStatus = gs;
          ds.sendHeaders(cleanHeaders(head), true);
          return;
        }
        if (httpStatus !== 200) {
          // Not a gRPC answer: say so in gRPC terms (the spec's HTTP-to-gRPC mapping).
          outcome = outcomeOfStatus(httpStatus);
          us.reset(ErrorCode.CANCEL);
          rec.grpcStatus = grpcStatusOfHttp(httpStatus);
          answer(ds, rec.grpcStatus, `upstream answered HTTP ${httpStatus}`);
          return;
        }
        ds.sendHeaders(cleanHeaders(head), false);
        for await (const chunk of us.body) await ds.write(chunk);
        const trailers = await us.trailers;
        const gs = trailers ? Number(headerValue(trailers, "grpc-status") ?? "2") : 2;
        rec.grpcStatus = gs;
        attemptGrpc = gs;
        outcome = outcomeOfGrpcStatus(gs);
        await ds.end(trailers ? cleanHeaders(trailers) : [["grpc-status", "2"]]);
        await sending;
        return;
      } catch (err) {
        if (expired) return;
        const pe = upstreamError(err, endpoint);
        attemptError = pe.kind;
        if (ds.resetReason) {
          // The client left, or its stream was reset for what it did (a protocol error, its
          // share full): nothing to answer, nothing learnt about the endpoint.
          upstream?.reset(ErrorCode.CANCEL);
          return;
        }
        outcome = outcomeOfError(pe.kind);
        const canRetry = retry && attempt < retry.retries && !keepOverflow && !ds.headersSent &&
          (pe.kind === "upstream_connect_failure" ? retry.connectFailure : retry.reset);
        if (canRetry && takeRetry()) {
          sink = undefined;
          retriable = true;
          continue;
        }
        if (ds.headersSent) {
          // Messages already went out: the honest signal is a reset, as the upstream did.
          rec.grpcStatus = GrpcStatus.UNAVAILABLE;
          rec.flag = pe.flag;
          ds.reset(err instanceof StreamReset ? err.code : ErrorCode.INTERNAL_ERROR);
          return;
        }
        answerError(ds, pe, rec);
        return;
      } finally {
        releaseRetry();
        state.inFlight--;
        const seconds = (performance.now() - sentAt) / 1000;
        const em = route.metrics.endpoint(endpoint);
        if (attemptHttp !== 0) em.record(attemptHttp, seconds);
        else em.failed(attemptError, seconds);
        em.grpcAttempt(attemptGrpc);
        if (outcome) {
          members.health.record(endpoint.index, outcome);
          if (outcome === "success") route.breaker?.onSuccess(slot, permit);
          else route.breaker?.onFailure(slot, permit);
        } else route.breaker?.release(slot, permit);
        if (retriable && retry) await pause(backoff(retry, attempt));
      }
    }
  } catch (err) {
    if (!expired) answerError(ds, err, rec);
  } finally {
    // What is still pending will not be sent: its credit goes back, and the pump drops the rest.
    callOver = true;
    pending = [];
    pendingBytes = 0;
    ds.release(ds.heldBytes);
    sinkAttached?.();
    sinkAttached = undefined;
    budget.active--;
    if (holdingRetry) budget.release();
    timer?.cancel();
    headersTimer?.cancel();
    void pump;
  }
}

function backoff(r: GrpcRetry, attempt: number): number {
  return Math.floor(Math.random() * Math.min(r.maxMs, r.baseMs * 2 ** attempt));
}

function pause(ms: number): Promise<void> {
  return ms <= 0 ? Promise.resolve() : new Promise((r) => setTimeout(r, ms));
}

function upstreamError(err: unknown, endpoint: Endpoint): ProxyError {
  if (err instanceof ProxyError) return err;
  if (err instanceof StreamReset) {
    return new ProxyError(
      "upstream_reset",
      `${endpoint.origin} reset the stream (code ${err.code})`,
      { cause: err },
    );
  }
  return new ProxyError("upstream_reset", `${endpoint.origin}: ${err}`, { cause: err });
}

/** Endpoint choice: balancer pick, not tried yet when possible, admitted by its breaker. */
function admit(
  route: GrpcRoute,
  members: Members,
  tried: ReadonlySet<Endpoint>,
): { endpoint: Endpoint; permit: number } {
  const cluster = route.cluster;
  const refused = new Set<Endpoint>(tried);
  let why: "breaker" | "limit" | undefined;
  for (let i = 0; i <= members.endpoints.length; i++) {
    const e = members.balancer.pick(undefined, refused) ??
      (tried.size > 0 && refused.size === tried.size
        ? members.balancer.pick(undefined)
        : undefined);
    if (!e) break;
    refused.add(e);
    if (members.states[e.index]!.inFlight >= route.maxRequestsPerEndpoint) {
      why ??= "limit";
      continue;
    }
    if (!route.breaker) return { endpoint: e, permit: 0 };
    const permit = route.breaker.acquire(route.breakerPerCluster ? 0 : e.slot);
    if (permit !== 0) return { endpoint: e, permit };
    why = "breaker";
  }
  if (why === "breaker") {
    throw new ProxyError("breaker_open", `circuit breaker open for cluster ${cluster.name}`);
  }
  if (why === "limit") {
    route.metrics.overflow("endpoint");
    throw new ProxyError("overflow", `every endpoint of ${cluster.name} is at its request limit`);
  }
  throw new ProxyError("no_healthy_upstream", `cluster ${cluster.name} has no endpoint to send to`);
}

/** Request headers for upstream: the client's, with authority, deadline and ids settled. */
function upstreamFields(
  fields: readonly HeaderField[],
  endpoint: Endpoint,
  cluster: Cluster,
  ctx: CallContext,
  remainingMs: number | undefined,
): HeaderField[] {
  const out: HeaderField[] = [];
  const incoming = {
    for: null as string | null,
    proto: null as string | null,
    host: null as string | null,
  };
  let xfcc: string | undefined;
  const certHeader = ctx.clientCertHeader ?? XFCC;
  for (const [n, v] of fields) {
    if (HOP.has(n) || n === "grpc-timeout" || n === "x-request-id") continue;
    if (n === ":scheme") out.push([n, endpoint.url.protocol === "https:" ? "https" : "http"]);
    else if (n === ":authority") out.push([n, cluster.preserveHost ? v : endpoint.url.host]);
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
  return out;
}

/** Response headers and trailers pass as sent, less connection-specific fields. */
function cleanHeaders(fields: readonly HeaderField[]): HeaderField[] {
  return fields.filter(([n]) => !HOP.has(n));
}
