/**
 * Compiles a validated config into an immutable `Snapshot`: routers per listener, clusters with
 * their pools, every route's handler chain composed. Requests read one snapshot and keep it.
 */
import type { FerryConfig, RouteConfig } from "./schema.ts";
import { compose, type Handler, type Middleware } from "../pipeline/types.ts";
import { compileRouteRegex } from "../routing/regex.ts";
import { RouteCompileError, Router } from "../routing/router.ts";
import { buildCluster, type Cluster, staticEndpoints } from "../upstream/cluster.ts";
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
import { RedisStoreError } from "../policy/redis_limiter.ts";
import type { Logger } from "../observability/log.ts";
import { AccessLog, LineWriter, openSink } from "../observability/access_log.ts";
import type { BreakerConfigSchema } from "./schema.ts";
import { type ClusterRecorder, FerryMetrics } from "../observability/metrics.ts";
import type { GrpcRoute } from "../grpc/proxy.ts";
import { RETRIABLE_GRPC } from "../grpc/status.ts";
import { authorization, type AuthzPolicy, compilePolicy, RouteAuthz } from "../policy/authz.ts";
import { JwtProvider } from "../policy/jwt.ts";
import type { UpstreamTls } from "../upstream/upstream_tls.ts";
import type { GuardTls } from "../server/guard.ts";
import type { SharedMemory, SharedRegion } from "../workers/shared_memory.ts";

export interface CompiledRoute {
  readonly name: string;
  readonly kind: "cluster" | "direct_response" | "redirect";
  readonly cluster: string | undefined;
  readonly handler: Handler;
  /** Cluster routes: the same route for `protocol: grpc` listeners. */
  readonly grpc?: GrpcRoute;
  /** The route's authorization (its own policy, or its listeners'); absent when none applies. */
  readonly authz?: RouteAuthz;
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
  /** The config as written, before defaults and conversions; undefined when not from a file. */
  readonly written: unknown;
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
  /** Process-wide policy memory (server.workers > 1), handed on to the next snapshot. */
  readonly sharedMemory?: SharedMemory;
  /** JWT providers by name (their key sets, for /explain). */
  readonly jwtProviders: ReadonlyMap<string, JwtProvider>;
  /** The admin listener's bearer token (from admin.token, token_file or token_env), if any. */
  readonly adminToken: string | undefined;
  /** What the next snapshot may take over instead of building anew (see `previous`). */
  readonly carry: CarryOver;
  /**
   * Hands the snapshot's resources over to `next` after a reload: whatever `next` took over
   * stays open, the rest is closed once the requests still using it are done.
   */
  retire(next: Snapshot): void;
  /** Makes the changes this snapshot holds for clusters it took over; once, when it goes live. */
  activate(): void;
  /** Drops a snapshot that never served (a reload rolled back): closes only what it built. */
  discard(previous: Snapshot): void;
  /** Closes everything (shutdown, or a snapshot that never served). */
  close(): void;
}

/**
 * Stateful parts a reload keeps when their config did not change, so an unchanged cluster keeps
 * its pools, health, outlier and breaker state, and an unchanged rate limit keeps its buckets.
 * Keys are the config's canonical JSON.
 */
export interface CarryOver {
  readonly deadlines: DeadlineQueue;
  readonly clusters: ReadonlyMap<
    string,
    { readonly key: string; readonly endpointsKey: string; readonly cluster: Cluster }
  >;
  readonly breakers: ReadonlyMap<string, { readonly key: string; readonly record: BreakerRecord }>;
  readonly limiters: ReadonlyMap<string, { readonly key: string; readonly limiter: Limiter }>;
  readonly accessLog:
    | { readonly key: string; readonly log: AccessLog; readonly close: () => void }
    | undefined;
  /** Kept while the provider's config and JWKS file are unchanged (its cache and fetched keys). */
  readonly jwtProviders: ReadonlyMap<
    string,
    { readonly key: string; readonly provider: JwtProvider }
  >;
}

/** JSON with object keys sorted, so equal configs give equal keys whatever their key order. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(
    value,
    (_k, v) =>
      v && typeof v === "object" && !Array.isArray(v)
        ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
        : v,
  );
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
  /** The snapshot being replaced: unchanged clusters, breakers and limiters are taken over. */
  readonly previous?: Snapshot;
  /** The process's metrics; by default the previous snapshot's, else a fresh one. */
  readonly metrics?: FerryMetrics;
  /** Reads an environment variable (admin.token_env); default Deno.env.get. */
  readonly env?: (name: string) => string | undefined;
  /** The config as written (parsed YAML before the schema), for /config's durations. */
  readonly written?: unknown;
  /** With `server.workers > 1`: where rate-limit buckets and breakers keep process-wide state. */
  readonly sharedMemory?: SharedMemory;
  /** A worker's snapshot: clusters probe and resolve nothing, they follow the main isolate. */
  readonly followHealth?: boolean;
}

/** A breaker store as the metrics see it: whose it is and which endpoint each slot is. */
export interface BreakerView {
  readonly cluster: string;
  /** "cluster", or "route:<name>" for a route's own breaker. */
  readonly scope: string;
  /** [slot, endpoint origin] for the cluster's current endpoints; [0, "*"] cluster-wide. */
  slots(): readonly (readonly [number, string])[];
  readonly record: BreakerRecord;
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
  /** Stops following the cluster's endpoint changes (the record is no longer used). */
  readonly detach: () => void;
  readonly view: BreakerView;
}

function breakerStore(
  b: BreakerConfigSchema,
  cluster: Cluster,
  scope: string,
  log: Logger | undefined,
  metrics: FerryMetrics,
  /** Process-wide memory for the store (server.workers > 1), by size. */
  shared?: (bytes: number) => SharedRegion | undefined,
): BreakerRecord {
  const perCluster = b.scope === "cluster";
  // Per-endpoint breakers live in the endpoints' stable slots (see `Endpoint.slot`).
  const slots = perCluster ? 1 : cluster.slotCapacity;
  const transitions = new Uint32Array(slots * 3);
  const region = shared?.(BreakerStore.byteLength(slots, breakerConfig(b)));
  const store = new BreakerStore(slots, breakerConfig(b), {
    ...(region ? { buffer: region.buffer, byteOffset: region.byteOffset } : {}),
    onTransition: (slot, from, to) => {
      transitions[slot * 3 + to]!++;
      const endpoint = perCluster
        ? "*"
        : cluster.endpoints.find((e) => e.slot === slot)?.origin ?? "gone";
      metrics.breakerTransition(cluster.name, scope, endpoint, BREAKER_STATE_NAMES[to]);
      log?.info("circuit breaker state change", {
        cluster: cluster.name,
        scope,
        endpoint,
        from: BREAKER_STATE_NAMES[from],
        to: BREAKER_STATE_NAMES[to],
      });
    },
  });
  const detach = perCluster ? () => {} : cluster.onSlotReuse((slot) => {
    store.reset(slot);
    transitions.fill(0, slot * 3, slot * 3 + 3);
  });
  const record: BreakerRecord = {
    store,
    transitions,
    detach,
    view: {
      cluster: cluster.name,
      scope,
      slots: () =>
        perCluster ? [[0, "*"]] : cluster.endpoints.map((e) => [e.slot, e.origin] as const),
      get record() {
        return record;
      },
    },
  };
  return record;
}

/** Splits `host:port`, `[v6]:port` or `:port` into a hostname for Deno.serve and a port. */
export function splitAddress(address: string): { hostname: string; port: number } {
  const colon = address.lastIndexOf(":");
  const host = address.slice(0, colon).replace(/^\[|\]$/g, "");
  return { hostname: host === "" ? "0.0.0.0" : host, port: Number(address.slice(colon + 1)) };
}

export function compileSnapshot(cfg: FerryConfig, opts: CompileOptions): Snapshot {
  const problems: CompileProblem[] = [];
  const prior = opts.previous?.carry;
  // Closures kept by the snapshot use `log`, never `opts`: `opts.previous` would chain every
  // snapshot to its predecessor and leak them all across reloads.
  const log = opts.log;
  const metrics = opts.metrics ?? opts.previous?.metrics ?? new FerryMetrics();
  const sharedMemory = opts.sharedMemory ?? opts.previous?.sharedMemory;
  const clusters = new Map<string, Cluster>();
  const clusterCarry = new Map<string, { key: string; endpointsKey: string; cluster: Cluster }>();
  /** Changes to kept clusters, made only when the snapshot goes live (a failed reload must not). */
  const activations: (() => void)[] = [];
  for (const [i, c] of cfg.clusters.entries()) {
    const read = (field: "ca_file" | "cert_file" | "key_file"): string | undefined => {
      const file = c.tls?.[field];
      if (file === undefined) return undefined;
      try {
        return opts.readTextFile(file);
      } catch (err) {
        problems.push({
          path: `clusters[${i}].tls.${field}`,
          value: file,
          message: `cannot read: ${err}`,
        });
        return undefined;
      }
    };
    const ca = read("ca_file");
    const caCerts = ca === undefined ? undefined : [ca];
    const clientCert = read("cert_file");
    const clientKey = read("key_file");
    const upstreamTls: UpstreamTls | undefined = c.tls
      ? {
        ...(caCerts ? { caCerts } : {}),
        ...(clientCert !== undefined && clientKey !== undefined
          ? { cert: clientCert, key: clientKey }
          : {}),
        ...(c.tls.server_name ? { serverName: c.tls.server_name } : {}),
        ...(c.tls.expected_identities ? { expectedIdentities: c.tls.expected_identities } : {}),
      }
      : undefined;
    // The CA's contents are part of the key: a rotated CA file rebuilds the pools. The endpoint
    // list is not: a cluster whose only change is its endpoints is kept, and the list swapped
    // in when the snapshot goes live, so endpoints that stay keep their health and breakers.
    const key = canonicalJson({
      c: { ...c, endpoints: undefined },
      caCerts,
      clientCert,
      clientKey,
    });
    const kept = prior?.clusters.get(c.name);
    const endpoints = staticEndpoints(c);
    let cluster: Cluster;
    if (kept?.key === key && endpoints.length <= kept.cluster.slotCapacity) {
      cluster = kept.cluster;
      if (c.endpoints && canonicalJson(c.endpoints) !== kept.endpointsKey) {
        activations.push(() => {
          const change = cluster.setEndpoints(endpoints);
          log?.info("cluster endpoints changed by reload", { cluster: c.name, ...change });
        });
      }
    } else {
      cluster = buildCluster(
        c,
        upstreamTls,
        (cluster, endpoint, e) => {
          metrics.healthEvent(cluster, endpoint, e.type);
          log?.info(e.type === "endpoints" ? "cluster endpoints changed" : "endpoint health", {
            cluster,
            endpoint,
            event: e.type,
            ...e,
          });
        },
        (level, msg, fields) => log?.[level](msg, { cluster: c.name, ...fields }),
        opts.followHealth,
      );
    }
    clusters.set(c.name, cluster);
    clusterCarry.set(c.name, { key, endpointsKey: canonicalJson(c.endpoints), cluster });
  }

  const deadlines = prior?.deadlines ?? new DeadlineQueue();
  // Breakers are carried by "cluster <name>" or "route <name>", keyed on their config and on the
  // cluster object itself (a rebuilt cluster starts with closed breakers).
  const breakerCarry = new Map<string, { key: string; record: BreakerRecord }>();
  const keptBreaker = (
    id: string,
    b: BreakerConfigSchema,
    cluster: Cluster,
    scope: string,
  ): BreakerRecord => {
    const key = canonicalJson({ b, cluster: clusterCarry.get(cluster.name)?.key });
    const kept = prior?.breakers.get(id);
    const record = kept?.key === key && prior?.clusters.get(cluster.name)?.cluster === cluster
      ? kept.record
      : breakerStore(
        b,
        cluster,
        scope,
        log,
        metrics,
        sharedMemory && ((bytes) => sharedMemory.region(`breaker ${id} ${key}`, bytes)),
      );
    breakerCarry.set(id, { key, record });
    breakerViews.push(record.view);
    return record;
  };
  const breakerViews: BreakerView[] = [];
  const breakers = new Map<string, BreakerRecord>();
  for (const c of cfg.clusters) {
    if (c.circuit_breaker) {
      breakers.set(
        c.name,
        keptBreaker(`cluster ${c.name}`, c.circuit_breaker, clusters.get(c.name)!, "cluster"),
      );
    }
  }
  const limiterCarry = new Map<string, { key: string; limiter: Limiter }>();
  const limiters = new Map<string, Limiter>();
  for (const [i, rl] of cfg.rate_limits.entries()) {
    const key = canonicalJson(rl);
    const kept = prior?.limiters.get(rl.name);
    let limiter: Limiter;
    try {
      limiter = kept?.key === key ? kept.limiter : compileLimiters(
        [rl],
        (c) => ({
          readTextFile: opts.readTextFile,
          log,
          backendMetrics: metrics.rateLimitBackend(c.name),
        }),
        sharedMemory && ((bytes) => sharedMemory.region(`rate-limit ${key}`, bytes)),
      ).get(rl.name)!;
    } catch (err) {
      // A shared store whose password (file or variable) or CA file cannot be read.
      if (!(err instanceof RedisStoreError)) throw err;
      problems.push({
        path: `rate_limits[${i}].redis.${err.field}`,
        value: err.value,
        message: err.message,
      });
      continue;
    }
    limiters.set(rl.name, limiter);
    limiterCarry.set(rl.name, { key, limiter });
  }
  const jwtCarry = new Map<string, { key: string; provider: JwtProvider }>();
  const jwtProviders = new Map<string, JwtProvider>();
  for (const [i, p] of cfg.jwt_providers.entries()) {
    let jwksText: string | undefined;
    if (p.jwks_file !== undefined) {
      try {
        jwksText = opts.readTextFile(p.jwks_file);
      } catch (err) {
        problems.push({
          path: `jwt_providers[${i}].jwks_file`,
          value: p.jwks_file,
          message: `cannot read: ${err}`,
        });
        continue;
      }
    }
    const key = canonicalJson({ p, jwksText });
    const kept = prior?.jwtProviders.get(p.name);
    if (kept?.key === key) {
      jwtProviders.set(p.name, kept.provider);
      jwtCarry.set(p.name, kept);
      continue;
    }
    try {
      const provider = new JwtProvider(p, { ...(jwksText ? { jwksText } : {}), log });
      jwtProviders.set(p.name, provider);
      jwtCarry.set(p.name, { key, provider });
    } catch (err) {
      problems.push({
        path: `jwt_providers[${i}].jwks_file`,
        value: p.jwks_file ?? "",
        message: `not a usable JWKS: ${err instanceof Error ? err.message : err}`,
      });
    }
  }
  const listenerPolicies = new Map<string, AuthzPolicy>();
  for (const [i, l] of cfg.listeners.entries()) {
    if (!l.authorization) continue;
    try {
      listenerPolicies.set(
        l.name,
        compilePolicy(l.authorization, `listener ${l.name}`, jwtProviders),
      );
    } catch (err) {
      problems.push({
        path: `listeners[${i}].authorization`,
        value: l.name,
        message: err instanceof Error ? err.message : String(err),
      });
    }
  }
  const clusterMetrics = new Map<string, ClusterRecorder>();
  for (const c of clusters.values()) clusterMetrics.set(c.name, metrics.cluster(c.name));
  const policies: RoutePolicies = {
    deadlines,
    breakers,
    limiters,
    log,
    metrics,
    clusterMetrics,
    listenerPolicies,
    jwtProviders,
    routeBreaker: (route, b, cluster) =>
      keptBreaker(`route ${route}`, b, cluster, `route:${route}`).store,
  };
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
        tls = {
          cert: opts.readTextFile(l.tls.cert),
          key: opts.readTextFile(l.tls.key),
          ...(l.tls.client_ca !== undefined
            ? {
              clientCa: opts.readTextFile(l.tls.client_ca),
              clientAuth: l.tls.client_auth ?? "require",
            }
            : {}),
        };
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
        clientCertHeader: l.tls?.client_cert_header ?? "x-forwarded-client-cert",
        grpcTimeouts: Object.freeze({
          idleMs: l.grpc?.idle_timeout ?? DEFAULT_GRPC_TIMEOUTS.idleMs,
          handshakeMs: l.grpc?.handshake_timeout ?? DEFAULT_GRPC_TIMEOUTS.handshakeMs,
          settingsAckMs: l.grpc?.settings_timeout ?? DEFAULT_GRPC_TIMEOUTS.settingsAckMs,
        }),
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

  const adminToken = resolveAdminToken(cfg, opts, problems);
  problems.push(...grpcClusterProblems(cfg));

  let accessLogCarry: CarryOver["accessLog"];
  if (cfg.access_log && problems.length === 0) {
    const key = canonicalJson(cfg.access_log);
    if (prior?.accessLog?.key === key) accessLogCarry = prior.accessLog;
    else {
      try {
        const { sink, close } = openSink(cfg.access_log.path);
        accessLogCarry = {
          key,
          log: new AccessLog(cfg.access_log, new LineWriter(sink)),
          close: () => void accessLogCarry!.log.writer.flush().finally(close),
        };
      } catch (err) {
        problems.push({
          path: "access_log.path",
          value: cfg.access_log.path,
          message: `cannot open: ${err}`,
        });
      }
    }
  }
  const accessLog = accessLogCarry?.log;
  const carry: CarryOver = {
    deadlines,
    clusters: clusterCarry,
    breakers: breakerCarry,
    limiters: limiterCarry,
    accessLog: accessLogCarry,
    jwtProviders: jwtCarry,
  };

  if (problems.length > 0) {
    // Close only what this attempt built; what it took over still serves the previous snapshot.
    releaseUnshared(carry, prior, { drainMs: 0 });
    throw new SnapshotCompileError(dedupe(problems));
  }
  return Object.freeze({
    version: opts.version,
    loadedAt: new Date(),
    source: opts.source,
    config: cfg,
    written: opts.written,
    listeners,
    clusters,
    routes,
    trust: new TrustedProxies(cfg.server.trusted_proxies),
    requestIdPolicy: cfg.server.request_id,
    accessLog,
    breakers,
    breakerViews,
    metrics,
    ...(sharedMemory ? { sharedMemory } : {}),
    jwtProviders,
    adminToken,
    carry,
    retire(next: Snapshot) {
      releaseUnshared(carry, next.carry, { drainMs: RETIRE_DRAIN_MS, log });
    },
    activate() {
      for (const a of activations.splice(0)) a();
    },
    discard(previous: Snapshot) {
      releaseUnshared(carry, previous.carry, { drainMs: 0 });
    },
    close() {
      releaseUnshared(carry, undefined, { drainMs: 0 });
    },
  });
}

/** How long a retired cluster may keep serving requests that started before the reload. */
const RETIRE_DRAIN_MS = 10 * 60_000;

/**
 * Closes the parts of `mine` that `keeper` does not hold. A cluster still carrying requests is
 * closed once its in-flight count reaches zero (checked every second) or after `drainMs`; its
 * health checks stop at once.
 */
function releaseUnshared(
  mine: CarryOver,
  keeper: CarryOver | undefined,
  opts: { drainMs: number; log?: Logger | undefined },
): void {
  if (keeper?.deadlines !== mine.deadlines) mine.deadlines.close();
  for (const [id, { record }] of mine.breakers) {
    if (keeper?.breakers.get(id)?.record !== record) record.detach();
  }
  for (const [name, { cluster }] of mine.clusters) {
    if (keeper?.clusters.get(name)?.cluster === cluster) continue;
    if (opts.drainMs <= 0) cluster.close();
    else closeWhenIdle(cluster, opts.drainMs, opts.log);
  }
  for (const [name, { provider }] of mine.jwtProviders) {
    if (keeper?.jwtProviders.get(name)?.provider !== provider) provider.close();
  }
  for (const [name, { limiter }] of mine.limiters) {
    if (keeper?.limiters.get(name)?.limiter !== limiter) limiter.close?.();
  }
  if (mine.accessLog && keeper?.accessLog !== mine.accessLog) {
    const close = mine.accessLog.close;
    // Requests that began before the swap still write their line to the old log.
    if (opts.drainMs <= 0) close();
    else setTimeout(close, 5_000);
  }
}

function closeWhenIdle(cluster: Cluster, drainMs: number, log: Logger | undefined): void {
  void cluster.health.close();
  const started = Date.now();
  const check = () => {
    const busy = cluster.states.reduce((n, s) => n + s.inFlight, 0);
    if (busy === 0 || Date.now() - started >= drainMs) {
      if (busy > 0) {
        log?.warn("closing retired cluster with requests in flight", {
          cluster: cluster.name,
          in_flight: busy,
        });
      }
      cluster.close();
    } else setTimeout(check, 1_000);
  };
  setTimeout(check, 0);
}

/** admin.token, or the first line of admin.token_file, or the variable named by token_env. */
function resolveAdminToken(
  cfg: FerryConfig,
  opts: CompileOptions,
  problems: CompileProblem[],
): string | undefined {
  const a = cfg.admin;
  if (!a) return undefined;
  let token: string | undefined = a.token;
  if (a.token_file !== undefined) {
    try {
      token = opts.readTextFile(a.token_file).split(/\r?\n/)[0]!.trim();
    } catch (err) {
      problems.push({
        path: "admin.token_file",
        value: a.token_file,
        message: `cannot read: ${err}`,
      });
      return undefined;
    }
  } else if (a.token_env !== undefined) {
    token = (opts.env ?? ((n) => Deno.env.get(n)))(a.token_env)?.trim();
  }
  if (token === undefined) {
    if (a.token_env !== undefined) {
      problems.push({
        path: "admin.token_env",
        value: a.token_env,
        message: "variable is not set",
      });
    }
    return undefined;
  }
  if (token.length < 16) {
    problems.push({
      path: a.token_file !== undefined
        ? "admin.token_file"
        : a.token_env !== undefined
        ? "admin.token_env"
        : "admin.token",
      value: "<redacted>",
      message: "an admin token must be at least 16 characters",
    });
    return undefined;
  }
  return token;
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
  readonly metrics: FerryMetrics;
  readonly clusterMetrics: ReadonlyMap<string, ClusterRecorder>;
  /** Listeners' default authorization policies, by listener name. */
  readonly listenerPolicies: ReadonlyMap<string, AuthzPolicy>;
  readonly jwtProviders: ReadonlyMap<string, JwtProvider>;
  /** A route's own breaker (an override of the cluster's), carried over when unchanged. */
  readonly routeBreaker: (route: string, b: BreakerConfigSchema, cluster: Cluster) => BreakerStore;
}

function compileRoute(
  r: RouteConfig,
  i: number,
  cfg: FerryConfig,
  clusters: ReadonlyMap<string, Cluster>,
  policies: RoutePolicies,
): CompiledRoute {
  // Route policies, outermost first: authorization (a refused caller spends no rate-limit token
  // and sees no injected fault), fault injection (chaos), then rate limits.
  const middleware: Middleware[] = [];
  const authz = routeAuthz(r, i, cfg, policies);
  if (authz) middleware.push(authorization(authz));
  if (r.fault) middleware.push(faultInjection(r.fault));
  if (r.rate_limit) {
    const limiters = r.rate_limit.map((n) => policies.limiters.get(n)!);
    const onLimited = limiters.map((l) =>
      policies.metrics.rateLimitRecorder(r.name, l.name, l.scope)
    );
    middleware.push(rateLimit(limiters, onLimited));
  }
  if (r.direct_response) {
    const d = r.direct_response;
    return freezeRoute(
      r.name,
      "direct_response",
      undefined,
      compose(middleware, directResponse(d)),
      undefined,
      authz,
    );
  }
  if (r.redirect) {
    return freezeRoute(
      r.name,
      "redirect",
      undefined,
      compose(middleware, redirectResponse(r.redirect, r.match.path)),
      undefined,
      authz,
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
    ? policies.routeBreaker(r.name, r.circuit_breaker, cluster)
    : policies.breakers.get(cluster.name)?.store;
  const breakerPerCluster = (r.circuit_breaker ?? clusterCfg.circuit_breaker)?.scope === "cluster";
  // What the HTTP and the gRPC forwarders share for this route.
  const common = {
    cluster,
    timeoutMs: r.timeout,
    deadlines: policies.deadlines,
    breaker,
    breakerPerCluster,
    maxRequests: clusterCfg.limits?.max_requests ?? Number.POSITIVE_INFINITY,
    maxRequestsPerEndpoint: clusterCfg.limits?.max_requests_per_endpoint ??
      Number.POSITIVE_INFINITY,
    metrics: policies.clusterMetrics.get(cluster.name)!,
  };
  const grpc: GrpcRoute = Object.freeze({
    ...common,
    name: r.name,
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
    ...common,
    perTryTimeoutMs: r.per_try_timeout,
    idleTimeoutMs: r.idle_timeout,
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
    sendTimeoutMs: cfg.server.send_timeout,
    websocketMaxMessageBytes: cfg.server.websocket_max_message_bytes,
    via: cfg.server.via,
  });
  return freezeRoute(r.name, "cluster", cluster.name, compose(middleware, terminal), grpc, authz);
}

/**
 * The route's own policy for every listener, or else the default policy of each listener it
 * serves; undefined when no policy applies (no per-request cost then).
 */
function routeAuthz(
  r: RouteConfig,
  i: number,
  cfg: FerryConfig,
  policies: RoutePolicies,
): RouteAuthz | undefined {
  const served = cfg.listeners.filter((l) => !r.listeners || r.listeners.includes(l.name));
  const byListener = new Map<string, AuthzPolicy>();
  for (const l of served) {
    const p = policies.listenerPolicies.get(l.name);
    if (p) byListener.set(l.name, p);
  }
  let own: AuthzPolicy | undefined;
  if (r.authorization) {
    try {
      own = compilePolicy(r.authorization, `route ${r.name}`, policies.jwtProviders);
    } catch (err) {
      throw new SnapshotCompileError([{
        path: `routes[${i}].authorization`,
        value: r.name,
        message: err instanceof Error ? err.message : String(err),
      }]);
    }
  }
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
): CompiledRoute {
  return Object.freeze({
    name,
    kind,
    cluster,
    handler,
    ...(grpc ? { grpc } : {}),
    ...(authz ? { authz } : {}),
  });
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
    const allTls = c.endpoints !== undefined &&
      c.endpoints.every((e) => (typeof e === "string" ? e : e.url).startsWith("https://"));
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
