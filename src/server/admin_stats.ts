/**
 * GET /stats: what the dashboard draws, read from the same Prometheus metrics /metrics exports
 * (nothing extra is recorded per request). Counts are cumulative since start; the page turns two
 * polls into live rates and quantiles, as PromQL's rate() and histogram_quantile() would.
 *
 * History: `StatsHistory` samples the per-route totals every 5 s and keeps 15 minutes of them;
 * `/stats?history=1` adds per-interval series (requests/s, p50, p99, 4xx / 429 / 5xx rates)
 * computed from consecutive samples plus one live interval ending now.
 */
import type { Snapshot } from "./compile.ts";
import { BREAKER_STATE_NAMES } from "../policy/circuit_breaker.ts";
import { NO_RESPONSE } from "../observability/metrics.ts";
import type { RecentErrors } from "../pipeline/errors.ts";
import { clustersView } from "./cluster_view.ts";

/**
 * Where a metric's current values are read: by default the snapshot's own registry; with
 * `server.workers > 1`, the process's metrics merged from every worker (src/workers/).
 */
export type MetricReader = (
  name: string,
  own: { get(): Promise<{ values: unknown[] }> },
) => Promise<{ values: unknown[] }>;

const ownMetrics: MetricReader = (_name, own) => own.get();

/** Cumulative [upper bound in seconds, count] pairs, sorted; the last bound is +Inf. */
type Buckets = [number, number][];

interface Totals {
  requests: number;
  /** 4xx responses other than the 429s counted in `c429`. */
  c4xx: number;
  /** Requests refused by a rate limit (429 made by Ferry). */
  c429: number;
  c5xx: number;
  /** Seconds spent, summed (for a mean). */
  sum: number;
  buckets: Buckets;
}

export interface RouteTotals extends Totals {
  route: string;
  listeners: string[];
}

export interface EndpointTotals {
  cluster: string;
  endpoint: string;
  requests: number;
  /** Attempts answered with a 5xx, or with no response at all (refused, reset, timeout). */
  errors: number;
  sum: number;
  buckets: Buckets;
}

interface HistValue {
  value: number;
  labels: Record<string, string | number | undefined>;
  metricName?: string;
}

function emptyTotals(): Totals {
  return { requests: 0, c4xx: 0, c429: 0, c5xx: 0, sum: 0, buckets: [] };
}

/** Adds one histogram series value (`_count`, `_sum` or `_bucket`) into totals. */
function addHistValue(
  t: { requests: number; sum: number; buckets: Buckets },
  v: HistValue,
  onCount: (n: number) => void,
) {
  const name = v.metricName ?? "";
  if (name.endsWith("_count")) {
    t.requests += v.value;
    onCount(v.value);
  } else if (name.endsWith("_sum")) t.sum += v.value;
  else if (name.endsWith("_bucket")) {
    const le = v.labels.le === "+Inf" ? Infinity : Number(v.labels.le);
    const b = t.buckets.find((x) => x[0] === le);
    if (b) b[1] += v.value;
    else t.buckets.push([le, v.value]);
  }
}

/** Per-route totals since start, by route name (route names are unique in a config). */
export async function readRouteTotals(
  s: Snapshot,
  read: MetricReader = ownMetrics,
): Promise<Map<string, RouteTotals>> {
  const routes = new Map<string, RouteTotals>();
  const of = (route: string) => {
    let r = routes.get(route);
    if (!r) routes.set(route, r = { route, listeners: [], ...emptyTotals() });
    return r;
  };
  for (
    const v
      of (await read("ferry_downstream_request_duration_seconds", s.metrics.downstreamDuration))
        .values as HistValue[]
  ) {
    const r = of(String(v.labels.route));
    const listener = String(v.labels.listener);
    if (!r.listeners.includes(listener)) r.listeners.push(listener);
    addHistValue(r, v, (n) => {
      if (v.labels.status_class === "4xx") r.c4xx += n;
      else if (v.labels.status_class === "5xx") r.c5xx += n;
    });
  }
  for (
    const v of (await read("ferry_rate_limited_requests_total", s.metrics.rateLimited))
      .values as HistValue[]
  ) {
    const r = routes.get(String(v.labels.route));
    if (r) r.c429 += v.value;
  }
  for (const r of routes.values()) {
    // The 429s are among the 4xx: count them once, apart.
    r.c4xx = Math.max(0, r.c4xx - r.c429);
    r.buckets.sort((a, b) => a[0] - b[0]);
  }
  return routes;
}

async function readEndpointTotals(
  s: Snapshot,
  read: MetricReader,
): Promise<Map<string, EndpointTotals>> {
  const endpoints = new Map<string, EndpointTotals>();
  for (
    const v of (await read("ferry_upstream_request_duration_seconds", s.metrics.upstreamDuration))
      .values as HistValue[]
  ) {
    const cluster = String(v.labels.cluster), endpoint = String(v.labels.endpoint);
    const key = `${cluster}\u0000${endpoint}`;
    let e = endpoints.get(key);
    if (!e) {
      endpoints.set(key, e = { cluster, endpoint, requests: 0, errors: 0, sum: 0, buckets: [] });
    }
    const t = e;
    addHistValue(t, v, (n) => {
      if (v.labels.status_class === "5xx" || v.labels.status_class === NO_RESPONSE) t.errors += n;
    });
  }
  for (const e of endpoints.values()) e.buckets.sort((a, b) => a[0] - b[0]);
  return endpoints;
}

/** Linear interpolation inside the bucket holding rank q, as histogram_quantile() does. */
export function quantile(q: number, buckets: Buckets): number | null {
  const total = buckets.length ? buckets[buckets.length - 1]![1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (!Number.isFinite(le)) return prevLe;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + (le - prevLe) * (rank - prevCount) / inBucket : le;
    }
    prevLe = Number.isFinite(le) ? le : prevLe;
    prevCount = count;
  }
  return prevLe;
}

/**
 * What an endpoint's health column says. Without a health check nothing is known about it
 * ("not checked"), which is not the same as "healthy": an unchecked endpoint that fails every
 * request shows its error rate next to "not checked".
 */
export function healthState(
  checked: boolean,
  e: { healthy: boolean; ejected: boolean; eligible: boolean; weight: number; effective: number },
): "ejected (outlier)" | "failing checks" | "slow start" | "healthy" | "not checked" {
  if (e.ejected) return "ejected (outlier)";
  if (checked && !e.healthy) return "failing checks";
  if (e.eligible && e.effective < e.weight) return "slow start";
  return checked ? "healthy" : "not checked";
}

const round = (v: number | null, digits = 6) =>
  v === null ? null : Math.round(v * 10 ** digits) / 10 ** digits;

/** Per-route totals over time: one sample every `stepMs`, `windowMs` of them kept. */
export class StatsHistory {
  readonly #samples: { at: number; routes: Map<string, RouteTotals> }[] = [];
  #timer: ReturnType<typeof setInterval> | undefined;
  #read: MetricReader = ownMetrics;

  constructor(readonly stepMs = 5_000, readonly windowMs = 15 * 60_000) {}

  /** Samples now and every `stepMs` until `stop()`; the timer does not keep the process alive. */
  start(snapshot: () => Snapshot, read?: MetricReader): void {
    if (this.#timer !== undefined) return;
    if (read) this.#read = read;
    const sample = () => void this.sample(snapshot()).catch(() => {/* next tick retries */});
    sample();
    const timer = setInterval(sample, this.stepMs);
    Deno.unrefTimer(timer as unknown as number);
    this.#timer = timer;
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  async sample(s: Snapshot, at = Date.now()): Promise<void> {
    const routes = await readRouteTotals(s, this.#read);
    this.#samples.push({ at, routes });
    while (this.#samples.length > 0 && this.#samples[0]!.at < at - this.windowMs - this.stepMs) {
      this.#samples.shift();
    }
  }

  /**
   * One value per interval between consecutive samples, the last interval ending now: `at` is
   * each interval's end (ms); per route requests/s, p50 and p99 (seconds, null without
   * requests) and the share of 4xx (other than 429), 429 and 5xx answers (null likewise).
   */
  async series(s: Snapshot, now = Date.now()) {
    const points = [...this.#samples, { at: now, routes: await readRouteTotals(s, this.#read) }]
      .filter((p) => p.at >= now - this.windowMs - this.stepMs);
    const at: number[] = [];
    const names = new Set<string>();
    for (const p of points) for (const r of p.routes.keys()) names.add(r);
    const routes = [...names].sort().map((route) => ({
      route,
      rps: [] as number[],
      p50: [] as (number | null)[],
      p99: [] as (number | null)[],
      r4xx: [] as (number | null)[],
      r429: [] as (number | null)[],
      r5xx: [] as (number | null)[],
    }));
    for (let i = 1; i < points.length; i++) {
      const a = points[i - 1]!, b = points[i]!;
      const dt = (b.at - a.at) / 1000;
      if (dt <= 0) continue;
      at.push(b.at);
      for (const series of routes) {
        const before = a.routes.get(series.route) ?? { route: "", listeners: [], ...emptyTotals() };
        const after = b.routes.get(series.route) ?? before;
        const n = after.requests - before.requests;
        const buckets: Buckets = after.buckets.map(([le, c], k) => [
          le,
          c - (before.buckets[k]?.[1] ?? 0),
        ]);
        const share = (x: number) => n > 0 ? round(x / n, 4) : null;
        series.rps.push(round(n / dt, 3)!);
        series.p50.push(round(quantile(0.5, buckets)));
        series.p99.push(round(quantile(0.99, buckets)));
        series.r4xx.push(share(after.c4xx - before.c4xx));
        series.r429.push(share(after.c429 - before.c429));
        series.r5xx.push(share(after.c5xx - before.c5xx));
      }
    }
    return { step_ms: this.stepMs, window_ms: this.windowMs, at, routes };
  }
}

const finiteBuckets = (b: Buckets) => b.map(([le, n]) => [Number.isFinite(le) ? le : null, n]);

export async function dashboardStats(
  s: Snapshot,
  recent: RecentErrors | undefined,
  history?: StatsHistory,
  read: MetricReader = ownMetrics,
) {
  const routes = await readRouteTotals(s, read);
  const endpointTotals = await readEndpointTotals(s, read);
  const clusters = clustersView(s).clusters.map((c) => {
    const checked = s.config.clusters.find((x) => x.name === c.name)?.health_check !== undefined;
    return {
      name: c.name,
      health_checked: checked,
      endpoints: c.endpoints.map((e) => {
        const t = endpointTotals.get(`${c.name}\u0000${e.origin}`);
        return {
          origin: e.origin,
          health: healthState(checked, { ...e, effective: e.effective_weight }),
          healthy: e.healthy,
          ejected: e.ejected,
          eligible: e.eligible,
          weight: e.weight,
          effective_weight: e.effective_weight,
          in_flight: e.in_flight,
          breaker: e.breaker?.state ?? null,
          requests: t?.requests ?? 0,
          errors: t?.errors ?? 0,
          sum: t?.sum ?? 0,
          // JSON has no Infinity: the last bucket's bound is written as null.
          buckets: finiteBuckets(t?.buckets ?? []),
        };
      }),
    };
  });
  return {
    at: Date.now(),
    config_version: s.version,
    breaker_states: BREAKER_STATE_NAMES,
    routes: [...routes.values()].map((r) => ({ ...r, buckets: finiteBuckets(r.buckets) })),
    clusters,
    recent_errors: recent?.list().reverse() ?? [],
    error_groups: recent?.groups() ?? [],
    errors_total: recent?.total ?? 0,
    ...(history ? { history: await history.series(s) } : {}),
  };
}
