/**
 * Retry policy: which failures are retried, how long to wait, whether the body can be sent again.
 * Plain functions and data; the forwarder owns the attempt loop.
 */
import type { ProxyError } from "../pipeline/errors.ts";
import type { SharedCounts, SharedKeyedCounts, SharedMemory } from "./shared_memory.ts";

export type RetryOn =
  | "connect-failure"
  | "reset"
  | "5xx"
  | "gateway-error"
  | "retriable-status-codes"
  | "cancelled"
  | "deadline-exceeded"
  | "internal"
  | "resource-exhausted"
  | "unavailable";

/**
 * One policy for HTTP and gRPC routes: `retryOn` names transport failures, HTTP status classes
 * and gRPC statuses alike; `statuses` are the extra HTTP statuses of `retriable-status-codes`,
 * `grpcStatuses` the gRPC codes the gRPC names in `retryOn` stand for.
 */
export interface RetryPolicy {
  /** Retries after the first attempt (Envoy's num_retries). */
  readonly retries: number;
  readonly retryOn: ReadonlySet<RetryOn>;
  readonly statuses: ReadonlySet<number>;
  readonly grpcStatuses: ReadonlySet<number>;
  readonly baseMs: number;
  readonly maxMs: number;
  /** POST/PATCH are retried only when the route opts in. */
  readonly nonIdempotent: boolean;
  /** Request bodies up to this size are buffered so they can be replayed. */
  readonly maxBodyBytes: number;
  /** An upstream Retry-After longer than this is not waited for (the response is returned). */
  readonly maxRetryAfterMs: number;
}

/** retry_on names for gRPC statuses (Envoy's spelling) -> their codes. */
export const RETRIABLE_GRPC: Readonly<Record<string, number>> = {
  "cancelled": 1,
  "deadline-exceeded": 4,
  "resource-exhausted": 8,
  "internal": 13,
  "unavailable": 14,
};

/** A route's `retry` section as written in config (durations already in ms). */
export interface RetryConfig {
  readonly retries: number;
  readonly retry_on: readonly RetryOn[];
  readonly statuses: readonly number[];
  readonly backoff: { readonly base: number; readonly max: number };
  readonly non_idempotent: boolean;
  readonly max_body_bytes: number;
  readonly max_retry_after: number;
}

/** The one policy shape, from a route's config (for HTTP and gRPC calls alike). */
export function retryPolicy(c: RetryConfig): RetryPolicy {
  return Object.freeze({
    retries: c.retries,
    retryOn: new Set(c.retry_on),
    statuses: new Set(c.statuses),
    grpcStatuses: new Set(
      c.retry_on.flatMap((o) => RETRIABLE_GRPC[o] === undefined ? [] : [RETRIABLE_GRPC[o]!]),
    ),
    baseMs: c.backoff.base,
    maxMs: c.backoff.max,
    nonIdempotent: c.non_idempotent,
    maxBodyBytes: c.max_body_bytes,
    maxRetryAfterMs: c.max_retry_after,
  });
}

const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);

/** RFC 9110 9.2.2 (TRACE is never forwarded): a request that may be sent twice. */
export function isIdempotent(method: string): boolean {
  return IDEMPOTENT.has(method);
}

export function methodRetriable(p: RetryPolicy, method: string): boolean {
  return IDEMPOTENT.has(method) || p.nonIdempotent;
}

/** Whether a transport failure is worth another attempt under this policy. */
export function errorRetriable(p: RetryPolicy, err: ProxyError): boolean {
  switch (err.kind) {
    case "upstream_connect_failure":
      return p.retryOn.has("connect-failure") || p.retryOn.has("gateway-error") ||
        p.retryOn.has("5xx");
    case "upstream_reset":
    case "upstream_protocol_error":
      return p.retryOn.has("reset") || p.retryOn.has("gateway-error") || p.retryOn.has("5xx");
    case "upstream_timeout":
      // A per-try timeout is a gateway error (504) in Envoy's terms.
      return p.retryOn.has("gateway-error") || p.retryOn.has("5xx");
    default:
      return false;
  }
}

export function statusRetriable(p: RetryPolicy, status: number): boolean {
  if (p.retryOn.has("5xx") && status >= 500 && status <= 599) return true;
  if (p.retryOn.has("gateway-error") && (status === 502 || status === 503 || status === 504)) {
    return true;
  }
  return p.retryOn.has("retriable-status-codes") && p.statuses.has(status);
}

/** A trailers-only gRPC answer with this status is retried under the policy. */
export function grpcStatusRetriable(p: RetryPolicy, grpcStatus: number): boolean {
  return p.grpcStatuses.has(grpcStatus);
}

/**
 * Exponential backoff with full jitter (AWS architecture blog): a uniform wait in
 * [0, min(max, base * 2^retry)], so synchronised clients spread out.
 */
export function backoffMs(
  p: RetryPolicy,
  retry: number,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(p.maxMs, p.baseMs * 2 ** retry);
  return Math.floor(random() * ceiling);
}

/**
 * Retry-After (RFC 9110 10.2.3) as delay-seconds or an HTTP date; undefined when absent or
 * unparseable.
 */
export function parseRetryAfter(value: string | null, nowMs = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - nowMs);
}

/**
 * The process-wide bound on bytes kept to replay request bodies (HTTP bodies and gRPC messages)
 * across every call in flight. Each call's own limit is its route's `max_body_bytes`; this bound
 * keeps many calls at once from holding `calls x max_body_bytes`. A call that would go over it
 * stops keeping its body and is not retried, rather than buffering more.
 */
export class ReplayBytes {
  /** This isolate's bytes held. */
  held = 0;
  /** With workers: every worker's bytes held (the bound is the process's). */
  #shared: SharedCounts | undefined;
  constructor(public limit: number) {}

  /** From now on the bound counts every worker's bytes (server.workers > 1). */
  share(counts: SharedCounts): void {
    this.#shared = counts;
  }

  /** Reserves `n` bytes; false (nothing reserved) when that would pass the limit. */
  tryHold(n: number): boolean {
    const shared = this.#shared;
    if (shared) {
      if (!shared.take(0, this.limit, n)) return false;
    } else if (this.held + n > this.limit) return false;
    this.held += n;
    return true;
  }
  release(n: number): void {
    this.held -= n;
    this.#shared?.add(0, -n);
  }
}

/** Default bound: 64 MiB (docs/configuration.md, `retry.max_body_bytes`). */
export const DEFAULT_REPLAY_BYTES = 64 * 1024 * 1024;

/** The process's replay bound. */
export const replayBytes: ReplayBytes = new ReplayBytes(DEFAULT_REPLAY_BYTES);

/** With workers, the replay bound counts every serving isolate's bytes (each calls this). */
export function shareReplayBound(memory: SharedMemory): void {
  const counts = memory.counts("replay bytes", 1);
  if (counts) replayBytes.share(counts);
}

/**
 * A request body that can be sent more than once: read up to `limit` bytes into memory. If the
 * body is larger, it is not replayable and the first attempt gets the buffered part followed by
 * the rest of the original stream.
 */
export async function replayableBody(
  body: ReadableStream<Uint8Array>,
  limit: number,
  /** The process-wide bound: bytes kept are held there until the caller releases `held`. */
  bound: ReplayBytes = replayBytes,
  /** Gives up reading (rejects with its reason): the body took too long. */
  signal?: AbortSignal,
): Promise<
  { replayable: true; chunks: Uint8Array[]; held: number } | {
    replayable: false;
    stream: ReadableStream<Uint8Array>;
  }
> {
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  const giveUp = () => void reader.cancel(signal!.reason).catch(() => {});
  signal?.addEventListener("abort", giveUp, { once: true });
  try {
    while (true) {
      const { value, done } = await reader.read();
      // A cancelled reader reads as done: not a whole body.
      if (signal?.aborted) throw signal.reason;
      if (done) return { replayable: true, chunks, held: size };
      chunks.push(value);
      if (size + value.byteLength > limit || !bound.tryHold(value.byteLength)) break;
      size += value.byteLength;
    }
  } catch (err) {
    bound.release(size);
    throw err;
  } finally {
    signal?.removeEventListener("abort", giveUp);
  }
  // Not kept after all: what was held goes back at once.
  bound.release(size);
  // Too large to keep: hand on what was read, then the rest as it arrives.
  let i = 0;
  const stream = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      if (i < chunks.length) {
        ctl.enqueue(chunks[i++]!);
        return;
      }
      const { value, done } = await reader.read();
      if (done) ctl.close();
      else ctl.enqueue(value);
    },
    cancel(reason) {
      return reader.cancel(reason);
    },
  });
  return { replayable: false, stream };
}

/** A fresh stream over buffered chunks, for one attempt. */
export function replay(chunks: readonly Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (i < chunks.length) ctl.enqueue(chunks[i++]!);
      else ctl.close();
    },
  });
}

/**
 * Retry budget per cluster (Envoy's retry_budget, linkerd's budgets): retries in flight may be at
 * most `percent` of active requests, but never fewer than `minRetries`. With every upstream
 * failing, retries stay a bounded share of traffic instead of multiplying it.
 *
 * It also counts the cluster's requests in flight for `limits.max_requests` (`enter`/`leave`)
 * and, given `shared`, per endpoint for `limits.max_requests_per_endpoint`. With
 * `server.workers > 1` the counts are process-wide (`shared`, in the arena): the budget, the
 * caps and the share are the process's, not each worker's. `active` and `retrying` are always
 * this isolate's own (the /clusters view sums them over workers).
 */
export class RetryBudget {
  active = 0;
  retrying = 0;
  readonly #shared: SharedBudget | undefined;

  constructor(
    readonly percent: number,
    readonly minRetries: number,
    /** Envoy's max_retries threshold: a hard cap whatever the share allows. */
    readonly maxRetries = Number.POSITIVE_INFINITY,
    shared?: SharedBudget,
  ) {
    this.#shared = shared;
  }

  /** Counts a request in unless `max` are in flight (process-wide when shared); true if in. */
  enter(max: number): boolean {
    const shared = this.#shared;
    if (shared) {
      if (!shared.counts.take(ACTIVE, max)) return false;
    } else if (this.active >= max) return false;
    this.active++;
    return true;
  }

  /** Once per `enter` that returned true. */
  leave(): void {
    this.active--;
    this.#shared?.counts.add(ACTIVE, -1);
  }

  /** Takes a retry slot if the budget allows; the caller must `release()` it. */
  tryAcquire(): boolean {
    const shared = this.#shared;
    const active = shared ? shared.counts.total(ACTIVE) : this.active;
    const share = Math.max(this.minRetries, Math.floor(active * this.percent / 100));
    const allowed = Math.min(share, this.maxRetries);
    if (shared) {
      if (!shared.counts.take(RETRYING, allowed)) return false;
    } else if (this.retrying >= allowed) return false;
    this.retrying++;
    return true;
  }

  release(): void {
    this.retrying--;
    this.#shared?.counts.add(RETRYING, -1);
  }

  /**
   * Takes a slot on endpoint `origin` for one attempt, when fewer than `max` attempts are in
   * flight on it (`inFlight`: this isolate's count; process-wide when shared). True: the
   * attempt may go, and `endpointDone(origin)` follows it.
   */
  takeEndpoint(origin: string, inFlight: number, max: number): boolean {
    const perEndpoint = this.#shared?.perEndpoint;
    return perEndpoint ? perEndpoint.take(origin, max) : inFlight < max;
  }

  endpointDone(origin: string): void {
    this.#shared?.perEndpoint?.release(origin);
  }
}

/** Indexes of a shared budget's counts: requests in flight, retries in flight. */
const ACTIVE = 0, RETRYING = 1;

/** A cluster's process-wide counts (server.workers > 1; src/policy/shared_memory.ts). */
export interface SharedBudget {
  /** [requests in flight, retries in flight]. */
  readonly counts: SharedCounts;
  /** Attempts in flight per endpoint origin; only when `max_requests_per_endpoint` is set. */
  readonly perEndpoint?: SharedKeyedCounts | undefined;
}

/** Endpoint slots per worker in a cluster's per-endpoint table (DNS churn fits). */
const ENDPOINT_SLOTS = 512;

/**
 * The shared counts of a cluster keyed `key` (its name and config: a rebuilt cluster starts
 * from zero, as it does in one isolate); undefined when the arena is full.
 */
export function sharedBudget(
  memory: SharedMemory,
  key: string,
  perEndpoint: boolean,
): SharedBudget | undefined {
  const counts = memory.counts(`cluster requests ${key}`, 2);
  if (!counts) return undefined;
  if (!perEndpoint) return { counts };
  const table = memory.keyedCounts(`cluster endpoint requests ${key}`, ENDPOINT_SLOTS);
  return table ? { counts, perEndpoint: table } : undefined;
}
