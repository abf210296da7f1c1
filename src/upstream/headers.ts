/**
 * Hop-by-hop handling (RFC 9110 7.6.1): these headers describe one connection, so a proxy must
 * not pass them on, in either direction. Deno.serve and fetch both pass them verbatim.
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

function connectionListed(headers: Headers): Set<string> | undefined {
  const conn = headers.get("connection");
  if (conn === null) return undefined;
  const names = new Set<string>();
  for (const token of conn.split(",")) {
    const name = token.trim().toLowerCase();
    if (name) names.add(name);
  }
  return names;
}

/**
 * Copies end-to-end headers only: drops the fixed hop-by-hop set, every `proxy-*` header and any
 * name listed in `Connection`. `set-cookie` lines are kept one by one.
 */
export function endToEndHeaders(src: Headers, alsoDrop?: ReadonlySet<string>): Headers {
  const listed = connectionListed(src);
  const out = new Headers();
  for (const [name, value] of src) {
    if (HOP_BY_HOP.has(name) || name.startsWith("proxy-")) continue;
    if (listed?.has(name) || alsoDrop?.has(name)) continue;
    out.append(name, value);
  }
  return out;
}

/** True for a WebSocket upgrade request (RFC 6455 4.1): GET with `Upgrade: websocket`. */
export function isWebSocketUpgrade(req: Request): boolean {
  if (req.method !== "GET") return false;
  const upgrade = req.headers.get("upgrade");
  return upgrade !== null && upgrade.toLowerCase().split(",").some((t) => t.trim() === "websocket");
}
