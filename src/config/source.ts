/**
 * Where the config comes from (a YAML file, or the PROXY_* environment quick start) and the one
 * way to turn it into a snapshot: load, validate, compile. Used at start-up and by every reload,
 * so both report the same file:line:field errors.
 */
import { compileSnapshot, type Snapshot, SnapshotCompileError } from "./compile.ts";
import { configFromEnv } from "./env.ts";
import {
  checkReadableFile,
  formatIssues,
  loadConfigFile,
  type LoadResult,
  parseConfigText,
  resolveConfigPath,
} from "./load.ts";
import { parsePath } from "./errors.ts";
import type { FerryConfig } from "./schema.ts";
import type { Logger } from "../observability/log.ts";
import type { FerryMetrics } from "../observability/metrics.ts";
import type { SharedMemory } from "../workers/shared_memory.ts";

export const DEFAULT_CONFIG = "config/ferry.yaml";

export interface ConfigSource {
  /** The YAML file, or `undefined` for the environment quick start. */
  readonly file: string | undefined;
  /** For logs and /config: the file name or `<env>`. */
  readonly label: string;
  load(): Promise<LoadResult>;
}

/** `--config` > `PROXY_CONFIG` > the PROXY_* quick start > `config/ferry.yaml`. */
export function configSource(
  flag: string | undefined,
  env: Record<string, string | undefined>,
): ConfigSource {
  const named = flag ?? env.PROXY_CONFIG;
  if (named === undefined && configFromEnv(env) !== undefined) {
    return { file: undefined, label: "<env>", load: () => Promise.resolve(configFromEnv(env)!) };
  }
  const file = named ?? DEFAULT_CONFIG;
  return { file, label: file, load: () => loadConfigFile(file) };
}

/** Where a config sent over the admin API says it came from, in error positions. */
export const REQUEST_LABEL = "<request>";

/**
 * Config text sent over the admin API (YAML or JSON: JSON is YAML). Errors name `<request>`;
 * relative paths in it resolve against the running config file's folder, as a file reload's do.
 */
export function textSource(text: string, running: ConfigSource): ConfigSource {
  const file = running.file;
  return {
    file,
    label: REQUEST_LABEL,
    load: () =>
      Promise.resolve(parseConfigText(text, REQUEST_LABEL, {
        // Paths arrive resolved against "<request>"'s folder, ".": re-anchor them on the file's.
        checkFile: (p) => checkReadableFile(file ? resolveConfigPath(file, p) : p),
      })),
  };
}

export type BuildResult =
  | {
    readonly ok: true;
    readonly snapshot: Snapshot;
    readonly config: FerryConfig;
    readonly warnings: string;
  }
  | { readonly ok: false; readonly message: string };

export interface BuildOptions {
  readonly version: number;
  readonly log?: Logger;
  /** The running snapshot on a reload: unchanged parts (and its metrics) are taken over. */
  readonly previous?: Snapshot;
  /** The process's metrics, at start-up; a reload takes the previous snapshot's. */
  readonly metrics?: FerryMetrics;
  /** Process-wide policy memory (server.workers > 1); a reload takes the previous snapshot's. */
  readonly sharedMemory?: SharedMemory;
}

/** Loads, validates and compiles; never throws for a bad config, returns its message instead. */
export async function buildSnapshot(src: ConfigSource, opts: BuildOptions): Promise<BuildResult> {
  let loaded: LoadResult;
  try {
    loaded = await src.load();
  } catch (err) {
    return { ok: false, message: `cannot read config ${src.label}: ${err}` };
  }
  if (!loaded.ok) {
    return { ok: false, message: `invalid config ${src.label}\n${formatIssues(loaded.errors)}` };
  }
  const file = src.file;
  try {
    const snapshot = compileSnapshot(loaded.config, {
      version: opts.version,
      source: src.label,
      written: loaded.written,
      readTextFile: (p) => Deno.readTextFileSync(file ? resolveConfigPath(file, p) : p),
      ...(opts.log ? { log: opts.log } : {}),
      ...(opts.previous ? { previous: opts.previous } : {}),
      ...(opts.metrics ? { metrics: opts.metrics } : {}),
      ...(opts.sharedMemory ? { sharedMemory: opts.sharedMemory } : {}),
    });
    return {
      ok: true,
      snapshot,
      config: loaded.config,
      warnings: loaded.warnings.length > 0 ? formatIssues(loaded.warnings) : "",
    };
  } catch (err) {
    if (!(err instanceof SnapshotCompileError)) throw err;
    // Problems found while compiling (an unset token variable, unreadable TLS files) are placed
    // in the file like the loader's own, or named against `<env>`.
    const issues = err.problems.map((p) => ({
      file: src.label,
      ...(loaded.locate?.(parsePath(p.path)) ?? { line: 0, column: 0 }),
      path: p.path,
      value: p.value,
      message: p.message,
    }));
    return { ok: false, message: `invalid config ${src.label}\n${formatIssues(issues)}` };
  }
}
