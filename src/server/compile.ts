/**
 * Compiles a validated config into an immutable `Snapshot`: a router per listener and every
 * route's handler chain, wired to the stateful parts the registry prepared (registry.ts). Pure:
 * it opens no socket, starts no timer and reads no file; what runs (health checks, DNS, the
 * access-log file) is started by the registry when the snapshot goes live. Requests read one
 * snapshot and keep it.
 */
import type { FerryConfig, RouteConfig } from "../config/schema.ts";
import type { Handler, Middleware, PolicyLayer } from "../pipeline/types.ts";
import { attemptLayers, httpChain, routeLayers } from "../pipeline/route_chain.ts";
import { breakerLayer, perTryTimeoutLayer } from "../policy/attempt_layers.ts";
import { compileRouteRegex } from "../routing/regex.ts";
import { Router } from "../routing/router.ts";
import type { Cluster } from "../upstream/cluster.ts";
import { forwardTo } from "../upstream/forward.ts";
import type { HeaderEdits } from "../upstream/request_headers.ts";
import { TrustedProxies } from "../pipeline/trust.ts";
import { directResponse, redirectResponse } from "./local_responses.ts";
import type { DeadlineQueue } from "../policy/deadlines.ts";
import type { BreakerStore } from "../policy/circuit_breaker.ts";
import { faultInjection, type Limiter, rateLimit } from "../policy/middleware.ts";
import type { AccessLog } from "../observability/access_log.ts";
import type { ClusterRecorder, FerryMetrics } from "../observability/metrics.ts";
import type { GrpcRoute } from "../grpc/proxy.ts";
import { retryPolicy } from "../policy/retry.ts";
import { authorization, type AuthzPolicy, compilePolicy, RouteAuthz } from "../policy/authz.ts";
import type { JwtProvider } from "../policy/jwt.ts";
import type { GuardTls } from "./guard.ts";
import type { CertificateExpiry, CheckedTls } from "./tls_material.ts";
import type { Parts } from "./registry.ts";
import type { BreakerRecord, BreakerView } from "./breaker_records.ts";
import type { Materials } from "../config/materials.ts";
import type { Logger } from "../observability/log.ts";

export interface CompiledRoute {
  readonly name: string;
  readonly kind: "cluster" | "direct_response" | "redirect";
  readonly cluster: string | undefined;
  readonly handler: Handler;
  /** Cluster routes: the same route for `protocol: grpc` listeners. */
  readonly grpc?: GrpcRoute;
  /** The route's authorization (its own policy, or its listeners'); absent when none applies. */
  readonly authz?: RouteAuthz;
  /** The route's policy layers (authorization, fault, rate limits), run by HTTP and gRPC alike. */
  readonly layers: readonly PolicyLayer[];
}

export interface ListenerPlan {
  readonly name: string;
  readonly hostname: string;
  readonly port: number;
  readonly tls: GuardTls | undefined;
  readonly scheme: "http" | "https";
  readonly protocol: "http" | "grpc";
  readonly router: Router<CompiledRoute>;
  /** `protocol: grpc` connection timeouts in ms (0 = off), defaults filled in. */
  readonly grpcTimeouts: GrpcConnectionTimeouts;
  /** Where the client certificate's identity goes upstream (lower case). */
  readonly clientCertHeader: string;
}

/** A worker's snapshot: /config is served by the main isolate, from its own. */
const NO_DURATIONS: ReadonlyMap<string, string> = new Map();

export interface GrpcConnectionTimeouts {
  readonly idleMs: number;
  readonly handshakeMs: number;
  readonly settingsAckMs: number;
}

export const DEFAULT_GRPC_TIMEOUTS: GrpcConnectionTimeouts = Object.freeze({
  idleMs: 300_000,
  handshakeMs: 10_000,
  settingsAckMs: 10_000,
});

export interface Snapshot {
  readonly version: number;
  readonly loadedAt: Date;
  readonly source: string;
  readonly config: FerryConfig;
  /** /config's text for each duration in `config`, by path (issues.ts `withDurationTexts`). */
  readonly durations: ReadonlyMap<string, string>;
  readonly listeners: ReadonlyMap<string, ListenerPlan>;
  readonly clusters: ReadonlyMap<string, Cluster>;
  readonly routes: readonly CompiledRoute[];
  readonly trust: TrustedProxies;
  readonly requestIdPolicy: FerryConfig["server"]["request_id"];
  /** Cluster-level breakers and their transition counts, by cluster (route overrides not listed). */
  readonly breakers: ReadonlyMap<string, BreakerRecord>;
  /** One JSON line per request, when `access_log` is configured. */
  readonly accessLog: AccessLog | undefined;
  /** Every breaker (cluster-level and route overrides) with the endpoint each slot stands for. */
  readonly breakerViews: readonly BreakerView[];
  /** Process-wide metrics, handed from snapshot to snapshot so counters survive reloads. */
  readonly metrics: FerryMetrics;
  /** JWT providers by name (their key sets, for /explain). */
  readonly jwtProviders: ReadonlyMap<string, JwtProvider>;
  /** Every certificate served or presented (listeners and cluster client certificates). */
  readonly certificates: readonly CertificateExpiry[];
  /** The admin listener's bearer token (from admin.token, token_file or token_env), if any. */
  readonly adminToken: string | undefined;
  /** Its stateful parts (registry.ts): built or taken over, started when it goes live. */
  readonly parts: Parts;
  /**
   * Hands the snapshot's resources over to `next` after a reload: whatever `next` took over
   * stays open, the rest is closed once the requests still using it are done.
   */
  retire(next: Snapshot): void;
  /**
   * Starts what this snapshot's parts run (health checks, DNS discovery, JWKS refresh, the
   * access-log file) and makes its changes to clusters it took over; once, when it goes live.
   */
  activate(): void;
  /** Drops a snapshot that never served (a reload rolled back): closes only what it built. */
  discard(previous: Snapshot): void;
  /** Closes everything (shutdown, or a snapshot that never served). */
  close(): void;
}

export interface CompileOptions {
  readonly version: number;
  /** Where the config came from, for /config and logs. */
  readonly source: string;
  /** The stateful parts this config uses, prepared by the registry (`prepareParts`). */
  readonly parts: Parts;
  /** The contents of the files the config names, and the admin token (config/materials.ts). */
  readonly materials: Materials;
  /** Listeners' TLS material and certificate expiries, every pair checked (tls_material.ts). */
  readonly tls: CheckedTls;
  /** Where policy state changes are logged. */
  readonly log?: Logger;
  /** The process's metrics (the parts were prepared with the same). */
  readonly metrics: FerryMetrics;
  /** /config's text for each duration (issues.ts `withDurationTexts`); none in workers. */
  readonly durations?: ReadonlyMap<string, string>;
  /** Extension middleware loaded for this config (src/server/extensions.ts), per route index. */
  readonly extensions?: {
    forRoute(index: number, metrics: FerryMetrics): Middleware | undefined;
  };
}

/** Splits `host:port`, `[v6]:port` or `:port` into a hostname for Deno.serve and a port. */
export function splitAddress(address: string): { hostname: string; port: number } {
  const colon = address.lastIndexOf(":");
  const host = address.slice(0, colon).replace(/^\[|\]$/g, "");
  return { hostname: host === "" ? "0.0.0.0" : host, port: Number(address.slice(colon + 1)) };
}

/**
 * Wires a validated config to its prepared parts. Everything it could refuse the loader has
 * refused already (regexes, rewrites, authorization policies, cluster names); what still throws
 * here is a bug, reported by `buildSnapshot` as a refused config.
 */
export function compileSnapshot(cfg: FerryConfig, opts: CompileOptions): Snapshot {
  const { parts, metrics, materials } = opts;
  // Closures kept by the snapshot use `log`, never `opts`.
  const log = opts.log;
  const { clusters, jwtProviders } = parts;
  const listenerPolicies = new Map<string, AuthzPolicy>();
  for (const l of cfg.listeners) {
    if (!l.authorization) continue;
    listenerPolicies.set(
      l.name,
      compilePolicy(l.authorization, `listener ${l.name}`, jwtProviders),
    );
  }
  const clusterMetrics = new Map<string, ClusterRecorder>();
  for (const c of clusters.values()) clusterMetrics.set(c.name, metrics.cluster(c.name));
  const policies: RoutePolicies = {
    deadlines: parts.deadlines,
    breakers: parts.clusterBreakers,
    limiters: parts.limiters,
    log,
    metrics,
    clusterMetrics,
    listenerPolicies,
    jwtProviders,
    extensions: opts.extensions,
    routeBreaker: (route) => parts.routeBreakers.get(route)!.store,
  };
  const routes = cfg.routes.map((r, i) => compileRoute(r, i, cfg, clusters, policies));

  const listeners = new Map<string, ListenerPlan>();
  for (const l of cfg.listeners) {
    const tls: ListenerPlan["tls"] = l.tls ? opts.tls.listeners.get(l.name) : undefined;
    const entries = cfg.routes.flatMap((r, index) =>
      !r.listeners || r.listeners.includes(l.name)
        ? [{ name: r.name, index, match: r.match, value: routes[index]! }]
        : []
    );
    const { hostname, port } = splitAddress(l.address);
    listeners.set(l.name, {
      name: l.name,
      hostname,
      port,
      tls,
      scheme: l.tls ? "https" : "http",
      protocol: l.protocol,
      router: Router.compile(entries),
      clientCertHeader: l.tls?.client_cert_header ?? "x-forwarded-client-cert",
      grpcTimeouts: Object.freeze({
        idleMs: l.grpc?.idle_timeout ?? DEFAULT_GRPC_TIMEOUTS.idleMs,
        handshakeMs: l.grpc?.handshake_timeout ?? DEFAULT_GRPC_TIMEOUTS.handshakeMs,
        settingsAckMs: l.grpc?.settings_timeout ?? DEFAULT_GRPC_TIMEOUTS.settingsAckMs,
      }),
    });
  }
  const adminToken = materials.adminToken;

  return Object.freeze({
    version: opts.version,
    loadedAt: new Date(),
    source: opts.source,
    config: cfg,
    durations: opts.durations ?? NO_DURATIONS,
    listeners,
    clusters,
    routes,
    trust: new TrustedProxies(cfg.server.trusted_proxies),
    requestIdPolicy: cfg.server.request_id,
    accessLog: parts.accessLog,
    breakers: parts.clusterBreakers,
    breakerViews: parts.breakerViews,
    metrics,
    jwtProviders,
    certificates: opts.tls.certificates,
    adminToken,
    parts,
    retire(next: Snapshot) {
      parts.retire(next.parts);
    },
    activate() {
      parts.start();
    },
    discard(previous: Snapshot) {
      parts.discard(previous.parts);
    },
    close() {
      parts.close();
    },
  });
}

function compileEdits(e: RouteConfig["request_headers"]): HeaderEdits | undefined {
  if (!e) return undefined;
  return Object.freeze({
    remove: (e.remove ?? []).map((n) => n.toLowerCase()),
    set: Object.entries(e.add ?? {}).map(([n, v]) => [n.toLowerCase(), v] as const),
  });
}

/** The loader has refused both kinds at once, bad patterns and a prefix on a regex match. */
function compileRewrite(r: RouteConfig): (path: string) => string {
  const rw = r.rewrite;
  if (!rw || (rw.prefix === undefined && rw.regex === undefined)) return (p) => p;
  if (rw.regex) {
    const re = compileRouteRegex(rw.regex.pattern);
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
  throw new Error(`route ${r.name}: rewrite.prefix on a regex match passed validation`);
}

interface RoutePolicies {
  readonly deadlines: DeadlineQueue;
  readonly breakers: ReadonlyMap<string, BreakerRecord>;
  readonly limiters: ReadonlyMap<string, Limiter>;
  readonly log: Logger | undefined;
  readonly metrics: FerryMetrics;
  readonly clusterMetrics: ReadonlyMap<string, ClusterRecorder>;
  /** Listeners' default authorization policies, by listener name. */
  readonly listenerPolicies: ReadonlyMap<string, AuthzPolicy>;
  readonly jwtProviders: ReadonlyMap<string, JwtProvider>;
  readonly extensions: CompileOptions["extensions"];
  /** A route's own breaker (an override of the cluster's), carried over when unchanged. */
  readonly routeBreaker: (route: string) => BreakerStore;
}

function compileRoute(
  r: RouteConfig,
  i: number,
  cfg: FerryConfig,
  clusters: ReadonlyMap<string, Cluster>,
  policies: RoutePolicies,
): CompiledRoute {
  // The route's policy layers, in the order src/pipeline/route_chain.ts (and design.md) draws.
  const authz = routeAuthz(r, cfg, policies);
  const parts = {
    authorization: authz && authorization(authz),
    fault: r.fault && faultInjection(r.fault),
    rateLimit: r.rate_limit && rateLimitLayer(r, policies),
  };
  const layers = routeLayers(parts);
  // Extension middleware (config `middleware:` / mod.ts) run inside authorization, before fault
  // injection and rate limits; gRPC calls do not run them (HTTP middleware).
  const extension = policies.extensions?.forRoute(i, policies.metrics);
  const chain = (terminal: Handler) => httpChain(parts, terminal, extension);
  if (r.direct_response) {
    const d = r.direct_response;
    return freezeRoute(
      r.name,
      "direct_response",
      undefined,
      chain(directResponse(d)),
      undefined,
      authz,
      layers,
    );
  }
  if (r.redirect) {
    return freezeRoute(
      r.name,
      "redirect",
      undefined,
      chain(redirectResponse(r.redirect, r.match.path)),
      undefined,
      authz,
      layers,
    );
  }
  // The loader has refused routes to unknown clusters.
  const cluster = clusters.get(r.cluster!)!;
  const clusterCfg = cfg.clusters.find((c) => c.name === cluster.name)!;
  const breaker = r.circuit_breaker
    ? policies.routeBreaker(r.name)
    : policies.breakers.get(cluster.name)?.store;
  const breakerPerCluster = (r.circuit_breaker ?? clusterCfg.circuit_breaker)?.scope === "cluster";
  // What the HTTP and the gRPC forwarders share for this route.
  const common = {
    cluster,
    timeoutMs: r.timeout,
    deadlines: policies.deadlines,
    // The per-attempt layers, in the order src/pipeline/route_chain.ts draws.
    attemptLayers: attemptLayers({
      breaker: breaker && breakerLayer(breaker, breakerPerCluster),
      perTryTimeout: r.per_try_timeout > 0
        ? perTryTimeoutLayer(r.per_try_timeout, policies.deadlines)
        : undefined,
    }),
    maxRequests: clusterCfg.limits?.max_requests ?? Number.POSITIVE_INFINITY,
    maxRequestsPerEndpoint: clusterCfg.limits?.max_requests_per_endpoint ??
      Number.POSITIVE_INFINITY,
    metrics: policies.clusterMetrics.get(cluster.name)!,
    // One policy shape for both: it names HTTP and gRPC statuses.
    retry: r.retry && retryPolicy(r.retry),
    // Rewrites and header edits: one compiled form, applied by both paths.
    rewritePath: compileRewrite(r),
    hostRewrite: r.rewrite?.host,
    requestEdits: compileEdits(r.request_headers),
    responseEdits: compileEdits(r.response_headers),
  };
  const grpc: GrpcRoute = Object.freeze({ ...common, name: r.name });
  const terminal = forwardTo({
    ...common,
    idleTimeoutMs: r.idle_timeout,
    websocket: r.websocket,
    websocketMaxBuffer: cfg.server.websocket_max_buffer,
    sendTimeoutMs: cfg.server.send_timeout,
    websocketMaxMessageBytes: cfg.server.websocket_max_message_bytes,
    via: cfg.server.via,
  });
  return freezeRoute(r.name, "cluster", cluster.name, chain(terminal), grpc, authz, layers);
}

/** The route's rate limits as one layer (named limiters are shared across routes). */
function rateLimitLayer(r: RouteConfig, policies: RoutePolicies): PolicyLayer {
  const limiters = r.rate_limit!.map((n) => policies.limiters.get(n)!);
  const onLimited = limiters.map((l) =>
    policies.metrics.rateLimitRecorder(r.name, l.name, l.scope)
  );
  return rateLimit(limiters, onLimited);
}

/**
 * The route's own policy for every listener, or else the default policy of each listener it
 * serves; undefined when no policy applies (no per-request cost then).
 */
function routeAuthz(
  r: RouteConfig,
  cfg: FerryConfig,
  policies: RoutePolicies,
): RouteAuthz | undefined {
  const served = cfg.listeners.filter((l) => !r.listeners || r.listeners.includes(l.name));
  const byListener = new Map<string, AuthzPolicy>();
  for (const l of served) {
    const p = policies.listenerPolicies.get(l.name);
    if (p) byListener.set(l.name, p);
  }
  const own = r.authorization
    ? compilePolicy(r.authorization, `route ${r.name}`, policies.jwtProviders)
    : undefined;
  if (!own && byListener.size === 0) return undefined;
  return new RouteAuthz(own, byListener, policies.metrics.authzRecorder(r.name));
}

function freezeRoute(
  name: string,
  kind: CompiledRoute["kind"],
  cluster: string | undefined,
  handler: Handler,
  grpc?: GrpcRoute,
  authz?: RouteAuthz,
  layers: readonly PolicyLayer[] = [],
): CompiledRoute {
  return Object.freeze({
    name,
    kind,
    cluster,
    handler,
    layers,
    ...(grpc ? { grpc } : {}),
    ...(authz ? { authz } : {}),
  });
}
