/**
 * Quick start without a file: a config built from environment variables, compatible with
 * Rust-ServiceMesh. The plain object goes through the same `ConfigSchema` and cross-reference
 * checks as a YAML file; issues name the variable (`<env>: PROXY_LISTEN_ADDR: ...`).
 *
 * @example
 * ```ts
 * const result = configFromEnv(Deno.env.toObject()) ?? await loadConfigFile("ferry.yaml");
 * ```
 */
import type { ConfigIssue, LoadResult } from "./issues.ts";
import { envValue, usesEnvConfig } from "./env_vars.ts";
import { formatPath, type PathSegment } from "./config_path.ts";
import { validateConfig } from "./load.ts";

/** The variables `configFromEnv` reads, with the default used when one of the two is unset. */
export const ENV_DEFAULTS = {
  PROXY_LISTEN_ADDR: "127.0.0.1:3000",
  PROXY_UPSTREAM_ADDRS: "http://127.0.0.1:8080",
  PROXY_REQUEST_TIMEOUT_MS: "30000",
} as const;

const ENV_FILE = "<env>";
const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = typeof LEVELS[number];

/**
 * A config from environment variables, or undefined when neither `PROXY_LISTEN_ADDR` nor
 * `PROXY_UPSTREAM_ADDRS` is set (then a config file is expected).
 *
 * - `PROXY_LISTEN_ADDR`: the one listener, "default" (default 127.0.0.1:3000)
 * - `PROXY_UPSTREAM_ADDRS`: comma-separated `host:port` or URLs: cluster "upstream", served by
 *   the catch-all route "default" (default http://127.0.0.1:8080)
 * - `PROXY_METRICS_ADDR`: `admin.address` (no admin listener when unset)
 * - `PROXY_WORKERS`: `server.workers`, a number or `auto` (default `auto`)
 * - `PROXY_REQUEST_TIMEOUT_MS`: the route timeout in milliseconds (default 30000)
 * - `PROXY_LOG_LEVEL`, else `RUST_LOG`: debug, info, warn or error (trace is read as debug,
 *   off as error)
 */
export function configFromEnv(env: Record<string, string | undefined>): LoadResult | undefined {
  if (!usesEnvConfig(env)) return undefined;
  const get = (name: string) => envValue(env, name);
  const listen = get("PROXY_LISTEN_ADDR");
  const upstreams = get("PROXY_UPSTREAM_ADDRS");

  const errors: ConfigIssue[] = [];
  const issue = (variable: string, message: string, value?: string) => {
    const i: ConfigIssue = { file: ENV_FILE, line: 0, column: 0, path: variable, message };
    if (value !== undefined) i.value = value;
    errors.push(i);
  };

  const endpoints = (upstreams ?? ENV_DEFAULTS.PROXY_UPSTREAM_ADDRS)
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((s) => s.includes("://") ? s : `http://${s}`);
  if (endpoints.length === 0) {
    issue("PROXY_UPSTREAM_ADDRS", "expected comma-separated host:port or URLs", upstreams);
  }

  const timeoutText = get("PROXY_REQUEST_TIMEOUT_MS") ?? ENV_DEFAULTS.PROXY_REQUEST_TIMEOUT_MS;
  const timeout = /^\d+$/.test(timeoutText) ? Number(timeoutText) : NaN;
  if (!(timeout >= 1)) {
    issue(
      "PROXY_REQUEST_TIMEOUT_MS",
      "expected a whole number of milliseconds >= 1, such as 30000",
      timeoutText,
    );
  }

  const levelVar = get("PROXY_LOG_LEVEL") !== undefined ? "PROXY_LOG_LEVEL" : "RUST_LOG";
  const levelText = get(levelVar);
  let level: Level = "info";
  if (levelText !== undefined) {
    const parsed = levelVar === "RUST_LOG" ? levelFromRustLog(levelText) : toLevel(levelText);
    if (parsed === undefined) {
      issue(levelVar, "expected one of debug, info, warn, error, trace", levelText);
    } else {
      level = parsed;
    }
  }
  const workersText = get("PROXY_WORKERS");
  const workers = workersText === undefined || workersText === "auto"
    ? workersText
    : Number(workersText);
  if (workersText !== undefined && workersText !== "auto" && !/^\d+$/.test(workersText)) {
    issue(
      "PROXY_WORKERS",
      "expected a whole number of workers >= 1, such as 2, or auto",
      workersText,
    );
  }
  if (errors.length > 0) return { ok: false, errors };

  const metrics = get("PROXY_METRICS_ADDR");
  const data = {
    listeners: [{ name: "default", address: listen ?? ENV_DEFAULTS.PROXY_LISTEN_ADDR }],
    ...(metrics !== undefined ? { admin: { address: metrics } } : {}),
    log: { level },
    ...(workers !== undefined ? { server: { workers } } : {}),
    routes: [{ name: "default", cluster: "upstream", timeout: `${timeout}ms` }],
    clusters: [{ name: "upstream", endpoints }],
  };
  return validateConfig(data, {
    file: ENV_FILE,
    describePath: (path) => variableFor(path, levelVar),
  });
}

/** Names the variable a config path came from. */
function variableFor(path: readonly PathSegment[], levelVar: string): string {
  const [top, , field] = path;
  if (top === "listeners") return "PROXY_LISTEN_ADDR";
  if (top === "clusters" && field === "endpoints") return "PROXY_UPSTREAM_ADDRS";
  if (top === "admin") return "PROXY_METRICS_ADDR";
  if (top === "server") return "PROXY_WORKERS";
  if (top === "routes" && field === "timeout") return "PROXY_REQUEST_TIMEOUT_MS";
  if (top === "log") return levelVar;
  return formatPath(path);
}

function toLevel(text: string): Level | undefined {
  const t = text.trim().toLowerCase();
  if (t === "trace") return "debug";
  if (t === "warning") return "warn";
  if (t === "off") return "error";
  return (LEVELS as readonly string[]).includes(t) ? t as Level : undefined;
}

/**
 * `RUST_LOG` is a list of directives such as `info` or `info,hyper=warn,my_crate=debug`: the
 * global one (no `=`) wins; with only per-target directives the most verbose level is used.
 */
export function levelFromRustLog(text: string): Level | undefined {
  const directives = text.split(",").map((d) => d.trim()).filter((d) => d !== "");
  const global = directives.filter((d) => !d.includes("="));
  if (global.length > 0) return toLevel(global[global.length - 1]!);
  const levels = directives.map((d) => toLevel(d.slice(d.indexOf("=") + 1)));
  if (levels.length === 0 || levels.some((l) => l === undefined)) return undefined;
  return LEVELS.find((l) => levels.includes(l));
}
