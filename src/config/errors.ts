/**
 * How zod's issues are turned into messages that say what was expected, and which config values
 * are durations (read from the schema). Every problem (YAML syntax, schema, cross-references,
 * unreadable files, environment variables) becomes one `ConfigIssue` (issues.ts).
 */
import type { z } from "zod";
import { ConfigSchema } from "./schema.ts";
import { formatDuration, parseDuration } from "./duration.ts";
import type { PathSegment } from "./config_path.ts";
import { type ConfigIssue, type LoadResult, pathKey } from "./issues.ts";

export type { ConfigIssue, LoadResult };

/** Which part of a node an issue points at: its value, its key, or the mapping holding it. */
export type IssueAnchor = "value" | "key" | "parent";

/** A problem before it is placed in the source. */
export interface Finding {
  readonly path: readonly PathSegment[];
  readonly anchor: IssueAnchor;
  readonly message: string;
  /** Show the value at `path` from the input data. */
  readonly showValue?: boolean;
  /** Show this value instead. */
  readonly value?: unknown;
}

/** The value at a path in plain data, and whether it is there at all. */
export function valueAt(
  data: unknown,
  path: readonly PathSegment[],
): { found: boolean; value?: unknown } {
  let cur = data;
  for (const seg of path) {
    if (cur === null || typeof cur !== "object" || !Object.hasOwn(cur, seg)) {
      return { found: false };
    }
    cur = (cur as Record<PropertyKey, unknown>)[seg];
  }
  return { found: true, value: cur };
}

// ---------------------------------------------------------------------------------------------
// zod issues -> findings

type ZodIssue = z.core.$ZodIssue;

function toSegments(path: readonly PropertyKey[]): PathSegment[] {
  return path.map((s) => typeof s === "symbol" ? String(s) : s);
}

const TYPE_NAMES: Record<string, string> = {
  string: "a string",
  number: "a number",
  int: "an integer",
  boolean: "true or false",
  object: "a mapping",
  record: "a mapping",
  array: "a list",
  null: "nothing",
};

/** Turns one zod issue into findings that say what was expected; `base` prefixes its path. */
export function translateIssue(issue: ZodIssue, base: PathSegment[], data: unknown): Finding[] {
  const path = [...base, ...toSegments(issue.path)];
  switch (issue.code) {
    case "unrecognized_keys": {
      const allowed = allowedKeys(path);
      const hint = allowed.length > 0 ? `; expected one of: ${allowed.join(", ")}` : "";
      return issue.keys.map((key) => ({
        path: [...path, key],
        anchor: "key" as const,
        message: `unknown key '${key}'${hint}`,
      }));
    }
    case "invalid_type": {
      const parent = valueAt(data, path.slice(0, -1));
      const last = path[path.length - 1];
      const missing = last !== undefined && parent.found && parent.value !== null &&
        typeof parent.value === "object" && !Object.hasOwn(parent.value, last);
      const typeName = issue.expected === "int" ? "an integer" : TYPE_NAMES[issue.expected];
      const expected = (missing ? describeSchema(schemaAt(path)) ?? typeName : typeName) ??
        issue.expected;
      if (missing) {
        return [{
          path,
          anchor: "parent",
          message: `missing required key '${last}'; expected ${expected}`,
        }];
      }
      if (path.length === 0 && (data === null || data === undefined)) {
        return [{
          path,
          anchor: "value",
          message: "the config is empty; expected a mapping with listeners",
        }];
      }
      return [{ path, anchor: "value", message: `expected ${expected}`, showValue: true }];
    }
    case "invalid_union": {
      // A branch whose issues are all below its root matched the shape; report its issues.
      const near = issue.errors.filter((branch) =>
        branch.length > 0 &&
        branch.every((i) => i.path.length > 0 && i.code !== "unrecognized_keys")
      );
      if (near.length === 1) return near[0]!.flatMap((i) => translateIssue(i, path, data));
      const described = describeSchema(schemaAt(path));
      const expected = described ?? alternatives(
        issue.errors.flatMap((b) =>
          b.flatMap((i) => i.code === "invalid_type" ? [TYPE_NAMES[i.expected] ?? i.expected] : [])
        ),
      );
      return [{
        path,
        anchor: "value",
        message: `expected ${expected || "another value"}`,
        showValue: true,
      }];
    }
    case "invalid_key": {
      const inner = issue.issues.map((i) => i.message).join("; ");
      return [{
        path,
        anchor: "key",
        message: `invalid key '${String(path[path.length - 1])}': ${inner}`,
      }];
    }
    case "invalid_value": {
      const values = issue.values.map((v) => typeof v === "string" ? v : JSON.stringify(v));
      const expected = values.length === 1 ? values[0]! : `one of ${values.join(", ")}`;
      return [{ path, anchor: "value", message: `expected ${expected}`, showValue: true }];
    }
    case "too_small":
    case "too_big":
      return [{ path, anchor: "value", message: sizeMessage(issue), showValue: true }];
    case "invalid_format": {
      let message = issue.message;
      if (issue.format === "starts_with") {
        const prefix = (issue as { prefix?: string }).prefix ?? "";
        message = prefix === "/"
          ? "expected a path starting with /"
          : `expected a value starting with ${prefix}`;
      } else if (issue.format === "regex" && message.startsWith("Invalid")) {
        message = `expected a value matching ${
          (issue as { pattern?: string }).pattern ?? "the pattern"
        }`;
      }
      return [{ path, anchor: "value", message, showValue: true }];
    }
    case "custom": {
      const scalar = valueAt(data, path);
      const showValue = scalar.found && (scalar.value === null || typeof scalar.value !== "object");
      return [{ path, anchor: "value", message: issue.message, showValue }];
    }
    default:
      return [{ path, anchor: "value", message: issue.message, showValue: true }];
  }
}

function sizeMessage(issue: z.core.$ZodIssueTooSmall | z.core.$ZodIssueTooBig): string {
  const small = issue.code === "too_small";
  const bound = small ? issue.minimum : issue.maximum;
  const n = Number(bound);
  switch (issue.origin) {
    case "array":
    case "set":
      return small
        ? `expected at least ${n} item${n === 1 ? "" : "s"}`
        : `expected at most ${n} item${n === 1 ? "" : "s"}`;
    case "string":
      if (small && n === 1) return "expected a non-empty string";
      return `expected ${small ? "at least" : "at most"} ${n} characters`;
    default: {
      const op = small ? (issue.inclusive ? ">=" : ">") : (issue.inclusive ? "<=" : "<");
      return `expected a number ${op} ${String(bound)}`;
    }
  }
}

function alternatives(items: string[]): string {
  const unique = [...new Set(items)];
  if (unique.length <= 1) return unique[0] ?? "";
  return `${unique.slice(0, -1).join(", ")} or ${unique[unique.length - 1]}`;
}

// ---------------------------------------------------------------------------------------------
// Reading the schema (for "expected ..." and "allowed keys")

interface SchemaDef {
  readonly type: string;
  readonly innerType?: Schema;
  readonly in?: Schema;
  readonly out?: Schema;
  readonly shape?: Record<string, Schema>;
  readonly element?: Schema;
  readonly options?: readonly Schema[];
  readonly valueType?: Schema;
  readonly values?: readonly unknown[];
  readonly entries?: Record<string, unknown>;
  readonly format?: string;
}
interface Schema {
  readonly _zod: { readonly def: SchemaDef };
}

const WRAPPERS = new Set(["optional", "default", "prefault", "nullable", "readonly", "catch"]);

function unwrap(s: Schema): Schema {
  let cur = s;
  for (let i = 0; i < 20 && WRAPPERS.has(cur._zod.def.type) && cur._zod.def.innerType; i++) {
    cur = cur._zod.def.innerType;
  }
  return cur;
}

function isDuration(s: Schema): boolean {
  const d = s._zod.def;
  if (d.type !== "pipe" || !d.in || d.out?._zod.def.type !== "transform") return false;
  const kinds = (d.in._zod.def.options ?? []).map((o) => o._zod.def.type).sort().join();
  return kinds === "number,string";
}

/**
 * Every duration in a validated config (kept as whole milliseconds), by `pathKey`, as /config
 * shows it (`withDurationTexts`): as written where the source says it ("1.5s" stays "1.5s"),
 * defaults in their largest unit.
 */
export function durationTexts(config: unknown, written: unknown): Map<string, string> {
  const texts = new Map<string, string>();
  const visit = (value: unknown, path: PathSegment[]) => {
    if (typeof value === "number") {
      const s = schemaAt(path);
      if (!s || !isDuration(unwrap(s))) return;
      const w = valueAt(written, path).value;
      const asWritten = typeof w === "string" && parseDuration(w) === value;
      const text = asWritten ? w.trim() : formatDuration(value);
      // 0 stays the number 0.
      if (text !== 0) texts.set(pathKey(path), text);
    } else if (Array.isArray(value)) {
      value.forEach((v, i) => visit(v, [...path, i]));
    } else if (value !== null && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) visit(v, [...path, k]);
    }
  };
  visit(config, []);
  return texts;
}

/** The schema that validates `path`, looking through defaults, pipes and unions. */
function schemaAt(path: readonly PathSegment[]): Schema | undefined {
  let cur: Schema | undefined = ConfigSchema as unknown as Schema;
  for (const seg of path) {
    if (!cur) return undefined;
    cur = childSchema(cur, seg);
  }
  return cur;
}

function childSchema(s: Schema, seg: PathSegment): Schema | undefined {
  const u = unwrap(s);
  const d = u._zod.def;
  switch (d.type) {
    case "pipe":
      return d.in ? childSchema(d.in, seg) : undefined;
    case "object":
      return typeof seg === "string" ? d.shape?.[seg] : undefined;
    case "array":
      return typeof seg === "number" ? d.element : undefined;
    case "record":
      return d.valueType;
    case "union":
      for (const o of d.options ?? []) {
        const c = childSchema(o, seg);
        if (c) return c;
      }
      return undefined;
    default:
      return undefined;
  }
}

function allowedKeys(path: readonly PathSegment[]): string[] {
  const s = schemaAt(path);
  if (!s) return [];
  const u = unwrap(s);
  const shape = u._zod.def.type === "object" ? u._zod.def.shape : undefined;
  return shape ? Object.keys(shape) : [];
}

/** "a string", "a duration such as ...", "{exact: ...}, {prefix: ...} or {regex: ...}". */
function describeSchema(s: Schema | undefined, inUnion = false): string | undefined {
  if (!s) return undefined;
  if (isDuration(unwrap(s))) return "a duration such as 250ms, 15s or 1m";
  const u = unwrap(s);
  const d = u._zod.def;
  switch (d.type) {
    case "pipe":
      return describeSchema(d.in, inUnion);
    case "literal":
      return alternatives((d.values ?? []).map((v) => JSON.stringify(v)));
    case "enum":
      return `one of ${Object.keys(d.entries ?? {}).join(", ")}`;
    case "object": {
      if (!inUnion) return "a mapping";
      const keys = Object.entries(d.shape ?? {}).map(([k, v]) => {
        const vd = unwrap(v)._zod.def;
        const optional = v._zod.def.type === "optional" || v._zod.def.type === "default";
        const hint = vd.type === "literal"
          ? (vd.values ?? []).map((x) => JSON.stringify(x)).join("|")
          : "...";
        return `${k}${optional ? "?" : ""}: ${hint}`;
      });
      return `{${keys.join(", ")}}`;
    }
    case "union":
      return alternatives((d.options ?? []).map((o) => describeSchema(o, true) ?? "another value"));
    case "number":
      return d.format?.includes("int") ? "an integer" : "a number";
    default:
      return TYPE_NAMES[d.type];
  }
}
