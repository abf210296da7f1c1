/**
 * The admin listener (loopback by default): liveness, readiness and read-only views of what the
 * proxy is doing: clusters and their endpoints, routes, the effective config, /explain (which
 * route a request would take and why), Prometheus /metrics, /stats for the live dashboard and
 * the dashboard page itself.
 *
 * With `admin.token` (or token_file / token_env) every data endpoint needs
 * `Authorization: Bearer <token>`. Open without it: /healthz, so liveness probes need no secret,
 * and /dashboard, a static page holding no data that asks for the token and sends it itself.
 */
import type { EndpointPoolStats } from "../h1/pool.ts";
import { createHash, timingSafeEqual } from "node:crypto";
import type { Snapshot } from "../config/compile.ts";
import { BREAKER_STATE_NAMES } from "../policy/circuit_breaker.ts";
import type { DnsDiscoveryStatus } from "../upstream/discovery/dns.ts";
import { normalizeHost, normalizePath } from "../routing/path.ts";
import type { RecentErrors } from "./errors.ts";
import { dashboardStats } from "./admin_stats.ts";
import { DASHBOARD_HTML } from "./dashboard.ts";

export interface AdminView {
  /** "ready" while serving, "draining" once shutdown has begun. */
  state(): "ready" | "draining";
  snapshot(): Snapshot;
  /** Runs a reload and resolves with its outcome (`{ ok, ... }`); absent without a reloader. */
  reload?(): Promise<unknown> | undefined;
  /** Reload counts and the last outcome, for /config. */
  reloadStatus?(): unknown;
  /** Proxy-made errors for the dashboard. */
  recentErrors?: RecentErrors;
}

const ENDPOINTS = [
  "/healthz",
  "/ready",
  "/clusters",
  "/routes",
  "/config",
  "/explain",
  "/metrics",
  "/stats",
  "/dashboard",
  "POST /reload",
];
/** Reachable without the token (see the module comment for why). */
const OPEN = new Set(["/healthz", "/dashboard", "/"]);

export function adminHandler(view: AdminView): (req: Request) => Promise<Response> {
  return async function admin(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const isReload = url.pathname === "/reload";
    if (!isReload && req.method !== "GET" && req.method !== "HEAD") {
      return json(405, { error: "method not allowed" });
    }
    const token = view.snapshot().adminToken;
    if (token !== undefined && !OPEN.has(url.pathname) && !authorized(req, token)) {
      return new Response(JSON.stringify({ error: "unauthorized" }) + "\n", {
        status: 401,
        headers: {
          "content-type": "application/json",
          "cache-control": "no-store",
          "www-authenticate": 'Bearer realm="ferry-admin"',
        },
      });
    }
    if (isReload) return await reload(view, req.method);
    switch (url.pathname) {
      case "/healthz":
        return json(200, { status: "live" });
      case "/":
      case "/dashboard":
        return new Response(DASHBOARD_HTML, {
          headers: {
            "content-type": "text/html; charset=utf-8",
            "cache-control": "no-store",
            // Everything the page needs is inline or same-origin: no CDN, works offline.
            "content-security-policy":
              "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; " +
              "connect-src 'self'; img-src 'self' data:",
          },
        });
      case "/metrics": {
        const m = view.snapshot().metrics;
        return new Response(await m.expose(), {
          headers: { "content-type": m.contentType, "cache-control": "no-store" },
        });
      }
      case "/stats":
        return json(200, await dashboardStats(view.snapshot(), view.recentErrors));
      case "/ready": {
        const state = view.state();
        return json(state === "ready" ? 200 : 503, {
          status: state,
          config_version: view.snapshot().version,
        });
      }
      case "/clusters":
        return json(200, clustersView(view.snapshot()));
      case "/routes":
        return json(200, routesView(view.snapshot()));
      case "/config": {
        const s = view.snapshot();
        return json(200, {
          version: s.version,
          source: s.source,
          loaded_at: s.loadedAt.toISOString(),
          reloads: view.reloadStatus?.() ?? null,
          config: redact(s.config),
        });
      }
      case "/explain":
        return explain(view.snapshot(), url, req.headers);
      default:
        return json(404, { error: "not found", endpoints: ENDPOINTS });
    }
  };
}

/** POST /reload: 200 with the new version, or 400 with the errors (the old config keeps serving). */
async function reload(view: AdminView, method: string): Promise<Response> {
  if (method !== "POST") return json(405, { error: "use POST /reload" });
  const outcome = await view.reload?.();
  if (outcome === undefined) return json(501, { error: "reload is not available" });
  const ok = (outcome as { ok?: boolean }).ok === true;
  return json(ok ? 200 : 400, outcome);
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

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
        transport: c.h1 ? "h1" : "fetch",
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
            // The h1 pool's connections (fetch's pool exposes none).
            connections: c.h1 ? connectionsView(c.h1.endpointStats(e.origin)) : null,
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

function routesView(s: Snapshot) {
  return {
    config_version: s.version,
    routes: s.config.routes.map((r) => ({
      name: r.name,
      listeners: r.listeners ?? [...s.listeners.keys()],
      match: r.match,
      action: r.cluster
        ? { cluster: r.cluster }
        : r.direct_response
        ? { direct_response: r.direct_response.status }
        : { redirect: r.redirect },
      timeout_ms: r.timeout,
      retry: r.retry ?? null,
      rate_limit: r.rate_limit ?? [],
      fault: r.fault ?? null,
    })),
  };
}

/**
 * Bearer token check. Both sides are hashed first so the comparison takes the same time
 * whatever the length or content of the guess.
 */
function authorized(req: Request, token: string): boolean {
  const h = req.headers.get("authorization");
  if (h === null || !/^bearer /i.test(h)) return false;
  const digest = (v: string) => createHash("sha256").update(v).digest();
  return timingSafeEqual(digest(h.slice(7).trim()), digest(token));
}

/** Header values configured to be added may carry credentials, as may the admin token. */
function redact(cfg: Snapshot["config"]): unknown {
  const hide = (e?: { add?: Record<string, string> | undefined }) =>
    e?.add
      ? { ...e, add: Object.fromEntries(Object.keys(e.add).map((k) => [k, "<redacted>"])) }
      : e;
  return {
    ...cfg,
    ...(cfg.admin?.token ? { admin: { ...cfg.admin, token: "<redacted>" } } : {}),
    routes: cfg.routes.map((r) => ({
      ...r,
      request_headers: hide(r.request_headers),
      response_headers: hide(r.response_headers),
    })),
  };
}

/**
 * `/explain?method=GET&host=api.example.com&path=/v1/x&listener=public` plus request headers
 * prefixed `x-explain-` (e.g. `x-explain-x-canary: 1`): which route matches and why, the cluster,
 * its endpoints and their state, and the policies that would apply.
 */
function explain(s: Snapshot, url: URL, reqHeaders: Headers): Response {
  const q = url.searchParams;
  const listener = q.get("listener") ?? [...s.listeners.keys()][0]!;
  const plan = s.listeners.get(listener);
  if (!plan) return json(400, { error: `unknown listener ${listener}` });
  const rawPath = q.get("path") ?? "/";
  const qIdx = rawPath.indexOf("?");
  const path = normalizePath(qIdx < 0 ? rawPath : rawPath.slice(0, qIdx));
  if (!path.ok) return json(400, { error: `invalid path: ${path.reason}` });
  const host = normalizeHost(q.get("host") ?? "localhost");
  if (host === null) return json(400, { error: "invalid host" });
  const headers = new Headers();
  for (const [k, v] of reqHeaders) if (k.startsWith("x-explain-")) headers.set(k.slice(10), v);
  const input = {
    method: (q.get("method") ?? "GET").toUpperCase(),
    host,
    path: path.path,
    headers,
    search: qIdx < 0 ? "" : rawPath.slice(qIdx),
  };
  const result = plan.router.explain(input);
  const route = result.matched
    ? s.config.routes.find((r) => r.name === result.matched!.name)
    : undefined;
  const cluster = route?.cluster
    ? clustersView(s).clusters.find((c) => c.name === route.cluster)
    : undefined;
  return json(200, {
    request: { listener, ...input, headers: Object.fromEntries(headers) },
    normalized_path: path.path,
    matched: result.matched ?? null,
    considered: result.considered,
    cluster: cluster ?? null,
    policies: route
      ? {
        timeout_ms: route.timeout,
        per_try_timeout_ms: route.per_try_timeout,
        retry: route.retry ?? null,
        rate_limit: route.rate_limit ?? [],
        fault: route.fault ?? null,
        circuit_breaker: route.circuit_breaker ??
          s.config.clusters.find((c) => c.name === route.cluster)?.circuit_breaker ?? null,
        rewrite: route.rewrite ?? null,
      }
      : null,
  });
}
