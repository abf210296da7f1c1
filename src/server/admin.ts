/**
 * The admin listener (loopback by default): liveness, readiness and read-only views of what the
 * proxy is doing: clusters and their endpoints, routes, the effective config, /explain (which
 * route a request would take and why), Prometheus /metrics, /stats for the live dashboard and
 * the dashboard page itself.
 *
 * With `admin.token` (or token_file / token_env) every data endpoint needs
 * `Authorization: Bearer <token>`. Open without it: /healthz, so liveness probes need no secret,
 * and /dashboard, a static page holding no data that asks for the token and sends it itself.
 *
 * Browsers are kept out whether or not a token is set (docs/observability.md, "Host and
 * Origin"): a Host that is not loopback, an IP address or the configured admin address gets
 * 421, which defeats DNS rebinding (the attacker's page must name its own domain); and without
 * a token, a state change (POST /reload) from another origin gets 403.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { Snapshot } from "./compile.ts";
import type { MiddlewareRefConfig } from "../config/schema.ts";
import { decide, identityFromId } from "../policy/authz.ts";
import { lacksHost } from "./handler.ts";
import { countingLimit } from "./request_limits.ts";
import { normalizeHost, normalizePath } from "../routing/path.ts";
import { errorResponse, ProxyError, type RecentErrors } from "../pipeline/errors.ts";
import { dashboardStats, type MetricReader, type StatsHistory } from "./admin_stats.ts";
import { clustersView } from "./cluster_view.ts";
import { dashboardHtml } from "./dashboard.ts";
import { loadedOptionalParts } from "./optional_parts.ts";
import { withDurationTexts } from "../config/issues.ts";

export interface AdminView {
  /** "ready" while serving, "draining" once shutdown has begun. */
  state(): "ready" | "draining";
  snapshot(): Snapshot;
  /** Runs a reload and resolves with its outcome (`{ ok, ... }`); absent without a reloader. */
  reload?(): Promise<unknown> | undefined;
  /** Reload counts and the last outcome, for /config. */
  reloadStatus?(): unknown;
  /**
   * Applies (or with `dryRun` only validates) a whole config sent as text; resolves with the
   * outcome (`{ ok, ... }`). Absent without a reloader.
   */
  submitConfig?(
    text: string,
    opts: { author: string; dryRun: boolean },
  ): Promise<unknown> | undefined;
  /** Proxy-made errors for the dashboard. */
  recentErrors?: RecentErrors;
  /** `admin.address` as bound at start: its host is an accepted Host besides loopback names. */
  address?: string;
  /** Per-route history for the dashboard (`/stats?history=1`). */
  statsHistory?: StatsHistory;
  /** The port of `localhost:<port>`, filled into a request that has no Host (see lacksHost). */
  port?: () => number | undefined;
  /**
   * The process's metrics when workers serve (server.workers > 1): theirs merged with the main
   * isolate's. Undefined (or resolving undefined): the snapshot's own registry.
   */
  metrics?(): Promise<{ text: string; contentType: string }> | undefined;
  /** GET /clusters when workers serve: the view with their per-request counters summed in. */
  clusters?(own: ReturnType<typeof clustersView>): Promise<unknown> | undefined;
  /** Where /stats reads metric values (workers: the process's merged metrics). */
  readMetric?: MetricReader;
  /** Test hook: ends a worker as a crash would; undefined unless FERRY_TEST_HOOKS=1. */
  killWorker?(index: number): boolean | undefined;
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
  "PUT /config",
  "POST /config/validate",
];
/** Reachable without the token (see the module comment for why). */
const OPEN = new Set(["/healthz", "/dashboard", "/"]);

export function adminHandler(view: AdminView): (req: Request) => Promise<Response> {
  return async function admin(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const token = view.snapshot().adminToken;
    // /healthz holds nothing and probes (Kubernetes) name the pod IP or a service as Host; some
    // (HTTP/1.0 checks) send none.
    if (url.pathname !== "/healthz" && lacksHost(req, url.host, view.port?.())) {
      return errorResponse(
        new ProxyError("bad_request", "missing Host header"),
        crypto.randomUUID(),
      );
    }
    if (url.pathname !== "/healthz" && !hostAllowed(url.host, view.address, token !== undefined)) {
      return errorResponse(
        new ProxyError("admin_host_refused", `Host ${url.host} is not this admin listener`),
        crypto.randomUUID(),
      );
    }
    if (token === undefined && !SAFE_METHODS.has(req.method)) {
      const refusal = crossOriginRefusal(req, url.host);
      if (refusal !== undefined) {
        return errorResponse(new ProxyError("admin_cross_origin", refusal), crypto.randomUUID());
      }
    }
    const isReload = url.pathname === "/reload";
    const isConfigWrite = isConfigApi(req.method, url.pathname);
    const isKill = url.pathname === "/debug/kill-worker" && req.method === "POST";
    if (
      !isReload && !isConfigWrite && !isKill && req.method !== "GET" && req.method !== "HEAD"
    ) {
      return json(405, { error: "method not allowed" });
    }
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
    if (isKill) {
      // A test hook: there only when Ferry runs with FERRY_TEST_HOOKS=1 and workers.
      const killed = view.killWorker?.(Number(url.searchParams.get("index")));
      if (killed === undefined) return json(404, { error: "not found" });
      return json(killed ? 200 : 404, { killed });
    }
    if (isConfigWrite) return await configApi(view, req, url.pathname === "/config/validate");
    switch (url.pathname) {
      case "/healthz":
        return json(200, { status: "live" });
      case "/":
      case "/dashboard":
        return new Response(dashboardHtml(token !== undefined), {
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
        const merged = await view.metrics?.();
        if (merged) {
          return new Response(merged.text, {
            headers: { "content-type": merged.contentType, "cache-control": "no-store" },
          });
        }
        const m = view.snapshot().metrics;
        return new Response(await m.expose(), {
          headers: { "content-type": m.contentType, "cache-control": "no-store" },
        });
      }
      case "/stats":
        return json(
          200,
          await dashboardStats(
            view.snapshot(),
            view.recentErrors,
            url.searchParams.has("history") ? view.statsHistory : undefined,
            ...(view.readMetric ? [view.readMetric] : []),
          ),
        );
      case "/ready": {
        const state = view.state();
        return json(state === "ready" ? 200 : 503, {
          status: state,
          config_version: view.snapshot().version,
        });
      }
      case "/clusters": {
        const own = clustersView(view.snapshot());
        return json(200, (await view.clusters?.(own)) ?? own);
      }
      case "/routes":
        return json(200, routesView(view.snapshot()));
      case "/config": {
        const s = view.snapshot();
        return json(200, {
          version: s.version,
          source: s.source,
          loaded_at: s.loadedAt.toISOString(),
          reloads: view.reloadStatus?.() ?? null,
          // Modules imported only for configs that use them (node:tls, grpc, jwt, redis).
          optional_parts: loadedOptionalParts(),
          // What the TLS files held when this config was compiled (rotation reloads it).
          certificates: s.certificates.map((c) => ({
            kind: c.kind,
            name: c.name,
            ...(c.serverNames ? { server_names: c.serverNames } : {}),
            not_after: new Date(c.notAfter).toISOString(),
            ...(c.fingerprint256 ? { sha256: c.fingerprint256 } : {}),
          })),
          config: withDurationTexts(redact(s.config), s.durations),
        });
      }
      case "/explain":
        return explain(view.snapshot(), url, req.headers);
      default:
        return json(404, { error: "not found", endpoints: ENDPOINTS });
    }
  };
}

const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
const LOOPBACK_NAMES = new Set(["localhost", "127.0.0.1", "[::1]"]);
const WILDCARD_HOSTS = new Set(["", "0.0.0.0", "[::]", "::"]);
const IPV4 = /^\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}$/;

/**
 * Whether `authority` (the Host, or HTTP/2 :authority) names this listener. IP literals are
 * accepted: DNS rebinding needs a name the attacker controls, and a page at an IP address is
 * that address's own origin. Any name is accepted only with a token on a wildcard address
 * (0.0.0.0): the operator then reaches it by names Ferry cannot know, and the token guards it.
 */
export function hostAllowed(authority: string, address: string | undefined, hasToken: boolean) {
  const host = normalizeHost(authority);
  if (host === null) return false;
  if (LOOPBACK_NAMES.has(host) || IPV4.test(host) || host.startsWith("[")) return true;
  const configured = address === undefined ? undefined : configuredHost(address);
  if (configured !== undefined && host === configured) return true;
  return hasToken && configured !== undefined && WILDCARD_HOSTS.has(configured);
}

/** The host part of `host:port`, normalised like a Host ("" for ":9901"). */
function configuredHost(address: string): string | undefined {
  const colon = address.lastIndexOf(":");
  const host = colon < 0 ? address : address.slice(0, colon);
  if (WILDCARD_HOSTS.has(host)) return host;
  return normalizeHost(host) ?? undefined;
}

/**
 * Without a token a browser on any site could POST here (a form needs no CORS preflight), so
 * state changes must come from this origin or from a non-browser client (no Origin, no
 * Sec-Fetch-Site: curl, scripts). Returns why the request is refused, or undefined.
 */
function crossOriginRefusal(req: Request, host: string): string | undefined {
  const site = req.headers.get("sec-fetch-site");
  if (site !== null && site !== "same-origin" && site !== "none") {
    return `Sec-Fetch-Site: ${site} may not change state without admin.token`;
  }
  const origin = req.headers.get("origin");
  if (origin === null) return undefined;
  let originHost: string | undefined;
  try {
    const u = new URL(origin);
    if (u.protocol === "http:" || u.protocol === "https:") originHost = u.host;
  } catch { /* "null" and other opaque origins */ }
  if (originHost === undefined || originHost.toLowerCase() !== host.toLowerCase()) {
    return `Origin ${origin} may not change state without admin.token`;
  }
  return undefined;
}

/** POST /reload: 200 with the new version, or 400 with the errors (the old config keeps serving). */
async function reload(view: AdminView, method: string): Promise<Response> {
  if (method !== "POST") return json(405, { error: "use POST /reload" });
  const outcome = await view.reload?.();
  if (outcome === undefined) return json(501, { error: "reload is not available" });
  const ok = (outcome as { ok?: boolean }).ok === true;
  return json(ok ? 200 : 400, outcome);
}

/** PUT /config applies a whole config; POST /config/validate only checks one (any other method: 405). */
function isConfigApi(method: string, path: string): boolean {
  return (path === "/config" && method === "PUT") || path === "/config/validate";
}

/** Largest config body PUT /config accepts. */
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;

/**
 * PUT /config and POST /config/validate. Without a token they are refused unless the admin
 * listener is on loopback: a config can point routes anywhere. 200 with the outcome, or 400 with
 * `<request>:line:col` positions while the old config keeps serving.
 */
async function configApi(view: AdminView, req: Request, dryRun: boolean): Promise<Response> {
  if (dryRun && req.method !== "POST") return json(405, { error: "use POST /config/validate" });
  const s = view.snapshot();
  if (s.adminToken === undefined && !onLoopback(s.config.admin?.address ?? "")) {
    return json(403, {
      error: "config changes over the admin API need admin.token when the admin listener " +
        "is not on loopback",
    });
  }
  if (!view.submitConfig) return json(501, { error: "config changes are not available" });
  const declared = Number(req.headers.get("content-length") ?? 0);
  if (declared > MAX_CONFIG_BYTES) return json(413, { error: "config too large" });
  // Counted as it is read: a chunked body has no length to check first, and reading it whole
  // before checking held the entire upload in memory.
  const limited = req.body === null ? undefined : countingLimit(req.body, MAX_CONFIG_BYTES);
  let body: Uint8Array;
  try {
    body = new Uint8Array(await new Response(limited?.stream ?? null).arrayBuffer());
  } catch {
    if (limited?.overLimit()) return json(413, { error: "config too large" });
    return json(400, { ok: false, error: "the config body could not be read" });
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(body);
  } catch {
    return json(400, { ok: false, error: "the config must be UTF-8 text (YAML or JSON)" });
  }
  // Shown in /config and as a metric label: printable ASCII, bounded length.
  const author = (req.headers.get("x-ferry-author") ?? "").replace(/[^ -~]/g, "")
    .trim().slice(0, 64) || "unknown";
  const outcome = await view.submitConfig(text, { author, dryRun });
  if (outcome === undefined) return json(501, { error: "config changes are not available" });
  return json((outcome as { ok?: boolean }).ok === true ? 200 : 400, outcome);
}

function onLoopback(address: string): boolean {
  const host = address.slice(0, address.lastIndexOf(":")).replace(/^\[(.*)\]$/, "$1");
  return host === "localhost" || host === "::1" || host.startsWith("127.");
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body, null, 2) + "\n", {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
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
      // Its own extension middleware (module or name, outermost first); null: the listeners'.
      middleware: r.middleware?.map((m) => m.module ?? m.name!) ?? null,
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

/**
 * Header values configured to be added may carry credentials, as may the admin token and the
 * options of extension middleware (a token check's tokens): their values are hidden.
 */
function redact(cfg: Snapshot["config"]): unknown {
  const hide = (e?: { add?: Record<string, string> | undefined }) =>
    e?.add
      ? { ...e, add: Object.fromEntries(Object.keys(e.add).map((k) => [k, "<redacted>"])) }
      : e;
  const hideOptions = <T extends { middleware?: MiddlewareRefConfig[] | undefined }>(o: T): T =>
    o.middleware
      ? {
        ...o,
        middleware: o.middleware.map((m) => ({
          ...m,
          options: Object.fromEntries(Object.keys(m.options).map((k) => [k, "<redacted>"])),
        })),
      }
      : o;
  return {
    ...cfg,
    ...(cfg.admin?.token ? { admin: { ...cfg.admin, token: "<redacted>" } } : {}),
    listeners: cfg.listeners.map(hideOptions),
    routes: cfg.routes.map((r) => ({
      ...hideOptions(r),
      request_headers: hide(r.request_headers),
      response_headers: hide(r.response_headers),
    })),
  };
}

/**
 * `/explain?method=GET&host=api.example.com&path=/v1/x&listener=public` plus request headers
 * prefixed `x-explain-` (e.g. `x-explain-x-canary: 1`): which route matches and why, the cluster,
 * its endpoints and their state, and the policies that would apply. `client_ip=` and `identity=`
 * (a client certificate's SPIFFE ID or name) feed the authorization policy, which says which
 * rule decided (a JWT goes in `x-explain-authorization: Bearer ...`).
 */
async function explain(s: Snapshot, url: URL, reqHeaders: Headers): Promise<Response> {
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
  const clientIp = q.get("client_ip") ?? "127.0.0.1";
  const identityParam = q.get("identity");
  const identity = identityParam ? identityFromId(identityParam) : undefined;
  const policy = result.matched
    ? s.routes.find((r) => r.name === result.matched!.name)?.authz?.policyFor(listener)
    : undefined;
  const authorization = policy
    ? {
      policy: policy.source,
      jwt_provider: policy.jwt
        ? { name: policy.jwt.provider.name, ...policy.jwt.provider.status() }
        : null,
      default: policy.defaultAction,
      client_ip: clientIp,
      identity: identity ?? null,
      ...(await decide(policy, {
        method: input.method,
        path: input.path,
        header: (n) => headers.get(n) ?? undefined,
        clientIp,
        identity,
      })),
    }
    : null;
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
        authorization,
      }
      : null,
  });
}
