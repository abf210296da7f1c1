/**
 * WebSocket proxying: connect upstream first (so the subprotocol the upstream picks is the one the
 * client gets, and a dead upstream is a 502 rather than an open-then-closed socket), then upgrade
 * the client and relay frames both ways with a bounded send buffer.
 */
import type { RequestContext } from "../pipeline/types.ts";
import { type DownstreamLink, downstreamLink, servedRequest } from "../pipeline/downstream.ts";
import { ProxyError } from "../pipeline/errors.ts";
import type { Endpoint } from "./cluster.ts";
import { upstreamHeaders, type UpstreamHeaderSettings } from "./request_headers.ts";
import type { H1Transport } from "../h1/transport.ts";
import type { Upgraded } from "../h1/upgrade.ts";
import { type BodyErrorCounter, ClientGoneReason, TimeoutReason } from "./transport.ts";
import { connectionListed } from "./headers.ts";
import { WsTunnel } from "./ws_tunnel.ts";

/** Handshake headers belong to each hop's own handshake, so they are not copied upstream. */
const HANDSHAKE = new Set([
  "sec-websocket-key",
  "sec-websocket-version",
  "sec-websocket-extensions",
  "sec-websocket-protocol",
  "sec-websocket-accept",
  "host",
]);

/** The longest a WebSocket handshake may take upstream; a shorter route `timeout` bounds it too. */
const OPEN_TIMEOUT_MS = 10_000;

/** The handshake's bound: the route's timeout for response headers, within OPEN_TIMEOUT_MS. */
function openTimeout(s: WebSocketSettings): number {
  return s.timeoutMs > 0 ? Math.min(s.timeoutMs, OPEN_TIMEOUT_MS) : OPEN_TIMEOUT_MS;
}
/** RFC 6455 7.4.1 registry: 1014 is "bad gateway", the honest code when the upstream vanished. */
const CLOSE_BAD_GATEWAY = 1014;
const CLOSE_POLICY = 1008;
const CLOSE_INTERNAL = 1011;
const CLOSE_TOO_BIG = 1009;
/** 4009 mirrors 1009 ("message too big") in the range Deno's client may send. */
const CLOSE_UPSTREAM_TOO_BIG = 4009;
/** Deno's client-side close() takes only 1000 and 3000-4999; 4008 mirrors 1008 in that range. */
const CLOSE_SLOW_UPSTREAM = 4008;

/** Headers of the upstream's 101 that belong to its own hop or that Deno.serve writes itself. */
const NOT_RELAYED_101 = new Set([
  "connection",
  "upgrade",
  "sec-websocket-accept",
  "date",
  "content-length",
  "transfer-encoding",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
]);

/** What a WebSocket proxy reads of its route's settings. */
type WebSocketSettings = UpstreamHeaderSettings & {
  readonly cluster: { readonly upgrades: H1Transport | undefined };
  readonly websocketMaxBuffer: number;
  readonly websocketMaxMessageBytes: number;
  /** The route's time allowed until upstream response headers (0: none). */
  readonly timeoutMs: number;
  /** Counts a WebSocket the upstream broke off (closed without a close frame) while it was live. */
  readonly metrics: BodyErrorCounter;
};

export async function proxyWebSocket(
  req: Request,
  ctx: RequestContext,
  s: WebSocketSettings,
  endpoint: Endpoint,
  path: string,
): Promise<Response> {
  // Behind the guard, on an h1 cluster (or an auto one on the h2 transport): a byte tunnel
  // through the codec. Elsewhere (no guard, HTTP/2 clients, fetch and h2c clusters) frames are
  // relayed between two Deno WebSockets.
  // Refused before any upstream is contacted: a handshake Deno cannot complete with the client
  // would otherwise open an upstream WebSocket and then fail as an internal error.
  const fault = handshakeFault(req.headers);
  if (fault) throw new ProxyError("bad_request", fault);
  const link = downstreamLink(req);
  const h1 = s.cluster.upgrades;
  if (link && !link.h2 && h1) return await tunnelWebSocket(req, ctx, s, endpoint, path, link, h1);
  return await relayWebSocket(req, ctx, s, endpoint, path);
}

/** What Deno.upgradeWebSocket would refuse in a client's handshake (RFC 6455 4.2.1), if anything. */
function handshakeFault(headers: Headers): string | undefined {
  const connection = headers.get("connection") ?? "";
  if (!connection.toLowerCase().split(",").some((t) => t.trim() === "upgrade")) {
    return "a WebSocket upgrade without Connection: upgrade";
  }
  if (!headers.get("sec-websocket-key")) return "a WebSocket upgrade without Sec-WebSocket-Key";
  if (headers.get("sec-websocket-version") !== "13") {
    return "a WebSocket upgrade without Sec-WebSocket-Version: 13";
  }
  return undefined;
}

/**
 * The client's handshake goes upstream as it came (key, version, subprotocols, extensions);
 * after the upstream's 101 the client gets that 101's headers from Deno.serve's own 101 (the
 * accept value is the same: same key), and the guard joins the two sockets byte for byte.
 */
async function tunnelWebSocket(
  req: Request,
  ctx: RequestContext,
  s: WebSocketSettings,
  endpoint: Endpoint,
  path: string,
  link: DownstreamLink,
  h1: H1Transport,
): Promise<Response> {
  const headers = upstreamHeaders(req, ctx, s, endpoint);
  const ctl = new AbortController();
  const timer = setTimeout(
    () =>
      ctl.abort(new TimeoutReason(`WebSocket upstream ${endpoint.origin} did not open in time`)),
    openTimeout(s),
  );
  const onClientGone = () => ctl.abort(new ClientGoneReason("the client went away"));
  req.signal.addEventListener("abort", onClientGone, { once: true });
  let up: Upgraded;
  try {
    up = await h1.upgrade(endpoint.origin + path + ctx.search, headers.pairs, ctl.signal);
  } finally {
    clearTimeout(timer);
    req.signal.removeEventListener("abort", onClientGone);
  }
  let response: Response;
  try {
    // idleTimeout 0: Deno's socket must send nothing (no pings) into the client's byte stream.
    const upgraded = Deno.upgradeWebSocket(servedRequest(req), { idleTimeout: 0 });
    upgraded.socket.onerror = () => {};
    response = upgraded.response;
    const listed = connectionListed(up.head.headers);
    for (const [name, value] of up.head.headers) {
      if (NOT_RELAYED_101.has(name) || listed?.has(name)) continue;
      response.headers.append(name, value);
    }
  } catch (err) {
    up.close();
    throw err;
  }
  link.tunnel = new WsTunnel(up, link, s.websocketMaxMessageBytes, s.metrics);
  response.headers.set("x-request-id", ctx.requestId);
  return response;
}

/**
 * Two Deno WebSockets with frames relayed between them: used where the guard's raw client
 * socket is not at hand. Deno's client WebSocket limits which close codes reach the upstream.
 */
async function relayWebSocket(
  req: Request,
  ctx: RequestContext,
  s: WebSocketSettings,
  endpoint: Endpoint,
  path: string,
): Promise<Response> {
  const protocols = (req.headers.get("sec-websocket-protocol") ?? "")
    .split(",").map((p) => p.trim()).filter((p) => p.length > 0);
  const headers = upstreamHeaders(req, ctx, s, endpoint, HANDSHAKE);
  const upstream = new WebSocket(endpoint.wsOrigin + path + ctx.search, {
    protocols,
    headers: headers.pairs,
  });
  upstream.binaryType = "arraybuffer";
  await opened(upstream, endpoint.origin, openTimeout(s));

  // A copy's headers went upstream above; only the served request can be upgraded.
  let upgraded: ReturnType<typeof Deno.upgradeWebSocket>;
  try {
    upgraded = Deno.upgradeWebSocket(servedRequest(req), {
      ...(upstream.protocol ? { protocol: upstream.protocol } : {}),
    });
  } catch (err) {
    upstream.close(); // else the upstream WebSocket stays open, with nobody on the other side
    throw err;
  }
  const { socket: client, response } = upgraded;
  client.binaryType = "arraybuffer";
  const limit = s.websocketMaxBuffer;
  const maxMessage = s.websocketMaxMessageBytes;
  const link = downstreamLink(req);

  // Frames, and even the close, from upstream may arrive before the client side is open: hold
  // them (bounded) until it opens. close() on a socket still CONNECTING leaves the client open
  // forever, so a close is deferred as well.
  let early: (string | ArrayBuffer)[] | undefined = [];
  let earlyBytes = 0;
  let pendingClose: { code?: number; reason?: string } | undefined;
  upstream.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
    if (link) link.lastMessageAt = performance.now();
    if (overLimit(e.data, maxMessage)) {
      const reason = `upstream message over ${maxMessage} bytes`;
      early = undefined;
      if (upstream.readyState <= WebSocket.OPEN) upstream.close(CLOSE_UPSTREAM_TOO_BIG, reason);
      // 1011, not 1014: Deno's own client (fastwebsockets) refuses 1014 as a close code.
      closeClient(CLOSE_INTERNAL, reason);
      return;
    }
    if (early) {
      if (pendingClose) return;
      early.push(e.data);
      earlyBytes += size(e.data);
      if (earlyBytes > limit) {
        early = [];
        closeBoth("upstream sent more than the send buffer limit before the client side opened");
      }
      return;
    }
    relay(
      client,
      e.data,
      limit,
      () => closeBoth("client is not reading: send buffer limit exceeded"),
    );
  };
  client.onopen = () => {
    for (const m of early ?? []) client.send(m);
    early = undefined;
    if (pendingClose) closeClient(pendingClose.code, pendingClose.reason);
  };
  client.onmessage = (e: MessageEvent<string | ArrayBuffer>) => {
    if (link) link.lastMessageAt = performance.now();
    // Behind the guard, frames over the limits never get here (src/pipeline/ws_frames.ts); this
    // check is for listeners without it, after Deno has collected the message.
    if (overLimit(e.data, maxMessage)) {
      closeTunnel(CLOSE_TOO_BIG, `message over ${maxMessage} bytes`);
      return;
    }
    relay(
      upstream,
      e.data,
      limit,
      () => closeBoth("upstream is not reading: send buffer limit exceeded"),
    );
  };
  upstream.onclose = (e) => {
    if (e.code === 1005) closeClient();
    else if (e.code === 1006 || e.code < 1000) {
      // No close frame: 1006, or 0 as Deno 2.9.6's client reports a bare TCP close (relayed as
      // such, it went to the client as a close frame with code 0, which no client accepts).
      // Broken off while the client was still there (not Ferry's close nor the client's).
      if (client.readyState <= WebSocket.OPEN) s.metrics.bodyFailed("upstream_reset");
      closeClient(CLOSE_BAD_GATEWAY, "upstream closed without a close frame");
    } else closeClient(e.code, e.reason);
  };
  client.onclose = (e) => {
    if (upstream.readyState > WebSocket.OPEN) return;
    closeUpstream(upstream, e.code, e.reason);
  };
  client.onerror = () => closeUpstream(upstream, 1006, "");
  // The guard closes through here: frames over the limits (1009), an idle tunnel (1001).
  if (link) link.closeTunnel = closeTunnel;

  /** Closes the client with `code` and tells the upstream why (as closeUpstream can). */
  function closeTunnel(code: number, reason: string): void {
    closeClient(code, reason);
    if (upstream.readyState <= WebSocket.OPEN) closeUpstream(upstream, code, reason);
  }

  /** Closes the client side now, or as soon as it opens if it is still CONNECTING. */
  function closeClient(code?: number, reason?: string): void {
    if (client.readyState === WebSocket.CONNECTING) {
      pendingClose ??= code === undefined ? {} : { code, reason: reason ?? "" };
    } else if (client.readyState === WebSocket.OPEN) {
      if (code === undefined) client.close();
      else client.close(code, reason);
    }
  }

  function closeBoth(reason: string): void {
    closeClient(CLOSE_POLICY, reason);
    if (upstream.readyState <= WebSocket.OPEN) upstream.close(CLOSE_SLOW_UPSTREAM, reason);
  }

  response.headers.set("x-request-id", ctx.requestId);
  return response;
}

/**
 * A 101 (or other 1xx final answer) to a request that asked for no upgrade: WebSocket upgrades
 * never take the HTTP forwarding path, so the client would take the connection for a tunnel.
 */
export function notAnUpgrade(status: number): ProxyError {
  return new ProxyError(
    "upstream_protocol_error",
    `upstream answered ${status} to a request that asked for no upgrade`,
  );
}

function relay(
  to: WebSocket,
  data: string | ArrayBuffer,
  limit: number,
  overflow: () => void,
): void {
  if (to.readyState !== WebSocket.OPEN) return;
  to.send(data);
  // bufferedAmount counts bytes queued but not yet written to the socket.
  if (to.bufferedAmount > limit) overflow();
}

/**
 * Client close codes outside 1000 and 3000-4999 (1001 going away, 1011 ...) cannot be sent by
 * Deno's WebSocket client: they travel as 1000 with the original code kept in the reason.
 */
function closeUpstream(upstream: WebSocket, code: number, reason: string): void {
  if (code === 1000 || (code >= 3000 && code <= 4999)) upstream.close(code, reason);
  else if (code === 1005) upstream.close();
  else upstream.close(1000, truncateReason(`${code}${reason ? " " + reason : ""}`));
}

function truncateReason(text: string): string {
  const bytes = new TextEncoder().encode(text);
  return bytes.length <= 123 ? text : new TextDecoder().decode(bytes.slice(0, 120));
}

/** True when a message is larger than `max` bytes (strings counted in UTF-8). */
function overLimit(data: string | ArrayBuffer, max: number): boolean {
  if (typeof data !== "string") return data.byteLength > max;
  // UTF-8 takes 1 to 3 bytes per UTF-16 unit: encode only when the length cannot tell.
  if (data.length > max) return true;
  if (data.length * 3 <= max) return false;
  return new TextEncoder().encode(data).length > max;
}

function size(data: string | ArrayBuffer): number {
  return typeof data === "string" ? data.length * 3 : data.byteLength;
}

function opened(ws: WebSocket, origin: string, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      ws.close();
      reject(
        new ProxyError("upstream_timeout", `WebSocket upstream ${origin} did not open in time`),
      );
    }, timeoutMs);
    ws.onopen = () => {
      clearTimeout(timer);
      resolve();
    };
    let error = "";
    ws.onerror = (e) => error = (e as ErrorEvent).message ?? "";
    ws.onclose = (e) => {
      clearTimeout(timer);
      // Deno's client reports an answer other than 101 only in the error's message.
      const status = /Invalid status code:? (\d{3})/.exec(error)?.[1];
      reject(
        status
          ? new ProxyError(
            "upstream_protocol_error",
            `WebSocket upstream ${origin} answered the upgrade with ${status}, not 101`,
          )
          : new ProxyError(
            "upstream_connect_failure",
            `WebSocket handshake with ${origin} failed (${e.code}${e.reason ? " " + e.reason : ""}${
              error ? ": " + error : ""
            })`,
          ),
      );
    };
  });
}
