/**
 * An HTTP/1.1 upgrade (WebSocket, RFC 6455 4.1) through the codec: the client's handshake goes
 * upstream as it came (its key, version, subprotocols and extensions), on a connection of its
 * own; after a real 101 the socket is handed over whole, with any bytes that came behind the head.
 */
import { H1ProtocolError, parseResponseHead, type ResponseHead } from "./parse.ts";
import { MAX_INTERIM, serializeHead } from "./connection.ts";
import type { EndpointPool } from "./pool.ts";
import { ProxyError } from "../pipeline/errors.ts";

const HEAD_BUFFER = 16 * 1024;
const WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** A connection switched to another protocol by a 101. */
export interface Upgraded {
  /** The 101 head. */
  readonly head: ResponseHead;
  readonly conn: Deno.Conn;
  /** Bytes the upstream sent right behind its 101 (already the new protocol's). */
  readonly early: Uint8Array;
  /** Closes the socket (once; later calls do nothing). */
  close(): void;
}

/** The upstream answered the upgrade with something other than 101 (status kept for the 502). */
export class NotUpgraded extends Error {
  constructor(readonly status: number) {
    super(`answered the upgrade with ${status}, not 101`);
    this.name = "NotUpgraded";
  }
}

/**
 * Sends a WebSocket handshake to `pool`'s endpoint and waits for a 101 whose Sec-WebSocket-Accept
 * matches the key sent. `headers` are the end-to-end request headers, the handshake's own
 * (sec-websocket-*) included; Upgrade and Connection are added here.
 */
export async function upgradeWebSocket(
  pool: EndpointPool,
  target: string,
  headers: readonly [string, string][],
  signal: AbortSignal,
): Promise<Upgraded> {
  const key = headers.find(([name]) => name === "sec-websocket-key")?.[1];
  if (!key) throw new ProxyError("bad_request", "a WebSocket upgrade without Sec-WebSocket-Key");
  let head: Uint8Array;
  try {
    head = serializeHead(
      "GET",
      target,
      [...headers, ["connection", "upgrade"], ["upgrade", "websocket"]],
      false,
    ).head;
  } catch (err) {
    throw new ProxyError("bad_request", `upgrade cannot be forwarded: ${(err as Error).message}`);
  }
  const dialed = await pool.dialTunnel();
  const conn = dialed.conn;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    dialed.done();
    try {
      conn.close();
    } catch { /* closed */ }
  };
  const onAbort = () => close();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    if (signal.aborted) throw signal.reason;
    let off = 0;
    while (off < head.length) off += await conn.write(head.subarray(off));
    let buf = new Uint8Array(HEAD_BUFFER);
    let start = 0, end = 0;
    let interim = 0;
    for (;;) {
      const parsed = end > start ? parseResponseHead(buf, start, end, "GET") : undefined;
      if (parsed) {
        start += parsed.size;
        // 100 and 103 may come first, as many as the codec skips; any other answer but 101 is a
        // refusal.
        if (parsed.status === 100 || parsed.status === 103) {
          if (++interim > MAX_INTERIM) {
            throw new H1ProtocolError(`more than ${MAX_INTERIM} interim (1xx) responses`);
          }
          continue;
        }
        if (parsed.status !== 101) throw new NotUpgraded(parsed.status);
        await checkAccept(parsed, key);
        return { head: parsed, conn, early: buf.slice(start, end), close };
      }
      if (end === buf.length) {
        if (buf.length >= 4 * HEAD_BUFFER) throw new H1ProtocolError("response head too large");
        const grown = new Uint8Array(buf.length * 2);
        grown.set(buf.subarray(0, end));
        buf = grown;
      }
      const n = await conn.read(buf.subarray(end));
      if (n === null) throw new H1ProtocolError("the upstream closed before answering the upgrade");
      end += n;
    }
  } catch (err) {
    close();
    throw err;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

/** RFC 6455 4.2.2: the 101 must be a WebSocket one, with the accept value for our key. */
async function checkAccept(head: ResponseHead, key: string): Promise<void> {
  const get = (name: string) => head.headers.find(([n]) => n === name)?.[1];
  if (get("upgrade")?.toLowerCase() !== "websocket") {
    throw new H1ProtocolError("the upstream's 101 is not a WebSocket upgrade");
  }
  const digest = await crypto.subtle.digest("SHA-1", new TextEncoder().encode(key + WS_GUID));
  const expected = btoa(String.fromCharCode(...new Uint8Array(digest)));
  if (get("sec-websocket-accept") !== expected) {
    throw new H1ProtocolError("the upstream's 101 has a wrong Sec-WebSocket-Accept");
  }
}
