/**
 * Loads a config: YAML text -> plain data -> `ConfigSchema` (every default) -> cross-reference
 * checks. Every problem is reported at once, each with the line and column of the YAML node it
 * is about, so one run of `ferry --check` shows everything to fix.
 *
 * @example
 * ```ts
 * const result = await loadConfigFile("config/ferry.yaml");
 * if (!result.ok) {
 *   console.error(formatIssues(result.errors));
 *   Deno.exit(1);
 * }
 * ```
 *
 * One piece past 500 lines: the YAML positions, the schema issues and the cross-reference checks
 * share the path-to-line mapping that places every problem; split, each would import it back.
 */
import {
  type Document,
  isAlias,
  isMap,
  isScalar,
  isSeq,
  Lexer,
  LineCounter,
  type Pair,
  parseDocument,
} from "yaml";
import {
  type AuthorizationConfig,
  type ClusterConfig,
  ConfigSchema,
  type FerryConfig,
} from "./schema.ts";
import { compileRouteRegex } from "../routing/regex.ts";
import { MAX_NAMED_FILE_BYTES, resolveConfigPath } from "./files.ts";
import { httpTransportOf } from "./transport_of.ts";
import { formatPath, type PathSegment } from "./config_path.ts";
import { parseCidr } from "../pipeline/trust.ts";
import {
  durationTexts,
  type Finding,
  type IssueAnchor,
  translateIssue,
  valueAt,
} from "./errors.ts";
import { type ConfigIssue, formatIssues, type LoadResult, pathKey, type Place } from "./issues.ts";

export type { ConfigIssue, IssueAnchor, LoadResult, PathSegment };
export { formatIssues };

export interface ValidateOptions {
  /** Named in every issue: a file path, or `<env>`. */
  readonly file: string;
  /** Places a config path in the source; without it every issue is at line 0. */
  readonly locate?: (
    path: readonly PathSegment[],
    anchor: IssueAnchor,
  ) => { line: number; column: number };
  /** Names a config path in messages (the environment loader names variables); default `a.b[0]`. */
  readonly describePath?: (path: readonly PathSegment[]) => string;
  /**
   * Checks a file named by the config (TLS certificate, key, CA), already resolved against the
   * config file's folder. Returns what is wrong, or undefined when the file can be read. Without
   * it files are not checked.
   */
  readonly checkFile?: (path: string) => string | undefined;
  /**
   * Checks that a file the config writes (the access log) could be opened for appending, without
   * opening it. Returns what is wrong, or undefined. Without it the access log is not checked.
   */
  readonly checkWritable?: (path: string) => string | undefined;
}

export interface ParseOptions {
  /** See `ValidateOptions.checkFile`; `loadConfigFile` passes one that asks the file system. */
  readonly checkFile?: (path: string) => string | undefined;
  /** See `ValidateOptions.checkWritable`. */
  readonly checkWritable?: (path: string) => string | undefined;
}

// ---------------------------------------------------------------------------------------------
// Files

/** `ParseOptions.checkFile` backed by the file system (needs --allow-read). */
export function checkReadableFile(path: string): string | undefined {
  try {
    const info = Deno.statSync(path);
    if (!info.isFile) return "not a regular file";
    // The files a config names are read whole and synchronously (TLS material, keys, tokens).
    if (info.size > MAX_NAMED_FILE_BYTES) {
      return `${info.size} bytes, more than the limit of ${MAX_NAMED_FILE_BYTES}`;
    }
    Deno.openSync(path, { read: true }).close();
    return undefined;
  } catch (err) {
    return describeFsError(err);
  }
}

/**
 * `ParseOptions.checkWritable` backed by the file system: the folder exists, the path is not a
 * folder, and the process may write there. Asks, never opens: validating (`--check`) creates no
 * file.
 */
export function checkWritableFile(path: string): string | undefined {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  try {
    if (!Deno.statSync(dir).isDirectory) return `${dir} is not a folder`;
  } catch (err) {
    return `folder ${dir}: ${describeFsError(err)}`;
  }
  try {
    if (Deno.statSync(path).isDirectory) return "is a directory, not a file";
  } catch { /* not there yet: it is created */ }
  if (Deno.permissions.querySync({ name: "write", path }).state !== "granted") {
    return "no write permission (run with --allow-write)";
  }
  return undefined;
}

function describeFsError(err: unknown): string {
  if (err instanceof Deno.errors.NotFound) return "no such file";
  if (err instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (err instanceof Deno.errors.IsADirectory) return "is a directory, not a file";
  return err instanceof Error ? err.message : String(err);
}

/**
 * Reads, parses and validates a config file, checking that the TLS files it names can be read.
 * A missing or unreadable config file is one issue at line 0.
 */
export async function loadConfigFile(path: string): Promise<LoadResult> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    return {
      ok: false,
      errors: [{
        file: path,
        line: 0,
        column: 0,
        path: "",
        message: `cannot read the config file: ${describeFsError(err)}`,
      }],
    };
  }
  return parseConfigText(text, path, {
    checkFile: checkReadableFile,
    checkWritable: checkWritableFile,
  });
}

// ---------------------------------------------------------------------------------------------
// YAML

/** Deepest collection nesting accepted in config text; Ferry's own fields nest under 10. */
export const MAX_YAML_NESTING = 64;

/**
 * The offset where `text` nests collections deeper than `MAX_YAML_NESTING`, or undefined. The
 * YAML parser's time and memory grow steeply with depth (a 4 MiB `[[[[...` took 9 s of blocked
 * event loop and 2.3 GB), so depth is measured first with the YAML lexer (linear, stops at the
 * limit): flow brackets, plus the block indicators (`- - -`, `? ? ?`) that nest on one line.
 * Nesting across lines costs one more column of indent per level: its bytes grow with the square
 * of its depth, and it parses fast.
 */
function nestingOverLimit(text: string): number | undefined {
  let offset = 0;
  let flow = 0;
  let onLine = 0;
  for (const token of new Lexer().lex(text)) {
    // The lexer's markers (document start, scalar, flow end) are control characters of its own
    // and stand for no source text.
    const marker = token.length === 1 && token < " " && token !== "\n" && token !== "\t" &&
      token !== "\r";
    if (token === "[" || token === "{") flow++;
    else if (token === "]" || token === "}") flow = Math.max(0, flow - 1);
    else if (token === "-" || token === "?") onLine++;
    else if (token === "\n" || token === "\r\n") onLine = 0;
    if (flow + onLine > MAX_YAML_NESTING) return offset;
    if (!marker) offset += token.length;
  }
  return undefined;
}

/**
 * Parses and validates config text. `file` names the source in issues and is the folder that
 * relative TLS paths are resolved against; files are checked only with `options.checkFile`.
 */
export function parseConfigText(
  text: string,
  file: string,
  options: ParseOptions = {},
): LoadResult {
  const tooDeep = nestingOverLimit(text);
  if (tooDeep !== undefined) {
    const before = text.slice(0, tooDeep);
    const line = before.split("\n").length;
    return {
      ok: false,
      errors: [{
        file,
        line,
        column: tooDeep - before.lastIndexOf("\n"),
        path: "",
        message: `YAML: nested more than ${MAX_YAML_NESTING} levels deep; ` +
          "expected a config (Ferry's deepest field is under 10 levels)",
      }],
    };
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, {
    lineCounter,
    prettyErrors: false,
    uniqueKeys: true,
    keepSourceTokens: false,
  });
  const at = (offset: number) => {
    const { line, col } = lineCounter.linePos(offset);
    return { line, column: col };
  };
  const yamlIssue = (e: { pos: [number, number]; code: string; message: string }) => {
    const path = pathAtOffset(doc, e.pos[0]);
    const last = path[path.length - 1];
    const message = e.code === "DUPLICATE_KEY"
      ? `duplicate key${last === undefined ? "" : ` '${last}'`}; expected each key once per mapping`
      : `YAML: ${e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")}`;
    return { file, ...at(e.pos[0]), path: formatPath(path), message };
  };
  // One syntax mistake (a tab, a line indented one space too far) makes the parser report several
  // errors, most of them about keys it made up from the broken lines: report only the cause.
  const syntax = doc.errors.filter((e) => e.code !== "DUPLICATE_KEY");
  if (syntax.length > 0) {
    const cause = syntaxCause(text, syntax);
    const path = cleanPath(pathAtOffset(doc, cause.offset));
    // The deeper-indented line sits inside the value above it; it belongs to that key's mapping.
    if (cause.inValueAbove && typeof path[path.length - 1] === "string") path.pop();
    return {
      ok: false,
      errors: [{ file, ...at(cause.offset), path: formatPath(path), message: cause.message }],
    };
  }
  const yamlErrors: ConfigIssue[] = doc.errors.map(yamlIssue);
  const warnings: ConfigIssue[] = doc.warnings.map(yamlIssue);

  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: 1000 });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    return {
      ok: false,
      errors: [...yamlErrors, { file, line: 1, column: 1, path: "", message: `YAML: ${message}` }],
    };
  }

  const result = validateConfig(data, {
    file,
    locate: (path, anchor) => at(offsetOf(doc, path, anchor)),
    ...(options.checkFile ? { checkFile: options.checkFile } : {}),
    ...(options.checkWritable ? { checkWritable: options.checkWritable } : {}),
  });
  if (!result.ok || yamlErrors.length > 0) {
    return {
      ok: false,
      errors: sortIssues([...yamlErrors, ...(result.ok ? [] : result.errors)]),
    };
  }
  return {
    ...result,
    warnings: sortIssues([...warnings, ...result.warnings]),
    places: placesOf(doc, at),
  };
}

interface YamlError {
  readonly pos: [number, number];
  readonly code: string;
  readonly message: string;
}

/** The error that explains the others, where the mistake is, said in terms of what to fix. */
function syntaxCause(
  text: string,
  errors: readonly YamlError[],
): { offset: number; message: string; inValueAbove?: boolean } {
  const tab = errors.find((e) => e.code === "TAB_AS_INDENT");
  if (tab) {
    return {
      offset: tab.pos[0],
      message: "YAML: a tab in the indentation; YAML indents with spaces only",
    };
  }
  const first = [...errors].sort((a, b) => a.pos[0] - b.pos[0])[0]!;
  const multiline = errors.find((e) => e.code === "MULTILINE_IMPLICIT_KEY");
  if (
    multiline && (first.code === "BLOCK_AS_IMPLICIT_KEY" || first.code === "MULTILINE_IMPLICIT_KEY")
  ) {
    // A value followed by a line indented deeper than its key: the parser tries to read both
    // lines as one key. The mistake is that next line's indentation.
    const lineStart = text.lastIndexOf("\n", multiline.pos[1] - 1) + 1;
    const indent = /^ */.exec(text.slice(lineStart))![0].length;
    return {
      offset: lineStart + indent,
      inValueAbove: true,
      message:
        "YAML: this line is indented deeper than the key above it; keys of one mapping start at the same column",
    };
  }
  const message = first.code === "BAD_INDENT"
    ? "keys of one mapping must start at the same column"
    : first.message.startsWith("Sequence item without - indicator")
    ? "this line is indented differently from the list item's first key (or misses its '- ')"
    : first.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
  return { offset: first.pos[0], message: `YAML: ${message}` };
}

/** A path cut before the first key the parser made up out of broken lines ("a b", "[...]"). */
function cleanPath(path: readonly PathSegment[]): PathSegment[] {
  const end = path.findIndex((s) => typeof s === "string" && !/^[A-Za-z_][A-Za-z0-9_-]*$/.test(s));
  return end < 0 ? [...path] : path.slice(0, end);
}

function sortIssues(issues: ConfigIssue[]): ConfigIssue[] {
  return issues
    .map((issue, i) => ({ issue, i }))
    .sort((a, b) => a.issue.line - b.issue.line || a.issue.column - b.issue.column || a.i - b.i)
    .map((x) => x.issue);
}

type YamlNode = NonNullable<Document["contents"]>;

function rangeOf(node: unknown): [number, number, number] | undefined {
  const r = (node as { range?: [number, number, number] | null } | null | undefined)?.range;
  return r ?? undefined;
}

function keyText(key: unknown): string {
  return isScalar(key) ? String(key.value) : String(key);
}

function deref(doc: Document, node: unknown): unknown {
  for (let hops = 0; isAlias(node) && hops < 100; hops++) node = node.resolve(doc);
  return node;
}

/** Where a node under a mapping key or in a list is: its value, or its key when it is empty. */
function childOffset(key: unknown, value: unknown, parent: number): number {
  const range = rangeOf(value);
  const empty = !range || (isScalar(value) && value.value === null && range[0] === range[1]);
  return (empty ? rangeOf(key)?.[0] : range[0]) ?? parent;
}

/** Source offset of a config path; missing steps fall back to the deepest node that exists. */
function offsetOf(doc: Document, path: readonly PathSegment[], anchor: IssueAnchor): number {
  if (anchor === "parent") return offsetOf(doc, path.slice(0, -1), "value");
  let node: unknown = doc.contents;
  let pair: Pair<unknown, unknown> | undefined;
  let fallback = rangeOf(node)?.[0] ?? 0;
  for (const seg of path) {
    const cur = deref(doc, node);
    let next: unknown;
    if (isMap(cur)) {
      pair = cur.items.find((p) => keyText(p.key) === String(seg));
      if (!pair) return fallback;
      next = pair.value;
    } else if (isSeq(cur) && typeof seg === "number" && seg < cur.items.length) {
      pair = undefined;
      next = cur.items[seg];
    } else {
      return fallback;
    }
    fallback = childOffset(pair?.key, next, fallback);
    node = next;
  }
  if (anchor === "key" && pair) return rangeOf(pair.key)?.[0] ?? fallback;
  return fallback;
}

/** Most nodes `placesOf` records; past it, problems are placed at the nearest recorded node. */
const MAX_PLACES = 100_000;

/**
 * Where every node of the document is, by `pathKey`: the table `placeOf` (issues.ts) reads for
 * problems found after loading. Placed as `offsetOf(doc, path, "value")` places them.
 */
function placesOf(doc: Document, at: (offset: number) => Place): Map<string, Place> {
  const places = new Map<string, Place>();
  const visit = (node: unknown, path: PathSegment[], offset: number) => {
    places.set(pathKey(path), at(offset));
    if (places.size >= MAX_PLACES || path.length > MAX_YAML_NESTING) return;
    const cur = deref(doc, node);
    if (isMap(cur)) {
      for (const pair of cur.items) {
        const key = keyText(pair.key);
        // The first of duplicate keys, as offsetOf finds it.
        if (places.has(pathKey([...path, key]))) continue;
        visit(pair.value, [...path, key], childOffset(pair.key, pair.value, offset));
      }
    } else if (isSeq(cur)) {
      cur.items.forEach((item, i) =>
        visit(item, [...path, i], childOffset(undefined, item, offset))
      );
    }
  };
  visit(doc.contents, [], rangeOf(doc.contents)?.[0] ?? 0);
  return places;
}

/** The config path of the deepest node at a source offset (for YAML errors). */
function pathAtOffset(doc: Document, offset: number): PathSegment[] {
  const out: PathSegment[] = [];
  const within = (node: unknown) => {
    const r = rangeOf(node);
    return r !== undefined && offset >= r[0] && offset <= r[1];
  };
  let node: YamlNode | unknown = doc.contents;
  for (let depth = 0; depth < 1000; depth++) {
    let next: unknown;
    if (isMap(node)) {
      for (const p of node.items) {
        if (within(p.key)) return [...out, keyText(p.key)];
        if (within(p.value)) {
          out.push(keyText(p.key));
          next = p.value;
          break;
        }
      }
    } else if (isSeq(node)) {
      const i = node.items.findIndex(within);
      if (i >= 0) {
        out.push(i);
        next = node.items[i];
      }
    }
    if (next === undefined) break;
    node = next;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Validation

/**
 * Validates plain config data (from YAML, JSON or built in code) with `ConfigSchema`, then the
 * cross-reference checks. Used by `parseConfigText` and the environment quick start.
 */
export function validateConfig(data: unknown, options: ValidateOptions): LoadResult {
  const describe = options.describePath ?? formatPath;
  const toIssue = (f: Finding): ConfigIssue => {
    const { line, column } = options.locate?.(f.path, f.anchor) ?? { line: 0, column: 0 };
    const issue: ConfigIssue = {
      file: options.file,
      line,
      column,
      path: describe(f.path),
      message: f.message,
    };
    if ("value" in f) issue.value = f.value;
    else if (f.showValue) {
      const v = valueAt(data, f.path);
      if (v.found) issue.value = v.value;
    }
    return issue;
  };

  const parsed = ConfigSchema.safeParse(data);
  if (!parsed.success) {
    const findings = parsed.error.issues.flatMap((i) => translateIssue(i, [], data));
    return { ok: false, errors: dedupe(findings.map(toIssue)) };
  }
  const { errors, warnings } = checkReferences(parsed.data, options);
  if (errors.length > 0) return { ok: false, errors: dedupe(errors.map(toIssue)) };
  return {
    ok: true,
    config: parsed.data,
    warnings: warnings.map(toIssue),
    durations: durationTexts(parsed.data, data),
  };
}

function dedupe(issues: ConfigIssue[]): ConfigIssue[] {
  const seen = new Set<string>();
  return issues.filter((i) => {
    const key = `${i.line}:${i.column}:${i.path}:${i.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// Cross-reference checks on a schema-valid config

function checkReferences(
  cfg: FerryConfig,
  options: ValidateOptions,
): { errors: Finding[]; warnings: Finding[] } {
  const errors: Finding[] = [];
  const warnings: Finding[] = [];
  const err = (path: PathSegment[], message: string, value?: unknown) =>
    errors.push(
      value === undefined
        ? { path, anchor: "value", message }
        : { path, anchor: "value", message, value },
    );

  uniqueNames("listener", "listeners", cfg.listeners, err);
  uniqueNames("route", "routes", cfg.routes, err);
  uniqueNames("cluster", "clusters", cfg.clusters, err);
  uniqueNames("rate limit", "rate_limits", cfg.rate_limits, err);
  const limiterNames = cfg.rate_limits.map((l) => l.name);
  for (const [i, l] of cfg.rate_limits.entries()) {
    if ((l.scope === "header") !== (l.header !== undefined)) {
      err(
        ["rate_limits", i, "header"],
        "expected a header name exactly when scope is header",
        l.header,
      );
    }
  }
  for (const [i, r] of cfg.routes.entries()) {
    for (const [j, n] of (r.rate_limit ?? []).entries()) {
      if (!limiterNames.includes(n)) {
        err(
          ["routes", i, "rate_limit", j],
          `unknown rate limit '${n}'; ${definedList(limiterNames, "rate limits")}`,
          n,
        );
      }
    }
    if (r.circuit_breaker && !r.cluster) {
      err(["routes", i, "circuit_breaker"], "a circuit breaker needs a cluster route");
    }
  }
  // Settings that would be silently ignored are worth a warning.
  const warn = (path: PathSegment[], message: string) =>
    warnings.push({ path, anchor: "value", message });
  for (const [i, c] of cfg.clusters.entries()) {
    if (c.hash_key && c.lb !== "ring_hash" && c.lb !== "maglev") {
      warn(
        ["clusters", i, "hash_key"],
        `hash_key is only used by ring_hash and maglev, not ${c.lb}`,
      );
    }
  }
  for (const [i, r] of cfg.routes.entries()) {
    if (!r.cluster) {
      for (const k of ["retry", "circuit_breaker"] as const) {
        if (r[k]) warn(["routes", i, k], `${k} only applies to routes with a cluster`);
      }
    }
    if (r.per_try_timeout > 0 && r.timeout > 0 && r.per_try_timeout >= r.timeout) {
      warn(["routes", i, "per_try_timeout"], "per_try_timeout is not shorter than timeout");
    }
    if (r.retry && r.retry.backoff.base > r.retry.backoff.max) {
      warn(["routes", i, "retry", "backoff"], "backoff.base is larger than backoff.max");
    }
  }
  for (const [i, c] of cfg.clusters.entries()) {
    // The gRPC health probe speaks HTTP/2: h2c to http:// endpoints, ALPN h2 to https:// ones.
    // A cluster whose http:// endpoints speak HTTP/1.1 (http1, or auto, which has no h2c) would
    // fail every probe; the same rule as for clusters behind a grpc listener (compile.ts).
    const grpcCheck = c.health_check?.grpc;
    const plainHttp1 = c.protocol !== "h2c" &&
      (c.endpoints === undefined ||
        c.endpoints.some((e) => (typeof e === "string" ? e : e.url).startsWith("http://")));
    if (grpcCheck && plainHttp1) {
      err(
        ["clusters", i, "health_check", "grpc"],
        "a gRPC health check needs HTTP/2: set the cluster's protocol to h2c, or use only " +
          "https:// endpoints",
      );
    }
    const seen = new Set<string>();
    for (const [j, e] of (c.endpoints ?? []).entries()) {
      const url = typeof e === "string" ? e : e.url;
      if (seen.has(url)) {
        err(["clusters", i, "endpoints", j], "duplicate endpoint in this cluster", url);
      }
      seen.add(url);
    }
  }

  const listenerNames = cfg.listeners.map((l) => l.name);
  const clusterNames = cfg.clusters.map((c) => c.name);
  const used = new Set<string>();
  for (const [i, r] of cfg.routes.entries()) {
    if (r.cluster !== undefined) {
      used.add(r.cluster);
      if (!clusterNames.includes(r.cluster)) {
        err(
          ["routes", i, "cluster"],
          `unknown cluster '${r.cluster}'; ${definedList(clusterNames, "clusters")}`,
        );
      }
    }
    for (const [j, l] of (r.listeners ?? []).entries()) {
      if (!listenerNames.includes(l)) {
        err(
          ["routes", i, "listeners", j],
          `unknown listener '${l}'; ${definedList(listenerNames, "listeners")}`,
        );
      }
    }
  }

  for (const [i, c] of cfg.clusters.entries()) {
    for (const [j, e] of (c.endpoints ?? []).entries()) {
      const url = typeof e === "string" ? e : e.url;
      const problem = endpointProblem(url);
      const path = typeof e === "string"
        ? ["clusters", i, "endpoints", j]
        : ["clusters", i, "endpoints", j, "url"];
      if (problem) err(path, problem, url);
    }
    if (!used.has(c.name)) {
      warnings.push({
        path: ["clusters", i, "name"],
        anchor: "value",
        message: `cluster '${c.name}' is not used by any route`,
      });
    }
  }

  // Addresses: a port can be bound once; a wildcard host takes it on every address.
  const bound: { owner: string; addr: Address }[] = [];
  const claim = (path: PathSegment[], owner: string, address: string) => {
    const addr = splitAddress(address);
    if (addr.port > 65535) {
      err(path, "expected a port from 0 to 65535", address);
      return;
    }
    const clash = bound.find((b) => addressesConflict(b.addr, addr));
    if (clash) {
      err(
        path,
        `address conflicts with ${clash.owner} (${clash.addr.text}); ` +
          "expected a distinct address or port",
        address,
      );
    }
    bound.push({ owner, addr });
  };
  for (const [i, l] of cfg.listeners.entries()) {
    claim(["listeners", i, "address"], `listener '${l.name}'`, l.address);
  }
  if (cfg.admin) {
    claim(["admin", "address"], "the admin address", cfg.admin.address);
    const a = cfg.admin;
    const host = a.address.slice(0, a.address.lastIndexOf(":")).replace(/^\[|\]$/g, "");
    const loopback = host === "localhost" || host === "::1" || host.startsWith("127.");
    if (!loopback && !a.token && !a.token_file && !a.token_env) {
      warn(
        ["admin", "address"],
        "the admin listener (config, /reload) is reachable beyond loopback without a token: " +
          "set admin.token_env or admin.token_file",
      );
    }
  }

  // Header edits and rewrites are applied per request: catch what would throw there.
  const grpcListenerNames = cfg.listeners.filter((l) => l.protocol === "grpc").map((l) => l.name);
  for (const [i, r] of cfg.routes.entries()) {
    // gRPC calls get the same edits (src/grpc/proxy.ts), but not of gRPC's own fields.
    const grpcServed = r.cluster !== undefined &&
      (r.listeners ?? cfg.listeners.map((l) => l.name)).filter((l) =>
        grpcListenerNames.includes(l)
      );
    const grpcRefusal = (name: string) =>
      grpcServed && grpcServed.length > 0 && grpcReservedHeader(name)
        ? `'${name}' cannot be edited on a route that serves grpc listener ${grpcServed[0]}: ` +
          "pseudo-headers, te, content-type, content-length, host, connection fields and " +
          "grpc-* carry the gRPC protocol (use rewrite.host for the authority), or limit the " +
          "route with listeners: to http listeners"
        : undefined;
    for (const side of ["request_headers", "response_headers"] as const) {
      const edits = r[side];
      for (const [name, value] of Object.entries(edits?.add ?? {})) {
        const refused = grpcRefusal(name);
        if (refused) {
          errors.push({ path: ["routes", i, side, "add", name], anchor: "key", message: refused });
        } else if (!HEADER_NAME.test(name)) {
          errors.push({
            path: ["routes", i, side, "add", name],
            anchor: "key",
            message: `invalid header name '${name}'; expected a header name such as x-env`,
          });
        } else if (/[\r\n\0]/.test(value)) {
          err(
            ["routes", i, side, "add", name],
            "expected a header value without line breaks",
            value,
          );
        }
      }
      for (const [j, name] of (edits?.remove ?? []).entries()) {
        const refused = grpcRefusal(name);
        if (refused) err(["routes", i, side, "remove", j], refused, name);
        else if (!HEADER_NAME.test(name)) {
          err(["routes", i, side, "remove", j], "expected a header name such as x-env", name);
        }
      }
    }
    if (r.direct_response && /[\r\n\0]/.test(r.direct_response.content_type)) {
      err(
        ["routes", i, "direct_response", "content_type"],
        "expected a media type without line breaks",
        r.direct_response.content_type,
      );
    }
    // Regexes are compiled here too, so a bad one is reported with its line and column.
    const regexes: [PathSegment[], string][] = [];
    if ("regex" in r.match.path) {
      regexes.push([["routes", i, "match", "path", "regex"], r.match.path.regex]);
    }
    for (const part of ["headers", "query"] as const) {
      for (const [name, m] of Object.entries(r.match[part] ?? {})) {
        if (typeof m === "object" && "regex" in m) {
          regexes.push([["routes", i, "match", part, name, "regex"], m.regex]);
        }
      }
    }
    if (r.rewrite?.regex) {
      regexes.push([["routes", i, "rewrite", "regex", "pattern"], r.rewrite.regex.pattern]);
    }
    for (const [path, pattern] of regexes) {
      try {
        compileRouteRegex(pattern);
      } catch (e) {
        err(path, e instanceof Error ? e.message : String(e), pattern);
      }
    }

    const rw = r.rewrite;
    if (rw?.prefix !== undefined && rw.regex !== undefined) {
      err(["routes", i, "rewrite"], "expected either rewrite.prefix or rewrite.regex, not both");
    } else if (rw?.prefix !== undefined && "regex" in r.match.path) {
      err(
        ["routes", i, "rewrite", "prefix"],
        "rewrite.prefix needs a path prefix or exact match; use rewrite.regex with a regex match",
        rw.prefix,
      );
    }
  }

  checkAuthorization(cfg, err);
  checkUpstreamIdentity(cfg, err);
  checkMiddleware(cfg, options, err, warn);
  checkGrpcClusters(cfg, err);
  const logPath = cfg.access_log?.path;
  if (options.checkWritable && logPath && logPath !== "stdout" && logPath !== "stderr") {
    const problem = options.checkWritable(logPath);
    if (problem) {
      err(["access_log", "path"], `cannot write the access log ${logPath}: ${problem}`, logPath);
    }
  }
  for (const [i, l] of cfg.listeners.entries()) {
    if (!l.tls) continue;
    const header = cfg.server.header_timeout;
    if (l.tls.handshake_timeout !== undefined && header > 0 && l.tls.handshake_timeout > header) {
      err(
        ["listeners", i, "tls", "handshake_timeout"],
        `expected at most server.header_timeout (${header} ms)`,
        l.tls.handshake_timeout,
      );
    }
    // Client certificates, SNI, the minimum version and the handshake timeout are node:tls's,
    // inside the connection guard (gRPC listeners always accept with it).
    if (l.protocol !== "http" || cfg.server.connection_guard) continue;
    const needsGuard: [string, string, boolean][] = [
      ["client_ca", "client certificates", l.tls.client_ca !== undefined],
      ["certificates", "certificates chosen by server name", l.tls.certificates !== undefined],
      ["min_version", "a minimum version above 1.2", l.tls.min_version !== "1.2"],
      ["handshake_timeout", "a handshake timeout", l.tls.handshake_timeout !== undefined],
    ];
    for (const [field, what, set] of needsGuard) {
      if (!set) continue;
      err(
        ["listeners", i, "tls", field],
        `${what} need server.connection_guard: true (Deno.serve alone cannot do it)`,
      );
    }
  }

  for (const [i, cidr] of cfg.server.trusted_proxies.entries()) {
    if (!parseCidr(cidr)) {
      err(
        ["server", "trusted_proxies", i],
        "expected an IP address or CIDR such as 10.0.0.0/8 or fd00::/8",
        cidr,
      );
    }
  }

  if (options.checkFile) {
    const check = (path: PathSegment[], what: string, p: string) => {
      const resolved = resolveConfigPath(options.file, p);
      const problem = options.checkFile!(resolved);
      if (problem) {
        err(path, `cannot read ${what} ${resolved}: ${problem}; expected a readable file`, p);
      }
    };
    for (const [i, l] of cfg.listeners.entries()) {
      if (!l.tls) continue;
      check(["listeners", i, "tls", "cert"], "the TLS certificate", l.tls.cert);
      check(["listeners", i, "tls", "key"], "the TLS key", l.tls.key);
      for (const [j, c] of (l.tls.certificates ?? []).entries()) {
        check(["listeners", i, "tls", "certificates", j, "cert"], "the TLS certificate", c.cert);
        check(["listeners", i, "tls", "certificates", j, "key"], "the TLS key", c.key);
      }
      if (l.tls.client_ca !== undefined) {
        check(["listeners", i, "tls", "client_ca"], "the client CA file", l.tls.client_ca);
      }
    }
    for (const [i, c] of cfg.clusters.entries()) {
      if (c.tls?.ca_file) check(["clusters", i, "tls", "ca_file"], "the CA file", c.tls.ca_file);
      if (c.tls?.cert_file) {
        check(["clusters", i, "tls", "cert_file"], "the client certificate", c.tls.cert_file);
      }
      if (c.tls?.key_file) {
        check(["clusters", i, "tls", "key_file"], "the client key", c.tls.key_file);
      }
    }
    for (const [i, p] of cfg.jwt_providers.entries()) {
      if (p.jwks_file) check(["jwt_providers", i, "jwks_file"], "the JWKS file", p.jwks_file);
    }
  }
  return { errors, warnings };
}

/**
 * Which module specifiers a config may name: local files only (docs/extending.md), so a reload
 * never fetches code from a registry or the network.
 */
const REFUSED_SCHEME = /^(npm|jsr|https?|data|blob|node):/i;

/** Why a `module:` value is not a local module file, or undefined. */
function moduleSpecifierProblem(spec: string): string | undefined {
  if (REFUSED_SCHEME.test(spec)) {
    return "expected a local module path (relative to the config file) or a file: URL; " +
      "import packages from inside your module instead";
  }
  if (!/\.(ts|mts|js|mjs|tsx|jsx)$/.test(spec)) {
    return "expected a .ts, .mts, .tsx, .js, .mjs or .jsx module file";
  }
  return undefined;
}

/**
 * `middleware:` entries: local module files that can be read (the import itself happens when the
 * config is built, src/server/extensions.ts), and only where an HTTP request passes through them.
 */
function checkMiddleware(
  cfg: FerryConfig,
  options: ValidateOptions,
  err: (path: PathSegment[], message: string, value?: unknown) => void,
  warn: (path: PathSegment[], message: string) => void,
): void {
  const lists: [PathSegment[], NonNullable<FerryConfig["routes"][number]["middleware"]>][] = [];
  for (const [i, l] of cfg.listeners.entries()) {
    if (!l.middleware) continue;
    if (l.protocol === "grpc") {
      err(
        ["listeners", i, "middleware"],
        "middleware run on http listeners only; a grpc listener forwards calls without them",
      );
    } else lists.push([["listeners", i, "middleware"], l.middleware]);
  }
  const grpcListeners = cfg.listeners.filter((l) => l.protocol === "grpc").map((l) => l.name);
  for (const [i, r] of cfg.routes.entries()) {
    if (!r.middleware) continue;
    lists.push([["routes", i, "middleware"], r.middleware]);
    const served = r.listeners ?? cfg.listeners.map((l) => l.name);
    if (r.middleware.length > 0 && served.some((l) => grpcListeners.includes(l))) {
      warn(
        ["routes", i, "middleware"],
        "middleware do not run on grpc listeners: calls there skip them",
      );
    }
  }
  for (const [at, list] of lists) {
    for (const [j, ref] of list.entries()) {
      if (ref.module === undefined) continue;
      const path = [...at, j, "module"];
      const problem = moduleSpecifierProblem(ref.module);
      if (problem) {
        err(path, problem, ref.module);
        continue;
      }
      if (!options.checkFile || ref.module.startsWith("file:")) continue;
      const resolved = resolveConfigPath(options.file, ref.module);
      const unreadable = options.checkFile(resolved);
      if (unreadable) {
        err(
          path,
          `cannot read module ${resolved}: ${unreadable}; expected a readable file`,
          ref.module,
        );
      }
    }
  }
}

/**
 * Authorization policies (listeners' and routes'): known JWT providers, claims only where a JWT
 * is verified, valid CIDRs and regexes.
 */
function checkAuthorization(
  cfg: FerryConfig,
  err: (path: PathSegment[], message: string, value?: unknown) => void,
): void {
  uniqueNames("JWT provider", "jwt_providers", cfg.jwt_providers, err);
  const providers = cfg.jwt_providers.map((p) => p.name);
  const policies: [PathSegment[], AuthorizationConfig][] = [];
  for (const [i, l] of cfg.listeners.entries()) {
    if (l.authorization) policies.push([["listeners", i, "authorization"], l.authorization]);
  }
  for (const [i, r] of cfg.routes.entries()) {
    if (r.authorization) policies.push([["routes", i, "authorization"], r.authorization]);
  }
  for (const [at, policy] of policies) {
    if (policy.jwt && !providers.includes(policy.jwt.provider)) {
      err(
        [...at, "jwt", "provider"],
        `unknown JWT provider '${policy.jwt.provider}'; ${definedList(providers, "JWT providers")}`,
        policy.jwt.provider,
      );
    }
    for (const [j, rule] of policy.rules.entries()) {
      const ruleAt = [...at, "rules", j];
      if (rule.claims && !policy.jwt) {
        err(
          [...ruleAt, "claims"],
          "claims need a verified token: set jwt.provider in this authorization block",
        );
      }
      for (const [k, cidr] of (rule.client_cidrs ?? []).entries()) {
        if (!parseCidr(cidr)) {
          err(
            [...ruleAt, "client_cidrs", k],
            "expected an IP address or CIDR such as 10.0.0.0/8 or fd00::/8",
            cidr,
          );
        }
      }
      const regexes: [PathSegment[], string][] = [];
      for (const [k, p] of (rule.paths ?? []).entries()) {
        if ("regex" in p) regexes.push([[...ruleAt, "paths", k, "regex"], p.regex]);
      }
      for (const part of ["headers", "claims"] as const) {
        for (const [name, m] of Object.entries(rule[part] ?? {})) {
          if (typeof m === "object" && !Array.isArray(m) && "regex" in m) {
            regexes.push([[...ruleAt, part, name, "regex"], m.regex]);
          }
        }
      }
      for (const [path, pattern] of regexes) {
        try {
          compileRouteRegex(pattern);
        } catch (e) {
          err(path, e instanceof Error ? e.message : String(e), pattern);
        }
      }
    }
  }
}

/**
 * gRPC needs HTTP/2 upstream: a cluster reached from a `protocol: grpc` listener must be `h2c`
 * (http:// endpoints over h2c, https:// over TLS with ALPN h2) or have only https:// endpoints.
 */
function checkGrpcClusters(
  cfg: FerryConfig,
  err: (path: PathSegment[], message: string, value?: unknown) => void,
): void {
  const grpcListeners = new Set(
    cfg.listeners.filter((l) => l.protocol === "grpc").map((l) => l.name),
  );
  if (grpcListeners.size === 0) return;
  for (const [i, r] of cfg.routes.entries()) {
    if (!r.cluster) continue;
    const served = r.listeners ? r.listeners.some((l) => grpcListeners.has(l)) : true;
    if (!served) continue;
    const c = cfg.clusters.find((c) => c.name === r.cluster);
    if (!c || c.protocol === "h2c") continue;
    const allTls = c.endpoints !== undefined &&
      c.endpoints.every((e) => (typeof e === "string" ? e : e.url).startsWith("https://"));
    if (allTls) continue;
    err(
      ["routes", i, "cluster"],
      `cluster ${r.cluster} is reached from a grpc listener but speaks ${c.protocol}: ` +
        `set its protocol to h2c (or use only https:// endpoints), or limit the route with ` +
        `listeners: to http listeners`,
      r.cluster,
    );
  }
}

/**
 * Where a cluster's server name or expected identities can be checked: Ferry's HTTP/1.1 codec
 * (`transport: h1`) and its HTTP/2 client (`transport: h2`, and every gRPC listener), both over
 * node:tls; fetch (`transport: fetch`) cannot see the certificate, so that transport on a
 * cluster reached from http listeners is refused.
 */
function checkUpstreamIdentity(
  cfg: FerryConfig,
  err: (path: PathSegment[], message: string, value?: unknown) => void,
): void {
  const httpListeners = cfg.listeners.filter((l) => l.protocol === "http").map((l) => l.name);
  for (const [i, c] of cfg.clusters.entries()) {
    const t = c.tls;
    if (!t || (t.server_name === undefined && t.expected_identities === undefined)) continue;
    const field = t.expected_identities !== undefined ? "expected_identities" : "server_name";
    if (httpTransportOf(c) === "fetch") {
      const fromHttp = cfg.routes.some((r) =>
        r.cluster === c.name &&
        (r.listeners ?? httpListeners).some((l) => httpListeners.includes(l))
      );
      if (fromHttp) {
        err(
          ["clusters", i, "tls", field],
          `${field} cannot be checked with transport: fetch on routes from http listeners ` +
            `(fetch shows no peer certificate); leave transport unset or use ` +
            (c.protocol === "http1" ? "h1" : "h2"),
        );
      }
    }
  }
}

function uniqueNames(
  kind: string,
  key: string,
  items: readonly { name: string }[],
  err: (path: PathSegment[], message: string, value?: unknown) => void,
): void {
  const first = new Map<string, number>();
  for (const [i, item] of items.entries()) {
    const seen = first.get(item.name);
    if (seen === undefined) first.set(item.name, i);
    else {err(
        [key, i, "name"],
        `duplicate ${kind} name '${item.name}' (also ${key}[${seen}]); expected unique names`,
      );}
  }
}

function definedList(names: readonly string[], what: string): string {
  return names.length === 0
    ? `no ${what} are defined`
    : `defined: ${[...new Set(names)].join(", ")}`;
}

/** Why an endpoint URL is unusable, or undefined. Endpoints name an origin; routes own paths. */
export function endpointProblem(
  raw: NonNullable<ClusterConfig["endpoints"]>[number] | string,
): string | undefined {
  const text = typeof raw === "string" ? raw : raw.url;
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return "expected an http:// or https:// URL such as http://127.0.0.1:9001";
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    if (/^[^:/]+:\d+$/.test(text)) {
      return `expected an http:// or https:// URL: write http://${text}`;
    }
    return `expected an http:// or https:// URL, not scheme '${url.protocol.slice(0, -1)}'`;
  }
  if (url.hostname === "") return "expected a URL with a host, such as http://127.0.0.1:9001";
  if (url.username !== "" || url.password !== "") {
    return "expected a URL without user:password@ (set credentials with request_headers)";
  }
  if (text.includes("?") || text.includes("#")) {
    return "expected a URL without a ?query or #fragment";
  }
  if (url.pathname !== "/") {
    return "expected a URL without a path (only /); use rewrite to change paths";
  }
  return undefined;
}

/**
 * Names a route's header edits may not touch when it serves gRPC calls: pseudo-headers and
 * connection-specific fields would make the HTTP/2 stream malformed (RFC 9113 8.2.2), `te`,
 * `content-type` and `grpc-*` carry the gRPC protocol itself (its status, deadline, encoding),
 * and `host` would disagree with `:authority` (use `rewrite.host`). Refused at their line
 * on routes that serve a grpc listener.
 */
function grpcReservedHeader(name: string): boolean {
  const n = name.toLowerCase();
  return n.startsWith(":") || n.startsWith("grpc-") || GRPC_RESERVED.has(n);
}

const GRPC_RESERVED = new Set([
  "te",
  "content-type",
  "content-length",
  "host",
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

interface Address {
  readonly text: string;
  readonly host: string;
  readonly port: number;
}

function splitAddress(address: string): Address {
  const colon = address.lastIndexOf(":");
  const host = address.slice(0, colon).replace(/^\[|\]$/g, "").toLowerCase();
  return {
    text: address,
    host: host === "" ? "0.0.0.0" : host,
    port: Number(address.slice(colon + 1)),
  };
}

function addressFamily(host: string): 4 | 6 | undefined {
  if (host.includes(":")) return 6;
  if (/^\d+\.\d+\.\d+\.\d+$/.test(host)) return 4;
  return undefined;
}

function addressesConflict(a: Address, b: Address): boolean {
  if (a.port !== b.port || a.port === 0) return false;
  if (a.host === b.host) return true;
  const wild = (h: string) => h === "0.0.0.0" || h === "::" || /^[0:]+$/.test(h);
  if (wild(a.host) && wild(b.host)) return true;
  const [w, other] = wild(a.host) ? [a, b] : wild(b.host) ? [b, a] : [undefined, undefined];
  if (!w || !other) return false;
  const fam = addressFamily(other.host);
  return fam === undefined || fam === addressFamily(w.host);
}
