/**
 * A cluster: its endpoints, the balancer that picks among them and the connection pools that
 * reach them. Built once per config snapshot from a validated `ClusterConfig`.
 */
import type { ClusterConfig } from "../config/schema.ts";
import type { RequestContext } from "../pipeline/types.ts";
import { createBalancer } from "./balancers/mod.ts";
import type { Balancer, EndpointState } from "./balancers/types.ts";
import { RetryBudget } from "../policy/retry.ts";
import { EndpointHealth, type EndpointHealthOptions, type HealthEvent } from "./health/mod.ts";
import { H2Pool } from "./h2_pool.ts";
import {
  FetchTransport,
  LazyNodeTransport,
  type PoolOptions,
  type Transport,
} from "./transport.ts";

export interface Endpoint {
  /** Position in the cluster's endpoint list (and in `balancer.states`). */
  readonly index: number;
  /** `scheme://host:port`, the id of the endpoint in logs and metrics. */
  readonly origin: string;
  readonly url: URL;
  /** `ws:` / `wss:` origin for WebSocket upgrades. */
  readonly wsOrigin: string;
  readonly weight: number;
}

export interface Cluster {
  readonly name: string;
  readonly endpoints: readonly Endpoint[];
  readonly balancer: Balancer<Endpoint>;
  /** Per-endpoint live state (in-flight, effective weight, eligibility), same order. */
  readonly states: readonly EndpointState[];
  /** The key ring_hash / maglev hash on, or undefined for other balancers. */
  readonly hashKey: ((req: Request, ctx: RequestContext) => string | undefined) | undefined;
  readonly preserveHost: boolean;
  readonly retryBudget: RetryBudget;
  /** Active and passive health, slow start and panic; owns `states[i].eligible` and weights. */
  readonly health: EndpointHealth;
  /** The default path: fetch over a Deno.HttpClient pool. */
  readonly fetch: FetchTransport;
  /** Byte-exact path for compressed bodies; absent when the cluster speaks HTTP/2. */
  readonly passthrough: Transport | undefined;
  /** One multiplexed HTTP/2 connection per endpoint, for gRPC listeners (opened on first use). */
  readonly h2: H2Pool;
  close(): void;
}

export function endpointFromUrl(raw: string, weight: number, index = 0): Endpoint {
  const url = new URL(raw);
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  const origin = `${url.protocol}//${url.hostname}:${port}`;
  const wsOrigin = `${url.protocol === "https:" ? "wss:" : "ws:"}//${url.hostname}:${port}`;
  return Object.freeze({ index, origin, url: new URL(origin), wsOrigin, weight });
}

export function buildCluster(
  cfg: ClusterConfig,
  caCerts?: string[],
  onHealthEvent?: (cluster: string, origin: string | undefined, e: HealthEvent) => void,
): Cluster {
  // Not frozen: a frozen array made balancer picks ~2.5x slower (bench/balancer_bench.ts).
  const endpoints: readonly Endpoint[] = cfg.endpoints.map((e, i) =>
    typeof e === "string" ? endpointFromUrl(e, 1, i) : endpointFromUrl(e.url, e.weight, i)
  );
  const balancer = createBalancer(cfg.lb, endpoints);
  const pool: PoolOptions = {
    maxIdlePerEndpoint: cfg.pool.max_idle_per_endpoint,
    idleTimeoutMs: cfg.pool.idle_timeout,
    protocol: cfg.protocol,
    ...(caCerts ? { caCerts } : {}),
  };
  const fetchTransport = new FetchTransport(pool);
  const health = new EndpointHealth(endpoints, balancer.states, {
    ...healthOptions(cfg, caCerts),
    ...(onHealthEvent
      ? {
        onEvent: (e: HealthEvent) =>
          onHealthEvent(cfg.name, "index" in e ? endpoints[e.index]?.origin : undefined, e),
      }
      : {}),
  });
  health.start();
  const passthrough = cfg.protocol === "http1" ? new LazyNodeTransport(pool) : undefined;
  const h2 = new H2Pool(caCerts ? { caCerts } : {});
  return Object.freeze({
    name: cfg.name,
    endpoints,
    balancer,
    states: balancer.states,
    hashKey: cfg.lb === "ring_hash" || cfg.lb === "maglev" ? hashKeyOf(cfg.hash_key) : undefined,
    preserveHost: cfg.preserve_host,
    health,
    retryBudget: new RetryBudget(
      cfg.retry_budget.percent,
      cfg.retry_budget.min_retries,
      cfg.limits?.max_retries,
    ),
    fetch: fetchTransport,
    passthrough,
    h2,
    close() {
      h2.close();
      void health.close();
      fetchTransport.close();
      passthrough?.close();
    },
  });
}

type HashKeyConfig = ClusterConfig["hash_key"];

/** Compiles the hash-key source once; a request without the key hashes on the client address. */
function hashKeyOf(cfg: HashKeyConfig): (req: Request, ctx: RequestContext) => string | undefined {
  if (cfg === undefined || ("source" in cfg && cfg.source === "client_ip")) {
    return (_req, ctx) => ctx.clientIp;
  }
  if ("source" in cfg) return (_req, ctx) => ctx.path;
  if ("header" in cfg) {
    const name = cfg.header.toLowerCase();
    return (req, ctx) => req.headers.get(name) ?? ctx.clientIp;
  }
  const prefix = `${cfg.cookie}=`;
  return (req, ctx) => {
    const cookies = req.headers.get("cookie");
    if (cookies !== null) {
      for (const part of cookies.split(";")) {
        const c = part.trim();
        if (c.startsWith(prefix)) return c.slice(prefix.length);
      }
    }
    return ctx.clientIp;
  };
}

/** Config (snake_case, ms) -> the health manager's options. */
function healthOptions(cfg: ClusterConfig, caCerts: string[] | undefined): EndpointHealthOptions {
  const hc = cfg.health_check;
  const od = cfg.outlier_detection;
  return {
    panicThresholdPercent: cfg.panic_threshold,
    active: hc && {
      path: hc.path,
      expectedStatuses: hc.expected_statuses,
      ...(hc.host ? { host: hc.host } : {}),
      protocol: cfg.protocol,
      ...(caCerts ? { caCerts } : {}),
      intervalMs: hc.interval,
      timeoutMs: hc.timeout,
      jitterFraction: hc.jitter,
      healthyThreshold: hc.healthy_threshold,
      unhealthyThreshold: hc.unhealthy_threshold,
      initialState: hc.initial_state,
    },
    outlier: od && {
      consecutive5xx: od.consecutive_5xx,
      consecutiveGatewayFailure: od.consecutive_gateway_failure,
      baseEjectionTimeMs: od.base_ejection_time,
      maxEjectionTimeMs: od.max_ejection_time,
      maxEjectionPercent: od.max_ejection_percent,
      intervalMs: od.interval,
    },
    slowStart: cfg.slow_start && {
      windowMs: cfg.slow_start.window,
      aggression: cfg.slow_start.aggression,
      minWeightPercent: cfg.slow_start.min_weight_percent,
    },
  };
}
