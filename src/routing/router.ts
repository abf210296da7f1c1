/**
 * The route table: compiled once per config snapshot, then matched per request.
 *
 * Evaluation order (also in docs/routing.md), first passing candidate wins:
 *
 * 1. Host tiers, each tried in full before the next:
 *    a. routes whose host equals the request host (`api.example.com`);
 *    b. wildcard hosts by longest suffix: `*.example.com` matches `a.example.com` and
 *       `a.b.example.com`, never `example.com`;
 *    c. routes without a host, or with host `*`.
 *    Route hosts are compared lower-cased, without port and trailing dot; the request host
 *    must already be normalised (see `normalizeHost`).
 * 2. Within a tier: exact paths (a Map lookup), then prefixes longest first, then regexes in
 *    config order. Among routes with the same exact path or prefix, config order.
 * 3. A candidate is taken only if its methods, headers and query conditions also pass;
 *    otherwise the search goes on (to the next candidate, then the next tier).
 *
 * A prefix is a plain string prefix (as in Envoy): `/api/` does not match `/api`, and `/api`
 * matches `/apis`. Header names are case-insensitive; header and query values compare as
 * exact strings, `{present: true}` tests presence, `{regex}` runs a {@linkcode RouteRegex}.
 * A query condition reads the first value of the parameter (`URLSearchParams.get`).
 *
 * @module
 *
 * One piece past 500 lines: the tiers, the per-tier indexes and the shadowing analysis that
 * `--check` reports walk the same compiled tables.
 */
import { compileRouteRegex, type RouteRegex } from "./regex.ts";

/** How a header or query value is matched: exactly, by presence, or by a regex. */
export type StringMatchConfig = string | { readonly present: true } | { readonly regex: string };

/**
 * A route's match rules as the config's validated `match:` section holds them (the router
 * takes the shape, not the schema, so it sits below config/).
 */
export interface RouteMatchConfig {
  readonly host?: string | undefined;
  readonly path:
    | { readonly exact: string }
    | { readonly prefix: string }
    | { readonly regex: string };
  readonly methods?: readonly string[] | undefined;
  readonly headers?: Readonly<Record<string, StringMatchConfig>> | undefined;
  readonly query?: Readonly<Record<string, StringMatchConfig>> | undefined;
}

/** One route as given to {@linkcode Router.compile}. */
export interface RouteInput<T> {
  name: string;
  /** Position in the config; breaks ties between routes with the same key. */
  index: number;
  match: RouteMatchConfig;
  value: T;
}

/** What the router needs to know about a request. */
export interface MatchInput {
  method: string;
  /** Normalised host: lower case, no port. */
  host: string;
  /** Normalised path (see `normalizePath`). */
  path: string;
  headers: Headers;
  /** The raw query including its leading "?", or "". */
  search: string;
}

/** One problem found while compiling the route table. */
export interface RouteProblem {
  route: string;
  index: number;
  /** Where in the route, e.g. "match.path.regex" or "match.headers.x-env.regex". */
  field: string;
  value: string;
  message: string;
}

/** Every problem of a route table at once, so one config edit can fix them all. */
export class RouteCompileError extends Error {
  readonly problems: RouteProblem[];
  constructor(problems: RouteProblem[]) {
    super(
      `${problems.length} route problem(s):\n` +
        problems.map((p) => `  routes[${p.index}] (${p.route}) ${p.field}: ${p.message}`).join(
          "\n",
        ),
    );
    this.name = "RouteCompileError";
    this.problems = problems;
  }
}

/** The answer of {@linkcode Router.explain}. */
export interface Explanation {
  matched?: { name: string; reason: string };
  considered: { name: string; result: "matched" | "skipped"; reason: string }[];
}

/** A route that can never match, and the route that always wins before it. */
export interface Shadowing {
  route: string;
  by: string;
  reason: string;
}

type Condition =
  | { kind: "equals"; name: string; value: string; spec: string }
  | { kind: "present"; name: string; spec: string }
  | { kind: "regex"; name: string; regex: RouteRegex; spec: string };

type PathRule =
  | { kind: "exact"; value: string }
  | { kind: "prefix"; value: string }
  | { kind: "regex"; value: string; regex: RouteRegex };

interface CompiledRoute<T> {
  readonly name: string;
  readonly index: number;
  readonly value: T;
  readonly hostLabel: string;
  readonly path: PathRule;
  readonly methods: readonly string[] | undefined;
  readonly headers: readonly Condition[];
  readonly query: readonly Condition[];
  /** No methods, headers or query: the path decides alone (the common, fast case). */
  readonly unconditional: boolean;
}

/** The routes of one host tier, arranged for evaluation. */
interface Tier<T> {
  readonly label: string;
  readonly exact: Map<string, CompiledRoute<T>[]>;
  /**
   * `exactLengths[n]` is 1 when some exact path has n characters. A path of another length
   * skips the Map, whose lookup would hash the whole path (a new string on every request).
   */
  readonly exactLengths: Uint8Array;
  /** The prefix routes as a radix tree, walked once per request (see {@linkcode PrefixNode}). */
  readonly prefixTree: PrefixNode<T>;
  /** All prefix routes, longest first (for explain and shadowed). */
  readonly prefixes: readonly CompiledRoute<T>[];
  readonly regexes: readonly CompiledRoute<T>[];
  readonly all: readonly CompiledRoute<T>[];
}

/**
 * A node of the prefix radix tree (a path-compressed trie over the distinct prefix strings).
 * `routes` are the prefix routes whose prefix is exactly `key`, in config order. A node's
 * children are keyed by the character at `depth`; each child's key is the longest string its
 * subtree's prefixes share, so a walk visits at most one node per branching character.
 * Why a tree: the cost of a lookup does not grow with the number of prefixes, and it
 * allocates nothing.
 */
interface PrefixNode<T> {
  readonly key: string;
  /** `key.length`: the path character that picks the child. */
  readonly depth: number;
  readonly routes: readonly CompiledRoute<T>[];
  /** The nearest ancestor with routes: following these links gives the next shorter prefix. */
  readonly shorter: PrefixNode<T> | undefined;
  /** Children by the character at `depth`, as `table[charCode - lo]`. */
  readonly lo: number;
  readonly table: readonly (PrefixNode<T> | undefined)[];
  /** Children when their characters span too wide a range for a table (rare). */
  readonly wide: ReadonlyMap<number, PrefixNode<T>> | undefined;
}

const EMPTY: readonly never[] = Object.freeze([]);

/** Up to this many exact hosts are compared in a list rather than looked up in a Map. */
const FEW_HOSTS = 4;

/** The widest table of children; beyond it a Map (only for unusual non-ASCII prefixes). */
const MAX_TABLE_SPAN = 256;

/**
 * A compiled route table. See the module documentation for the evaluation order.
 *
 * @example
 * ```ts
 * const router = Router.compile([
 *   { name: "api", index: 0, match: { path: { prefix: "/api/" } }, value: "api" },
 * ]);
 * router.match({ method: "GET", host: "x", path: "/api/v1", headers: new Headers(), search: "" });
 * // "api"
 * ```
 */
export class Router<T> {
  readonly #exactHosts: Map<string, Tier<T>>;
  /**
   * The same tiers as a list when there are at most FEW_HOSTS: comparing the request's host
   * (a new string per request) with a few strings is cheaper than hashing it for the Map.
   */
  readonly #fewHosts: readonly { host: string; tier: Tier<T> }[] | undefined;
  /** Wildcard tiers by suffix (".example.com"), longest first. */
  readonly #wildcards: readonly { suffix: string; tier: Tier<T> }[];
  readonly #any: Tier<T> | undefined;
  readonly #routes: readonly CompiledRoute<T>[];
  /** Last parsed query, reused while the same search string comes again. */
  #querySource = "";
  #queryParams: URLSearchParams | undefined;

  private constructor(routes: CompiledRoute<T>[]) {
    this.#routes = routes;
    const byHost = new Map<string, CompiledRoute<T>[]>();
    for (const r of routes) {
      const list = byHost.get(r.hostLabel);
      if (list) list.push(r);
      else byHost.set(r.hostLabel, [r]);
    }
    this.#exactHosts = new Map();
    const wildcards: { suffix: string; tier: Tier<T> }[] = [];
    let any: Tier<T> | undefined;
    for (const [label, list] of byHost) {
      const tier = buildTier(label, list);
      if (label === "*") any = tier;
      else if (label.startsWith("*.")) wildcards.push({ suffix: label.slice(1), tier });
      else this.#exactHosts.set(label, tier);
    }
    this.#fewHosts = this.#exactHosts.size <= FEW_HOSTS
      ? [...this.#exactHosts].map(([host, tier]) => ({ host, tier }))
      : undefined;
    wildcards.sort((a, b) => b.suffix.length - a.suffix.length);
    this.#wildcards = wildcards;
    this.#any = any;
  }

  /**
   * Compiles a route table.
   *
   * @throws {RouteCompileError} listing every bad regex (path, header or query) at once.
   */
  static compile<T>(routes: readonly RouteInput<T>[]): Router<T> {
    const problems: RouteProblem[] = [];
    const compiled: CompiledRoute<T>[] = [];
    for (const route of routes) {
      const c = compileRoute(route, problems);
      if (c !== undefined) compiled.push(c);
    }
    if (problems.length > 0) throw new RouteCompileError(problems);
    compiled.sort((a, b) => a.index - b.index);
    return new Router(compiled);
  }

  /** The value of the first route that matches `input`, or undefined. Does not allocate. */
  match(input: MatchInput): T | undefined {
    if (this.#exactHosts.size > 0) {
      const tier = this.#exactTier(input.host);
      if (tier !== undefined) {
        const r = this.#matchTier(tier, input);
        if (r !== undefined) return r.value;
      }
    }
    const host = input.host;
    for (const w of this.#wildcards) {
      if (host.length > w.suffix.length && host.endsWith(w.suffix)) {
        const r = this.#matchTier(w.tier, input);
        if (r !== undefined) return r.value;
      }
    }
    if (this.#any !== undefined) return this.#matchTier(this.#any, input)?.value;
    return undefined;
  }

  #exactTier(host: string): Tier<T> | undefined {
    const few = this.#fewHosts;
    if (few === undefined) return this.#exactHosts.get(host);
    for (let i = 0; i < few.length; i++) if (few[i]!.host === host) return few[i]!.tier;
    return undefined;
  }

  #matchTier(tier: Tier<T>, input: MatchInput): CompiledRoute<T> | undefined {
    const path = input.path;
    const lengths = tier.exactLengths;
    if (path.length < lengths.length && lengths[path.length] === 1) {
      const list = tier.exact.get(path);
      if (list !== undefined) {
        for (const r of list) if (r.unconditional || this.#conditionsPass(r, input)) return r;
      }
    }
    // Down the prefix tree by one character per node, then check the deepest candidate once.
    // A child whose key is longer than the path is entered, and its check below fails; that
    // costs nothing on the common path, where a length test on every step would.
    let node = tier.prefixTree;
    for (;;) {
      const c = path.charCodeAt(node.depth); // NaN past the end: no child
      const k = c - node.lo;
      const child = k >= 0 && k < node.table.length ? node.table[k] : node.wide?.get(c);
      if (child === undefined) break;
      node = child;
    }
    // Every prefix of the path is on the way down, but the descent read only the branching
    // characters: check the deepest candidate's key, and once one holds, its ancestors do too.
    let verified = false;
    for (let n = node.routes.length > 0 ? node : node.shorter; n !== undefined; n = n.shorter) {
      // lastIndexOf from 0 compares in native code at position 0 only, without a slice.
      if (!verified && !(verified = path.lastIndexOf(n.key, 0) === 0)) continue;
      const routes = n.routes;
      for (let i = 0; i < routes.length; i++) {
        const r = routes[i]!;
        if (r.unconditional || this.#conditionsPass(r, input)) return r;
      }
    }
    for (const r of tier.regexes) {
      if (
        (r.path as { regex: RouteRegex }).regex.test(path) &&
        (r.unconditional || this.#conditionsPass(r, input))
      ) return r;
    }
    return undefined;
  }

  /** Like #whyNot, without building a reason: this runs per request. */
  #conditionsPass(r: CompiledRoute<T>, input: MatchInput): boolean {
    if (r.methods !== undefined && !r.methods.includes(input.method)) return false;
    for (const h of r.headers) if (!conditionOk(h, input.headers.get(h.name))) return false;
    if (r.query.length > 0) {
      const params = this.#params(input.search);
      for (const q of r.query) if (!conditionOk(q, params.get(q.name))) return false;
    }
    return true;
  }

  /** Undefined when the route's conditions pass, else why not (for explain). */
  #whyNot(r: CompiledRoute<T>, input: MatchInput): string | undefined {
    if (r.methods !== undefined && !r.methods.includes(input.method)) {
      return `method ${input.method} not in [${r.methods.join(", ")}]`;
    }
    for (const h of r.headers) {
      const why = conditionFails(h, input.headers.get(h.name), "header");
      if (why !== undefined) return why;
    }
    if (r.query.length > 0) {
      const params = this.#params(input.search);
      for (const q of r.query) {
        const why = conditionFails(q, params.get(q.name), "query");
        if (why !== undefined) return why;
      }
    }
    return undefined;
  }

  /** Parses the query lazily: only routes with query conditions pay for it. */
  #params(search: string): URLSearchParams {
    if (this.#queryParams === undefined || this.#querySource !== search) {
      this.#queryParams = new URLSearchParams(search);
      this.#querySource = search;
    }
    return this.#queryParams;
  }

  /**
   * Walks the same order as {@linkcode Router.match} and says why each route was taken or
   * skipped. When nothing matches, routes of other hosts are listed last with the reason.
   * For the admin /explain endpoint; allocates freely.
   */
  explain(input: MatchInput): Explanation {
    const considered: Explanation["considered"] = [];
    const seen = new Set<CompiledRoute<T>>();
    const tiers: Tier<T>[] = [];
    const exact = this.#exactHosts.get(input.host);
    if (exact !== undefined) tiers.push(exact);
    for (const w of this.#wildcards) {
      if (input.host.length > w.suffix.length && input.host.endsWith(w.suffix)) tiers.push(w.tier);
    }
    if (this.#any !== undefined) tiers.push(this.#any);
    for (const tier of tiers) {
      const hostWhy = tier.label === "*" ? "any host" : `host ${tier.label}`;
      for (const r of evaluationOrder(tier, input.path)) {
        seen.add(r);
        const pathWhy = pathVerdict(r.path, input.path);
        if (!pathWhy.ok) {
          considered.push({ name: r.name, result: "skipped", reason: pathWhy.reason });
          continue;
        }
        const why = this.#whyNot(r, input);
        if (why !== undefined) {
          considered.push({
            name: r.name,
            result: "skipped",
            reason: `${pathWhy.reason}, but ${why}`,
          });
          continue;
        }
        const reason = `${hostWhy}, ${pathWhy.reason}${r.unconditional ? "" : ", conditions pass"}`;
        considered.push({ name: r.name, result: "matched", reason });
        return { matched: { name: r.name, reason }, considered };
      }
    }
    for (const r of this.#routes) {
      if (seen.has(r)) continue;
      considered.push({
        name: r.name,
        result: "skipped",
        reason: `host ${r.hostLabel} does not match ${JSON.stringify(input.host)}`,
      });
    }
    return { considered };
  }

  /**
   * Routes that can never match because a route evaluated before them in the same host tier
   * covers their path and needs no condition they lack. Conservative: it may miss some dead
   * routes, but every route it reports is dead.
   */
  shadowed(): Shadowing[] {
    const out: Shadowing[] = [];
    const tiers = [...this.#exactHosts.values(), ...this.#wildcards.map((w) => w.tier)];
    if (this.#any !== undefined) tiers.push(this.#any);
    for (const tier of tiers) {
      const order = fullOrder(tier);
      for (let j = 0; j < order.length; j++) {
        const late = order[j]!;
        for (let i = 0; i < j; i++) {
          const early = order[i]!;
          const pathWhy = covers(early.path, late.path);
          if (pathWhy === undefined || !conditionsImplied(early, late)) continue;
          const conds = early.unconditional ? "" : ", and its conditions are a subset";
          out.push({
            route: late.name,
            by: early.name,
            reason: `in host tier ${tier.label}, ${pathWhy}${conds}`,
          });
          break;
        }
      }
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Compilation

function hostLabel(host: string | undefined): string {
  if (host === undefined || host === "*") return "*";
  // Why: the caller's host has no port, no trailing dot and is lower case; so must ours.
  let h = host.toLowerCase().replace(/:\d+$/, "");
  if (h.endsWith(".")) h = h.slice(0, -1);
  return h;
}

function compileRoute<T>(
  route: RouteInput<T>,
  problems: RouteProblem[],
): CompiledRoute<T> | undefined {
  let bad = false;
  const regex = (field: string, pattern: string): RouteRegex | undefined => {
    try {
      return compileRouteRegex(pattern);
    } catch (e) {
      bad = true;
      const message = e instanceof Error && "reason" in e
        ? String(e.reason)
        : e instanceof Error
        ? e.message
        : String(e);
      problems.push({ route: route.name, index: route.index, field, value: pattern, message });
      return undefined;
    }
  };
  const m = route.match;
  let path: PathRule;
  if ("exact" in m.path) path = { kind: "exact", value: m.path.exact };
  else if ("prefix" in m.path) path = { kind: "prefix", value: m.path.prefix };
  else {
    const re = regex("match.path.regex", m.path.regex);
    // A failed regex leaves `bad` set and the route is dropped below.
    path = { kind: "regex", value: m.path.regex, regex: re as RouteRegex };
  }
  const conditions = (
    kind: "headers" | "query",
    spec: Record<string, StringMatchConfig> | undefined,
  ): Condition[] => {
    if (spec === undefined) return [];
    return Object.entries(spec).map(([rawName, cond]): Condition => {
      const name = kind === "headers" ? rawName.toLowerCase() : rawName;
      if (typeof cond === "string") {
        return { kind: "equals", name, value: cond, spec: JSON.stringify(cond) };
      }
      if ("present" in cond) return { kind: "present", name, spec: "present" };
      const re = regex(`match.${kind}.${rawName}.regex`, cond.regex);
      return { kind: "regex", name, regex: re as RouteRegex, spec: `~${cond.regex}` };
    });
  };
  const headers = conditions("headers", m.headers);
  const query = conditions("query", m.query);
  if (bad) return undefined;
  const methods = m.methods?.map((x) => x.toUpperCase());
  return {
    name: route.name,
    index: route.index,
    value: route.value,
    hostLabel: hostLabel(m.host),
    path,
    methods,
    headers,
    query,
    unconditional: methods === undefined && headers.length === 0 && query.length === 0,
  };
}

function buildTier<T>(label: string, routes: CompiledRoute<T>[]): Tier<T> {
  const byIndex = (a: CompiledRoute<T>, b: CompiledRoute<T>) => a.index - b.index;
  const exact = new Map<string, CompiledRoute<T>[]>();
  const prefixes: CompiledRoute<T>[] = [];
  const regexes: CompiledRoute<T>[] = [];
  for (const r of [...routes].sort(byIndex)) {
    if (r.path.kind === "exact") {
      const list = exact.get(r.path.value);
      if (list) list.push(r);
      else exact.set(r.path.value, [r]);
    } else if (r.path.kind === "prefix") prefixes.push(r);
    else regexes.push(r);
  }
  // Longest prefix first; the sort is stable, so equal lengths keep config order.
  prefixes.sort((a, b) => b.path.value.length - a.path.value.length);
  // Routes sharing a prefix, in config order (the order of `prefixes` among equal lengths).
  const byPrefix = new Map<string, CompiledRoute<T>[]>();
  for (const r of prefixes) {
    const list = byPrefix.get(r.path.value);
    if (list) list.push(r);
    else byPrefix.set(r.path.value, [r]);
  }
  let longestExact = -1;
  for (const p of exact.keys()) longestExact = Math.max(longestExact, p.length);
  const exactLengths = new Uint8Array(longestExact + 1);
  for (const p of exact.keys()) exactLengths[p.length] = 1;
  return {
    label,
    exact,
    exactLengths,
    prefixTree: buildPrefixNode([...byPrefix.keys()], byPrefix, undefined),
    prefixes,
    regexes,
    all: routes,
  };
}

/**
 * The radix tree node over `keys` (distinct prefixes): its key is their longest common prefix,
 * and its children group the longer keys by their next character. So no node, the root
 * included, has a single child and no routes of its own: the descent takes no idle steps.
 */
function buildPrefixNode<T>(
  keys: readonly string[],
  byPrefix: ReadonlyMap<string, readonly CompiledRoute<T>[]>,
  parentShorter: PrefixNode<T> | undefined,
): PrefixNode<T> {
  const key = commonPrefix(keys);
  const depth = key.length;
  const routes = byPrefix.get(key);
  const groups = new Map<number, string[]>();
  for (const k of keys) {
    if (k.length === depth) continue;
    const c = k.charCodeAt(depth);
    const group = groups.get(c);
    if (group) group.push(k);
    else groups.set(c, [k]);
  }
  let lo = Infinity;
  let hi = -1;
  for (const c of groups.keys()) {
    lo = Math.min(lo, c);
    hi = Math.max(hi, c);
  }
  if (hi < 0) lo = 0;
  const span = hi - lo + 1;
  // Filled with undefined from the start: a packed array keeps the lookup on V8's fast path.
  const table: (PrefixNode<T> | undefined)[] = span <= MAX_TABLE_SPAN
    ? Array.from({ length: span }, () => undefined)
    : [];
  const wide = span <= MAX_TABLE_SPAN ? undefined : new Map<number, PrefixNode<T>>();
  const node: PrefixNode<T> = {
    key,
    depth,
    routes: routes ?? EMPTY,
    shorter: parentShorter,
    lo,
    table,
    wide,
  };
  const shorter = node.routes.length > 0 ? node : parentShorter;
  for (const [c, group] of groups) {
    const child = buildPrefixNode(group, byPrefix, shorter);
    if (wide !== undefined) wide.set(c, child);
    else table[c - lo] = child;
  }
  return node;
}

/** The longest string every one of `keys` starts with ("" for none). */
function commonPrefix(keys: readonly string[]): string {
  const first = keys[0] ?? "";
  let end = first.length;
  for (const k of keys) {
    let i = 0;
    while (i < end && i < k.length && k.charCodeAt(i) === first.charCodeAt(i)) i++;
    end = i;
  }
  return first.slice(0, end);
}

// ---------------------------------------------------------------------------------------------
// Conditions

function conditionOk(c: Condition, actual: string | null): boolean {
  if (actual === null) return false;
  if (c.kind === "equals") return actual === c.value;
  return c.kind === "present" || c.regex.test(actual);
}

function conditionFails(c: Condition, actual: string | null, what: string): string | undefined {
  if (actual === null) return `${what} ${c.name} missing`;
  if (c.kind === "equals" && actual !== c.value) {
    return `${what} ${c.name}: ${JSON.stringify(actual)} is not ${c.spec}`;
  }
  if (c.kind === "regex" && !c.regex.test(actual)) {
    return `${what} ${c.name}: ${JSON.stringify(actual)} does not match ${c.spec}`;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Explain and shadowing helpers

/** The tier's routes in the order match() tries them for `path` (exact ones for any path). */
function evaluationOrder<T>(tier: Tier<T>, path: string): CompiledRoute<T>[] {
  const exactHere = tier.exact.get(path) ?? [];
  const exactOther = [...tier.exact.values()].flat().filter((r) => r.path.value !== path);
  return [...exactHere, ...exactOther, ...tier.prefixes, ...tier.regexes];
}

/** The tier's routes in evaluation order regardless of path: exact, prefix, regex. */
function fullOrder<T>(tier: Tier<T>): CompiledRoute<T>[] {
  return [...[...tier.exact.values()].flat(), ...tier.prefixes, ...tier.regexes];
}

function pathVerdict(rule: PathRule, path: string): { ok: boolean; reason: string } {
  switch (rule.kind) {
    case "exact":
      return rule.value === path
        ? { ok: true, reason: `path is exactly ${rule.value}` }
        : { ok: false, reason: `path is not exactly ${rule.value}` };
    case "prefix":
      return path.startsWith(rule.value)
        ? { ok: true, reason: `path starts with ${rule.value}` }
        : { ok: false, reason: `path does not start with ${rule.value}` };
    case "regex":
      return rule.regex.test(path)
        ? { ok: true, reason: `path matches regex ${rule.value}` }
        : { ok: false, reason: `path does not match regex ${rule.value}` };
  }
}

/**
 * Why every path matching `late` also matches `early` (evaluated first), or undefined when
 * that cannot be shown.
 */
function covers(early: PathRule, late: PathRule): string | undefined {
  if (early.kind === "exact") {
    return late.kind === "exact" && late.value === early.value
      ? `exact ${early.value} is listed first`
      : undefined;
  }
  if (early.kind === "prefix") {
    if (late.kind === "prefix" && late.value === early.value) {
      return `the same prefix ${early.value} is listed first`;
    }
    if (late.kind === "regex") {
      // Every normalised path starts with "/", so prefix "/" takes everything regexes would.
      if (early.value === "/") return `prefix / is tried before every regex`;
      const lit = literalPrefix(late.value);
      if (lit !== undefined && lit.startsWith(early.value)) {
        return `prefix ${early.value} is tried before regex ${late.value}, whose matches all ` +
          `start with ${lit}`;
      }
    }
    return undefined;
  }
  return late.kind === "regex" && late.value === early.value
    ? `the same regex ${early.value} is listed first`
    : undefined;
}

/**
 * The literal text every match of `pattern` starts with, when the pattern is "^" followed by
 * plain characters and has no top-level alternation; else undefined.
 */
function literalPrefix(pattern: string): string | undefined {
  if (!pattern.startsWith("^") || hasTopLevelAlternation(pattern)) return undefined;
  let lit = "";
  let i = 1;
  for (; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (/[A-Za-z0-9/_~-]/.test(c)) lit += c;
    else if (c === "\\" && /[./-]/.test(pattern[i + 1] ?? "")) lit += pattern[++i];
    else break;
  }
  // A quantifier after the last literal makes that character optional or repeated.
  if (/^[*+?{]/.test(pattern.slice(i))) lit = lit.slice(0, -1);
  return lit;
}

function hasTopLevelAlternation(p: string): boolean {
  let depth = 0;
  let inClass = false;
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === "\\") i++;
    else if (inClass) inClass = c !== "]";
    else if (c === "[") inClass = true;
    else if (c === "(") depth++;
    else if (c === ")") depth--;
    else if (c === "|" && depth === 0) return true;
  }
  return false;
}

/** Whether every request passing `late`'s conditions also passes `early`'s. */
function conditionsImplied<T>(early: CompiledRoute<T>, late: CompiledRoute<T>): boolean {
  if (early.unconditional) return true;
  if (early.methods !== undefined) {
    if (late.methods === undefined) return false;
    if (!late.methods.every((m) => early.methods!.includes(m))) return false;
  }
  const implied = (e: Condition, lateConds: readonly Condition[]) =>
    lateConds.some((l) => l.name === e.name && (e.kind === "present" || l.spec === e.spec));
  return early.headers.every((h) => implied(h, late.headers)) &&
    early.query.every((q) => implied(q, late.query));
}
