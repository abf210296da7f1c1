/**
 * A cluster: its endpoints, the balancer that picks among them and the connection pools that
 * reach them. Built once per config snapshot from a validated `ClusterConfig`.
 */
import type { ClusterConfig } from "../config/schema.ts";
import { type Balancer, RoundRobin } from "./balancer.ts";
import {
  FetchTransport,
  NodeHttpTransport,
  type PoolOptions,
  type Transport,
} from "./transport.ts";

export interface Endpoint {
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
  readonly preserveHost: boolean;
  /** The default path: fetch over a Deno.HttpClient pool. */
  readonly fetch: FetchTransport;
  /** Byte-exact path for compressed bodies; absent when the cluster speaks HTTP/2. */
  readonly passthrough: Transport | undefined;
  close(): void;
}

export function endpointFromUrl(raw: string, weight: number): Endpoint {
  const url = new URL(raw);
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  const origin = `${url.protocol}//${url.hostname}:${port}`;
  const wsOrigin = `${url.protocol === "https:" ? "wss:" : "ws:"}//${url.hostname}:${port}`;
  return Object.freeze({ origin, url: new URL(origin), wsOrigin, weight });
}

export function buildCluster(cfg: ClusterConfig, caCerts?: string[]): Cluster {
  const endpoints = Object.freeze(
    cfg.endpoints.map((e) =>
      typeof e === "string" ? endpointFromUrl(e, 1) : endpointFromUrl(e.url, e.weight)
    ),
  );
  const pool: PoolOptions = {
    maxIdlePerEndpoint: cfg.pool.max_idle_per_endpoint,
    idleTimeoutMs: cfg.pool.idle_timeout,
    protocol: cfg.protocol,
    ...(caCerts ? { caCerts } : {}),
  };
  const fetchTransport = new FetchTransport(pool);
  const passthrough = cfg.protocol === "http1" ? new NodeHttpTransport(pool) : undefined;
  return Object.freeze({
    name: cfg.name,
    endpoints,
    balancer: new RoundRobin(endpoints),
    preserveHost: cfg.preserve_host,
    fetch: fetchTransport,
    passthrough,
    close() {
      fetchTransport.close();
      passthrough?.close();
    },
  });
}
