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
  | "client_closed"
  | "internal";

interface ErrorRow {
  readonly status: number;
  /** Envoy-style response flag: short, stable, greppable in logs. */
  readonly flag: string;
  readonly title: string;
}

const TABLE: Readonly<Record<ProxyErrorKind, ErrorRow>> = {
  bad_request: { status: 400, flag: "DPE", title: "bad request" },
  no_route: { status: 404, flag: "NR", title: "no route" },
  method_not_allowed: { status: 405, flag: "NR", title: "method not allowed" },
  // Answered by the connection guard (src/server/guard.ts) before any handler runs.
  request_timeout: { status: 408, flag: "DT", title: "request header timeout" },
  too_many_connections: { status: 503, flag: "DO", title: "too many connections" },
  payload_too_large: { status: 413, flag: "DPE", title: "payload too large" },
  uri_too_long: { status: 414, flag: "DPE", title: "uri too long" },
  headers_too_large: { status: 431, flag: "DPE", title: "request header fields too large" },
  upstream_connect_failure: { status: 502, flag: "UF", title: "upstream connect failure" },
  upstream_reset: { status: 502, flag: "UR", title: "upstream reset" },
  upstream_protocol_error: { status: 502, flag: "UPE", title: "upstream protocol error" },
  no_healthy_upstream: { status: 503, flag: "UH", title: "no healthy upstream" },
  breaker_open: { status: 503, flag: "UO", title: "circuit breaker open" },
  overflow: { status: 503, flag: "UO", title: "upstream overflow" },
  rate_limited: { status: 429, flag: "RL", title: "rate limited" },
  // Fault injection answers with the status the route asks for; 503 is only the default.
  fault_injected: { status: 503, flag: "FI", title: "fault injected" },
  upstream_timeout: { status: 504, flag: "UT", title: "upstream timeout" },
  // 499 is nginx's "client closed request": only ever logged, the client is gone.
  client_closed: { status: 499, flag: "DC", title: "client closed request" },
  internal: { status: 500, flag: "IE", title: "internal error" },
};

/** A failure with a kind from the table and a reason meant for the client and the log. */
export class ProxyError extends Error {
  constructor(
    readonly kind: ProxyErrorKind,
    readonly reason: string,
    options?: ErrorOptions & {
      /** Overrides the table's status (fault injection); must be a 4xx/5xx. */
      status?: number;
      /** Headers the response must carry, such as Retry-After. */
      headers?: HeadersInit;
    },
  ) {
    super(`${kind}: ${reason}`, options);
    this.name = "ProxyError";
    this.statusOverride = options?.status;
    this.headers = options?.headers;
  }
  readonly statusOverride: number | undefined;
  readonly headers: HeadersInit | undefined;
  get status(): number {
    return this.statusOverride ?? TABLE[this.kind].status;
  }
  get flag(): string {
    return TABLE[this.kind].flag;
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
): Response {
  const pe = toProxyError(err);
  const row = TABLE[pe.kind];
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
