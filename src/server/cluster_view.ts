/**
 * GET /clusters: every cluster of the serving snapshot with its endpoints' live state (weights,
 * in-flight, health, ejection, pool connections, breaker). Also read by /stats for the dashboard.
 */
import type { EndpointPoolStats } from "../h1/pool.ts";
import type { Snapshot } from "./compile.ts";
import { BREAKER_STATE_NAMES } from "../policy/circuit_breaker.ts";
import type { DnsDiscoveryStatus } from "../upstream/discovery/dns.ts";

function discoveryView(d: DnsDiscoveryStatus) {
  return {
    endpoints: d.endpoints?.length ?? null,
    consecutive_failures: d.consecutiveFailures,
    last_error: d.lastError ?? null,
    last_success: d.lastSuccessAt === undefined ? null : new Date(d.lastSuccessAt).toISOString(),
  };
}

export function clustersView(s: Snapshot) {
  return {
    config_version: s.version,
    clusters: [...s.clusters.values()].map((c) => {
      const breaker = s.breakers.get(c.name);
      const health = c.health.snapshot();
      const perCluster = s.config.clusters.find((x) => x.name === c.name)?.circuit_breaker
        ?.scope === "cluster";
      return {
        name: c.name,
        lb: c.balancer.kind,
        active_requests: c.retryBudget.active,
        panic: c.health.panic,
        retries_in_flight: c.retryBudget.retrying,
        transport: c.h1 ? "h1" : c.h2Transport ? "h2" : "fetch",
        ...(c.discovery ? { discovery: discoveryView(c.discovery.status) } : {}),
        endpoints: c.endpoints.map((e) => {
          const st = c.states[e.index]!;
          const h = health[e.index];
          const slot = perCluster ? 0 : e.slot;
          return {
            origin: e.origin,
            weight: e.weight,
            effective_weight: st.effectiveWeight,
            eligible: st.eligible,
            in_flight: st.inFlight,
            // Ferry's own pools' connections (fetch's pool exposes none); an auto cluster's
            // endpoint that speaks HTTP/1.1 uses the cluster's HTTP/1.1 codec, not its h2 pool.
            connections: c.h1
              ? connectionsView(c.h1.endpointStats(e.origin))
              : c.h2Transport?.speaksHttp1(e.origin) && c.upgrades
              ? connectionsView(c.upgrades.endpointStats(e.origin))
              : c.h2Transport
              ? c.h2.endpointStats(e.origin)
              : null,
            ...(c.h2Transport
              ? { protocol: c.h2Transport.speaksHttp1(e.origin) ? "http/1.1" : "h2" }
              : {}),
            healthy: h?.healthy ?? true,
            ejected: h?.ejected ?? false,
            ejections: h?.ejections ?? 0,
            recent_failures: h?.recentFailures ?? 0,
            last_probe: h?.lastProbe ?? null,
            breaker: breaker
              ? {
                state: BREAKER_STATE_NAMES[breaker.store.state(slot)],
                retry_after_ms: breaker.store.retryAfterMs(slot),
                times_opened: breaker.transitions[slot * 3 + 1],
                times_half_opened: breaker.transitions[slot * 3 + 2],
                times_closed: breaker.transitions[slot * 3 + 0],
              }
              : null,
          };
        }),
      };
    }),
  };
}

function connectionsView(p: EndpointPoolStats | undefined) {
  return {
    open: p?.open ?? 0,
    idle: p?.idle ?? 0,
    waiting: p?.waiting ?? 0,
    opened: p?.opened ?? 0,
    reused: p?.reused ?? 0,
  };
}
