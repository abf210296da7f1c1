/**
 * A cluster: its endpoints, the balancer that picks among them and the connection pools that
 * reach them. Built from a validated `ClusterConfig`; its endpoint list may change afterwards
 * (DNS discovery, or a reload that only edits `endpoints`) without losing what it knows about
 * the endpoints that stay.
 */
import type { ClusterConfig } from "../config/schema.ts";
import { httpTransportOf } from "../config/transport_of.ts";
import type { CallFacts } from "../pipeline/types.ts";
import { createBalancer } from "./balancers/mod.ts";
import { type Balancer, createEndpointState, type EndpointState } from "./balancers/types.ts";
import { RetryBudget, type SharedBudget } from "../policy/retry.ts";
import {
  EndpointHealth,
  type EndpointHealthOptions,
  type EndpointSeed,
  type HealthEvent,
} from "./health/mod.ts";
import { type DiscoveryLog, DnsDiscovery } from "./discovery/dns.ts";
import { type EndpointDescriptor, originOf } from "./discovery/endpoints.ts";
import { type Endpoint, endpointFromUrl } from "./endpoint.ts";

// Re-exported: most readers know an endpoint as part of its cluster.
export { type Endpoint, endpointFromUrl };
import { H2Pool } from "./h2_pool.ts";
import { H2Transport } from "./h2_transport.ts";
import { H1Transport } from "../h1/transport.ts";
import type { UpstreamTls } from "./upstream_tls.ts";
import { FetchTransport, type PoolOptions } from "./transport.ts";

/**
 * The endpoints of a cluster at one moment and everything indexed by them. Replaced whole when
 * DNS discovery or a reload changes the list; a request reads `cluster.members` once, so its
 * picks, in-flight counts and health records always refer to the same list.
 */
export interface Members {
  readonly endpoints: readonly Endpoint[];
  readonly balancer: Balancer<Endpoint>;
  /** Per-endpoint live state (in-flight, effective weight, eligibility), same order. */
  readonly states: readonly EndpointState[];
  /** Active and passive health, slow start and panic; owns `states[i].eligible` and weights. */
  readonly health: EndpointHealth;
}

export interface Cluster {
  readonly name: string;
  readonly members: Members;
  /** Shorthands for `members.*` (admin views, tests). */
  readonly endpoints: readonly Endpoint[];
  readonly balancer: Balancer<Endpoint>;
  readonly states: readonly EndpointState[];
  readonly health: EndpointHealth;
  /** Endpoint slots available to per-endpoint breakers; a list longer than this is cut. */
  readonly slotCapacity: number;
  /** Called with a slot about to be given to a new endpoint; returns a detach function. */
  onSlotReuse(listener: (slot: number) => void): () => void;
  /**
   * Replaces the endpoint list: endpoints that stay keep their state (in-flight, health,
   * ejection, ramp, breaker slot), new ones start fresh. Returns what changed.
   */
  setEndpoints(next: readonly EndpointDescriptor[]): EndpointChange;
  /**
   * A cluster built `following`: takes the main isolate's endpoint list (when it discovers them)
   * and active-check verdicts by origin.
   */
  follow(
    endpoints: readonly EndpointDescriptor[] | undefined,
    healthy: ReadonlyMap<string, boolean>,
  ): void;
  /** DNS discovery state, for clusters that discover their endpoints. */
  readonly discovery: DnsDiscovery | undefined;
  /** The key ring_hash / maglev hash on, or undefined for other balancers. */
  readonly hashKey: ((call: CallFacts) => string | undefined) | undefined;
  readonly preserveHost: boolean;
  readonly retryBudget: RetryBudget;
  /**
   * fetch over a Deno.HttpClient pool: `transport: fetch`, and the endpoints the h2 transport
   * does not reach (an auto cluster's `http://` ones).
   */
  readonly fetch: FetchTransport;
  /**
   * Ferry's own HTTP/1.1 client (src/h1/): carries every request of an http1 cluster with
   * `transport: h1` (the default); absent for fetch, h2c and auto clusters.
   */
  readonly h1: H1Transport | undefined;
  /**
   * Ferry's own HTTP/2 client for HTTP requests of an h2c or auto cluster with `transport: h2`
   * (over `h2`, the connections gRPC uses); absent otherwise.
   */
  readonly h2Transport: H2Transport | undefined;
  /**
   * The HTTP/1.1 codec that carries WebSocket upgrades as byte tunnels: `h1`, or an auto
   * cluster's HTTP/1.1 side on the h2 transport (so its TLS settings and identity check apply to
   * upgrades too); absent where upgrades take Deno's WebSocket client.
   */
  readonly upgrades: H1Transport | undefined;
  /**
   * Multiplexed HTTP/2 connections per endpoint (opened on first use), for gRPC listeners and
   * the h2 transport.
   */
  readonly h2: H2Pool;
  /**
   * Starts active health checks and DNS discovery. Building a cluster runs nothing: it starts
   * once its config goes live (a `--check` or a rejected reload never starts it).
   */
  start(): void;
  close(): void;
}

export interface EndpointChange {
  readonly added: readonly string[];
  readonly removed: readonly string[];
  readonly kept: number;
}

/** Per-endpoint breaker slots a cluster reserves: enough for DNS churn, small in memory. */
const MIN_SLOT_CAPACITY = 256;

/** The configured static endpoints as discovery-style descriptors. */
export function staticEndpoints(cfg: ClusterConfig): EndpointDescriptor[] {
  return (cfg.endpoints ?? []).map((e) =>
    typeof e === "string" ? { url: e, weight: 1 } : { url: e.url, weight: e.weight }
  );
}

export type ClusterEventLog = (
  cluster: string,
  origin: string | undefined,
  e: HealthEvent | { type: "endpoints"; added: string[]; removed: string[] },
) => void;

export function buildCluster(
  cfg: ClusterConfig,
  /** The cluster's upstream TLS, files read: CA, client certificate, server name, identities. */
  tls?: UpstreamTls,
  onEvent?: ClusterEventLog,
  discoveryLog?: DiscoveryLog,
  /**
   * Probe nothing and resolve nothing: take endpoint lists and health verdicts from `follow`
   * (a worker of `server.workers > 1`; the main isolate checks once for the process).
   */
  following = false,
  /** Process-wide request counts (server.workers > 1), for `limits` and the retry budget. */
  sharedBudget?: SharedBudget,
): Cluster {
  const caCerts = tls?.caCerts;
  const pool: PoolOptions = {
    maxIdlePerEndpoint: cfg.pool.max_idle_per_endpoint,
    idleTimeoutMs: cfg.pool.idle_timeout,
    protocol: cfg.protocol,
    ...(caCerts ? { caCerts } : {}),
    ...(tls ? { tls } : {}),
  };
  const fetchTransport = new FetchTransport(pool);
  const transport = httpTransportOf(cfg);
  const h1Options = {
    maxIdlePerEndpoint: cfg.pool.max_idle_per_endpoint,
    maxConnectionsPerEndpoint: cfg.pool.max_connections_per_endpoint,
    idleTimeoutMs: cfg.pool.idle_timeout,
    maxRequestsPerConnection: cfg.pool.max_requests_per_connection,
    connectTimeoutMs: cfg.pool.connect_timeout,
    ...(tls ? { tls } : {}),
  };
  const h1 = transport === "h1" ? new H1Transport(h1Options) : undefined;
  // An auto cluster on the h2 transport offers HTTP/1.1 too in ALPN; endpoints that pick it are
  // served by the HTTP/1.1 codec (as on an http1 cluster).
  const autoH2 = transport === "h2" && cfg.protocol === "auto";
  const h2 = new H2Pool({
    maxConnectionsPerEndpoint: cfg.http2.max_connections_per_endpoint,
    // Connections opened for a burst do not stay forever.
    idleTimeoutMs: cfg.pool.idle_timeout,
    ...(caCerts ? { caCerts } : {}),
    ...(tls ? { tls } : {}),
    ...(autoH2 ? { alpn: ["h2", "http/1.1"] } : {}),
  });
  const autoHttp1 = autoH2 ? new H1Transport(h1Options) : undefined;
  const h2Transport = transport === "h2" ? new H2Transport(h2, autoHttp1) : undefined;
  const initial = staticEndpoints(cfg);
  const slotCapacity = Math.max(MIN_SLOT_CAPACITY, initial.length);
  const slots = new SlotAllocator(slotCapacity);
  const reuseListeners = new Set<(slot: number) => void>();
  const baseHealth = following
    ? { ...healthOptions(cfg, tls), active: undefined }
    : healthOptions(cfg, tls);

  const buildMembers = (
    endpoints: Endpoint[],
    states: EndpointState[],
    seeds: (EndpointSeed | undefined)[] | undefined,
  ): Members => {
    // Not frozen: a frozen array made balancer picks ~2.5x slower (bench/balancer_bench.ts).
    const balancer = createBalancer(cfg.lb, endpoints, { states });
    const health = new EndpointHealth(endpoints, states, {
      ...baseHealth,
      ...(seeds ? { seeds } : {}),
      ...(onEvent
        ? {
          onEvent: (e: HealthEvent) =>
            onEvent(cfg.name, "index" in e ? endpoints[e.index]?.origin : undefined, e),
        }
        : {}),
    });
    return Object.freeze({ endpoints, balancer, states, health });
  };

  const first = initial.map((d, i) => endpointFromUrl(d.url, d.weight, i, slots.take()!));
  let members = buildMembers(first, first.map((e) => createEndpointState(e.weight)), undefined);
  let started = false;
  let closed = false;

  const setEndpoints = (next: readonly EndpointDescriptor[]): EndpointChange => {
    const old = members;
    const byOrigin = new Map(old.endpoints.map((e) => [e.origin, e]));
    const endpoints: Endpoint[] = [];
    const states: EndpointState[] = [];
    const seeds: (EndpointSeed | undefined)[] = [];
    const added: string[] = [];
    const seen = new Set<string>();
    for (const d of next) {
      const origin = originOf(d.url);
      if (seen.has(origin)) continue;
      const before = byOrigin.get(origin);
      const slot = before?.slot ?? slots.take();
      if (slot === undefined) {
        onEvent?.(cfg.name, origin, { type: "endpoints", added: [], removed: [origin] });
        continue; // over capacity: left out, reported
      }
      seen.add(origin);
      if (before) {
        const state = old.states[before.index]!;
        if (before.weight !== d.weight) state.effectiveWeight = d.weight;
        states.push(state);
        seeds.push(old.health.seed(before.index));
      } else {
        for (const l of reuseListeners) l(slot);
        states.push(createEndpointState(d.weight));
        seeds.push(undefined);
        added.push(origin);
      }
      endpoints.push(endpointFromUrl(d.url, d.weight, endpoints.length, slot));
    }
    const removed = old.endpoints.filter((e) => !seen.has(e.origin));
    for (const e of removed) {
      slots.free(e.slot);
      // Its pools close once their requests are done: an answer that keeps rotating (DNS) would
      // otherwise keep connections and pool state for every address it ever named.
      h1?.retire(e.origin);
      h2.retire(e.origin);
      h2Transport?.retire(e.origin);
      fetchTransport.retire(e.origin);
    }
    const fresh = buildMembers(endpoints, states, seeds);
    members = fresh;
    void old.health.close();
    if (closed) void fresh.health.close();
    else if (started) fresh.health.start();
    const change = {
      added,
      removed: removed.map((e) => e.origin),
      kept: endpoints.length - added.length,
    };
    if (added.length > 0 || removed.length > 0) {
      onEvent?.(cfg.name, undefined, {
        type: "endpoints",
        added: change.added,
        removed: change.removed,
      });
    }
    return change;
  };

  const dns = following ? undefined : cfg.discovery?.dns;
  const discovery = dns
    ? new DnsDiscovery({
      name: dns.name,
      type: dns.type,
      ...(dns.port !== undefined ? { port: dns.port } : {}),
      scheme: dns.scheme,
      interval: dns.interval,
      timeout: dns.timeout,
      ...(dns.name_server ? { nameServer: splitNameServer(dns.name_server) } : {}),
      emptyConfirmations: dns.empty_confirmations,
    }, discoveryLog ? { log: discoveryLog } : {})
    : undefined;

  return Object.freeze({
    name: cfg.name,
    get members() {
      return members;
    },
    get endpoints() {
      return members.endpoints;
    },
    get balancer() {
      return members.balancer;
    },
    get states() {
      return members.states;
    },
    get health() {
      return members.health;
    },
    slotCapacity,
    onSlotReuse(listener: (slot: number) => void) {
      reuseListeners.add(listener);
      return () => void reuseListeners.delete(listener);
    },
    setEndpoints,
    follow(
      endpoints: readonly EndpointDescriptor[] | undefined,
      healthy: ReadonlyMap<string, boolean>,
    ) {
      if (endpoints) {
        const now = members.endpoints.map((e) => `${e.origin} ${e.weight}`).join(",");
        if (now !== endpoints.map((d) => `${originOf(d.url)} ${d.weight}`).join(",")) {
          setEndpoints(endpoints);
        }
      }
      for (const e of members.endpoints) {
        const verdict = healthy.get(e.origin);
        if (verdict !== undefined) members.health.setHealthy(e.index, verdict);
      }
    },
    discovery,
    hashKey: cfg.lb === "ring_hash" || cfg.lb === "maglev" ? hashKeyOf(cfg.hash_key) : undefined,
    preserveHost: cfg.preserve_host,
    retryBudget: new RetryBudget(
      cfg.retry_budget.percent,
      cfg.retry_budget.min_retries,
      cfg.limits?.max_retries,
      sharedBudget,
    ),
    fetch: fetchTransport,
    h1,
    h2Transport,
    upgrades: h1 ?? autoHttp1,
    h2,
    start() {
      if (started || closed) return;
      started = true;
      members.health.start();
      if (discovery) void discovery.start((found) => setEndpoints(found)).catch(() => {});
    },
    close() {
      closed = true;
      discovery?.stop();
      h2.close();
      h2Transport?.close();
      void members.health.close();
      fetchTransport.close();
      h1?.close();
    },
  });
}

/** Hands out the lowest free slot; `undefined` when all are taken. */
class SlotAllocator {
  readonly #free: number[];
  constructor(capacity: number) {
    this.#free = Array.from({ length: capacity }, (_, i) => capacity - 1 - i);
  }
  take(): number | undefined {
    return this.#free.pop();
  }
  free(slot: number): void {
    this.#free.push(slot);
  }
}

/** `10.0.0.53`, `10.0.0.53:5353` or `[fd00::53]:53` -> Deno.resolveDns's nameServer. */
function splitNameServer(address: string): { ipAddr: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(address) ?? /^([^:]+)(?::(\d+))?$/.exec(address);
  if (!m) return { ipAddr: address, port: 53 };
  return { ipAddr: m[1]!, port: m[2] ? Number(m[2]) : 53 };
}

type HashKeyConfig = ClusterConfig["hash_key"];

/**
 * Compiles the hash-key source once; a call without the key hashes on the client address. Reads
 * only `CallFacts`, so HTTP requests and gRPC calls hash the same way.
 */
function hashKeyOf(cfg: HashKeyConfig): (call: CallFacts) => string | undefined {
  if (cfg === undefined || ("source" in cfg && cfg.source === "client_ip")) {
    return (call) => call.clientIp;
  }
  if ("source" in cfg) return (call) => call.path;
  if ("header" in cfg) {
    const name = cfg.header.toLowerCase();
    return (call) => call.header(name) ?? call.clientIp;
  }
  const prefix = `${cfg.cookie}=`;
  return (call) => {
    const cookies = call.header("cookie");
    if (cookies !== undefined) {
      for (const part of cookies.split(";")) {
        const c = part.trim();
        if (c.startsWith(prefix)) return c.slice(prefix.length);
      }
    }
    return call.clientIp;
  };
}

/** Config (snake_case, ms) -> the health manager's options. */
function healthOptions(cfg: ClusterConfig, tls: UpstreamTls | undefined): EndpointHealthOptions {
  const caCerts = tls?.caCerts;
  const hc = cfg.health_check;
  const od = cfg.outlier_detection;
  return {
    panicThresholdPercent: cfg.panic_threshold,
    active: hc && {
      path: hc.path,
      expectedStatuses: hc.expected_statuses,
      ...(hc.host ? { host: hc.host } : {}),
      ...(hc.grpc
        ? {
          grpc: {
            service: hc.grpc.service,
            ...(hc.grpc.authority ? { authority: hc.grpc.authority } : {}),
          },
        }
        : {}),
      protocol: cfg.protocol,
      transport: httpTransportOf(cfg),
      ...(caCerts ? { caCerts } : {}),
      ...(tls ? { tls } : {}),
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
