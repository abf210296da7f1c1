/**
 * One upstream endpoint as a cluster, its pools and its health checks know it. Kept apart from
 * cluster.ts so that the pools and probes a cluster builds can name it without importing the
 * cluster back.
 */

export interface Endpoint {
  /** Position in the membership's endpoint list (and in its `states`). */
  readonly index: number;
  /**
   * Stable for as long as the endpoint stays in the cluster, whatever the list around it does:
   * per-endpoint circuit breakers are kept in this slot.
   */
  readonly slot: number;
  /** `scheme://host:port`, the id of the endpoint in logs and metrics. */
  readonly origin: string;
  readonly url: URL;
  /** `ws:` / `wss:` origin for WebSocket upgrades. */
  readonly wsOrigin: string;
  readonly weight: number;
}

export function endpointFromUrl(raw: string, weight: number, index = 0, slot = index): Endpoint {
  const url = new URL(raw);
  const port = url.port || (url.protocol === "https:" ? "443" : "80");
  const origin = `${url.protocol}//${url.hostname}:${port}`;
  const wsOrigin = `${url.protocol === "https:" ? "wss:" : "ws:"}//${url.hostname}:${port}`;
  return Object.freeze({ index, slot, origin, url: new URL(origin), wsOrigin, weight });
}
