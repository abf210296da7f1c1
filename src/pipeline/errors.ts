/**
 * Every response Ferry makes up itself comes from this table, so each failure is named once:
 * a status, a response flag (also written to the access log) and a short reason.
 */

export type ProxyErrorKind =
  | "bad_request"
  | "no_route"
  | "method_not_allowed"
  | "upstream_connect_failure"
  | "upstream_reset"
  | "upstream_id_mismatch"
  | "upstream_timeout"
  | "upstream_protocol_error"
  | "no_healthy_upstream"
  | "breaker_open"
  | "overflow"
  | "rate_limited"
  | "fault_injected"
  | "request_timeout"
  | "too_many_connections"
  | "payload_too_large"
  | "uri_too_long"
  | "headers_too_large"
  | "not_implemented"
  | "version_not_supported"
  | "client_closed"
  | "client_share_full"
  | "admin_host_refused"
  | "admin_cross_origin"
  | "unauthenticated"
  | "access_denied"
  | "middleware_failed"
  | "expectation_failed"
  | "internal";

interface ErrorRow {
  readonly status: number;
  /** The gRPC status a gRPC client gets instead (in a trailers-only response). */
  readonly grpc: number;
  /** Envoy-style response flag: short, stable, greppable in logs. */
  readonly flag: string;
  readonly title: string;
}

const TABLE: Readonly<Record<ProxyErrorKind, ErrorRow>> = {
  bad_request: { status: 400, grpc: 13, flag: "DPE", title: "bad request" },
  no_route: { status: 404, grpc: 12, flag: "NR", title: "no route" },
  method_not_allowed: { status: 405, grpc: 12, flag: "NR", title: "method not allowed" },
  // Answered by the connection guard (src/server/guard.ts) before any handler runs.
  request_timeout: { status: 408, grpc: 4, flag: "DT", title: "request timeout" },
  too_many_connections: { status: 503, grpc: 14, flag: "DO", title: "too many connections" },
  payload_too_large: { status: 413, grpc: 8, flag: "DPE", title: "payload too large" },
  uri_too_long: { status: 414, grpc: 13, flag: "DPE", title: "uri too long" },
  headers_too_large: {
    status: 431,
    grpc: 8,
    flag: "DPE",
    title: "request header fields too large",
  },
  // Ferry's own HTTP/1.1 server (src/h1/server.ts): a transfer coding other than chunked, and an
  // HTTP version other than 1.0 and 1.1 (RFC 9112 6.1, 2.5).
  not_implemented: { status: 501, grpc: 12, flag: "DPE", title: "not implemented" },
  version_not_supported: {
    status: 505,
    grpc: 13,
    flag: "DPE",
    title: "http version not supported",
  },
  upstream_connect_failure: {
    status: 502,
    grpc: 14,
    flag: "UF",
    title: "upstream connect failure",
  },
  upstream_reset: { status: 502, grpc: 14, flag: "UR", title: "upstream reset" },
  // Upstream mTLS: the certificate chained to the CA but named none of `expected_identities`.
  upstream_id_mismatch: {
    status: 502,
    grpc: 14,
    flag: "UI",
    title: "upstream identity mismatch",
  },
  upstream_protocol_error: { status: 502, grpc: 14, flag: "UPE", title: "upstream protocol error" },
  no_healthy_upstream: { status: 503, grpc: 14, flag: "UH", title: "no healthy upstream" },
  breaker_open: { status: 503, grpc: 14, flag: "UO", title: "circuit breaker open" },
  overflow: { status: 503, grpc: 14, flag: "UO", title: "upstream overflow" },
  rate_limited: { status: 429, grpc: 8, flag: "RL", title: "rate limited" },
  // Fault injection answers with the status the route asks for; 503 is only the default.
  fault_injected: { status: 503, grpc: 14, flag: "FI", title: "fault injected" },
  upstream_timeout: { status: 504, grpc: 4, flag: "UT", title: "upstream timeout" },
  // 499 is nginx's "client closed request": only ever logged, the client is gone.
  client_closed: { status: 499, grpc: 1, flag: "DC", title: "client closed request" },
  // gRPC: what Ferry buffered of upstream answers for one client connection passed its share
  // (src/h2/stream.ts chargeTo); the call is reset (ENHANCE_YOUR_CALM), so this is only logged.
  client_share_full: { status: 503, grpc: 8, flag: "DSF", title: "client share full" },
  internal: { status: 500, grpc: 13, flag: "IE", title: "internal error" },
  // The admin listener's own refusals (src/server/admin.ts): DNS rebinding and cross-site forms.
  admin_host_refused: { status: 421, grpc: 7, flag: "AH", title: "misdirected request" },
  admin_cross_origin: { status: 403, grpc: 7, flag: "AO", title: "cross-origin request refused" },
  // Authorization policies (src/policy/authz.ts): a missing or invalid JWT, and a deny.
  unauthenticated: { status: 401, grpc: 16, flag: "UA", title: "unauthenticated" },
  access_denied: { status: 403, grpc: 7, flag: "AZ", title: "access denied" },
  // An extension middleware (docs/extending.md) threw or returned no Response: its bug, not ours.
  middleware_failed: { status: 500, grpc: 13, flag: "MF", title: "middleware failed" },
  // An Expect other than 100-continue (RFC 9110 10.1.1): no hop of Ferry's can meet it, and
  // Expect is not forwarded (hop-by-hop here), so it would otherwise go silently unmet.
  expectation_failed: { status: 417, grpc: 9, flag: "DPE", title: "expectation failed" },
};

/** A failure with a kind from the table and a reason meant for the client and the log. */
export class ProxyError extends Error {
  constructor(
    readonly kind: ProxyErrorKind,
    readonly reason: string,
    options?: ErrorOptions & {
      /** Overrides the table's status (fault injection); must be a 4xx/5xx. */
      status?: number;
      /** Overrides the table's gRPC status (fault injection's `grpc_status`). */
      grpcStatus?: number;
      /** Headers the response must carry, such as Retry-After. */
      headers?: HeadersInit;
    },
  ) {
    super(`${kind}: ${reason}`, options);
    this.name = "ProxyError";
    this.statusOverride = options?.status;
    this.grpcStatusOverride = options?.grpcStatus;
    this.headers = options?.headers;
  }
  readonly statusOverride: number | undefined;
  readonly grpcStatusOverride: number | undefined;
  readonly headers: HeadersInit | undefined;
  get status(): number {
    return this.statusOverride ?? TABLE[this.kind].status;
  }
  get flag(): string {
    return TABLE[this.kind].flag;
  }
  /** gRPC status code (UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED, ...). */
  get grpcStatus(): number {
    return this.grpcStatusOverride ?? TABLE[this.kind].grpc;
  }
}

/**
 * The one place that turns any thrown value into a response. Unknown errors become 500 with no
 * detail (never a stack trace); the detail goes to the log instead.
 */
export function errorResponse(
  err: unknown,
  requestId: string,
  extraHeaders?: HeadersInit,
  /** Where the dashboard's "recent errors" come from, with the request's listener and route. */
  recent?: {
    readonly errors: RecentErrors;
    readonly listener: string;
    readonly route?: string | undefined;
  },
): Response {
  const pe = toProxyError(err);
  const row = TABLE[pe.kind];
  recent?.errors.add({
    at: Date.now(),
    request_id: requestId,
    status: pe.status,
    flag: row.flag,
    reason: pe.reason,
    listener: recent.listener,
    route: recent.route ?? null,
  });
  const body = JSON.stringify({
    error: row.title,
    reason: pe.reason,
    flag: row.flag,
    request_id: requestId,
  }) + "\n";
  const headers = new Headers(pe.headers ?? extraHeaders);
  headers.set("content-type", "application/json");
  headers.set("x-request-id", requestId);
  headers.set("x-ferry-flag", row.flag);
  headers.set("cache-control", "no-store");
  return new Response(body, { status: pe.status, headers });
}

export function toProxyError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  return new ProxyError("internal", "the proxy failed to handle this request", { cause: err });
}

/** One proxy-made error as the dashboard lists it. */
export interface RecentError {
  readonly at: number;
  readonly request_id: string;
  readonly status: number;
  readonly flag: string;
  readonly reason: string;
  readonly listener: string;
  readonly route: string | null;
}

/** Proxy-made errors of one route, flag and reason since start, as the dashboard groups them. */
export interface ErrorGroup {
  readonly route: string | null;
  readonly flag: string;
  readonly reason: string;
  /** The status of the last one (one flag can come with more than one status). */
  status: number;
  count: number;
  first_at: number;
  last_at: number;
  last_request_id: string;
}

/** Distinct (route, flag, reason) groups kept; past it the least recently seen is dropped. */
const MAX_ERROR_GROUPS = 200;

/**
 * The last `capacity` proxy-made errors, oldest first: a fixed ring, no growth under load; and
 * every error counted in its (route, flag, reason) group, so one error repeated a thousand times
 * is one line with its count rather than the whole list.
 */
export class RecentErrors {
  readonly #ring: (RecentError | undefined)[];
  #next = 0;
  #total = 0;
  // Insertion order is recency order: a group seen again is moved to the end.
  readonly #groups = new Map<string, ErrorGroup>();
  constructor(readonly capacity = 50) {
    this.#ring = new Array(capacity);
  }

  add(e: RecentError): void {
    this.#ring[this.#next] = e;
    this.#next = (this.#next + 1) % this.capacity;
    this.#total++;
    const key = `${e.route ?? ""}\u0000${e.flag}\u0000${e.reason}`;
    let g = this.#groups.get(key);
    if (g) this.#groups.delete(key);
    else {
      g = {
        route: e.route,
        flag: e.flag,
        reason: e.reason,
        status: e.status,
        count: 0,
        first_at: e.at,
        last_at: e.at,
        last_request_id: e.request_id,
      };
      if (this.#groups.size >= MAX_ERROR_GROUPS) {
        this.#groups.delete(this.#groups.keys().next().value!);
      }
    }
    g.count++;
    g.status = e.status;
    g.last_at = e.at;
    g.last_request_id = e.request_id;
    this.#groups.set(key, g);
  }

  /** The groups, most recently seen first. */
  groups(): ErrorGroup[] {
    return [...this.#groups.values()].reverse().map((g) => ({ ...g }));
  }

  /** Errors recorded since start (including those the ring no longer holds). */
  get total(): number {
    return this.#total;
  }

  list(): RecentError[] {
    const out: RecentError[] = [];
    for (let i = 0; i < this.capacity; i++) {
      const e = this.#ring[(this.#next + i) % this.capacity];
      if (e) out.push(e);
    }
    return out;
  }
}
