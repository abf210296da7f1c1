/**
 * Route regexes that can never backtrack catastrophically.
 *
 * A route regex runs on attacker-controlled input (path, headers, query), so an exponential
 * pattern such as `^(a+)+$` would let one request pin the event loop. Every pattern is
 * compiled with re2js (a pure-JS port of RE2: linear time, no backtracking), which also
 * defines the accepted syntax (RE2's, close to JS's). Patterns in a strict "deterministic"
 * subset, where a backtracking engine provably does O(n * pattern) work, run on native
 * RegExp instead, which is 30-40x faster; all others run on re2js. Backreferences and
 * lookaround, which need backtracking, are refused with an {@linkcode UnsafeRegexError}.
 *
 * @module
 *
 * One piece past 500 lines: the syntax walk that proves a pattern deterministic and the engine
 * choice it drives must agree exactly; apart, they could drift and let a backtracking pattern
 * through.
 */
import { RE2JS } from "re2js";

/** A pattern refused because no linear-time engine can run it. */
export class UnsafeRegexError extends Error {
  /** What is wrong, e.g. "backreference \1 needs a backtracking engine". */
  readonly reason: string;
  readonly pattern: string;
  constructor(pattern: string, reason: string) {
    super(`unsafe regex ${JSON.stringify(pattern)}: ${reason}`);
    this.name = "UnsafeRegexError";
    this.pattern = pattern;
    this.reason = reason;
  }
}

/** A pattern that does not parse (RE2 syntax). */
export class RegexSyntaxError extends SyntaxError {
  readonly pattern: string;
  constructor(pattern: string, message: string) {
    super(`invalid regex ${JSON.stringify(pattern)}: ${message}`);
    this.name = "RegexSyntaxError";
    this.pattern = pattern;
  }
}

/** A compiled route regex; safe to run on hostile input. */
export interface RouteRegex {
  readonly source: string;
  /** "native" when the pattern is in the deterministic subset, else "re2". */
  readonly engine: "native" | "re2";
  /** Why this engine was chosen (for the admin API and logs). */
  readonly note: string;
  /** Number of capture groups. */
  readonly groupCount: number;
  /** Whether the pattern matches anywhere in `input` (anchor with ^ and $ for whole input). */
  test(input: string): boolean;
  /**
   * Replaces every non-overlapping match in `input` with `substitution`, in which `\N` or `$N`
   * (N a single digit 0-9) is capture group N (0 = whole match, unmatched = ""), `$$` is "$",
   * `\\` is "\"; every other character is literal. Envoy's `regex_rewrite` uses `\1`.
   */
  replace(input: string, substitution: string): string;
}

/** Longest pattern accepted; route regexes are short, and compile cost grows with size. */
const MAX_PATTERN_LENGTH = 2048;

/**
 * Compiles a route regex (RE2 syntax; no flags: use `(?i)` for case-insensitive matching).
 *
 * @throws {UnsafeRegexError} for backreferences, lookahead, lookbehind, or a pattern too long.
 * @throws {RegexSyntaxError} for a pattern that does not parse.
 * @example
 * ```ts
 * const re = compileRouteRegex("^/v([0-9]+)/users/([^/]+)$");
 * re.test("/v2/users/bob"); // true
 * re.replace("/v2/users/bob", "/users/\\2?v=\\1"); // "/users/bob?v=2"
 * ```
 */
export function compileRouteRegex(pattern: string): RouteRegex {
  if (pattern.length > MAX_PATTERN_LENGTH) {
    throw new UnsafeRegexError(
      pattern.slice(0, 40) + "...",
      `pattern longer than ${MAX_PATTERN_LENGTH} characters`,
    );
  }
  const refused = findBacktrackingOnlySyntax(pattern);
  if (refused !== undefined) throw new UnsafeRegexError(pattern, refused);
  let re2: RE2JS;
  try {
    re2 = RE2JS.compile(pattern);
  } catch (e) {
    const message = e instanceof Error
      ? e.message.replace(/^error parsing regexp: /, "")
      : String(e);
    throw new RegexSyntaxError(pattern, message);
  }
  const verdict = analyzeDeterministic(pattern);
  if (verdict.ok) {
    try {
      return new NativeRegex(pattern, verdict.source, verdict.groups);
    } catch {
      // The subset parser and V8 disagree: fall back to RE2, which is always safe.
    }
  }
  const note = verdict.ok ? "native RegExp refused the pattern" : verdict.why;
  return new Re2Regex(pattern, re2, `runs on RE2 (linear time): ${note}`);
}

// ---------------------------------------------------------------------------------------------
// Engines

class NativeRegex implements RouteRegex {
  readonly engine = "native" as const;
  readonly note = "deterministic pattern: native RegExp, linear time";
  readonly #re: RegExp;
  readonly #global: RegExp;
  readonly #templates: SubstitutionCache = new Map();
  constructor(readonly source: string, nativeSource: string, readonly groupCount: number) {
    // "u": code-point semantics like RE2 (a "." is one code point, not half a surrogate pair).
    this.#re = new RegExp(nativeSource, "u");
    this.#global = new RegExp(nativeSource, "gu");
  }
  test(input: string): boolean {
    return this.#re.test(input);
  }
  replace(input: string, substitution: string): string {
    const parts = parseSubstitution(this.#templates, substitution);
    const groups = this.groupCount;
    return input.replace(this.#global, (...args: unknown[]) => {
      // args: match, g1..gN, offset, input
      return expand(parts, (i) => (i <= groups ? (args[i] as string | undefined) : undefined));
    });
  }
}

class Re2Regex implements RouteRegex {
  readonly engine = "re2" as const;
  readonly groupCount: number;
  readonly #re: RE2JS;
  readonly #templates: SubstitutionCache = new Map();
  constructor(readonly source: string, re: RE2JS, readonly note: string) {
    this.#re = re;
    this.groupCount = re.groupCount();
  }
  test(input: string): boolean {
    return this.#re.test(input);
  }
  replace(input: string, substitution: string): string {
    const parts = parseSubstitution(this.#templates, substitution);
    const m = this.#re.matcher(input);
    const groups = this.groupCount;
    let out = "";
    let last = 0;
    while (m.find()) {
      out += input.slice(last, m.start());
      out += expand(parts, (i) => (i <= groups ? m.group(i) ?? undefined : undefined));
      last = m.end();
    }
    return out + input.slice(last);
  }
}

// ---------------------------------------------------------------------------------------------
// Substitution templates: literal text and group numbers, parsed once per distinct string.

type SubstitutionPart = string | number;
type SubstitutionCache = Map<string, readonly SubstitutionPart[]>;

function parseSubstitution(cache: SubstitutionCache, s: string): readonly SubstitutionPart[] {
  const cached = cache.get(s);
  if (cached !== undefined) return cached;
  const parts: SubstitutionPart[] = [];
  let lit = "";
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    const next = s[i + 1];
    if ((c === "$" || c === "\\") && next !== undefined && next >= "0" && next <= "9") {
      if (lit !== "") parts.push(lit);
      lit = "";
      parts.push(next.charCodeAt(0) - 0x30);
      i++;
    } else if ((c === "$" || c === "\\") && next === c) {
      lit += c;
      i++;
    } else {
      lit += c;
    }
  }
  if (lit !== "") parts.push(lit);
  // Why a bounded cache: substitutions come from config, so there are few distinct ones.
  if (cache.size < 64) cache.set(s, parts);
  return parts;
}

function expand(
  parts: readonly SubstitutionPart[],
  group: (i: number) => string | undefined,
): string {
  let out = "";
  for (const p of parts) out += typeof p === "string" ? p : group(p) ?? "";
  return out;
}

// ---------------------------------------------------------------------------------------------
// Refusals: syntax only a backtracking engine can run.

function findBacktrackingOnlySyntax(p: string): string | undefined {
  let inClass = false;
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === "\\") {
      const n = p[i + 1];
      if (!inClass && n !== undefined && n >= "1" && n <= "9") {
        return `backreference \\${n} needs a backtracking engine (exponential time)`;
      }
      if (!inClass && n === "k" && p[i + 2] === "<") {
        return "named backreference \\k<...> needs a backtracking engine (exponential time)";
      }
      i++;
    } else if (inClass) {
      if (c === "]") inClass = false;
    } else if (c === "[") {
      inClass = true;
      if (p[i + 1] === "^") i++;
      if (p[i + 1] === "]") i++; // "[]...]" / "[^]...]": a literal "]" first
    } else if (c === "(" && p[i + 1] === "?") {
      const a = p[i + 2];
      const b = p[i + 3];
      if (a === "=" || a === "!") {
        return `lookahead (?${a}...) needs a backtracking engine`;
      }
      if (a === "<" && (b === "=" || b === "!")) {
        return `lookbehind (?<${b}...) needs a backtracking engine`;
      }
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// The deterministic subset.
//
// A pattern qualifies when it is a flat sequence of items, where an item is a character set
// (literal, escape, class or ".") with an optional quantifier, or a group of alternatives made
// only of unquantified sets (optionally "?"), with "^" first and "$" last. Each VARIABLE item
// (min != max) must use characters that cannot start what follows it: then a backtracking
// engine, after the greedy (or lazy) choice, fails in O(1) on every other choice, so a match
// attempt costs O(n * pattern). Alternation choice points are capped so their product stays
// small. Without "^", the engine retries at every offset, so unbounded items are not allowed.
// Anything else (nested or quantified groups, `(a|a)*`, `\d*\d*x`, `\s`, `\b`, ...) is RE2's.

/** A set of characters: 128 ASCII flags, plus one flag for "some non-ASCII character". */
type CharSet = Uint8Array;
const NON_ASCII = 128;

function newSet(): CharSet {
  return new Uint8Array(129);
}

function addRange(set: CharSet, lo: number, hi: number): void {
  for (let c = lo; c <= Math.min(hi, 127); c++) set[c] = 1;
  if (hi > 127) set[NON_ASCII] = 1;
}

function negate(set: CharSet): CharSet {
  const out = newSet();
  for (let c = 0; c < 128; c++) out[c] = set[c] ? 0 : 1;
  out[NON_ASCII] = 1; // conservative: a negated set always may contain non-ASCII
  return out;
}

function union(into: CharSet, other: CharSet): void {
  for (let c = 0; c < 129; c++) if (other[c]) into[c] = 1;
}

function overlaps(a: CharSet, b: CharSet): boolean {
  for (let c = 0; c < 129; c++) if (a[c] && b[c]) return true;
  return false;
}

interface SetItem {
  kind: "set";
  set: CharSet;
  min: number;
  max: number;
  text: string;
}
interface GroupItem {
  kind: "group";
  /** First-character set of each alternative; undefined for an empty alternative. */
  firsts: (CharSet | undefined)[];
  optional: boolean;
  text: string;
}
type Item = SetItem | GroupItem;

type Verdict = { ok: true; source: string; groups: number } | { ok: false; why: string };

const MAX_CHOICE_PRODUCT = 64;
const MAX_UNANCHORED_WIDTH = 256;

class NotInSubset extends Error {}

/** Parses `p` if it is in the deterministic subset, and rewrites it for native RegExp "u". */
function analyzeDeterministic(p: string): Verdict {
  let source = "";
  let groups = 0;
  let i = 0;
  const fail = (why: string): never => {
    throw new NotInSubset(why);
  };

  /** One literal character rewritten for the "u" flag (which refuses needless escapes). */
  const lit = (ch: string, inClass: boolean): string =>
    (inClass ? "\\]^-" : "^$\\.*+?()[]{}|/").includes(ch) ? "\\" + ch : ch;

  /** Parses an escape after "\" at p[i]; returns its set and native text. */
  const escape = (inClass: boolean): { set: CharSet; text: string; single?: number } => {
    const e = p[i++];
    if (e === undefined) return fail("trailing backslash");
    const set = newSet();
    switch (e) {
      case "d":
        addRange(set, 0x30, 0x39);
        return { set, text: "\\d" };
      case "D":
        addRange(set, 0x30, 0x39);
        return { set: negate(set), text: "\\D" };
      case "w":
      case "W":
        addRange(set, 0x30, 0x39);
        addRange(set, 0x41, 0x5a);
        addRange(set, 0x61, 0x7a);
        set[0x5f] = 1;
        return e === "w" ? { set, text: "\\w" } : { set: negate(set), text: "\\W" };
    }
    const controls: Record<string, number> = { n: 10, t: 9, r: 13, f: 12, v: 11 };
    const ctl = controls[e];
    if (ctl !== undefined) {
      set[ctl] = 1;
      return { set, text: "\\" + e, single: ctl };
    }
    // Why only ASCII punctuation: \s, \b, \x.., \p{..} differ between RE2 and JS.
    if (/^[!-/:-@[-`{-~]$/.test(e)) {
      const code = e.charCodeAt(0);
      set[code] = 1;
      return { set, text: lit(e, inClass), single: code };
    }
    return fail(`escape \\${e} is left to RE2`);
  };

  /** Parses a class after "[" ; returns its set and native text. */
  const charClass = (): { set: CharSet; text: string } => {
    let set = newSet();
    let text = "[";
    const negated = p[i] === "^";
    if (negated) {
      i++;
      text += "^";
    }
    if (p[i] === "]") fail("a class starting with ] is left to RE2");
    for (;;) {
      const c = p[i];
      if (c === undefined) return fail("unterminated class");
      if (c === "]") {
        i++;
        break;
      }
      if (c === "[") fail("nested [ in a class is left to RE2");
      let lo: number | undefined;
      if (c === "\\") {
        i++;
        const e = escape(true);
        text += e.text;
        if (e.single === undefined) {
          union(set, e.set);
          continue;
        }
        lo = e.single;
      } else {
        i++;
        lo = c.charCodeAt(0);
        text += lit(c, true);
      }
      if (p[i] === "-" && p[i + 1] !== "]" && p[i + 1] !== undefined) {
        i++;
        let hi: number;
        const h = p[i]!;
        if (h === "\\") {
          i++;
          const e = escape(true);
          if (e.single === undefined) return fail("a class range to a class escape");
          hi = e.single;
          text += "-" + e.text;
        } else {
          i++;
          hi = h.charCodeAt(0);
          text += "-" + lit(h, true);
        }
        if (hi < lo) return fail("reversed class range");
        addRange(set, lo, hi);
      } else {
        addRange(set, lo, lo);
      }
    }
    if (negated) set = negate(set);
    return { set, text: text + "]" };
  };

  /** Parses one set atom at p[i], or returns undefined when p[i] does not start one. */
  const atom = (): { set: CharSet; text: string } | undefined => {
    const c = p[i];
    if (c === undefined) return undefined;
    if (c === "\\") {
      i++;
      return escape(false);
    }
    if (c === "[") {
      i++;
      return charClass();
    }
    if (c === ".") {
      i++;
      const set = newSet();
      addRange(set, 0, 0x10ffff);
      set[10] = 0;
      return { set, text: "[^\\n]" }; // RE2's "." (JS's also refuses \r, U+2028, U+2029)
    }
    if ("^$|()*+?{}]".includes(c)) return undefined;
    i++;
    const set = newSet();
    addRange(set, c.charCodeAt(0), c.charCodeAt(0));
    return { set, text: lit(c, false) };
  };

  /** Parses an optional quantifier; returns [min, max, text]. */
  const quantifier = (): [number, number, string] => {
    const c = p[i];
    let q: [number, number, string];
    if (c === "*") q = [0, Infinity, "*"];
    else if (c === "+") q = [1, Infinity, "+"];
    else if (c === "?") q = [0, 1, "?"];
    else if (c === "{") {
      const m = /^\{(\d{1,4})(,(\d{0,4}))?\}/.exec(p.slice(i));
      if (m === null) return fail("a literal { is left to RE2");
      const min = Number(m[1]);
      const max = m[2] === undefined ? min : m[3] === "" ? Infinity : Number(m[3]);
      if (max < min) return fail("bad repeat");
      q = [min, max, m[0]];
      i += m[0].length - 1;
    } else return [1, 1, ""];
    i++;
    if (p[i] === "?") {
      i++;
      q[2] += "?";
    }
    return q;
  };

  const items: Item[] = [];
  try {
    const anchoredStart = p[0] === "^";
    if (anchoredStart) {
      i = 1;
      source = "^";
    }
    while (i < p.length) {
      const c = p[i]!;
      if (c === "$") {
        if (i !== p.length - 1) fail("$ before the end is left to RE2");
        source += "$";
        i++;
        break;
      }
      if (c === "|") fail("top-level alternation is left to RE2");
      if (c === "(") {
        i++;
        let text = "(";
        if (p[i] === "?") {
          if (p[i + 1] !== ":") fail("group flags and named groups are left to RE2");
          i += 2;
          text += "?:";
        } else {
          groups++;
        }
        const alts: SetItem[][] = [[]];
        for (;;) {
          const d = p[i];
          if (d === undefined) return fail("unterminated group");
          i++;
          text += d === "|" || d === ")" ? d : "";
          if (d === ")") break;
          if (d === "|") {
            alts.push([]);
            continue;
          }
          i--;
          const a = atom();
          if (a === undefined) return fail(`nested group (${d} inside a group) is left to RE2`);
          const [min, max, qt] = quantifier();
          if (max === 0) fail("{0} is left to RE2");
          alts[alts.length - 1]!.push({ kind: "set", set: a.set, min, max, text: a.text + qt });
          text += a.text + qt;
        }
        const [min, max, qt] = quantifier();
        source += text + qt;
        const variableInside = alts.some((alt) => alt.some((x) => x.min !== x.max));
        if (max > 1 && variableInside) {
          fail(`nested quantifier ${text}${qt} can backtrack exponentially`);
        }
        if (alts.length === 1 && qt === "") {
          // A plain (capturing) group does not add choice points: check its items in line.
          items.push(...alts[0]!);
          continue;
        }
        if (variableInside) fail(`quantifier inside alternation or optional group ${text}${qt}`);
        if (max > 1 || (min === 1 && qt !== "")) {
          fail(`quantified group ${text}${qt} can backtrack`);
        }
        if (max === 0) fail("{0} is left to RE2");
        const firsts = alts.map((alt) => alt[0]?.set);
        items.push({ kind: "group", firsts, optional: min === 0, text: text + qt });
        continue;
      }
      const a = atom();
      if (a === undefined) return fail(`${c} out of place is left to RE2`);
      const [min, max, qt] = quantifier();
      if (max === 0) fail("{0} is left to RE2");
      items.push({ kind: "set", set: a.set, min, max, text: a.text + qt });
      source += a.text + qt;
    }
    checkDeterministic(items, anchoredStart);
  } catch (e) {
    if (e instanceof NotInSubset) return { ok: false, why: e.message };
    throw e;
  }
  return { ok: true, source, groups };
}

/** Throws NotInSubset unless every choice point fails fast (see the section comment). */
function checkDeterministic(items: Item[], anchoredStart: boolean): void {
  let choices = 1;
  let width = 0;
  for (let k = 0; k < items.length; k++) {
    const item = items[k]!;
    if (item.kind === "group") {
      choices *= item.firsts.length + (item.optional ? 1 : 0);
      if (choices > MAX_CHOICE_PRODUCT) throw new NotInSubset("too many alternatives");
      if (!item.optional && !item.firsts.includes(undefined)) continue;
    } else {
      width += item.max;
      if (item.min === item.max) continue;
    }
    // A variable item: its characters must not be able to start what follows.
    const own = newSet();
    if (item.kind === "set") union(own, item.set);
    else for (const f of item.firsts) if (f) union(own, f);
    if (overlaps(own, firstOfRest(items, k + 1))) {
      const next = items.slice(k + 1).map((x) => x.text).join("");
      throw new NotInSubset(
        `${item.text} overlaps what follows it (${next}): adjacent quantifiers can backtrack`,
      );
    }
  }
  if (!anchoredStart && width > MAX_UNANCHORED_WIDTH) {
    throw new NotInSubset("unanchored pattern with unbounded repetition (retried at every offset)");
  }
}

/**
 * The characters that can start items[from..]. When all of them can be empty the end is
 * reached: with "$" no character matches there, without it the match succeeds at once.
 */
function firstOfRest(items: Item[], from: number): CharSet {
  const set = newSet();
  for (let k = from; k < items.length; k++) {
    const item = items[k]!;
    if (item.kind === "set") {
      union(set, item.set);
      if (item.min > 0) return set;
    } else {
      let nullable = item.optional;
      for (const f of item.firsts) {
        if (f === undefined) nullable = true;
        else union(set, f);
      }
      if (!nullable) return set;
    }
  }
  return set;
}
