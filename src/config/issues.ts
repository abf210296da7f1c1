/**
 * What loading a config gives back, and how its problems are printed. Plain data only: a load
 * runs in a short-lived isolate of its own (validator.ts) and its result is posted back, so the
 * serving isolates never load the YAML parser or the schema.
 */
import type { FerryConfig } from "./schema.ts";
import type { PathSegment } from "./config_path.ts";

/** One problem (or warning) in a config source, located as precisely as the source allows. */
export interface ConfigIssue {
  /** The config file, or `<env>` for the environment quick start. */
  file: string;
  /** 1-based line; 0 when the problem is not at a place in the file (e.g. it cannot be read). */
  line: number;
  /** 1-based column; 0 together with `line` 0. */
  column: number;
  /** Where in the config, like `routes[0].match.path.prefix`; "" for the whole document. */
  path: string;
  /** The offending value as written, when there is one worth showing. */
  value?: unknown;
  /** What was wrong, phrased as what was expected. */
  message: string;
}

/** A place in config text. */
export interface Place {
  readonly line: number;
  readonly column: number;
}

export type LoadResult =
  | {
    ok: true;
    config: FerryConfig;
    warnings: ConfigIssue[];
    /**
     * Where each node written in the source is, by `pathKey`, for problems found after loading
     * (compiling the snapshot; see `placeOf`); absent for sources without lines (the
     * environment quick start, config data given in code).
     */
    places?: ReadonlyMap<string, Place>;
    /**
     * Every duration in `config` (kept as whole milliseconds) as /config shows it, by `pathKey`:
     * as written ("1.5s" stays "1.5s"), defaults in their largest unit.
     */
    durations: ReadonlyMap<string, string>;
  }
  | { ok: false; errors: ConfigIssue[] };

/** The key of a config path in `places` and `durations`. */
export function pathKey(path: readonly PathSegment[]): string {
  return JSON.stringify(path);
}

/** Where `path` is in the source: its node, else the nearest node above it that was written. */
export function placeOf(
  places: ReadonlyMap<string, Place> | undefined,
  path: readonly PathSegment[],
): Place | undefined {
  if (!places) return undefined;
  for (let n = path.length; n >= 0; n--) {
    const place = places.get(pathKey(path.slice(0, n)));
    if (place) return place;
  }
  return undefined;
}

const MAX_VALUE_CHARS = 60;

/** A value as shown in a message: JSON, cut to at most 60 characters. */
export function formatValue(value: unknown): string {
  let text: string;
  try {
    text = typeof value === "bigint" ? `${value}` : JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > MAX_VALUE_CHARS ? `${text.slice(0, MAX_VALUE_CHARS - 3)}...` : text;
}

/** One issue as `file:line:col: path: message (got value)`; `file: ...` when there is no line. */
export function formatIssue(issue: ConfigIssue): string {
  const where = issue.line > 0 ? `${issue.file}:${issue.line}:${issue.column}` : issue.file;
  const path = issue.path === "" ? "" : `${issue.path}: `;
  const got = "value" in issue && issue.value !== undefined
    ? ` (got ${formatValue(issue.value)})`
    : "";
  return `${where}: ${path}${issue.message}${got}`;
}

/** Issues one per line, in the order given (sources report them by position). */
export function formatIssues(issues: readonly ConfigIssue[]): string {
  return issues.map(formatIssue).join("\n");
}

/**
 * A config, or a view of one with the same paths, with each duration in `durations` shown as
 * text: what /config shows, `timeout: "15s"` not 15000.
 */
export function withDurationTexts(
  value: unknown,
  durations: ReadonlyMap<string, string>,
  path: PathSegment[] = [],
): unknown {
  if (typeof value === "number") return durations.get(pathKey(path)) ?? value;
  if (Array.isArray(value)) {
    return value.map((v, i) => withDurationTexts(v, durations, [...path, i]));
  }
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(
      Object.entries(value).map(([k, v]) => [k, withDurationTexts(v, durations, [...path, k])]),
    );
  }
  return value;
}
