/**
 * The messages between the main isolate and its workers (`server.workers > 1`): the main isolate
 * calls a method on a worker, the worker answers the call's id with a value or an error.
 */
import type { FerryConfig } from "../config/schema.ts";
import type { LogLevel } from "../observability/log.ts";
import type { RecentError } from "../pipeline/errors.ts";

/** What a worker needs to compile a config the way the main isolate did. */
export interface WorkerConfig {
  readonly version: number;
  /** Validated, with every port resolved (port 0 is bound once, by the main isolate). */
  readonly config: FerryConfig;
  /** `source.label` for /config and logs. */
  readonly label: string;
  /** The config file, against which paths in the config resolve (undefined: <env>). */
  readonly file: string | undefined;
}

export interface WorkerStart extends WorkerConfig {
  readonly index: number;
  /** The process-wide policy memory (src/policy/shared_memory.ts). */
  readonly arena: SharedArrayBuffer;
  readonly logLevel: LogLevel;
  /** Tag every response with `x-ferry-worker: <index>` (debug; FERRY_WORKER_HEADER=1). */
  readonly tagResponses: boolean;
  /** Test hook: crash (an uncaught error) instead of starting. */
  readonly failStart?: boolean;
}

/** Methods a worker answers, with their argument and result. */
export interface WorkerMethods {
  /** Compile the config and bind its listeners (reusePort): the listeners' addresses. */
  start: { args: WorkerStart; result: Record<string, string> };
  /** Compile a reload's config and hold it; fails with the compile errors. */
  prepare: { args: WorkerConfig; result: null };
  /** Switch to what `prepare` compiled. */
  commit: { args: null; result: null };
  /** Drop what `prepare` compiled. */
  abort: { args: null; result: null };
  /** This worker's metrics as prom-client JSON, without the process-wide gauges. */
  metrics: { args: null; result: unknown[] };
  /** The main isolate's endpoint lists and health verdicts, for clusters that changed. */
  follow: { args: HealthTable; result: null };
  /** This worker's /clusters view (its per-request counters), for the merged one. */
  clusters: { args: null; result: unknown };
  /** Graceful stop within `ms`: whether every request finished. */
  drain: { args: { ms: number }; result: boolean };
}

export type WorkerMethod = keyof WorkerMethods;

/**
 * Per cluster: its endpoints (only when it discovers them; a static list is the config's) and
 * the active-check verdict per endpoint origin. Health checks and DNS discovery run once, in
 * the main isolate; the workers' clusters follow this.
 */
export type HealthTable = Record<string, {
  readonly endpoints?: readonly { readonly url: string; readonly weight: number }[];
  readonly healthy: readonly (readonly [string, boolean])[];
}>;

export interface WorkerCall {
  readonly id: number;
  readonly method: WorkerMethod;
  readonly args: unknown;
}

/** Sent by a worker unasked: its proxy-made errors, for the dashboard's list (batched). */
export interface WorkerNotice {
  readonly notice: "errors";
  readonly errors: readonly RecentError[];
}

export type WorkerReply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: string };

/**
 * Gauges that describe process-wide state (health verdicts, breaker states, the config, the
 * process itself): the main isolate reports them once, from its own snapshot, which reads the
 * same shared breakers; workers leave them out of /metrics. Everything else is summed.
 */
export const MAIN_ISOLATE_METRICS: ReadonlySet<string> = new Set([
  "ferry_endpoint_healthy",
  "ferry_endpoint_ejected",
  "ferry_circuit_breaker_state",
  "ferry_config_info",
  "ferry_build_info",
  "ferry_rate_limit_backend_up",
  // The config's certificates: the same in every isolate (summed, an expiry read N times late).
  "ferry_tls_certificate_expiry_timestamp_seconds",
]);
