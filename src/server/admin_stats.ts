/**
 * GET /stats: what the live dashboard draws, read from the same Prometheus histograms /metrics
 * exports (nothing extra is recorded per request). Counts are cumulative since start; the page
 * turns two polls into rates and quantiles, as PromQL's rate() and histogram_quantile() would.
 */
import type { Snapshot } from "../config/compile.ts";
import { BREAKER_STATE_NAMES } from "../policy/circuit_breaker.ts";
import type { RecentErrors } from "./errors.ts";
import { clustersView } from "./admin.ts";

export interface RouteStats {
  listener: string;
  route: string;
  requests: number;
  /** Responses with a 5xx status. */
  errors: number;
  /** Seconds spent, summed (for a mean). */
  sum: number;
  /** Cumulative [upper bound in seconds, count] pairs; the last bound is +Inf. */
  buckets: [number, number][];
}

export async function dashboardStats(s: Snapshot, recent: RecentErrors | undefined) {
  const hist = await s.metrics.downstreamDuration.get();
  const routes = new Map<string, RouteStats>();
  const of = (labels: Record<string, string | number | undefined>): RouteStats => {
    const key = `${labels.listener}\u0000${labels.route}`;
    let r = routes.get(key);
    if (!r) {
      r = {
        listener: String(labels.listener),
        route: String(labels.route),
        requests: 0,
        errors: 0,
        sum: 0,
        buckets: [],
      };
      routes.set(key, r);
    }
    return r;
  };
  for (const v of hist.values) {
    const r = of(v.labels);
    const name = (v as { metricName?: string }).metricName ?? "";
    if (name.endsWith("_count")) {
      r.requests += v.value;
      if (v.labels.status_class === "5xx") r.errors += v.value;
    } else if (name.endsWith("_sum")) r.sum += v.value;
    else if (name.endsWith("_bucket")) {
      const le = v.labels.le === "+Inf" ? Infinity : Number(v.labels.le);
      const b = r.buckets.find((x) => x[0] === le);
      if (b) b[1] += v.value;
      else r.buckets.push([le, v.value]);
    }
  }
  for (const r of routes.values()) r.buckets.sort((a, b) => a[0] - b[0]);
  const clusters = clustersView(s).clusters.map((c) => ({
    name: c.name,
    endpoints: c.endpoints.map((e) => ({
      origin: e.origin,
      healthy: e.healthy,
      ejected: e.ejected,
      eligible: e.eligible,
      in_flight: e.in_flight,
      breaker: e.breaker?.state ?? null,
    })),
  }));
  return {
    at: Date.now(),
    config_version: s.version,
    breaker_states: BREAKER_STATE_NAMES,
    routes: [...routes.values()].map((r) => ({
      ...r,
      // JSON has no Infinity: the last bucket's bound is written as null.
      buckets: r.buckets.map(([le, n]) => [Number.isFinite(le) ? le : null, n]),
    })),
    clusters,
    recent_errors: recent?.list().reverse() ?? [],
    errors_total: recent?.total ?? 0,
  };
}
