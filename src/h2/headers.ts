/**
 * Header-list checks of RFC 9113 8.2 and 8.3 for what arrives on a stream: names lower-case
 * tokens, values without NUL, CR, LF or other controls, pseudo-headers first and only the known
 * ones, no connection-specific fields, `te` only "trailers", and the pseudo-headers a request must
 * carry, with a token `:method`, a `:path` that is `/...` (or `*` for OPTIONS), at most one
 * Content-Length of digits and no Host naming another authority. A violation is a stream error.
 * The same rules as Ferry's HTTP/1.1 parser (src/h1/parse.ts), so no listener forwards what
 * another refuses.
 */
import type { HeaderField } from "./hpack.ts";

// No `:protocol`: Ferry never sends SETTINGS_ENABLE_CONNECT_PROTOCOL, so extended CONNECT (RFC
// 8441 4) is malformed here.
const REQUEST_PSEUDO = new Set([":method", ":scheme", ":path", ":authority"]);
const CONNECTION_SPECIFIC = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);
/** A field name (RFC 9110 5.1 token), lower-case as RFC 9113 8.2.1 requires. */
const NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
/** A method (RFC 9110 9.1 token). */
const METHOD = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
/** NUL, CR, LF (RFC 9113 8.2.1), the other controls but HTAB, and DEL (RFC 9110 5.5). */
// deno-lint-ignore no-control-regex
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
/** RFC 9110 8.6: digits only (a list of equal values is refused as the HTTP/1.1 parser does). */
const LENGTH = /^\d{1,15}$/;

export type HeaderKind = "request" | "response" | "trailers";

/** Returns a reason when the list is malformed, undefined when it is fine. */
export function headerProblem(
  fields: readonly HeaderField[],
  kind: HeaderKind,
): string | undefined {
  let regularSeen = false;
  const pseudo = new Set<string>();
  let lengths = 0;
  let host: string | undefined;
  for (const [name, value] of fields) {
    if (BAD_VALUE.test(value)) return `invalid character in the value of ${JSON.stringify(name)}`;
    if (name.charCodeAt(0) === 58 /* : */) {
      if (kind === "trailers") return "pseudo-header in trailers";
      if (regularSeen) return "pseudo-header after a regular header";
      const known = kind === "request" ? REQUEST_PSEUDO.has(name) : name === ":status";
      if (!known) return `unknown pseudo-header ${name}`;
      if (pseudo.has(name)) return `duplicate ${name}`;
      pseudo.add(name);
      continue;
    }
    regularSeen = true;
    if (!NAME.test(name)) return `invalid header name ${JSON.stringify(name)}`;
    if (CONNECTION_SPECIFIC.has(name)) return `connection-specific header ${name}`;
    if (name === "te" && value !== "trailers") return "te other than trailers";
    if (kind !== "request") continue;
    if (name === "content-length" && (++lengths > 1 || !LENGTH.test(value))) {
      return "invalid or repeated content-length";
    }
    if (name === "host") host = value;
  }
  if (kind === "request") {
    const method = headerValue(fields, ":method");
    if (method === undefined) return "missing :method";
    if (!METHOD.test(method)) return "invalid :method";
    // A tunnel (RFC 9113 8.5) is nothing this server serves; with :scheme or :path it is
    // malformed anyway, and without them it always was refused (no :path).
    if (method === "CONNECT") return "CONNECT is not served";
    const path = headerValue(fields, ":path");
    if (path === undefined || !pseudo.has(":scheme")) return "missing :path or :scheme";
    // Path and query only (RFC 9113 8.3.1): no fragment, as on HTTP/1.1.
    if ((path[0] !== "/" && !(path === "*" && method === "OPTIONS")) || path.includes("#")) {
      return "invalid :path (not /... or * for OPTIONS, or with a fragment)";
    }
    // RFC 9113 8.3.1: the one authority is routed on; a Host naming another is malformed.
    const authority = headerValue(fields, ":authority");
    if (host !== undefined && authority !== undefined && hostName(host) !== hostName(authority)) {
      return "host names another host than :authority";
    }
  }
  if (kind === "response" && !pseudo.has(":status")) return "missing :status";
  return undefined;
}

/** An authority's host, lower-case and without a port (routes match on that: a.test:443 is a.test). */
function hostName(authority: string): string {
  return authority.toLowerCase().replace(/:\d*$/, "");
}

/** The value of the first field called `name`, or undefined. */
export function headerValue(fields: readonly HeaderField[], name: string): string | undefined {
  for (const [n, v] of fields) if (n === name) return v;
  return undefined;
}
