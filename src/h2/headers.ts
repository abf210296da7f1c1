/**
 * Header-list checks of RFC 9113 8.2 and 8.3 for what arrives on a stream: lowercase names,
 * pseudo-headers first and only the known ones, no connection-specific fields, `te` only
 * "trailers", and the pseudo-headers a request must carry. A violation is a stream error.
 */
import type { HeaderField } from "./hpack.ts";

const REQUEST_PSEUDO = new Set([":method", ":scheme", ":path", ":authority", ":protocol"]);
const CONNECTION_SPECIFIC = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
]);
const UPPER = /[A-Z]/;

export type HeaderKind = "request" | "response" | "trailers";

/** Returns a reason when the list is malformed, undefined when it is fine. */
export function headerProblem(
  fields: readonly HeaderField[],
  kind: HeaderKind,
): string | undefined {
  let regularSeen = false;
  const pseudo = new Set<string>();
  for (const [name, value] of fields) {
    if (name.length === 0 || UPPER.test(name)) return `invalid header name ${JSON.stringify(name)}`;
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
    if (CONNECTION_SPECIFIC.has(name)) return `connection-specific header ${name}`;
    if (name === "te" && value !== "trailers") return "te other than trailers";
  }
  if (kind === "request") {
    if (!pseudo.has(":method")) return "missing :method";
    if (!pseudo.has(":path") || !pseudo.has(":scheme")) return "missing :path or :scheme";
  }
  if (kind === "response" && !pseudo.has(":status")) return "missing :status";
  return undefined;
}

/** The value of the first field called `name`, or undefined. */
export function headerValue(fields: readonly HeaderField[], name: string): string | undefined {
  for (const [n, v] of fields) if (n === name) return v;
  return undefined;
}
