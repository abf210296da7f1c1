/**
 * Config paths as messages show them (`routes[0].match`) and back. Its own module, free of the
 * schema: worker isolates name config paths in their errors without loading zod.
 */

/** A step of a config path: a mapping key or a list index. */
export type PathSegment = string | number;

/** `["routes", 0, "match"]` -> `routes[0].match`; keys that are not identifiers are quoted. */
export function formatPath(path: readonly PathSegment[]): string {
  let out = "";
  for (const seg of path) {
    if (typeof seg === "number") out += `[${seg}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(seg)) out += out === "" ? seg : `.${seg}`;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

/** `routes[0].match` -> `["routes", 0, "match"]`: the inverse of `formatPath`. */
export function parsePath(text: string): PathSegment[] {
  const out: PathSegment[] = [];
  for (const m of text.matchAll(/\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]|([^.[\]]+)/g)) {
    out.push(m[1] !== undefined ? Number(m[1]) : m[2] !== undefined ? JSON.parse(m[2]) : m[3]!);
  }
  return out;
}
