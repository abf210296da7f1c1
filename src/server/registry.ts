/**
 * What lives across reloads: clusters with their pools, health checks and DNS discovery,
 * circuit breakers, rate-limit buckets, JWT providers, the access-log sink and the deadline
 * timer. The compiler (compile.ts) only wires these parts into routes; this registry builds,
 * starts, carries over and stops them.
 *
 * `prepareParts` builds a config's parts inert (no socket, timer or file handle): parts whose
 * config did not change are taken over from the running generation, the rest built new. Their
 * lifecycle then follows the snapshot they serve:
 *
 *   start   once, when the snapshot goes live: health checks, DNS discovery, JWKS refresh and
 *           the access-log file start; endpoint lists changed by the reload are swapped in
 *   retire  after a reload: whatever the next generation took over stays, the rest closes once
 *           the requests still using it are done
 *   discard a generation that never served (`--check`, a dry run, a rejected reload): closes
 *           only what it built
 *   close   shutdown
 *
 * Keys are the config's canonical JSON (and the contents of the files it names), so equal
 * configs give equal keys whatever their key order.
 */
import type { BreakerConfigSchema, FerryConfig } from "../config/schema.ts";
import { type ConfigProblem, ConfigProblemsError, type Materials } from "../config/materials.ts";
import { buildCluster, type Cluster, staticEndpoints } from "../upstream/cluster.ts";
import type { UpstreamTls } from "../upstream/upstream_tls.ts";
import { DeadlineQueue } from "../policy/deadlines.ts";
import { type SharedBudget, sharedBudget } from "../policy/retry.ts";
import { type BreakerRecord, breakerStore, type BreakerView } from "./breaker_records.ts";
import { compileLimiters, type Limiter } from "../policy/middleware.ts";
import type { SharedMemory } from "../policy/shared_memory.ts";
import type { JwtProvider } from "../policy/jwt.ts";
import { OptionalModule } from "../pipeline/optional_module.ts";
import type { Logger } from "../observability/log.ts";
import { AccessLog, LineWriter, openSink } from "../observability/access_log.ts";
import type { FerryMetrics, ScrapeSources } from "../observability/metrics.ts";

/** JWT verification (jose), loaded for configs with `jwt_providers` (optional_parts.ts). */
export const jwtPart = new OptionalModule("jwt", () => import("../policy/jwt.ts"));

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

/** An access log whose file opens when its generation starts. */
interface AccessLogPart {
  readonly key: string;
  readonly log: AccessLog;
  readonly start: () => void;
  readonly close: () => void;
}

/** What the next generation may take over instead of building anew. */
interface CarryOver {
  readonly deadlines: DeadlineQueue;
  readonly clusters: ReadonlyMap<
    string,
    { readonly key: string; readonly endpointsKey: string; readonly cluster: Cluster }
  >;
  /** By "cluster <name>" or "route <name>". */
  readonly breakers: ReadonlyMap<string, { readonly key: string; readonly record: BreakerRecord }>;
  readonly limiters: ReadonlyMap<string, { readonly key: string; readonly limiter: Limiter }>;
  readonly accessLog: AccessLogPart | undefined;
  /** Kept while the provider's config and JWKS file are unchanged (its cache and fetched keys). */
  readonly jwtProviders: ReadonlyMap<
    string,
    { readonly key: string; readonly provider: JwtProvider }
  >;
}

/** One config's stateful parts, built or taken over; see the module comment for the lifecycle. */
export interface Parts {
  readonly deadlines: DeadlineQueue;
  readonly clusters: ReadonlyMap<string, Cluster>;
  /** Cluster-level breakers, by cluster. */
  readonly clusterBreakers: ReadonlyMap<string, BreakerRecord>;
  /** Routes' own breakers (overrides of their cluster's), by route. */
  readonly routeBreakers: ReadonlyMap<string, BreakerRecord>;
  /** Every breaker (cluster-level and route overrides) with the endpoint each slot stands for. */
  readonly breakerViews: readonly BreakerView[];
  readonly limiters: ReadonlyMap<string, Limiter>;
  readonly jwtProviders: ReadonlyMap<string, JwtProvider>;
  /** One JSON line per request, when `access_log` is configured. */
  readonly accessLog: AccessLog | undefined;
  /** Process-wide policy memory (server.workers > 1), handed on to the next generation. */
  readonly sharedMemory: SharedMemory | undefined;
  readonly carry: CarryOver;
  start(): void;
  retire(next: Parts): void;
  discard(previous: Parts): void;
  close(): void;
}

export interface PrepareOptions {
  /** The contents of the files the config names (config/materials.ts). */
  readonly materials: Materials;
  /** Reads an environment variable (a shared store's password_env); default Deno.env.get. */
  readonly env?: ((name: string) => string | undefined) | undefined;
  /** Where state changes (breaker transitions, health, endpoints) are logged. */
  readonly log?: Logger | undefined;
  readonly metrics: FerryMetrics;
  /** The serving generation: unchanged parts are taken over from it. */
  readonly previous?: Parts | undefined;
  /** With `server.workers > 1`: where rate-limit buckets and breakers keep process-wide state. */
  readonly sharedMemory?: SharedMemory | undefined;
  /** A worker's parts: clusters probe and resolve nothing, they follow the main isolate. */
  readonly followHealth?: boolean | undefined;
}

/**
 * What the serving generation's clusters and breakers show at scrape time (the metrics know no
 * snapshot). `current` is read at each scrape, so the gauges follow reloads.
 */
export function scrapeSources(
  current: () => Parts,
): Pick<ScrapeSources, "endpoints" | "pools" | "breakers"> {
  return {
    endpoints(visit) {
      for (const c of current().clusters.values()) {
        const m = c.members;
        const health = m.health.snapshot();
        for (const e of m.endpoints) {
          const h = health[e.index];
          visit(
            c.name,
            e.origin,
            m.states[e.index]!.inFlight,
            h?.healthy ?? true,
            h?.ejected ?? false,
          );
        }
      }
    },
    pools(visit) {
      for (const c of current().clusters.values()) {
        for (const p of c.h1?.stats() ?? []) visit(c.name, p);
        // The h2 transport's connections (shared with gRPC calls on the cluster).
        if (c.h2Transport) { for (const p of c.h2.stats()) visit(c.name, p); }
      }
    },
    breakers(visit) {
      for (const b of current().breakerViews) {
        for (const [slot, endpoint] of b.slots()) {
          visit(b.cluster, b.scope, endpoint, b.record.store.state(slot));
        }
      }
    },
  };
}

/**
 * A cluster's process-wide request counts (workers > 1): `limits` and its retry budget hold for
 * the process. Undefined (counted per worker, logged) when the arena is full.
 */
function clusterBudget(
  memory: SharedMemory,
  c: FerryConfig["clusters"][number],
  key: string,
  log: Logger | undefined,
): SharedBudget | undefined {
  const shared = sharedBudget(
    memory,
    `${c.name} ${key}`,
    c.limits?.max_requests_per_endpoint !== undefined,
  );
  if (!shared) {
    log?.warn("shared memory full: this cluster's limits and retry budget count per worker", {
      cluster: c.name,
    });
  }
  return shared;
}

/** How long a retired cluster may keep serving requests that started before the reload. */
const RETIRE_DRAIN_MS = 10 * 60_000;

/**
 * Builds (inert) or takes over the parts `cfg` needs. Throws `ConfigProblemsError` for a JWKS
 * file that is no key set (jose parses it, in policy/); what it built is closed first.
 */
export function prepareParts(cfg: FerryConfig, opts: PrepareOptions): Parts {
  const problems: ConfigProblem[] = [];
  // Process-wide policy memory (workers > 1): handed from generation to generation.
  const sharedMemory = opts.sharedMemory ?? opts.previous?.sharedMemory;
  const prior = opts.previous?.carry;
  // No closure made here may use `opts` or `prior`, not even through a helper: V8 keeps the
  // variables any closure of a function uses in one context that every closure of that function
  // holds, so one such use chains each generation's parts (start, retire, the clusters' health
  // callbacks) to its predecessor, and every generation stays in memory (a reload every 2 s
  // grew the heap by about 0.5 MiB a minute). Closures take what they need from these copies.
  const { log, metrics, materials, env, followHealth } = opts;
  const clusters = new Map<string, Cluster>();
  const clusterCarry = new Map<string, { key: string; endpointsKey: string; cluster: Cluster }>();
  /** Changes to kept clusters, made only when the generation goes live (a failed reload must not). */
  const activations: (() => void)[] = [];
  /** What this generation built and starts when it goes live. */
  const starters: (() => void)[] = [];
  for (const c of cfg.clusters) {
    const files = materials.clusterTls.get(c.name);
    const ca = files?.ca;
    const caCerts = ca === undefined ? undefined : [ca];
    const clientCert = files?.cert;
    const clientKey = files?.key;
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
    // in when the generation goes live, so endpoints that stay keep their health and breakers.
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
        followHealth,
        sharedMemory && clusterBudget(sharedMemory, c, key, log),
      );
      const built = cluster;
      starters.push(() => built.start());
    }
    clusters.set(c.name, cluster);
    clusterCarry.set(c.name, { key, endpointsKey: canonicalJson(c.endpoints), cluster });
  }

  // The deadline queue arms its interval only while a deadline is pending.
  const deadlines = prior?.deadlines ?? new DeadlineQueue();
  // Breakers are keyed on their config and on the cluster object itself (a rebuilt cluster
  // starts with closed breakers).
  const breakerCarry = new Map<string, { key: string; record: BreakerRecord }>();
  const breakerViews: BreakerView[] = [];
  const keptBreaker = (
    prior: CarryOver | undefined,
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
  const clusterBreakers = new Map<string, BreakerRecord>();
  for (const c of cfg.clusters) {
    if (c.circuit_breaker) {
      clusterBreakers.set(
        c.name,
        keptBreaker(
          prior,
          `cluster ${c.name}`,
          c.circuit_breaker,
          clusters.get(c.name)!,
          "cluster",
        ),
      );
    }
  }
  const routeBreakers = new Map<string, BreakerRecord>();
  for (const r of cfg.routes) {
    const cluster = r.cluster === undefined ? undefined : clusters.get(r.cluster);
    if (!r.circuit_breaker || !cluster) continue;
    routeBreakers.set(
      r.name,
      keptBreaker(prior, `route ${r.name}`, r.circuit_breaker, cluster, `route:${r.name}`),
    );
  }

  const limiterCarry = new Map<string, { key: string; limiter: Limiter }>();
  const limiters = new Map<string, Limiter>();
  const storeFile = (path: string) => {
    const text = materials.storeFiles.get(path);
    if (text === undefined) throw new Error(`${path} was not read with the config`);
    return text;
  };
  for (const rl of cfg.rate_limits) {
    const key = canonicalJson(rl);
    const kept = prior?.limiters.get(rl.name);
    // A shared (redis) limiter connects lazily, on its first lease; its files were read by
    // config/materials.ts.
    const limiter = kept?.key === key ? kept.limiter : compileLimiters(
      [rl],
      (c) => ({
        readTextFile: storeFile,
        ...(env ? { env } : {}),
        log,
        backendMetrics: metrics.rateLimitBackend(c.name),
      }),
      sharedMemory && ((bytes) => sharedMemory.region(`rate-limit ${key}`, bytes)),
    ).get(rl.name)!;
    limiters.set(rl.name, limiter);
    limiterCarry.set(rl.name, { key, limiter });
  }

  const jwtCarry = new Map<string, { key: string; provider: JwtProvider }>();
  const jwtProviders = new Map<string, JwtProvider>();
  for (const [i, p] of cfg.jwt_providers.entries()) {
    const jwksText = materials.jwks.get(p.name);
    const key = canonicalJson({ p, jwksText });
    const kept = prior?.jwtProviders.get(p.name);
    if (kept?.key === key) {
      jwtProviders.set(p.name, kept.provider);
      jwtCarry.set(p.name, kept);
      continue;
    }
    try {
      const provider = new (jwtPart.get().JwtProvider)(p, {
        ...(jwksText ? { jwksText } : {}),
        log,
      });
      starters.push(() => provider.start());
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

  let accessLogCarry: AccessLogPart | undefined;
  if (cfg.access_log) {
    const key = canonicalJson(cfg.access_log);
    if (prior?.accessLog?.key === key) accessLogCarry = prior.accessLog;
    else {
      accessLogCarry = accessLogPart(cfg.access_log, key, log);
      starters.push(accessLogCarry.start);
    }
  }

  const carry: CarryOver = {
    deadlines,
    clusters: clusterCarry,
    breakers: breakerCarry,
    limiters: limiterCarry,
    accessLog: accessLogCarry,
    jwtProviders: jwtCarry,
  };
  if (problems.length > 0) {
    // Close only what this attempt built; what it took over still serves the previous config.
    releaseUnshared(carry, prior, { drainMs: 0 });
    throw new ConfigProblemsError(problems);
  }
  let started = false;
  return Object.freeze({
    deadlines,
    clusters,
    clusterBreakers,
    routeBreakers,
    breakerViews,
    limiters,
    jwtProviders,
    accessLog: accessLogCarry?.log,
    sharedMemory,
    carry,
    start() {
      if (started) return;
      started = true;
      for (const s of starters.splice(0)) s();
      for (const a of activations.splice(0)) a();
    },
    retire(next: Parts) {
      releaseUnshared(carry, next.carry, { drainMs: RETIRE_DRAIN_MS, log });
    },
    discard(previous: Parts) {
      releaseUnshared(carry, previous.carry, { drainMs: 0 });
    },
    close() {
      releaseUnshared(carry, undefined, { drainMs: 0 });
    },
  });
}

/**
 * The access log's writer exists from the start, its file opens when the generation starts.
 * The loader has checked the folder and the write permission; should opening still fail, the
 * lines are dropped (counted by the writer) and the error logged, never a failed request.
 */
function accessLogPart(
  config: NonNullable<FerryConfig["access_log"]>,
  key: string,
  log: Logger | undefined,
): AccessLogPart {
  let opened: ReturnType<typeof openSink> | undefined;
  let closed = false;
  const writer = new LineWriter((bytes) => {
    if (!opened) return Promise.reject(new Error("access log not open"));
    return opened.sink(bytes);
  });
  return {
    key,
    log: new AccessLog(config, writer),
    start: () => {
      if (opened || closed) return;
      try {
        opened = openSink(config.path);
      } catch (err) {
        log?.error("cannot open the access log", { path: config.path, error: String(err) });
      }
    },
    close: () => {
      closed = true;
      void writer.flush().finally(() => opened?.close());
    },
  };
}

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
