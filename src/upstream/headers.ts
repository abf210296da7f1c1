/**
 * Hop-by-hop handling (RFC 9110 7.6.1): these headers describe one connection, so a proxy must
 * not pass them on, in either direction. Deno.serve and fetch both pass them verbatim.
 *
 * Forwarded headers are kept as a plain list of [name, value] pairs rather than a `Headers`
 * object: every copy of a `Headers` object sorts it (about 4 us each, measured), and fetch and
 * Response copy what they are given, while a pair list is taken as it is.
 */

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "expect",
]);

/** Lower-case header name/value pairs, in order; set-cookie lines stay separate. */
export class HeaderList {
  constructor(readonly pairs: [string, string][] = []) {}

  get(name: string): string | null {
    for (const p of this.pairs) if (p[0] === name) return p[1];
    return null;
  }

  has(name: string): boolean {
    for (const p of this.pairs) if (p[0] === name) return true;
    return false;
  }

  /** Replaces every line of `name` with one. */
  set(name: string, value: string): void {
    let found = false;
    const pairs = this.pairs;
    for (let i = 0; i < pairs.length; i++) {
      if (pairs[i]![0] !== name) continue;
      if (found) pairs.splice(i--, 1);
      else pairs[i] = [name, value];
      found = true;
    }
    if (!found) pairs.push([name, value]);
  }

  /** Appends to an existing value with ", " (not for set-cookie), else adds the header. */
  appendValue(name: string, value: string): void {
    for (const p of this.pairs) {
      if (p[0] === name) {
        p[1] = `${p[1]}, ${value}`;
        return;
      }
    }
    this.pairs.push([name, value]);
  }

  delete(name: string): void {
    const pairs = this.pairs;
    for (let i = pairs.length - 1; i >= 0; i--) if (pairs[i]![0] === name) pairs.splice(i, 1);
  }
}

/**
 * Copies end-to-end headers only: drops the fixed hop-by-hop set, every `proxy-*` header and any
 * name listed in `Connection`. One pass over the source.
 */
export function endToEndHeaders(src: Headers, alsoDrop?: ReadonlySet<string>): HeaderList {
  const conn = src.get("connection");
  let listed: Set<string> | undefined;
  if (conn !== null) {
    listed = new Set();
    for (const token of conn.split(",")) {
      const name = token.trim().toLowerCase();
      if (name) listed.add(name);
    }
  }
  const out: [string, string][] = [];
  // forEach, not for-of: Deno's Headers iterator costs about 10x more (deno bench, 8 headers:
  // ~10 us against ~1 us), with the same sorted, combined pairs.
  src.forEach((value, name) => {
    if (HOP_BY_HOP.has(name) || name.startsWith("proxy-")) return;
    if (listed?.has(name) || alsoDrop?.has(name)) return;
    out.push([name, value]);
  });
  return new HeaderList(out);
}

/**
 * endToEndHeaders for header lines as they came off the wire (lower-case names, in order,
 * repeats kept, as the h1 codec parses them): the same headers are dropped.
 */
export function endToEndPairs(src: readonly [string, string][]): HeaderList {
  let listed: Set<string> | undefined;
  for (const [name, value] of src) {
    if (name !== "connection") continue;
    for (const token of value.split(",")) {
      const t = token.trim().toLowerCase();
      if (t) (listed ??= new Set()).add(t);
    }
  }
  const out: [string, string][] = [];
  for (const [name, value] of src) {
    if (HOP_BY_HOP.has(name) || name.startsWith("proxy-") || listed?.has(name)) continue;
    out.push([name, value]);
  }
  return new HeaderList(out);
}

/** True for a WebSocket upgrade request (RFC 6455 4.1): GET with `Upgrade: websocket`. */
export function isWebSocketUpgrade(req: Request): boolean {
  if (req.method !== "GET") return false;
  const upgrade = req.headers.get("upgrade");
  return upgrade !== null && upgrade.toLowerCase().split(",").some((t) => t.trim() === "websocket");
}
