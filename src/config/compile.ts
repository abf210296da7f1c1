/**
 * Compiles a validated config into an immutable `Snapshot`: routers per listener, clusters with
 * their pools, every route's handler chain composed. Requests read one snapshot and keep it.
 */
import type { FerryConfig, RouteConfig } from "./schema.ts";
import { compose, type Handler, type Middleware } from "../pipeline/types.ts";
import { compileRouteRegex } from "../routing/regex.ts";
import { RouteCompileError, Router } from "../routing/router.ts";
import { buildCluster, type Cluster } from "../upstream/cluster.ts";
import { forwardTo, type HeaderEdits } from "../upstream/forward.ts";
import { TrustedProxies } from "../server/trust.ts";
import { directResponse, redirectResponse } from "../server/local_responses.ts";
import { DeadlineQueue } from "../policy/deadlines.ts";
import {
  BREAKER_STATE_NAMES,
  type BreakerConfig,
  BreakerStore,
} from "../policy/circuit_breaker.ts";
import { compileLimiters, faultInjection, type Limiter, rateLimit } from "../policy/middleware.ts";
import type { Logger } from "../observability/log.ts";
import { AccessLog, LineWriter, openSink } from "../observability/access_log.ts";
import type { BreakerConfigSchema } from "./schema.ts";
import type { GrpcRoute } from "../grpc/proxy.ts";
import { RETRIABLE_GRPC } from "../grpc/status.ts";

export interface CompiledRoute {
  readonly name: string;
  readonly kind: "cluster" | "direct_response" | "redirect";
  readonly cluster: string | undefined;
  readonly handler: Handler;
  /** Cluster routes: the same route for `protocol: grpc` listeners. */
  readonly grpc?: GrpcRoute;
}

export interface ListenerPlan {
  readonly name: string;
  readonly hostname: string;
  readonly port: number;
  readonly tls: { readonly cert: string; readonly key: string } | undefined;
  readonly scheme: "http" | "https";
  readonly protocol: "http" | "grpc";
  readonly router: Router<CompiledRoute>;
}

export interface Snapshot {
  readonly version: number;
  readonly loadedAt: Date;
  readonly source: string;
  readonly config: FerryConfig;
  readonly listeners: ReadonlyMap<string, ListenerPlan>;
  readonly clusters: ReadonlyMap<string, Cluster>;
  readonly routes: readonly CompiledRoute[];
  readonly trust: TrustedProxies;
  readonly requestIdPolicy: FerryConfig["server"]["request_id"];
  /** Cluster-level breakers and their transition counts, by cluster (route overrides not listed). */
  readonly breakers: ReadonlyMap<string, BreakerRecord>;
  /** One JSON line per request, when `access_log` is configured. */
  readonly accessLog: AccessLog | undefined;
  /** Closes every cluster pool; called when the snapshot is retired. */
  close(): void;
}

export interface CompileProblem {
  readonly path: string;
  readonly value: string;
  readonly message: string;
}

export class SnapshotCompileError extends Error {
  constructor(readonly problems: readonly CompileProblem[]) {
    super(
      problems.map((p) => `${p.path}: ${p.message} (got ${JSON.stringify(p.value)})`).join("\n"),
    );
    this.name = "SnapshotCompileError";
  }
}

export interface CompileOptions {
  readonly version: number;
  /** Where the config came from, for /config and logs. */
  readonly source: string;
  /** Reads a file named in the config (TLS material), resolved against the config's folder. */
  readonly readTextFile: (path: string) => string;
  /** Where policy state changes (breaker transitions) are logged. */
  readonly log?: Logger;
}

/** Config field names -> the breaker store's option names. */
function breakerConfig(b: BreakerConfigSchema): BreakerConfig {
  return {
    mode: b.mode,
    failureThreshold: b.failures,
    successThreshold: b.successes,
    openTimeoutMs: b.open_timeout,
    maxHalfOpenRequests: b.max_half_open,
    failureRatePercent: b.failure_rate,
    minimumRequests: b.min_requests,
    windowMs: b.window,
  };
}

/** A breaker store for a cluster's endpoints that logs every state change. */
/** A breaker store with a count of transitions into each state, per slot. */
export interface BreakerRecord {
  readonly store: BreakerStore;
  /** `transitions[slot * 3 + state]`: times that slot entered closed (0), open (1), half-open (2). */
  readonly transitions: Uint32Array;
}

function breakerStore(
  b: BreakerConfigSchema,
  cluster: Cluster,
  scope: string,
  log: Logger | undefined,
): BreakerRecord {
  const perCluster = b.scope === "cluster";
  const slots = perCluster ? 1 : cluster.endpoints.length;
  const transitions = new Uint32Array(slots * 3);
  const store = new BreakerStore(slots, breakerConfig(b), {
    onTransition: (slot, from, to) => {
      transitions[slot * 3 + to]!++;
      log?.info("circuit breaker state change", {
        cluster: cluster.name,
        scope,
        endpoint: perCluster ? "*" : cluster.endpoints[slot]?.origin,
        from: BREAKER_STATE_NAMES[from],
        to: BREAKER_STATE_NAMES[to],
      });
    },
  });
  return { store, transitions };
}

/** Splits `host:port`, `[v6]:port` or `:port` into a hostname for Deno.serve and a port. */
export function splitAddress(address: string): { hostname: string; port: number } {
  const colon = address.lastIndexOf(":");
  const host = address.slice(0, colon).replace(/^\[|\]$/g, "");
  return { hostname: host === "" ? "0.0.0.0" : host, port: Number(address.slice(colon + 1)) };
}

export function compileSnapshot(cfg: FerryConfig, opts: CompileOptions): Snapshot {
  const problems: CompileProblem[] = [];
  const clusters = new Map<string, Cluster>();
  for (const [i, c] of cfg.clusters.entries()) {
    let caCerts: string[] | undefined;
    if (c.tls?.ca_file) {
      try {
        caCerts = [opts.readTextFile(c.tls.ca_file)];
      } catch (err) {
        problems.push({
          path: `clusters[${i}].tls.ca_file`,
          value: c.tls.ca_file,
          message: `cannot read: ${err}`,
        });
      }
    }
    clusters.set(
      c.name,
      buildCluster(
        c,
        caCerts,
        (cluster, endpoint, e) =>
          opts.log?.info("endpoint health", { cluster, endpoint, event: e.type, ...e }),
      ),
    );
  }

  const deadlines = new DeadlineQueue();
  const breakers = new Map<string, BreakerRecord>();
  for (const c of cfg.clusters) {
    if (c.circuit_breaker) {
      breakers.set(
        c.name,
        breakerStore(c.circuit_breaker, clusters.get(c.name)!, "cluster", opts.log),
      );
    }
  }
  const limiters = compileLimiters(cfg.rate_limits);
  const policies: RoutePolicies = { deadlines, breakers, limiters, log: opts.log };
  const routes: CompiledRoute[] = [];
  for (const [i, r] of cfg.routes.entries()) {
    try {
      routes.push(compileRoute(r, i, cfg, clusters, policies));
    } catch (err) {
      if (err instanceof SnapshotCompileError) problems.push(...err.problems);
      else throw err;
    }
  }

  const listeners = new Map<string, ListenerPlan>();
  for (const [i, l] of cfg.listeners.entries()) {
    let tls: ListenerPlan["tls"];
    if (l.tls) {
      try {
        tls = { cert: opts.readTextFile(l.tls.cert), key: opts.readTextFile(l.tls.key) };
      } catch (err) {
        problems.push({
          path: `listeners[${i}].tls`,
          value: l.tls.cert,
          message: `cannot read TLS files: ${err}`,
        });
      }
    }
    const entries = cfg.routes.flatMap((r, index) =>
      !r.listeners || r.listeners.includes(l.name)
        ? [{ name: r.name, index, match: r.match, value: routes[index]! }]
        : []
    );
    try {
      const { hostname, port } = splitAddress(l.address);
      listeners.set(l.name, {
        name: l.name,
        hostname,
        port,
        tls,
        scheme: l.tls ? "https" : "http",
        protocol: l.protocol,
        router: Router.compile(entries),
      });
    } catch (err) {
      if (!(err instanceof RouteCompileError)) throw err;
      for (const p of err.problems) {
        problems.push({
          path: `routes[${p.index}].${p.field}`,
          value: p.value,
          message: p.message,
        });
      }
    }
  }

  problems.push(...grpcClusterProblems(cfg));

  let accessLog: AccessLog | undefined;
  let closeSink = () => {};
  if (cfg.access_log && problems.length === 0) {
    try {
      const { sink, close } = openSink(cfg.access_log.path);
      closeSink = close;
      accessLog = new AccessLog(cfg.access_log, new LineWriter(sink));
    } catch (err) {
      problems.push({
        path: "access_log.path",
        value: cfg.access_log.path,
        message: `cannot open: ${err}`,
      });
    }
  }

  if (problems.length > 0) {
    deadlines.close();
    for (const c of clusters.values()) c.close();
    throw new SnapshotCompileError(dedupe(problems));
  }
  return Object.freeze({
    version: opts.version,
    loadedAt: new Date(),
    source: opts.source,
    config: cfg,
    listeners,
    clusters,
    routes,
    trust: new TrustedProxies(cfg.server.trusted_proxies),
    requestIdPolicy: cfg.server.request_id,
    accessLog,
    breakers,
    close() {
      deadlines.close();
      void accessLog?.writer.flush().finally(closeSink);
      for (const c of clusters.values()) c.close();
    },
  });
}

function dedupe(problems: CompileProblem[]): CompileProblem[] {
  const seen = new Set<string>();
  return problems.filter((p) => {
    const key = `${p.path}\u0000${p.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function compileEdits(e: RouteConfig["request_headers"]): HeaderEdits | undefined {
  if (!e) return undefined;
  return Object.freeze({
    remove: (e.remove ?? []).map((n) => n.toLowerCase()),
    set: Object.entries(e.add ?? {}).map(([n, v]) => [n.toLowerCase(), v] as const),
  });
}

function compileRewrite(r: RouteConfig, i: number): (path: string) => string {
  const rw = r.rewrite;
  if (!rw || (rw.prefix === undefined && rw.regex === undefined)) return (p) => p;
  if (rw.prefix !== undefined && rw.regex !== undefined) {
    throw new SnapshotCompileError([{
      path: `routes[${i}].rewrite`,
      value: "prefix+regex",
      message: "use either rewrite.prefix or rewrite.regex, not both",
    }]);
  }
  if (rw.regex) {
    let re;
    try {
      re = compileRouteRegex(rw.regex.pattern);
    } catch (err) {
      throw new SnapshotCompileError([{
        path: `routes[${i}].rewrite.regex.pattern`,
        value: rw.regex.pattern,
        message: err instanceof Error ? err.message : String(err),
      }]);
    }
    const sub = rw.regex.substitution;
    return (p) => re.replace(p, sub);
  }
  const to = rw.prefix!;
  const m = r.match.path;
  if ("exact" in m) return () => to;
  if ("prefix" in m) {
    const from = m.prefix;
    return (p) => p.startsWith(from) ? to + p.slice(from.length) : p;
  }
  throw new SnapshotCompileError([{
    path: `routes[${i}].rewrite.prefix`,
    value: to,
    message:
      "rewrite.prefix needs a path prefix or exact match; use rewrite.regex with a regex match",
  }]);
}

interface RoutePolicies {
  readonly deadlines: DeadlineQueue;
  readonly breakers: ReadonlyMap<string, BreakerRecord>;
  readonly limiters: ReadonlyMap<string, Limiter>;
  readonly log: Logger | undefined;
}

function compileRoute(
  r: RouteConfig,
  i: number,
  cfg: FerryConfig,
  clusters: ReadonlyMap<string, Cluster>,
  policies: RoutePolicies,
): CompiledRoute {
  // Route policies, outermost first: fault injection (chaos), then rate limits.
  const middleware: Middleware[] = [];
  if (r.fault) middleware.push(faultInjection(r.fault));
  if (r.rate_limit) middleware.push(rateLimit(r.rate_limit.map((n) => policies.limiters.get(n)!)));
  if (r.direct_response) {
    const d = r.direct_response;
    return freezeRoute(
      r.name,
      "direct_response",
      undefined,
      compose(middleware, directResponse(d)),
    );
  }
  if (r.redirect) {
    return freezeRoute(
      r.name,
      "redirect",
      undefined,
      compose(middleware, redirectResponse(r.redirect, r.match.path)),
    );
  }
  const cluster = clusters.get(r.cluster!);
  if (!cluster) {
    throw new SnapshotCompileError([{
      path: `routes[${i}].cluster`,
      value: r.cluster!,
      message: "unknown cluster",
    }]);
  }
  const clusterCfg = cfg.clusters.find((c) => c.name === cluster.name)!;
  const breaker = r.circuit_breaker
    ? breakerStore(r.circuit_breaker, cluster, `route ${r.name}`, policies.log).store
    : policies.breakers.get(cluster.name)?.store;
  const breakerPerCluster = (r.circuit_breaker ?? clusterCfg.circuit_breaker)?.scope === "cluster";
  const grpc: GrpcRoute = Object.freeze({
    name: r.name,
    cluster,
    timeoutMs: r.timeout,
    breaker,
    breakerPerCluster,
    retry: r.retry && {
      retries: r.retry.retries,
      statuses: new Set(r.retry.retry_on.flatMap((o) => {
        const code = RETRIABLE_GRPC[o];
        return code === undefined ? [] : [code];
      })),
      connectFailure: ["connect-failure", "gateway-error", "5xx"].some((o) =>
        r.retry!.retry_on.includes(o as never)
      ),
      reset: ["reset", "gateway-error", "5xx"].some((o) => r.retry!.retry_on.includes(o as never)),
      maxBodyBytes: r.retry.max_body_bytes,
      baseMs: r.retry.backoff.base,
      maxMs: r.retry.backoff.max,
    },
  });
  const terminal = forwardTo({
    cluster,
    timeoutMs: r.timeout,
    perTryTimeoutMs: r.per_try_timeout,
    idleTimeoutMs: r.idle_timeout,
    deadlines: policies.deadlines,
    breaker,
    breakerPerCluster,
    maxRequests: clusterCfg.limits?.max_requests ?? Number.POSITIVE_INFINITY,
    maxRequestsPerEndpoint: clusterCfg.limits?.max_requests_per_endpoint ??
      Number.POSITIVE_INFINITY,
    retry: r.retry && {
      retries: r.retry.retries,
      retryOn: new Set(r.retry.retry_on),
      statuses: new Set(r.retry.statuses),
      baseMs: r.retry.backoff.base,
      maxMs: r.retry.backoff.max,
      nonIdempotent: r.retry.non_idempotent,
      maxBodyBytes: r.retry.max_body_bytes,
      maxRetryAfterMs: r.retry.max_retry_after,
    },
    rewritePath: compileRewrite(r, i),
    hostRewrite: r.rewrite?.host,
    requestEdits: compileEdits(r.request_headers),
    responseEdits: compileEdits(r.response_headers),
    websocket: r.websocket,
    websocketMaxBuffer: cfg.server.websocket_max_buffer,
    via: cfg.server.via,
  });
  return freezeRoute(r.name, "cluster", cluster.name, compose(middleware, terminal), grpc);
}

function freezeRoute(
  name: string,
  kind: CompiledRoute["kind"],
  cluster: string | undefined,
  handler: Handler,
  grpc?: GrpcRoute,
): CompiledRoute {
  return Object.freeze(
    grpc ? { name, kind, cluster, handler, grpc } : { name, kind, cluster, handler },
  );
}

/**
 * gRPC needs HTTP/2 upstream: a cluster reached from a `protocol: grpc` listener must be `h2c`
 * (http:// endpoints over h2c, https:// over TLS with ALPN h2) or have only https:// endpoints.
 */
function grpcClusterProblems(cfg: FerryConfig): CompileProblem[] {
  const problems: CompileProblem[] = [];
  const grpcListeners = new Set(
    cfg.listeners.filter((l) => l.protocol === "grpc").map((l) => l.name),
  );
  if (grpcListeners.size === 0) return problems;
  for (const [i, r] of cfg.routes.entries()) {
    if (!r.cluster) continue;
    const served = r.listeners ? r.listeners.some((l) => grpcListeners.has(l)) : true;
    if (!served) continue;
    const c = cfg.clusters.find((c) => c.name === r.cluster);
    if (!c || c.protocol === "h2c") continue;
    const allTls = c.endpoints.every((e) =>
      (typeof e === "string" ? e : e.url).startsWith("https://")
    );
    if (allTls) continue;
    problems.push({
      path: `routes[${i}].cluster`,
      value: r.cluster,
      message: `cluster ${r.cluster} is reached from a grpc listener but speaks ${c.protocol}: ` +
        `set its protocol to h2c (or use only https:// endpoints), or limit the route with ` +
        `listeners: to http listeners`,
    });
  }
  return problems;
}
