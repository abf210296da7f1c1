/**
 * Where the config comes from: a YAML file, the PROXY_* environment quick start, or text sent
 * over the admin API. `buildSnapshot` (src/server/build.ts) turns any of them into a snapshot.
 * Each load runs in an isolate of its own (validator.ts).
 */
import type { LoadResult } from "./issues.ts";
import { usesEnvConfig } from "./env_vars.ts";
import { validateInIsolate } from "./validator.ts";
import type { MiddlewareFactory } from "../pipeline/types.ts";

export const DEFAULT_CONFIG = "config/ferry.yaml";

export interface ConfigSource {
  /** The YAML file, or `undefined` for the environment quick start. */
  readonly file: string | undefined;
  /** For logs and /config: the file name or `<env>`. */
  readonly label: string;
  load(): Promise<LoadResult>;
  /** Middleware factories registered in code (mod.ts), for `middleware: [{ name }]` entries. */
  readonly factories?: ReadonlyMap<string, MiddlewareFactory>;
}

/** `--config` > `PROXY_CONFIG` > the PROXY_* quick start > `config/ferry.yaml`. */
export function configSource(
  flag: string | undefined,
  env: Record<string, string | undefined>,
): ConfigSource {
  const named = flag ?? env.PROXY_CONFIG;
  if (named === undefined && usesEnvConfig(env)) {
    const vars = { ...env };
    return {
      file: undefined,
      label: "<env>",
      load: () => validateInIsolate({ kind: "env", env: vars }),
    };
  }
  const file = named ?? DEFAULT_CONFIG;
  return { file, label: file, load: () => validateInIsolate({ kind: "file", path: file }) };
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
    ...(running.factories ? { factories: running.factories } : {}),
    load: () => validateInIsolate({ kind: "text", text, label: REQUEST_LABEL, file }),
  };
}

/**
 * The same load for every call: start-up builds its snapshot twice with `server.workers > 1`
 * (the second time with the shared arena) from one read of the source.
 */
export function loadedOnce(src: ConfigSource): ConfigSource {
  const loaded = src.load();
  return { ...src, load: () => loaded.then((r) => structuredClone(r)) };
}

/** Where a config given in code as data says it came from, in error positions. */
export const CODE_LABEL = "<code>";

/**
 * Config data built in code (mod.ts `start({ config: {...} })`): the same checks as a file, with
 * no line numbers; relative paths in it (TLS files, modules) resolve against the working folder.
 */
export function dataSource(
  data: unknown,
  factories?: ReadonlyMap<string, MiddlewareFactory>,
): ConfigSource {
  return {
    file: undefined,
    label: CODE_LABEL,
    // Cloned on the way to the validator: validating never touches the caller's object.
    load: () => validateInIsolate({ kind: "data", data, label: CODE_LABEL }),
    ...(factories ? { factories } : {}),
  };
}
