/**
 * Every Prometheus metric Ferry exports, defined in one place (the table in
 * docs/observability.md mirrors this file). One `FerryMetrics` lives as long as the process and
 * is handed to each compiled snapshot, so counters survive config reloads.
 *
 * Cost on the request path is kept low: labelled children are resolved once (per route, cluster
 * and endpoint at compile time, per method and status class on first use) and then reused, so a
 * request does no label-object work. State that already lives elsewhere (endpoint health,
 * breaker state, in-flight per endpoint) is read when Prometheus scrapes, not recorded per request.
 *
 * Label values come only from config (listener, route, cluster, endpoint, limit names) or from
 * small fixed sets (method, status class, flag): never raw paths, hosts or client addresses.
 *
 * One piece past 500 lines: every metric's name, help and labels in one table, so the exposition
 * and docs/observability.md can be checked against one file.
 */
import * as client from "./prom.ts";
import { VERSION } from "../version.ts";
import { processDescriptors } from "./descriptors.ts";

/** prom-client defaults read from /proc/self (0 without --allow-all); see registerProcessCollectors. */
const PROC_SELF_METRICS = [
  "process_resident_memory_bytes",
  "process_virtual_memory_bytes",
  "process_heap_bytes",
  "process_open_fds",
  "process_max_fds",
];

/**
 * Memory and descriptors under `deno task start`'s own permissions: RSS from
 * Deno.memoryUsage() (no permission), descriptors through libc (--allow-ffi, see
 * src/server/descriptors.ts). Without that permission the descriptor gauges have no value
 * rather than a false 0. process_virtual_memory_bytes and process_heap_bytes have no source
 * short of /proc and are not exported.
 */
function registerProcessCollectors(registers: client.Registry[]): void {
  new client.Gauge({
    name: "process_resident_memory_bytes",
    help: "Resident memory size in bytes.",
    registers,
    collect() {
      this.set(Deno.memoryUsage().rss);
    },
  });
  const fds = processDescriptors();
  if (!fds) return;
  new client.Gauge({
    name: "process_open_fds",
    help: "Number of open file descriptors.",
    registers,
    collect() {
      this.set(fds.open());
    },
  });
  new client.Gauge({
    name: "process_max_fds",
    help: "Maximum number of open file descriptors (the soft limit).",
    registers,
    collect() {
      this.set(fds.limit().soft);
    },
  });
}

/** Latency buckets in seconds: 0.5 ms to 30 s. */
export const LATENCY_BUCKETS = [
  0.0005,
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
];

/** prom-client defaults dropped: libuv handle/request counts, gauges misnamed with `_total`. */
const NODE_ONLY_METRICS = [
  "nodejs_active_handles",
  "nodejs_active_handles_total",
  "nodejs_active_requests",
  "nodejs_active_requests_total",
  "nodejs_active_resources",
  "nodejs_active_resources_total",
];

/** Methods kept as label values; anything else is "other" (methods are client-chosen tokens). */
const METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"] as const;
const STATUS_CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"] as const;
/** Why the guard (or a gRPC listener) refused a connection or request before any handler. */
export type DownstreamRefusal =
  | "too_many_connections"
  | "too_many_connections_per_ip"
  | "request_timeout"
  | "settings_timeout"
  | "idle_timeout"
  | "send_timeout"
  | "bad_request"
  | "headers_too_large"
  | "not_implemented"
  | "version_not_supported";

/** Upstream attempts that got no response at all (refused, reset, timeout) use this class. */
export const NO_RESPONSE = "error";

function methodIndex(method: string): number {
  switch (method) {
    case "GET":
      return 0;
    case "HEAD":
      return 1;
    case "POST":
      return 2;
    case "PUT":
      return 3;
    case "DELETE":
      return 4;
    case "PATCH":
      return 5;
    case "OPTIONS":
      return 6;
    default:
      return 7;
  }
}

/** 0..4 for 1xx..5xx; anything out of range counts as 5xx (it is a bug somewhere). */
function classIndex(status: number): number {
  const c = (status / 100) | 0;
  return c >= 1 && c <= 5 ? c - 1 : 4;
}

export function statusClass(status: number): string {
  return STATUS_CLASSES[classIndex(status)]!;
}

type Child<T> = { inc(v?: number): void } & T;

/** The 17 gRPC status codes by number: the label values of the gRPC counters. */
export const GRPC_STATUS_NAMES = [
  "OK",
  "CANCELLED",
  "UNKNOWN",
  "INVALID_ARGUMENT",
  "DEADLINE_EXCEEDED",
  "NOT_FOUND",
  "ALREADY_EXISTS",
  "PERMISSION_DENIED",
  "RESOURCE_EXHAUSTED",
  "FAILED_PRECONDITION",
  "ABORTED",
  "OUT_OF_RANGE",
  "UNIMPLEMENTED",
  "INTERNAL",
  "UNAVAILABLE",
  "DATA_LOSS",
  "UNAUTHENTICATED",
] as const;
/** An upstream attempt that ended without any grpc-status (refused, reset, non-gRPC answer). */
export const NO_GRPC_STATUS = "none";

/**
 * A counter with a trailing `grpc_status` label over a bounded set: the 17 code names, and
 * `none` for no status. A code outside 0..16 counts as UNKNOWN, as gRPC clients read it.
 */
export class GrpcStatusCounter {
  readonly #children: (Child<unknown> | undefined)[] = new Array(GRPC_STATUS_NAMES.length + 1);
  constructor(
    private readonly counter: client.Counter<string>,
    private readonly labels: readonly string[],
  ) {}

  inc(code: number | undefined): void {
    const i = code === undefined
      ? GRPC_STATUS_NAMES.length
      : Number.isInteger(code) && code >= 0 && code < GRPC_STATUS_NAMES.length
      ? code
      : 2;
    const name = i === GRPC_STATUS_NAMES.length ? NO_GRPC_STATUS : GRPC_STATUS_NAMES[i]!;
    (this.#children[i] ??= this.counter.labels(...this.labels, name)).inc();
  }
}

/** One (listener, route) pair's downstream recorder; children made on first use. */
export class RouteRecorder {
  readonly #counters: (Child<unknown> | undefined)[] = new Array(METHODS.length * 5);
  readonly #histograms: ({ observe(v: number): void } | undefined)[] = new Array(
    METHODS.length * 5,
  );
  constructor(
    private readonly m: FerryMetrics,
    private readonly listener: string,
    private readonly route: string,
  ) {}

  /** One finished request: method, final status and seconds until the response was ready. */
  record(method: string, status: number, seconds: number): void {
    const i = methodIndex(method) * 5 + classIndex(status);
    let c = this.#counters[i];
    let h = this.#histograms[i];
    if (c === undefined || h === undefined) {
      const labels = [this.listener, this.route, METHODS[i / 5 | 0]!, STATUS_CLASSES[i % 5]!];
      c = this.#counters[i] = this.m.downstreamRequests.labels(...labels);
      h = this.#histograms[i] = this.m.downstreamDuration.labels(...labels);
    }
    c.inc();
    h.observe(seconds);
  }
}

/** Per listener: routes' recorders and the in-flight count (read at scrape time). */
export class ListenerRecorder {
  inFlight = 0;
  readonly #routes = new Map<string, RouteRecorder>();
  readonly #grpc = new Map<string, GrpcStatusCounter>();
  constructor(private readonly m: FerryMetrics, readonly name: string) {}

  /**
   * gRPC calls finished on this listener for a route (and the cluster it sends to); `none` when
   * there was none. Keyed by route name alone, since a route has one cluster: no key is built
   * per call.
   */
  grpcCalls(route: string | undefined, cluster: string | undefined): GrpcStatusCounter {
    const key = route ?? "";
    let c = this.#grpc.get(key);
    if (c === undefined) {
      c = new GrpcStatusCounter(this.m.grpcCalls, [this.name, route ?? "none", cluster ?? "none"]);
      this.#grpc.set(key, c);
    }
    return c;
  }

  /** The recorder for a route name; "" (no route matched) is labelled `none`. */
  route(name: string | undefined): RouteRecorder {
    const key = name ?? "";
    let r = this.#routes.get(key);
    if (r === undefined) {
      r = new RouteRecorder(this.m, this.name, key === "" ? "none" : key);
      this.#routes.set(key, r);
    }
    return r;
  }
}

/** One upstream endpoint: attempts by status class, with time to response headers. */
export class EndpointRecorder {
  readonly #counters: (Child<unknown> | undefined)[] = new Array(6);
  readonly #histograms: ({ observe(v: number): void } | undefined)[] = new Array(6);
  constructor(
    private readonly m: FerryMetrics,
    private readonly cluster: string,
    readonly origin: string,
  ) {}

  /** `status` 0 means the attempt got no response (see `failed`). */
  record(status: number, seconds: number): void {
    const i = status === 0 ? 5 : classIndex(status);
    let c = this.#counters[i];
    let h = this.#histograms[i];
    if (c === undefined || h === undefined) {
      const labels = [this.cluster, this.origin, i === 5 ? NO_RESPONSE : STATUS_CLASSES[i]!];
      c = this.#counters[i] = this.m.upstreamRequests.labels(...labels);
      h = this.#histograms[i] = this.m.upstreamDuration.labels(...labels);
    }
    c.inc();
    h.observe(seconds);
  }

  /** An attempt that failed without a response, by error kind (a fixed set). */
  failed(kind: string, seconds: number): void {
    this.record(0, seconds);
    this.m.upstreamErrors.labels(this.cluster, this.origin, kind).inc();
  }

  #grpc: GrpcStatusCounter | undefined;
  /** A gRPC attempt's grpc-status (undefined: it ended without one). */
  grpcAttempt(code: number | undefined): void {
    (this.#grpc ??= new GrpcStatusCounter(this.m.grpcUpstreamAttempts, [this.cluster, this.origin]))
      .inc(code);
  }
}

/** The `reason` label values of ferry_upstream_response_body_errors_total: error kinds. */
export const BODY_ERROR_REASONS = [
  "upstream_reset",
  "upstream_protocol_error",
  "upstream_timeout",
] as const;
export type BodyErrorReason = (typeof BODY_ERROR_REASONS)[number];

/**
 * Per cluster: endpoint recorders and retry/overflow counters. Endpoint recorders are cached by
 * the endpoint's stable slot and checked against its origin, since DNS or a reload may give a
 * slot to another endpoint.
 */
export class ClusterRecorder {
  readonly #endpoints: (EndpointRecorder | undefined)[] = [];
  readonly #m: FerryMetrics;
  readonly #retries: Child<unknown>;
  readonly #budgetExhausted: Child<unknown>;
  readonly #overflowCluster: Child<unknown>;
  readonly #overflowEndpoint: Child<unknown>;
  readonly #bodyErrors: Child<unknown>[];

  constructor(m: FerryMetrics, readonly name: string) {
    this.#m = m;
    this.#retries = m.retries.labels(name);
    this.#budgetExhausted = m.retryBudgetExhausted.labels(name);
    this.#overflowCluster = m.overflow.labels(name, "cluster");
    this.#overflowEndpoint = m.overflow.labels(name, "endpoint");
    // Series exist from the start, so rate() and alerts see 0 rather than nothing.
    for (const c of [this.#retries, this.#budgetExhausted, this.#overflowCluster]) c.inc(0);
    this.#overflowEndpoint.inc(0);
    this.#bodyErrors = BODY_ERROR_REASONS.map((r) => m.upstreamBodyErrors.labels(name, r));
    for (const c of this.#bodyErrors) c.inc(0);
  }

  /**
   * A response body the upstream broke off after its head had gone to the client (the client
   * sees it cut short; before that, the answer is a 502 counted as an upstream error instead).
   */
  bodyFailed(reason: BodyErrorReason): void {
    this.#bodyErrors[BODY_ERROR_REASONS.indexOf(reason)]!.inc();
  }

  /** The recorder for an endpoint of this cluster. */
  endpoint(e: { readonly slot: number; readonly origin: string }): EndpointRecorder {
    const r = this.#endpoints[e.slot];
    if (r !== undefined && r.origin === e.origin) return r;
    return (this.#endpoints[e.slot] = new EndpointRecorder(this.#m, this.name, e.origin));
  }

  retry(): void {
    this.#retries.inc();
  }
  budgetExhausted(): void {
    this.#budgetExhausted.inc();
  }
  /** A request refused because the cluster (max_requests) or every endpoint was at its limit. */
  overflow(limit: "cluster" | "endpoint"): void {
    (limit === "cluster" ? this.#overflowCluster : this.#overflowEndpoint).inc();
  }
}

export interface FerryMetricsOptions {
  /** Process metrics (CPU, memory, event loop lag) from prom-client's default collectors. */
  readonly processMetrics?: boolean;
}

/** One endpoint as the scrape-time gauges see it. */
export type EndpointVisitor = (
  cluster: string,
  origin: string,
  inFlight: number,
  healthy: boolean,
  ejected: boolean,
) => void;

/** One endpoint's h1 pool counts (src/h1/pool.ts). */
export interface PoolCounts {
  readonly origin: string;
  readonly open: number;
  readonly idle: number;
  readonly opened: number;
}

/**
 * What the serving side shows at scrape time, registered by the parts that own it (the serving
 * config's clusters and breakers, the listeners' connection counts): the metrics read state
 * through these and know nothing of the snapshot that holds it.
 */
export interface ScrapeSources {
  /** Every endpoint of the serving clusters. */
  readonly endpoints: (visit: EndpointVisitor) => void;
  /** The h1 pools' connections per endpoint. */
  readonly pools: (visit: (cluster: string, pool: PoolCounts) => void) => void;
  /** Every breaker slot: 0 closed, 1 open, 2 half-open; endpoint `*` for a cluster-wide one. */
  readonly breakers: (
    visit: (cluster: string, scope: string, endpoint: string, state: number) => void,
  ) => void;
  /** Open downstream connections per listener. */
  readonly connections: () => Record<string, number>;
}

/** What can start a reload: the label values of ferry_config_reloads_total{trigger}. */
export const RELOAD_TRIGGERS = ["file", "signal", "admin", "api", "tls"] as const;

export class FerryMetrics {
  readonly registry: client.Registry = new client.Registry();
  readonly #listeners = new Map<string, ListenerRecorder>();
  /** Read at scrape time for the state gauges; registered by their owners (`watch`). */
  #sources: Partial<ScrapeSources> = {};

  readonly downstreamRequests: client.Counter<string>;
  readonly downstreamDuration: client.Histogram<string>;
  readonly downstreamInFlight: client.Gauge<string>;
  readonly downstreamConnections: client.Gauge<string>;
  readonly upstreamRequests: client.Counter<string>;
  readonly upstreamDuration: client.Histogram<string>;
  readonly upstreamErrors: client.Counter<string>;
  readonly upstreamInFlight: client.Gauge<string>;
  readonly upstreamConnections: client.Gauge<string>;
  readonly upstreamConnectionsOpened: client.Counter<string>;
  readonly endpointHealthy: client.Gauge<string>;
  readonly endpointEjected: client.Gauge<string>;
  readonly endpointEjections: client.Counter<string>;
  readonly endpointHealthChanges: client.Counter<string>;
  readonly breakerState: client.Gauge<string>;
  readonly breakerTransitions: client.Counter<string>;
  readonly rateLimited: client.Counter<string>;
  readonly authzDecisions: client.Counter<string>;
  readonly rateLimitBackendErrors: client.Counter<string>;
  readonly rateLimitBackendUp: client.Gauge<string>;
  readonly retries: client.Counter<string>;
  readonly upstreamBodyErrors: client.Counter<string>;
  readonly retryBudgetExhausted: client.Counter<string>;
  readonly overflow: client.Counter<string>;
  readonly grpcCalls: client.Counter<string>;
  readonly grpcUpstreamAttempts: client.Counter<string>;
  readonly configReloads: client.Counter<string>;
  readonly configInfo: client.Gauge<string>;
  readonly internalErrors: client.Counter<string>;
  readonly buildInfo: client.Gauge<string>;
  readonly acceptErrors: client.Counter<string>;
  readonly downstreamRefused: client.Counter<string>;

  constructor(opts: FerryMetricsOptions = {}) {
    const registers = [this.registry];
    // collect() runs with `this` bound to the metric; these arrows reach back to Ferry's state.
    const listeners = this.#listeners;
    const eachBreaker: ScrapeSources["breakers"] = (fn) => this.#sources.breakers?.(fn);
    const eachEndpoint: ScrapeSources["endpoints"] = (fn) => this.#sources.endpoints?.(fn);
    this.downstreamRequests = new client.Counter({
      name: "ferry_downstream_requests_total",
      help: "Downstream requests answered, by listener, route, method and status class.",
      labelNames: ["listener", "route", "method", "status_class"],
      registers,
    });
    this.downstreamDuration = new client.Histogram({
      name: "ferry_downstream_request_duration_seconds",
      help: "Time from receiving a downstream request until its response headers were ready.",
      labelNames: ["listener", "route", "method", "status_class"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.downstreamInFlight = new client.Gauge({
      name: "ferry_downstream_requests_in_flight",
      help: "Downstream requests received whose response headers are not ready yet.",
      labelNames: ["listener"],
      registers,
      collect() {
        this.reset();
        for (const l of listeners.values()) this.set({ listener: l.name }, l.inFlight);
      },
    });
    const openConnections = () => this.#sources.connections?.() ?? {};
    this.downstreamConnections = new client.Gauge({
      name: "ferry_downstream_connections_open",
      help:
        'Open downstream connections per listener (the admin listener\'s as listener="admin"), ' +
        "as the connection guard and gRPC listeners count them.",
      labelNames: ["listener"],
      registers,
      collect() {
        this.reset();
        for (const [listener, n] of Object.entries(openConnections())) this.set({ listener }, n);
      },
    });
    this.upstreamRequests = new client.Counter({
      name: "ferry_upstream_requests_total",
      help: "Upstream attempts (retries included) by cluster, endpoint and status class; " +
        "status_class=error means no response.",
      labelNames: ["cluster", "endpoint", "status_class"],
      registers,
    });
    this.upstreamDuration = new client.Histogram({
      name: "ferry_upstream_request_duration_seconds",
      help: "Time from sending an upstream attempt until its response headers (or failure).",
      labelNames: ["cluster", "endpoint", "status_class"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.upstreamErrors = new client.Counter({
      name: "ferry_upstream_errors_total",
      help: "Upstream attempts that got no response, by error kind.",
      labelNames: ["cluster", "endpoint", "kind"],
      registers,
    });
    this.upstreamInFlight = new client.Gauge({
      name: "ferry_upstream_requests_in_flight",
      help: "Upstream attempts waiting for response headers, by endpoint.",
      labelNames: ["cluster", "endpoint"],
      registers,
      collect() {
        this.reset();
        eachEndpoint((cluster, e, inFlight) => this.set({ cluster, endpoint: e }, inFlight));
      },
    });
    const eachPool: ScrapeSources["pools"] = (fn) => this.#sources.pools?.(fn);
    this.upstreamConnections = new client.Gauge({
      name: "ferry_upstream_connections",
      help: "Connections of the h1 transport's pool by endpoint, active (carrying a request) " +
        "or idle.",
      labelNames: ["cluster", "endpoint", "state"],
      registers,
      collect() {
        this.reset();
        eachPool((cluster, p) => {
          this.set({ cluster, endpoint: p.origin, state: "active" }, p.open - p.idle);
          this.set({ cluster, endpoint: p.origin, state: "idle" }, p.idle);
        });
      },
    });
    this.upstreamConnectionsOpened = new client.Counter({
      name: "ferry_upstream_connections_opened_total",
      help: "Connections the h1 transport opened (or tried to) per endpoint.",
      labelNames: ["cluster", "endpoint"],
      registers,
      collect() {
        this.reset();
        eachPool((cluster, p) => this.inc({ cluster, endpoint: p.origin }, p.opened));
      },
    });
    this.endpointHealthy = new client.Gauge({
      name: "ferry_endpoint_healthy",
      help: "1 when active health checks pass for the endpoint (always 1 without checks).",
      labelNames: ["cluster", "endpoint"],
      registers,
      collect() {
        this.reset();
        eachEndpoint((cluster, e, _i, healthy) =>
          this.set({ cluster, endpoint: e }, healthy ? 1 : 0)
        );
      },
    });
    this.endpointEjected = new client.Gauge({
      name: "ferry_endpoint_ejected",
      help: "1 while outlier detection has the endpoint ejected.",
      labelNames: ["cluster", "endpoint"],
      registers,
      collect() {
        this.reset();
        eachEndpoint((cluster, e, _i, _healthy, ejected) =>
          this.set({ cluster, endpoint: e }, ejected ? 1 : 0)
        );
      },
    });
    this.endpointEjections = new client.Counter({
      name: "ferry_endpoint_ejections_total",
      help: "Times outlier detection ejected the endpoint.",
      labelNames: ["cluster", "endpoint"],
      registers,
    });
    this.endpointHealthChanges = new client.Counter({
      name: "ferry_endpoint_health_changes_total",
      help: "Active health check verdict changes, by new state (healthy or unhealthy).",
      labelNames: ["cluster", "endpoint", "state"],
      registers,
    });
    this.breakerState = new client.Gauge({
      name: "ferry_circuit_breaker_state",
      help: "Circuit breaker state: 0 closed, 1 open, 2 half-open. endpoint=* for a " +
        "cluster-wide breaker.",
      labelNames: ["cluster", "scope", "endpoint"],
      registers,
      collect() {
        this.reset();
        eachBreaker((cluster, scope, endpoint, state) =>
          this.set({ cluster, scope, endpoint }, state)
        );
      },
    });
    this.breakerTransitions = new client.Counter({
      name: "ferry_circuit_breaker_transitions_total",
      help: "Circuit breaker state changes, by the state entered.",
      labelNames: ["cluster", "scope", "endpoint", "to"],
      registers,
    });
    this.rateLimited = new client.Counter({
      name: "ferry_rate_limited_requests_total",
      help: "Requests refused with 429 by a rate limit, by route, limit name and scope.",
      labelNames: ["route", "limit", "scope"],
      registers,
    });
    this.authzDecisions = new client.Counter({
      name: "ferry_authz_decisions_total",
      help: "Authorization policy decisions, by listener, route and decision (allow, deny = 403 " +
        "AZ, unauthenticated = 401 UA).",
      labelNames: ["listener", "route", "decision"],
      registers,
    });
    this.rateLimitBackendErrors = new client.Counter({
      name: "ferry_rate_limit_backend_errors_total",
      help: "Failed or timed-out calls to a shared rate limit's Redis, by limit name.",
      labelNames: ["limit"],
      registers,
    });
    this.rateLimitBackendUp = new client.Gauge({
      name: "ferry_rate_limit_backend_up",
      help: "1 while a shared rate limit's Redis answers, 0 while its failure mode applies.",
      labelNames: ["limit"],
      registers,
    });
    this.retries = new client.Counter({
      name: "ferry_upstream_retries_total",
      help: "Retry attempts sent upstream (admitted by the retry budget).",
      labelNames: ["cluster"],
      registers,
    });
    this.upstreamBodyErrors = new client.Counter({
      name: "ferry_upstream_response_body_errors_total",
      help: "Response bodies the upstream broke off after their head went to the client " +
        "(reset, close, malformed framing, idle timeout), by cluster and error kind.",
      labelNames: ["cluster", "reason"],
      registers,
    });
    this.retryBudgetExhausted = new client.Counter({
      name: "ferry_retry_budget_exhausted_total",
      help: "Retries the policy allowed but the cluster's retry budget refused (flag URX).",
      labelNames: ["cluster"],
      registers,
    });
    this.overflow = new client.Counter({
      name: "ferry_upstream_overflow_total",
      help: "Requests refused (503 UO) because the cluster or every endpoint was at its " +
        "request limit.",
      labelNames: ["cluster", "limit"],
      registers,
    });
    this.grpcCalls = new client.Counter({
      name: "ferry_grpc_calls_total",
      help: "gRPC calls finished on grpc listeners, by listener, route, cluster and the " +
        "grpc-status the client got (code name).",
      labelNames: ["listener", "route", "cluster", "grpc_status"],
      registers,
    });
    this.grpcUpstreamAttempts = new client.Counter({
      name: "ferry_grpc_upstream_attempts_total",
      help: "gRPC upstream attempts (retries included) by cluster, endpoint and grpc-status; " +
        "grpc_status=none means the attempt ended without one.",
      labelNames: ["cluster", "endpoint", "grpc_status"],
      registers,
    });
    this.configReloads = new client.Counter({
      name: "ferry_config_reloads_total",
      help: "Config reload attempts, by result (success or failure) and trigger (file, signal, " +
        "admin for POST /reload, api for PUT /config, tls for a changed TLS file).",
      labelNames: ["result", "trigger"],
      registers,
    });
    this.configInfo = new client.Gauge({
      name: "ferry_config_info",
      help: "Always 1; labels: the active config version and who applied it (the " +
        "x-ferry-author of PUT /config, else the trigger). Only the active config has a series.",
      labelNames: ["version", "author"],
      registers,
    });
    this.buildInfo = new client.Gauge({
      name: "ferry_build_info",
      help: "Always 1; labels give Ferry's and Deno's versions.",
      labelNames: ["version", "deno"],
      registers,
    });
    this.buildInfo.set({ version: VERSION, deno: Deno.version.deno }, 1);
    this.acceptErrors = new client.Counter({
      name: "ferry_accept_errors_total",
      help: "Failed accepts by listener, socket (listener: the public one; inner: the guard's " +
        "loopback Deno.serve) and reason (emfile, enfile, other); accepting goes on.",
      labelNames: ["listener", "socket", "reason"],
      registers,
    });
    this.downstreamRefused = new client.Counter({
      name: "ferry_downstream_refused_total",
      help: "Connections and requests refused, or connections ended by a timeout, by listener " +
        '(the admin listener is listener="admin") and reason: too_many_connections, ' +
        "too_many_connections_per_ip, request_timeout (a head, or a gRPC connection's preface " +
        "and SETTINGS, not complete in time), settings_timeout (gRPC: our SETTINGS never " +
        "acknowledged), idle_timeout (nothing in flight for idle_timeout), send_timeout (the " +
        "client took no data), or the error kind of a request head the HTTP/1.1 parser refused " +
        "(bad_request, headers_too_large, not_implemented, version_not_supported).",
      labelNames: ["listener", "reason"],
      registers,
    });
    // Errors no handler caught (a bug): counted by the process's last line of defence.
    this.internalErrors = new client.Counter({
      name: "ferry_internal_errors_total",
      help:
        "Errors that escaped every handler, by kind (unhandledrejection or error); should be 0.",
      labelNames: ["kind"],
      registers,
    });
    for (const kind of ["unhandledrejection", "error"]) this.internalErrors.labels(kind).inc(0);
    // Both results exist from the start, so rate() and alerts see a 0 rather than no series.
    for (const trigger of RELOAD_TRIGGERS) {
      this.configReloads.labels("success", trigger).inc(0);
      this.configReloads.labels("failure", trigger).inc(0);
    }
    if (opts.processMetrics) {
      client.collectDefaultMetrics({ register: this.registry });
      // Node-internal handle counts: gauges named _total (promtool flags them), meaningless here.
      for (const name of NODE_ONLY_METRICS) this.registry.removeSingleMetric(name);
      // prom-client reads these from /proc/self, which needs --allow-all under Deno: with
      // `deno task start`'s permissions they read 0. Ferry's own collectors replace them.
      for (const name of PROC_SELF_METRICS) this.registry.removeSingleMetric(name);
      registerProcessCollectors(registers);
    }
  }

  /** Registers (or replaces) where the scrape-time gauges read live state from. */
  watch(sources: Partial<ScrapeSources>): void {
    this.#sources = { ...this.#sources, ...sources };
  }

  listener(name: string): ListenerRecorder {
    let l = this.#listeners.get(name);
    if (l === undefined) this.#listeners.set(name, l = new ListenerRecorder(this, name));
    return l;
  }

  cluster(name: string): ClusterRecorder {
    return new ClusterRecorder(this, name);
  }

  /** A pre-bound counter for one (route, limit): called when that limit refuses a request. */
  rateLimitRecorder(route: string, limit: string, scope: string): () => void {
    const child = this.rateLimited.labels(route, limit, scope);
    return () => child.inc();
  }

  /**
   * Counts one route's authorization decisions; children are made once per (listener, decision)
   * and reused, so a request does no label work.
   */
  authzRecorder(route: string): (listener: string, decision: string) => void {
    const children = new Map<string, { inc(): void }>();
    return (listener, decision) => {
      const key = `${listener} ${decision}`;
      let c = children.get(key);
      if (c === undefined) {
        children.set(key, c = this.authzDecisions.labels(listener, route, decision));
      }
      c.inc();
    };
  }

  /** Pre-bound series for one shared rate limit's backend (src/policy/redis_limiter.ts). */
  rateLimitBackend(limit: string): { error(): void; up(isUp: boolean): void } {
    // Series appear with the first call, so a dry run (POST /config/validate) creates none.
    const errors = this.rateLimitBackendErrors.labels(limit);
    const up = this.rateLimitBackendUp.labels(limit);
    return {
      error: () => errors.inc(),
      up: (isUp) => {
        errors.inc(0);
        up.set(isUp ? 1 : 0);
      },
    };
  }

  breakerTransition(cluster: string, scope: string, endpoint: string, to: string): void {
    this.breakerTransitions.labels(cluster, scope, endpoint, to).inc();
  }

  /** Health events from the health manager (see src/upstream/health/manager.ts). */
  healthEvent(cluster: string, endpoint: string | undefined, type: string): void {
    if (endpoint === undefined) return;
    if (type === "ejected") this.endpointEjections.labels(cluster, endpoint).inc();
    else if (type === "healthy" || type === "unhealthy") {
      this.endpointHealthChanges.labels(cluster, endpoint, type).inc();
    }
  }

  /** A failed accept; the loop retries (src/server/admission.ts). */
  acceptError(listener: string, socket: "listener" | "inner", reason: string): void {
    this.acceptErrors.labels(listener, socket, reason).inc();
  }

  /** A connection or request refused before any handler ran (see ferry_downstream_refused_total). */
  downstreamRefusal(listener: string, reason: DownstreamRefusal): void {
    this.downstreamRefused.labels(listener, reason).inc();
  }

  /** For the hot-reload path: count every reload attempt by its result. */
  recordConfigReload(
    result: "success" | "failure",
    trigger: (typeof RELOAD_TRIGGERS)[number] = "file",
  ): void {
    this.configReloads.labels(result, trigger).inc();
  }

  /** The active config version and its author (set at start-up and after each reload). */
  setConfigVersion(version: string | number, author = "startup"): void {
    this.configInfo.reset();
    this.configInfo.set({ version: String(version), author }, 1);
  }

  /** The text exposition format (version 0.0.4) for GET /metrics. */
  expose(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
