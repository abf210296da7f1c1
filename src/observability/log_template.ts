/**
 * Access-log line formats other than JSON: a template of literal text and `$field` (or
 * `${field}` where a letter follows) placeholders naming the JSON log's fields; `$$` is a
 * literal `$`. `combined` is the Apache/nginx combined format written as such a template.
 * Parsed once at config load, so an unknown field is a config error, not a line of "-".
 */

/** The JSON access log's fields, in the order a JSON line has them. */
export const ACCESS_LOG_FIELDS = [
  "time",
  "request_id",
  "client",
  "method",
  "authority",
  "path",
  "protocol",
  "status",
  "grpc_status",
  "bytes_in",
  "bytes_out",
  "duration_ms",
  "upstream_ms",
  "route",
  "cluster",
  "endpoint",
  "attempts",
  "flags",
  "listener",
  "user_agent",
  "referer",
  // The client certificate's identity (downstream mTLS).
  "identity",
] as const;
export type AccessLogField = (typeof ACCESS_LOG_FIELDS)[number];

/** Template-only field: `time` as the combined format writes it, `10/Oct/2000:13:55:36 +0000`. */
const TIME_CLF = "time_clf";
const KNOWN = new Set<string>([...ACCESS_LOG_FIELDS, TIME_CLF]);

/** Apache/nginx "combined"; `bytes_out` is "-" when the response had no Content-Length. */
export const COMBINED_TEMPLATE =
  '$client - - [$time_clf] "$method $path $protocol" $status $bytes_out "$referer" "$user_agent"';

export type TemplatePart = string | { readonly field: string };

/** Parts of a template, or the first problem in it (for the config error). */
export function parseLogTemplate(
  template: string,
): { ok: true; parts: TemplatePart[] } | { ok: false; error: string } {
  const parts: TemplatePart[] = [];
  let text = "";
  const re = /\$(?:\$|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))?/g;
  let last = 0;
  for (let m = re.exec(template); m; m = re.exec(template)) {
    text += template.slice(last, m.index);
    last = re.lastIndex;
    if (m[0] === "$$") {
      text += "$";
      continue;
    }
    const name = m[1] ?? m[2];
    if (name === undefined) {
      return { ok: false, error: `a "$" must start a field such as $status (write $$ for a "$")` };
    }
    if (!KNOWN.has(name)) {
      return {
        ok: false,
        error: `unknown access log field "$${name}"; known: ${[...KNOWN].join(", ")}`,
      };
    }
    if (text) parts.push(text);
    text = "";
    parts.push({ field: name });
  }
  text += template.slice(last);
  if (text) parts.push(text);
  return { ok: true, parts };
}

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

function clfTime(iso: unknown): string {
  const d = typeof iso === "string" ? new Date(iso) : new Date();
  const p = (n: number) => String(n).padStart(2, "0");
  return `${p(d.getUTCDate())}/${MONTHS[d.getUTCMonth()]}/${d.getUTCFullYear()}:` +
    `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())} +0000`;
}

/** One line from a record; a missing or null field is "-"; quotes and control bytes are escaped. */
export function renderLogTemplate(parts: readonly TemplatePart[], record: Record<string, unknown>) {
  let line = "";
  for (const part of parts) {
    if (typeof part === "string") {
      line += part;
      continue;
    }
    const v = part.field === TIME_CLF ? clfTime(record.time) : record[part.field];
    line += v === null || v === undefined || v === "" ? "-" : escapeValue(String(v));
  }
  return line;
}

// As nginx does: a value cannot break the line or its quotes.
function escapeValue(v: string): string {
  return v.replace(
    // deno-lint-ignore no-control-regex -- control bytes are exactly what must be escaped
    /["\\\x00-\x1f\x7f]/g,
    (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}
