/**
 * The one way from a config source to a snapshot, used at start-up, by `--check` and by every
 * reload (so all report the same file:line:field errors): load and validate (config/), then
 * compile (compile_config.ts: prepare the stateful parts, compile the routes).
 */
import type { ConfigSource } from "../config/source.ts";
import { formatIssues, type LoadResult, placeOf } from "../config/issues.ts";
import { resolveConfigPath } from "../config/files.ts";
import { formatPath, parsePath, type PathSegment } from "../config/config_path.ts";
import { loadExtensions } from "./extensions.ts";
import type { FerryConfig } from "../config/schema.ts";
import type { Snapshot } from "./compile.ts";
import { ConfigProblemsError } from "../config/materials.ts";
import { loadOptionalParts } from "./optional_parts.ts";
import { type BuildOptions, compileConfig } from "./compile_config.ts";

export type BuildResult =
  | {
    readonly ok: true;
    readonly snapshot: Snapshot;
    readonly config: FerryConfig;
    readonly warnings: string;
  }
  | { readonly ok: false; readonly message: string };

/**
 * Loads and validates the config, prepares its parts (registry.ts: built inert, or taken over
 * from `previous`) and compiles the snapshot. Nothing runs until the snapshot's `activate()`.
 * Never throws for a bad config, returns its message instead.
 */
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
  // Modules are imported and factories called before compiling: a failure keeps the old config.
  const ext = await loadExtensions(loaded.config, {
    configFile: file,
    ...(src.factories ? { factories: src.factories } : {}),
  });
  if (!ext.ok) return placed(loaded, src.label, ext.problems);
  // What this config uses and no earlier one did (node:tls, gRPC, jose, Redis) is imported now.
  try {
    const parts = await loadOptionalParts(loaded.config);
    if (parts.length > 0) opts.log?.info("optional parts loaded", { parts: parts.join(",") });
  } catch (err) {
    return { ok: false, message: `cannot load what config ${src.label} uses: ${err}` };
  }
  try {
    const snapshot = compileConfig(loaded.config, {
      ...opts,
      extensions: ext.extensions,
      source: src.label,
      durations: loaded.durations,
      readTextFile: (p) => Deno.readTextFileSync(file ? resolveConfigPath(file, p) : p),
    });
    return {
      ok: true,
      snapshot,
      config: loaded.config,
      warnings: loaded.warnings.length > 0 ? formatIssues(loaded.warnings) : "",
    };
  } catch (err) {
    if (!(err instanceof ConfigProblemsError)) {
      // The loader refuses every config the compiler cannot take; reaching this is a bug, and
      // still a refused config rather than a crash (a reload keeps the running one).
      return { ok: false, message: `cannot compile config ${src.label}: ${err}` };
    }
    // Problems found reading what the config names (an unset token variable, unreadable TLS
    // files) are placed in the file like the loader's own, or named against `<env>`.
    return placed(
      loaded,
      src.label,
      err.problems.map((p) => ({ ...p, path: parsePath(p.path) })),
    );
  }
}

/** Problems found after loading, placed in the file like the loader's own, sorted by line. */
function placed(
  loaded: LoadResult & { ok: true },
  label: string,
  problems: readonly { path: readonly PathSegment[]; value: unknown; message: string }[],
): BuildResult {
  const issues = problems.map((p) => ({
    file: label,
    ...(placeOf(loaded.places, p.path) ?? { line: 0, column: 0 }),
    path: formatPath(p.path),
    value: p.value,
    message: p.message,
  })).sort((a, b) => a.line - b.line || a.column - b.column);
  return { ok: false, message: `invalid config ${label}\n${formatIssues(issues)}` };
}
