/**
 * The cluster call, protocol-neutral: everything between "this request goes to cluster C" and
 * "this attempt's answer is final" that HTTP and gRPC share. The endpoint pick (with the hash
 * key), the cluster and per-endpoint in-flight limits, breaker permits, the retry budget, the
 * jittered backoff whose pause ends when the call is cancelled, the per-try timeout, and the
 * accounting of every attempt (health and outlier detection, breaker, metrics).
 *
 * The protocol lives behind one callback, `attempt(endpoint, signal) -> outcome`: the HTTP
 * adapter (forward.ts) sends a request and returns its response head; the gRPC adapter
 * (src/grpc/proxy.ts) opens a stream, replays the messages and relays the answer. The adapter
 * says what the endpoint did (a status, or a typed error) and whether the attempt may be
 * repeated; this module decides whether it is.
 */
import { ProxyError } from "../pipeline/errors.ts";
import type { Endpoint } from "./cluster.ts";
import type { Balancer } from "./balancers/types.ts";
import type { DeadlineQueue } from "../policy/deadlines.ts";
import {
  backoffMs,
  errorRetriable,
  grpcStatusRetriable,
  type RetryBudget,
  type RetryPolicy,
  statusRetriable,
} from "../policy/retry.ts";
import type { ClusterRecorder } from "../observability/metrics.ts";
import {
  type Outcome,
  outcomeOfError,
  outcomeOfGrpcStatus,
  outcomeOfStatus,
} from "./health/outlier.ts";
import {
  type AttemptLayer,
  type AttemptTicket,
  type AttemptVerdict,
  ClientGoneReason,
  TimeoutReason,
} from "../pipeline/types.ts";

/** The parts of a cluster's membership a call reads (a real `Members` fits). */
export interface CallMembers {
  readonly endpoints: readonly Endpoint[];
  readonly balancer: Balancer<Endpoint>;
  readonly states: readonly { inFlight: number }[];
  readonly health: { record(index: number, outcome: Outcome): void };
}

/** The parts of a cluster a call reads (a real `Cluster` fits). */
export interface CallCluster {
  readonly name: string;
  readonly members: CallMembers;
  readonly retryBudget: RetryBudget;
}

/** A route's settings for its cluster calls, compiled once per snapshot. */
export interface CallPolicy {
  readonly cluster: CallCluster;
  /** Calls in flight on the cluster (HTTP and gRPC together), and per endpoint. */
  readonly maxRequests: number;
  readonly maxRequestsPerEndpoint: number;
  /**
   * The route's per-attempt policies (circuit breaker, per-try timeout), outermost first, as
   * src/pipeline/route_chain.ts composes them.
   */
  readonly attemptLayers: readonly AttemptLayer[];
  readonly retry: RetryPolicy | undefined;
  /** The timer for backoff pauses (tests pass one on a fake clock). */
  readonly deadlines: DeadlineQueue;
  readonly metrics: ClusterRecorder;
  /** Jitter source for the backoff; Math.random by default. */
  readonly random?: () => number;
}

/** What one call asks for, and where it writes what happened (for the access log). */
export interface CallRequest {
  /** ring_hash / maglev key; undefined for other balancers. */
  readonly hashKey: string | undefined;
  /** Retries this call may make (capped by the policy): 0 when its method or body rules them out. */
  readonly retries: number;
  /** Aborted when the call is over (client gone, route deadline): ends a backoff at once. */
  readonly signal: AbortSignal;
  /** gRPC attempts also count their grpc-status in the endpoint metrics. */
  readonly grpc?: boolean;
  readonly record: CallRecord;
}

export interface CallRecord {
  endpoint?: string | undefined;
  attempts: number;
  /** URX when the retry budget refused a retry. */
  flags?: string | undefined;
}

/** What one attempt did. Exactly one of `value` (an answer) or `error` (none). */
export type AttemptOutcome<T> = AttemptAnswer<T> | AttemptFailure;

export interface AttemptAnswer<T> {
  readonly value: T;
  /** The upstream's HTTP status (200 for gRPC). */
  readonly status: number;
  /** gRPC: the grpc-status the attempt ended with (undefined: none came). */
  readonly grpcStatus?: number | undefined;
  /** The upstream's Retry-After in ms (HTTP); a longer one than the policy allows is not waited. */
  readonly retryAfterMs?: number | undefined;
  /** false when this answer cannot be given up for another attempt (already relayed). */
  readonly repeatable?: boolean;
  /** Gives the answer up (cancel its body, reset its stream) when another attempt follows. */
  discard?(): void;
  readonly error?: undefined;
}

export interface AttemptFailure {
  readonly error: ProxyError;
  /** false when another attempt is impossible (bytes already went to the client). */
  readonly repeatable?: boolean;
  readonly value?: undefined;
}

export interface AttemptContext {
  /** 0 for the first attempt. */
  readonly attempt: number;
  /** Aborts with the call, or when the per-try timeout passes (reason: TimeoutReason). */
  readonly signal: AbortSignal;
  /**
   * The attempt has its answer (response headers): the per-try timeout stops and the retry slot
   * this attempt held goes back. Called by call.ts when the attempt returns, if not before
   * (a gRPC attempt that streams calls it at the response headers).
   */
  answered(): void;
}

export type Attempt<T> = (endpoint: Endpoint, ctx: AttemptContext) => Promise<AttemptOutcome<T>>;

/**
 * Runs attempts until one gives a final answer, and returns it; throws the final ProxyError
 * (also when no endpoint may take the call, the cluster is full, or the call is cancelled during
 * a backoff).
 */
export async function runCall<T>(
  p: CallPolicy,
  req: CallRequest,
  attempt: Attempt<T>,
): Promise<T> {
  const cluster = p.cluster;
  // One membership for the whole call, even if DNS or a reload changes it meanwhile.
  const m = cluster.members;
  const budget = cluster.retryBudget;
  if (!budget.enter(p.maxRequests)) {
    p.metrics.overflow("cluster");
    throw new ProxyError(
      "overflow",
      `cluster ${cluster.name} has ${p.maxRequests} calls in flight (its max_requests)`,
    );
  }
  const pickCtx = req.hashKey === undefined ? undefined : { hashKey: req.hashKey };
  const retry = p.retry;
  const retries = retry ? Math.min(req.retries, retry.retries) : 0;
  const tried = retries > 0 ? new Set<Endpoint>() : undefined;
  // A retry slot taken for the next attempt, held until that attempt has its answer.
  let holdingRetry = false;
  try {
    for (let n = 0;; n++) {
      let retrySlot = holdingRetry;
      holdingRetry = false;
      let endpoint: Endpoint, tickets: AttemptTicket[];
      try {
        ({ endpoint, tickets } = admit(p, m, pickCtx, tried, req.signal));
      } catch (err) {
        if (retrySlot) budget.release();
        throw err;
      }
      tried?.add(endpoint);
      req.record.endpoint = endpoint.origin;
      req.record.attempts++;
      const state = m.states[endpoint.index]!;
      let signal = req.signal;
      for (const t of tickets) signal = t.signal ?? signal;
      const answered = () => {
        for (const t of tickets) t.answered?.();
        if (retrySlot) budget.release();
        retrySlot = false;
      };
      state.inFlight++;
      const sentAt = performance.now();
      let out: AttemptOutcome<T>;
      try {
        out = await attempt(endpoint, { attempt: n, signal, answered });
      } catch (err) {
        // An adapter bug or an untyped failure: an internal error, counted as one.
        out = {
          error: err instanceof ProxyError
            ? err
            : new ProxyError("internal", "the upstream call failed", { cause: err }),
        };
      } finally {
        answered();
        state.inFlight--;
        budget.endpointDone(endpoint.origin);
      }
      const verdict = account(p, req, m, endpoint, out, (performance.now() - sentAt) / 1000);
      for (let i = tickets.length - 1; i >= 0; i--) tickets[i]!.settle?.(verdict);

      if (
        n >= retries || out.repeatable === false || req.signal.aborted ||
        !retriable(retry!, out)
      ) {
        if (out.error) throw out.error;
        return out.value;
      }
      const afterMs = out.error ? undefined : out.retryAfterMs;
      if (afterMs !== undefined && afterMs > retry!.maxRetryAfterMs) {
        if (out.error) throw out.error;
        return out.value;
      }
      if (!(holdingRetry = takeRetry(budget, req, p.metrics))) {
        if (out.error) throw out.error;
        return out.value;
      }
      if (!out.error) out.discard?.();
      await pause(afterMs ?? backoffMs(retry!, n, p.random), req.signal, p.deadlines);
    }
  } finally {
    budget.leave();
    if (holdingRetry) budget.release();
  }
}

/** Whether this outcome is worth another attempt under the policy. */
function retriable<T>(retry: RetryPolicy, out: AttemptOutcome<T>): boolean {
  if (out.error) return errorRetriable(retry, out.error);
  if (out.grpcStatus !== undefined && out.status === 200) {
    return grpcStatusRetriable(retry, out.grpcStatus);
  }
  return statusRetriable(retry, out.status);
}

/**
 * Failures the client caused (gone, body over the limit, its gRPC answer share full): no mark
 * against the endpoint.
 */
function clientsFault(pe: ProxyError): boolean {
  return pe.kind === "client_closed" || pe.kind === "payload_too_large" ||
    pe.kind === "client_share_full";
}

/**
 * One attempt's outcome into health and outlier detection and the metrics; returns its verdict
 * for the attempt layers (the breaker).
 */
function account<T>(
  p: CallPolicy,
  req: CallRequest,
  m: CallMembers,
  endpoint: Endpoint,
  out: AttemptOutcome<T>,
  seconds: number,
): AttemptVerdict {
  const rec = p.metrics.endpoint(endpoint);
  if (out.error) {
    rec.failed(out.error.kind, seconds);
    if (req.grpc) rec.grpcAttempt(undefined);
    const outcome = outcomeOfError(out.error.kind);
    if (outcome) m.health.record(endpoint.index, outcome);
    return clientsFault(out.error) ? "none" : "failure";
  }
  rec.record(out.status, seconds);
  if (req.grpc) rec.grpcAttempt(out.grpcStatus);
  const outcome = out.status === 200 && out.grpcStatus !== undefined
    ? outcomeOfGrpcStatus(out.grpcStatus)
    : outcomeOfStatus(out.status);
  m.health.record(endpoint.index, outcome);
  return outcome === "success" ? "success" : "failure";
}

/** Takes a retry slot from the cluster's budget; a refusal is flagged URX for the access log. */
function takeRetry(budget: RetryBudget, req: CallRequest, metrics: ClusterRecorder): boolean {
  if (budget.tryAcquire()) {
    metrics.retry();
    return true;
  }
  metrics.budgetExhausted();
  req.record.flags = "URX";
  return false;
}

/**
 * Picks an endpoint that may take the call: not tried yet (once all were tried, any), under its
 * concurrency limit, and admitted by every attempt layer (the breaker). None: 503 saying which
 * guard refused.
 */
function admit(
  p: CallPolicy,
  m: CallMembers,
  pickCtx: { hashKey: string } | undefined,
  tried: ReadonlySet<Endpoint> | undefined,
  signal: AbortSignal,
): { endpoint: Endpoint; tickets: AttemptTicket[] } {
  const name = p.cluster.name;
  const budget = p.cluster.retryBudget;
  let refused: Set<Endpoint> | undefined;
  let exclude: ReadonlySet<Endpoint> | undefined = tried;
  let why: AttemptLayer | "limit" | undefined;
  for (let i = 0; i <= m.endpoints.length; i++) {
    const e = m.balancer.pick(pickCtx, exclude) ??
      (tried && tried.size > 0 ? m.balancer.pick(pickCtx, refused) : undefined);
    if (!e) break;
    // The endpoint's slot is held from here to the attempt's end (runCall's endpointDone).
    if (!budget.takeEndpoint(e.origin, m.states[e.index]!.inFlight, p.maxRequestsPerEndpoint)) {
      why ??= "limit";
    } else {
      const entered = enter(p.attemptLayers, e, signal);
      if (Array.isArray(entered)) return { endpoint: e, tickets: entered };
      budget.endpointDone(e.origin);
      why = entered;
    }
    (refused ??= new Set()).add(e);
    exclude = new Set([...(tried ?? []), ...refused]);
  }
  if (why === "limit") {
    p.metrics.overflow("endpoint");
    throw new ProxyError("overflow", `every endpoint of ${name} is at its request limit`);
  }
  if (why) throw why.refusal(m.endpoints, name);
  throw noEndpoint(name);
}

/** Enters every layer for `e`, outermost first; the refusing layer if one refuses. */
function enter(
  layers: readonly AttemptLayer[],
  e: Endpoint,
  signal: AbortSignal,
): AttemptTicket[] | AttemptLayer {
  const tickets: AttemptTicket[] = [];
  let s = signal;
  for (const layer of layers) {
    const t = layer.enter(e, s);
    if (!t) {
      // Undo the layers already entered: no attempt was made.
      for (let i = tickets.length - 1; i >= 0; i--) {
        tickets[i]!.answered?.();
        tickets[i]!.settle?.("none");
      }
      return layer;
    }
    tickets.push(t);
    s = t.signal ?? s;
  }
  return tickets;
}

/** The error raised when no endpoint can be chosen. */
export function noEndpoint(cluster: string): ProxyError {
  return new ProxyError("no_healthy_upstream", `cluster ${cluster} has no endpoint to send to`);
}

/**
 * Waits between attempts; ends at once (and throws) when the call is aborted, so a call
 * cancelled during its backoff frees its cluster slot and answers without waiting it out.
 */
export function pause(ms: number, signal: AbortSignal, deadlines: DeadlineQueue): Promise<void> {
  if (signal.aborted) return Promise.reject(abortError(signal));
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const d = deadlines.armRoundedUp(ms, () => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    });
    const onAbort = () => {
      d.cancel();
      reject(abortError(signal));
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

/** The call's abort reason in the error table: a timeout, the client gone, or Ferry's own. */
function abortError(signal: AbortSignal): ProxyError {
  const r = signal.reason;
  if (r instanceof ProxyError) return r;
  if (r instanceof TimeoutReason) return new ProxyError("upstream_timeout", r.message);
  if (r instanceof ClientGoneReason) return new ProxyError("client_closed", r.message);
  return new ProxyError("client_closed", "the call was cancelled");
}
