/**
 * The connection guard: Ferry accepts TCP (and terminates TLS) itself, because Deno.serve has no
 * header-read timeout, no idle timeout and no connection limit. Each accepted connection is
 * counted against global and per-address caps, then its bytes are piped to an inner Deno.serve
 * bound to loopback. The inner handler tells the guard when a request starts and completes, so
 * the guard knows, for any protocol, whether a request is in flight:
 *
 * - header timeout: from accept (TLS: after the handshake, which node:tls bounds) until the
 *   first request reaches the handler; missed: 408 on HTTP/1.1, close on HTTP/2;
 * - idle timeout: no request in flight for that long: close. On a keep-alive connection the
 *   next request must reach the handler within it (a slow second head is cut by this one);
 * - a first HTTP/1.1 head larger than Deno's own parser accepts gets a 431 here instead of
 *   Deno's bare 400, so that oversized headers are answered 431 on both protocols.
 *
 * One sweep timer per guard checks every connection; no timer per connection or request.
 * See docs/connections.md for the rules and the measured cost.
 *
 * One piece past 500 lines: accept, TLS, caps, the timers' sweep and the byte pipes all act on
 * the same per-connection record; split, each would need the whole record anyway.
 */
import type { Logger } from "../observability/log.ts";
import type { DownstreamRefusal } from "../observability/metrics.ts";
import type { ClientIdentity } from "../pipeline/types.ts";
import {
  type AcceptErrorReason,
  acceptErrorReason,
  acceptLoop,
  type Admission,
  ConnectionAdmission,
  type ConnectionCaps,
  connectionCaps,
  FailureBursts,
  RebindingServer,
  refusalLabel,
} from "./admission.ts";
import { isWebSocketUpgrade } from "../upstream/headers.ts";
import {
  attachTicket,
  DownstreamLink,
  type RequestTicket,
  type TunnelClient,
} from "../pipeline/downstream.ts";
import { errorResponse, ProxyError, type ProxyErrorKind } from "../pipeline/errors.ts";
import type { TlsListener } from "./node_tls.ts";
import { nodeTlsPart } from "../upstream/upstream_tls.ts";
import type { ListenerTls } from "./tls_material.ts";
import { WsFrameLimit } from "../pipeline/ws_frames.ts";
import { setLoopbackListenerBuffers } from "./socket_buffers.ts";
import { rawReader, type RawWrite, rawWriter } from "./raw_io.ts";
import { serveHttp1 } from "../h1/server.ts";
import { type H1ProtocolError, REQUEST_LIMITS } from "../h1/parse.ts";
import { serverSpan } from "../observability/tracing.ts";

export interface GuardLimits extends ConnectionCaps {
  /** Milliseconds; 0: none. */
  readonly headerTimeoutMs: number;
  /** Milliseconds; 0: none. */
  readonly idleTimeoutMs: number;
  /** A client write pending this long closes the connection. Milliseconds; 0: none. */
  readonly sendTimeoutMs: number;
  /** An upgraded connection with no byte either way for this long is closed. 0: none. */
  readonly tunnelIdleTimeoutMs: number;
  /** WebSocket frames and messages from clients over these get 1009. */
  readonly wsMaxFrameBytes: number;
  readonly wsMaxMessageBytes: number;
  /** Requests in flight at once on one HTTP/2 connection; more get 503. 0: no cap. */
  readonly maxStreamsPerConnection: number;
}

/** The guard's limits from the `server:` config section. */
export function guardLimits(server: {
  readonly header_timeout: number;
  readonly idle_timeout: number;
  readonly max_connections: number;
  readonly max_connections_per_ip: number;
  readonly send_timeout: number;
  readonly websocket_idle_timeout: number;
  readonly websocket_max_frame_bytes: number;
  readonly websocket_max_message_bytes: number;
  readonly max_streams_per_connection: number;
}): GuardLimits {
  return {
    headerTimeoutMs: server.header_timeout,
    idleTimeoutMs: server.idle_timeout,
    ...connectionCaps(server),
    sendTimeoutMs: server.send_timeout,
    tunnelIdleTimeoutMs: server.websocket_idle_timeout,
    wsMaxFrameBytes: server.websocket_max_frame_bytes,
    wsMaxMessageBytes: server.websocket_max_message_bytes,
    maxStreamsPerConnection: server.max_streams_per_connection,
  };
}

export interface GuardOptions {
  /** The listener's config name, for logs. */
  readonly name: string;
  readonly hostname: string;
  readonly port: number;
  readonly tls?: GuardTls | undefined;
  /** Share the port with other workers' guards (SO_REUSEPORT; server.workers > 1). */
  readonly reusePort?: boolean;
  /** Read at every accept and every sweep, so a reload changes limits without a restart. */
  readonly limits: () => GuardLimits;
  /** Counts the connections against the caps (default: this guard's own, one isolate). */
  readonly admission?: Admission | undefined;
  readonly log: Logger;
  /** Sweep period; timeouts fire up to this late. */
  readonly sweepMs?: number;
  /** A failed accept, on the guard's own listener or the inner server's. */
  readonly onAcceptError?: (socket: "listener" | "inner", reason: AcceptErrorReason) => void;
  /** A connection or request refused or ended before any handler ran (counted in metrics). */
  readonly onRefused?: (reason: DownstreamRefusal) => void;
  /**
   * HTTP/1.0 requests without Host are served as `localhost:<inner port>` (what the inner
   * Deno.serve fills in for a request without Host or :authority) instead of getting 400: the
   * admin listener's probes (HTTP/1.0 checks) send none.
   */
  readonly hostlessHttp10?: boolean;
}

/**
 * The handler Ferry's own HTTP/1.1 server calls (the same one the inner Deno.serve runs, before
 * `wrap`), and the answer to a handler that throws (Deno.serve's `onError`).
 */
export interface OwnServer {
  readonly handler: (req: Request, info: GuardedInfo) => Promise<Response>;
  readonly onError: (err: unknown) => Response;
}

/** A TLS listener's material and settings (src/server/tls_material.ts). */
export type GuardTls = ListenerTls;

/** What the guard hands the inner handler: the real client address and its verified identity. */
export interface GuardedInfo extends Deno.ServeHandlerInfo<Deno.NetAddr> {
  readonly identity?: ClientIdentity | undefined;
}

type Phase =
  /** Waiting for a complete request head (the header timeout runs). */
  | "head"
  /** Head complete on HTTP/1.1, waiting for the handler to start. */
  | "headDone"
  /** At least one request in the handler. */
  | "busy"
  /** No request in flight (the idle timeout runs). */
  | "idle"
  /**
   * Upgraded (WebSocket, only after a real upgrade request): instead of the request timeouts, the
   * tunnel idle timeout, the send timeout and the client's frame limits apply.
   */
  | "tunnel"
  /** Being answered by the guard itself and closed: no sweep acts on it. */
  | "rejecting";

/** A downstream connection as the guard sees it. */
class Guarded {
  phase: Phase = "head";
  /** When the current phase started (performance.now()). */
  since: number;
  active = 0;
  h2 = false;
  /** HTTP/1.1 head scan: bytes and line ends seen, and how far the end-of-head match got. */
  headBytes = 0;
  headLines = 0;
  /** The last two bytes of the previous read, while scanning a head. */
  last1 = -1;
  last2 = -1;
  closed = false;
  /** Served by Ferry's own HTTP/1.1 server (src/h1/server.ts), not through the inner hop. */
  own = false;
  /** TLS (if any) is up: the guard may answer the client itself. */
  ready = false;
  /** Draining: the inner connection was half-closed so it ends after its last response. */
  closing = false;
  inner: Deno.TcpConn | undefined;
  /** The client certificate's identity (downstream mTLS), once TLS is up. */
  identity: ClientIdentity | undefined;
  /** Shared with the connection's handlers: whether a client write is blocked. */
  readonly link = new DownstreamLink();
  /** In a tunnel: the client's WebSocket frame limits. */
  frames: WsFrameLimit | undefined;
  /** A tunnel asked to close: dropped at this time if it has not ended by itself. */
  closeBy = 0;
  /**
   * A WebSocket upgrade handed to the inner server: told once its answer is known, whether it
   * made a tunnel (until then the client's later bytes are held back).
   */
  upgradeDecided: ((tunnel: boolean) => void) | undefined;
  constructor(
    readonly conn: Deno.Conn,
    readonly remote: Deno.NetAddr,
    now: number,
  ) {
    this.since = now;
  }
}

/**
 * Heads larger than this (or with more lines) are refused before Deno's parser sees them: the
 * limits Ferry's own HTTP/1.1 server applies.
 */
const HEAD_MAX_BYTES = REQUEST_LIMITS.maxHeadBytes;
const HEAD_MAX_LINES = REQUEST_LIMITS.maxHeadLines;
const SMALL_BUFFER = 2048;
/** RFC 6455 7.4.1 close codes the guard asks for. */
const CLOSE_GOING_AWAY = 1001;
const LARGE_BUFFER = 32 * 1024;
/**
 * SO_SNDBUF/SO_RCVBUF of Deno.serve's end of the hop (the kernel doubles it): twice the pump's
 * largest read, so a write never waits for less than a full read's worth of room.
 */
const HOP_BUFFER_BYTES = 64 * 1024;
const H2_PREFACE = "PRI * HTTP/2.0";
/** A tunnel asked to close (with a close frame) is cut this long after, if still open. */
const TUNNEL_CLOSE_GRACE_MS = 2000;

export class ConnectionGuard {
  readonly #listener: Deno.Listener;
  readonly #opts: GuardOptions;
  readonly #log: Logger;
  /** Inner connection's local port -> the downstream connection it carries. */
  readonly #byInnerPort = new Map<number, Guarded>();
  readonly #all = new Set<Guarded>();
  readonly #admission: Admission;
  /** The limits as the sweep last read them (per-request checks read this, not the config). */
  #limits: GuardLimits;
  readonly #sweep: ReturnType<typeof setInterval>;
  /** The inner Deno.serve, bound again on 127.0.0.1 if its accept loop dies. */
  #inner: RebindingServer | undefined;
  readonly #innerFailures: FailureBursts;
  #accepting = true;
  #draining = false;
  #acceptLoop: Promise<void> | undefined;
  /** Serves HTTP/1.1 connections without the inner hop (set by start()). */
  #own: OwnServer | undefined;
  /** Whether the hop's buffers could be sized (needs --allow-ffi on Linux/glibc). */
  #hopBuffersSet = false;
  /** performance.now() as of the last sweep (never 0): the send timeout's clock. */
  #clock = performance.now();

  constructor(opts: GuardOptions) {
    this.#opts = opts;
    this.#log = opts.log;
    this.#admission = opts.admission ?? new ConnectionAdmission(opts.limits);
    this.#limits = opts.limits();
    this.#innerFailures = new FailureBursts(
      opts.log,
      { listener: opts.name },
      "inner server stopped accepting; replacing it",
      "inner server stable again",
    );
    // TLS is accepted by node:tls (mTLS, SNI, rotation, minimum version: src/server/node_tls.ts).
    this.#listener = opts.tls
      ? new (nodeTlsPart.get().TlsListener)({
        hostname: opts.hostname,
        port: opts.port,
        tls: opts.tls,
        alpnProtocols: ["h2", "http/1.1"],
      }) as unknown as Deno.Listener
      : Deno.listen({
        hostname: opts.hostname,
        port: opts.port,
        ...(opts.reusePort ? { reusePort: true } : {}),
      });
    this.#sweep = setInterval(() => this.#check(), opts.sweepMs ?? 250);
  }

  get addr(): Deno.NetAddr {
    return this.#listener.addr as Deno.NetAddr;
  }

  /** New certificates for handshakes from now on (open connections keep theirs). */
  updateTls(tls: GuardTls): void {
    (this.#listener as unknown as TlsListener).update(tls);
  }

  /** Open downstream connections right now (for a gauge). */
  openConnections(): number {
    return this.#all.size;
  }

  /**
   * Starts the inner server (`serveInner(port)` binds a Deno.serve on 127.0.0.1 with the
   * `wrap`ped handler; a failure throws) and starts accepting. With `own`, HTTP/1.1 connections
   * are served by Ferry's own server in this process, and only HTTP/2 and upgrades (WebSocket)
   * take the hop to the inner server.
   */
  start(serveInner: (port: number) => Deno.HttpServer<Deno.NetAddr>, own?: OwnServer): void {
    this.#own = own;
    // Out of descriptors, the inner server's accept fails and it closes its listener; it is
    // bound again on the same port, the guarded connections already through keep working.
    // Deno.serve's sockets on the hop get small fixed buffers (set on its listening socket,
    // inherited by what it accepts): a client that stops reading then leaves at most about
    // 1 MiB on the hop instead of up to tcp_wmem's max (docs/connections.md).
    const serveWithSmallBuffers = (port: number) => {
      const server = serveInner(port);
      this.#hopBuffersSet = setLoopbackListenerBuffers(server.addr.port, HOP_BUFFER_BYTES) > 0;
      return server;
    };
    this.#inner = new RebindingServer(serveWithSmallBuffers, 0, (err) => {
      const reason = acceptErrorReason(err);
      this.#opts.onAcceptError?.("inner", reason);
      this.#innerFailures.failed({ reason, error: String(err) });
    });
    this.#acceptLoop = acceptLoop({
      listener: this.#listener,
      name: this.#opts.name,
      log: this.#log,
      stopped: () => !this.#accepting,
      onConnection: (conn) => this.#admit(conn),
      onError: (reason) => this.#opts.onAcceptError?.("listener", reason),
    });
  }

  /** Whether Deno.serve's sockets on the hop have the small fixed buffers. */
  hopBuffersSized(): boolean {
    return this.#hopBuffersSet;
  }

  /** The inner server's loopback port (fixed unless someone took it while it was rebound). */
  innerPort(): number | undefined {
    return this.#inner?.addr.port;
  }

  /** Graceful shutdown of the inner server (see Deno.HttpServer.shutdown). */
  async shutdownInner(): Promise<void> {
    // Deno.serve's shutdown closes its own WebSockets with 1001; byte tunnels are closed alike.
    for (const g of this.#all) {
      if (g.phase === "tunnel" && g.link.tunnel) this.#closeTunnel(g, CLOSE_GOING_AWAY, "");
    }
    await this.#inner?.shutdown();
  }

  /**
   * Wraps the inner server's handler: gives it the real client address and tells the guard when
   * each request starts and ends. Connections that did not come through the guard are refused.
   */
  wrap<T extends Deno.ServeHandlerInfo<Deno.NetAddr>>(
    handler: (req: Request, info: Deno.ServeHandlerInfo<Deno.NetAddr>) => Promise<Response>,
  ): (req: Request, info: T) => Promise<Response> {
    return async (req, info) => {
      const g = this.#byInnerPort.get(info.remoteAddr.port);
      if (!g || info.remoteAddr.hostname !== "127.0.0.1") {
        return errorResponse(
          new ProxyError("bad_request", "connection did not come through the guard"),
          crypto.randomUUID(),
        );
      }
      const ticket: RequestTicket = { link: g.link, abandoned: false };
      attachTicket(req, ticket);
      g.link.h2 = g.h2;
      g.active++;
      g.phase = "busy";
      g.link.onAbandon ??= () => this.#settle(g);
      const done = () => {
        g.active--;
        if (ticket.abandoned) g.link.abandoned--;
        this.#settle(g);
      };
      info.completed.then(done, done);
      const guarded: GuardedInfo = {
        remoteAddr: g.remote,
        completed: info.completed,
        identity: g.identity,
      };
      // One HTTP/2 connection may open as many streams as Deno's server takes, and each one
      // answered holds at least a chunk of its body while the client reads nothing: the cap
      // bounds what one connection can make Ferry hold (redteam: 1000 streams held ~130 MB).
      // The sweep's copy of the limits: no config read per request (a reload shows within a sweep).
      const maxStreams = g.h2 ? this.#limits.maxStreamsPerConnection : 0;
      if (maxStreams > 0 && g.active > maxStreams) {
        return errorResponse(
          new ProxyError(
            "too_many_connections",
            `more than ${maxStreams} requests at once on one HTTP/2 connection ` +
              "(server.max_streams_per_connection)",
          ),
          crypto.randomUUID(),
        );
      }
      let res: Response;
      try {
        res = await handler(req, guarded);
      } catch (err) {
        g.upgradeDecided?.(false);
        throw err;
      }
      // Only a WebSocket upgrade becomes a tunnel; a 101 to anything else is not one.
      if (res.status === 101 && isWebSocketUpgrade(req)) {
        const limits = this.#opts.limits();
        g.phase = "tunnel";
        g.since = g.link.lastMessageAt = performance.now();
        g.frames = new WsFrameLimit(limits.wsMaxFrameBytes, limits.wsMaxMessageBytes, true);
      } else if (g.link.tunnel) {
        // The upgrade's answer was replaced on its way out: no tunnel, its upstream closes.
        g.link.tunnel.close();
        g.link.tunnel = undefined;
      }
      const decided = g.upgradeDecided;
      if (decided) {
        g.upgradeDecided = undefined;
        decided(g.phase === "tunnel");
        if (g.phase !== "tunnel") {
          // A refused upgrade ends its connection after the answer: Deno.serve would otherwise
          // read the next requests with its own parser (bare 400s, no per-head timeout).
          const finish = () => this.#finish(g);
          info.completed.then(finish, finish);
        }
      }
      return res;
    };
  }

  /** No request in flight any more (abandoned ones do not count): the idle timeout runs. */
  #settle(g: Guarded): void {
    if (g.active - g.link.abandoned <= 0 && g.phase === "busy") {
      g.phase = "idle";
      g.since = performance.now();
      if (this.#draining) this.#finish(g);
    }
  }

  /** Stops accepting new connections (drain); open ones carry on. */
  stopAccepting(): void {
    if (!this.#accepting) return;
    this.#accepting = false;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
  }

  /**
   * Graceful drain: stops accepting; idle connections close now and busy ones as soon as their
   * last request is done. Upgraded connections (WebSockets) are left to the caller.
   */
  beginDrain(): void {
    this.stopAccepting();
    this.#draining = true;
    for (const g of [...this.#all]) {
      // HTTP/2 included: a connection that has not started a stream stays in `head` (it is never
      // scanned), and left open it held the drain until header_timeout.
      if (g.phase === "idle" || (g.phase === "head" && g.headBytes === 0)) this.#finish(g);
    }
  }

  /** Connections with a request in flight (or a head arriving), and upgraded ones. */
  inUse(): { requests: number; tunnels: number } {
    let requests = 0, tunnels = 0;
    for (const g of this.#all) {
      if (g.phase === "tunnel") tunnels++;
      else if (g.phase !== "idle" && g.phase !== "rejecting") requests++;
    }
    return { requests, tunnels };
  }

  /** Stops accepting and closes every open connection. */
  async close(): Promise<void> {
    this.stopAccepting();
    clearInterval(this.#sweep);
    void this.#inner?.shutdown();
    for (const g of [...this.#all]) this.#drop(g);
    await this.#acceptLoop;
  }

  #admit(conn: Deno.Conn): void {
    const remote = conn.remoteAddr as Deno.NetAddr;
    const refused = this.#admission.admit(remote.hostname);
    if (refused) {
      this.#opts.onRefused?.(refusalLabel(refused));
      void this.#refuse(conn, refused);
      return;
    }
    const g = new Guarded(conn, remote, performance.now());
    this.#all.add(g);
    void this.#serve(g);
  }

  /**
   * Over a cap: a plain-text client gets a short 503 (an HTTP/1.1 reply; an h2c client sees the
   * connection end), a TLS client just sees the connection close.
   */
  async #refuse(conn: Deno.Conn, reason: string): Promise<void> {
    try {
      if (!this.#opts.tls) {
        await writeAll(conn, await cannedResponse(new ProxyError("too_many_connections", reason)));
        await conn.closeWrite();
        // Read what the client already sent so the close is a FIN, not a reset that could
        // discard the 503; bounded in time and size.
        const buf = new Uint8Array(4096);
        const until = Date.now() + 200;
        for (let i = 0; i < 16 && Date.now() < until; i++) {
          const n = await Promise.race([
            conn.read(buf),
            new Promise<null>((r) => setTimeout(() => r(null), Math.max(1, until - Date.now()))),
          ]);
          if (n === null) break;
        }
      }
    } catch { /* the client left first */ }
    try {
      conn.close();
    } catch { /* closed */ }
  }

  async #serve(g: Guarded): Promise<void> {
    try {
      if (this.#opts.tls) {
        const hs = await (g.conn as Deno.TlsConn).handshake();
        g.h2 = hs.alpnProtocol === "h2";
        g.identity = (g.conn as { identity?: ClientIdentity }).identity;
      }
      if (g.closed) return;
      g.ready = true;
      if ("setNoDelay" in g.conn) (g.conn as Deno.TcpConn).setNoDelay(true);
      if (g.h2 || !this.#own) await this.#hop(g, undefined);
      else await this.#serveOwn(g, this.#own);
    } catch {
      // A reset, a failed TLS handshake, or a close by the sweep: nothing to answer.
    } finally {
      this.#drop(g);
    }
  }

  /**
   * The loopback hop: the connection's bytes (after `replay`, what was read of it already) are
   * piped to the inner Deno.serve and back. Resolves once both directions have ended.
   */
  async #hop(
    g: Guarded,
    replay: Uint8Array | undefined,
    upgradeHeadSize?: number,
  ): Promise<void> {
    // While the inner server is being bound again this is refused: the client is dropped.
    const inner = await Deno.connect({ hostname: "127.0.0.1", port: this.innerPort()! });
    if (g.closed) {
      inner.close();
      return;
    }
    g.inner = inner;
    this.#innerFailures.succeeded();
    inner.setNoDelay(true);
    this.#byInnerPort.set((inner.localAddr as Deno.NetAddr).port, g);
    if (upgradeHeadSize !== undefined && replay) {
      return this.#upgradeHop(g, inner, replay, upgradeHeadSize);
    }
    if (replay && replay.length > 0) await writeAll(inner, replay);
    const up = this.#pump(g, g.conn, inner, true);
    const down = this.#pump(g, inner, g.conn, false);
    await Promise.all([up, down]);
  }

  /**
   * A WebSocket upgrade on the hop: only its head goes to Deno.serve at first. What the client
   * sent after it (RFC 6455 4.1: nothing, until the 101) follows once the upgrade made a
   * tunnel; after any other answer it is read and dropped, and the connection ends.
   */
  async #upgradeHop(
    g: Guarded,
    inner: Deno.TcpConn,
    replay: Uint8Array,
    headSize: number,
  ): Promise<void> {
    const tunnel = new Promise<boolean>((resolve) => g.upgradeDecided = resolve);
    await writeAll(inner, replay.subarray(0, headSize));
    const early = replay.slice(headSize);
    const down = this.#pump(g, inner, g.conn, false);
    // Deno.serve may answer without calling the handler (its own 400), then close.
    if (await Promise.race([tunnel, down.then(() => false)])) {
      await Promise.all([this.#pump(g, g.conn, inner, true, early), down]);
      return;
    }
    const read = rawReader(g.conn);
    const buf = new Uint8Array(SMALL_BUFFER);
    let answered = false;
    const dropping = (async () => {
      try {
        while (!answered && await read(buf) > 0) { /* dropped */ }
      } catch { /* gone */ }
    })();
    await down;
    answered = true;
    // The client has the answer and a FIN: a moment to close its end, so ours is no reset.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([dropping, new Promise((r) => timer = setTimeout(r, 1000))]);
    clearTimeout(timer);
  }

  /**
   * Ferry's own HTTP/1.1 server on this connection (src/h1/server.ts): the phases and timeouts
   * follow each request (head: the header timeout; busy; idle: the idle timeout), client writes
   * go through the send timeout, and an upgrade or an HTTP/2 preface moves it to the hop.
   */
  #serveOwn(g: Guarded, own: OwnServer): Promise<void> {
    g.own = true;
    const write = rawWriter(g.conn);
    return serveHttp1({
      read: rawReader(g.conn),
      write: (bytes) => this.#writeClient(g, write, bytes, bytes.length),
      closeWrite: () => g.conn.closeWrite(),
      scheme: this.#opts.tls ? "https" : "http",
      // The inner Deno.serve's fill-in for HTTP/2 without :authority: one fill-in on both paths.
      ...(this.#opts.hostlessHttp10 ? { hostlessHttp10: `localhost:${this.innerPort()}` } : {}),
      // Phase times are the sweep's clock (as the send timeout's): the sweep checks them anyway,
      // so a timeout fires within one sweep period either way, and no clock is read per request.
      awaitingHead: (started) => {
        if (started) {
          // The first head's header timeout runs from the accept, as before.
          if (g.phase !== "head") g.since = this.#clock;
          g.phase = "head";
          g.headBytes = 1;
        } else {
          g.phase = "idle";
          g.since = this.#clock;
          g.headBytes = 0;
          if (this.#draining) this.#finish(g);
        }
      },
      requestStarted: () => {
        g.phase = "busy";
        g.since = this.#clock;
      },
      draining: () => this.#draining || g.closing,
      handle: (req, url, completed, sentMethod) =>
        this.#handleOwn(g, own, req, url, completed, sentMethod),
      refusal: (status, reason) => {
        const kind = refusalKind(status);
        this.#opts.onRefused?.(kind);
        return errorResponse(new ProxyError(kind, reason), crypto.randomUUID());
      },
      bodyError: (status, reason) => new ProxyError(refusalKind(status), reason),
      handOver: (bytes, headSize) => {
        if (startsWith(bytes, H2_PREFACE)) g.h2 = true;
        else {
          // An upgrade request whose head the server has read: no second head scan.
          g.phase = "headDone";
          g.since = performance.now();
        }
        g.own = false;
        return this.#hop(g, bytes, headSize);
      },
    });
  }

  /** One request of Ferry's own HTTP/1.1 server, handed to the handler as `wrap` would. */
  async #handleOwn(
    g: Guarded,
    own: OwnServer,
    req: Request,
    url: string,
    completed: Promise<void>,
    sentMethod: string | undefined,
  ): Promise<Response> {
    const ticket: RequestTicket = { link: g.link, abandoned: false, url, method: sentMethod };
    attachTicket(req, ticket);
    g.active++;
    const done = () => {
      g.active--;
      if (ticket.abandoned) g.link.abandoned--;
    };
    completed.then(done, done);
    // With OTel on, the server span Deno.serve would have opened.
    const span = serverSpan(req.method, req.headers);
    const info: GuardedInfo = { remoteAddr: g.remote, completed, identity: g.identity };
    let status = 0;
    try {
      const res = await (span ? span.run(() => own.handler(req, info)) : own.handler(req, info));
      status = res.status;
      return res;
    } catch (err) {
      const res = own.onError(err);
      status = res.status;
      return res;
    } finally {
      if (span) {
        const end = () => span.end(status);
        completed.then(end, end);
      }
    }
  }

  /**
   * Copies bytes one way; the read buffer grows while reads fill it and shrinks when idle. The
   * next read waits for the write, so a client that does not read stops the inner side too.
   * Reads and writes go to the runtime's ops directly (src/server/raw_io.ts).
   */
  async #pump(
    g: Guarded,
    from: Deno.Conn,
    to: Deno.Conn,
    fromClient: boolean,
    /** Bytes read from `from` already, taken as the first read. */
    first?: Uint8Array,
  ): Promise<void> {
    const read = rawReader(from);
    const write = rawWriter(to);
    let buf = first && first.length > 0 ? first : new Uint8Array(SMALL_BUFFER);
    try {
      while (true) {
        const n = buf === first ? first.length : await read(buf);
        if (n === 0) break;
        if (fromClient) {
          if (!this.#onClientBytes(g, buf, n)) return;
          const allowed = g.frames ? g.frames.feed(buf, n) : n;
          if (allowed > 0) {
            // A byte tunnel (WebSocket over the h1 codec) takes them to its upstream socket.
            const tunnel = g.phase === "tunnel" ? g.link.tunnel : undefined;
            if (tunnel) await tunnel.fromClient(buf.subarray(0, allowed));
            else await writeAllRaw(write, buf, allowed);
          }
          if (allowed < n) {
            // Nothing more from this client reaches Deno's WebSocket; the close goes out below.
            this.#closeTunnel(g, g.frames!.violationCode, g.frames!.violation!);
            return;
          }
        } else {
          // Once Deno.serve's 101 is out, a byte tunnel's upstream is the client's source.
          const tunnel = g.phase === "tunnel" ? g.link.tunnel : undefined;
          const headEnd = tunnel ? tunnel.headEnd(buf, n) : -1;
          if (headEnd >= 0) {
            await this.#writeClient(g, write, buf, headEnd);
            await tunnel!.start(this.#tunnelClient(g, write));
            return;
          }
          await this.#writeClient(g, write, buf, n);
        }
        if (buf === first) buf = new Uint8Array(SMALL_BUFFER);
        else if (n === buf.length && buf.length < LARGE_BUFFER) buf = new Uint8Array(LARGE_BUFFER);
        else if (n < SMALL_BUFFER && buf.length > SMALL_BUFFER) buf = new Uint8Array(SMALL_BUFFER);
      }
      // Half-close: the other side may still be answering.
      if (fromClient && g.phase === "tunnel" && g.link.tunnel) g.link.tunnel.clientEnded();
      else await to.closeWrite();
    } catch {
      this.#drop(g);
    }
  }

  /**
   * Writes `buf[0, n)` to the client, telling the link (and the send timeout) while a write is
   * pending. The time is the sweep's clock, not performance.now() per write: the send timeout
   * is checked by the sweep anyway, so it fires within one sweep period (250 ms) of its time, as
   * the other timeouts do (it saves an op per write).
   */
  async #writeClient(g: Guarded, write: RawWrite, buf: Uint8Array, n: number): Promise<void> {
    const link = g.link;
    try {
      let off = 0;
      while (off < n) {
        // Each write that makes progress restarts the send timeout, as nginx's send_timeout.
        link.writingSince = this.#clock;
        off += await write(off === 0 && n === buf.length ? buf : buf.subarray(off, n));
      }
    } finally {
      link.wrote();
    }
  }

  /** The client side of a byte tunnel: writes under the send timeout, a half-close at the end. */
  #tunnelClient(g: Guarded, write: RawWrite): TunnelClient {
    return {
      write: (bytes) => this.#writeClient(g, write, bytes, bytes.length),
      finish: () => {
        if (g.closeBy === 0) g.closeBy = performance.now() + TUNNEL_CLOSE_GRACE_MS;
        g.conn.closeWrite().catch(() => this.#drop(g));
      },
    };
  }

  /**
   * Asks the WebSocket relay to close both sides with `code` (its close frame reaches the client
   * through the inner connection); the connection is dropped after a grace period regardless.
   */
  #closeTunnel(g: Guarded, code: number, reason: string): void {
    if (g.closeBy > 0 || g.closed) return;
    g.closeBy = performance.now() + TUNNEL_CLOSE_GRACE_MS;
    const close = g.link.closeTunnel;
    if (close) close(code, reason);
    else this.#drop(g);
  }

  /**
   * Tracks request heads in the client's bytes; returns false when the connection was refused.
   * HTTP/2 is recognised by ALPN or its preface and gets no head scan (Deno answers 431 itself).
   */
  #onClientBytes(g: Guarded, buf: Uint8Array, n: number): boolean {
    // Only the first request's head is scanned and timed: later bytes on a keep-alive connection
    // may be the rest of a body the handler never read, not a new head. Later requests must
    // reach the handler within the idle timeout instead (no request in flight).
    if (g.phase !== "head" || g.h2) return true;
    if (g.headBytes === 0 && n >= H2_PREFACE.length && startsWith(buf, H2_PREFACE)) {
      g.h2 = true;
      return true;
    }
    let end = -1;
    for (let i = buf.indexOf(10); i >= 0 && i < n; i = buf.indexOf(10, i + 1)) {
      g.headLines++;
      // A blank line ends the head: "\n\n" or "\n\r\n".
      const prev = i > 0 ? buf[i - 1] : g.last1;
      const prev2 = i > 1 ? buf[i - 2] : i === 1 ? g.last1 : g.last2;
      if ((prev === 10 || (prev === 13 && prev2 === 10)) && g.headLines > 1) {
        end = i;
        break;
      }
    }
    g.headBytes += end < 0 ? n : end + 1;
    // The blank line may straddle two reads.
    g.last2 = n > 1 ? buf[n - 2]! : g.last1;
    g.last1 = buf[n - 1]!;
    if (end >= 0 && g.headBytes <= HEAD_MAX_BYTES && g.headLines <= HEAD_MAX_LINES) {
      g.phase = "headDone";
      g.since = performance.now();
      return true;
    }
    if (g.headBytes > HEAD_MAX_BYTES || g.headLines > HEAD_MAX_LINES) {
      this.#opts.onRefused?.("headers_too_large");
      void this.#reject(
        g,
        new ProxyError(
          "headers_too_large",
          `request head over ${HEAD_MAX_BYTES} bytes or ${HEAD_MAX_LINES} lines`,
        ),
      );
      return false;
    }
    return true;
  }

  /** Answers an HTTP/1.1 connection that has nothing in flight, then closes it. */
  async #reject(g: Guarded, err: ProxyError): Promise<void> {
    if (g.closed) return;
    g.phase = "rejecting";
    try {
      // Only once TLS is up and never on HTTP/2; a client that does not read gets at most a
      // second before the close.
      if (!g.h2 && g.ready) {
        const reply = writeAll(g.conn, await cannedResponse(err)).catch(() => {});
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([reply, new Promise((r) => timer = setTimeout(r, 1000))]);
        clearTimeout(timer);
      }
    } catch { /* gone */ }
    this.#drop(g);
  }

  #check(): void {
    const limits = this.#limits = this.#opts.limits();
    const now = this.#clock = performance.now();
    for (const g of this.#all) {
      const age = now - g.since;
      const writing = g.link.writingSince;
      if (limits.sendTimeoutMs > 0 && writing > 0 && now - writing > limits.sendTimeoutMs) {
        // The client has not accepted a byte for that long: free it and whatever it holds. A
        // WebSocket's upstream hears why first (the client cannot: it does not read).
        g.link.closeTunnel?.(
          CLOSE_GOING_AWAY,
          `client took no data for ${limits.sendTimeoutMs} ms`,
        );
        this.#opts.onRefused?.("send_timeout");
        this.#log.debug("send_timeout: the client took no data, connection closed", {
          client: g.remote.hostname,
          send_timeout_ms: limits.sendTimeoutMs,
        });
        this.#drop(g);
        continue;
      }
      if (g.phase === "tunnel") {
        g.link.tunnel?.sweep(now, limits.sendTimeoutMs);
        if (g.closeBy > 0) {
          if (now > g.closeBy) this.#drop(g);
        } else if (
          limits.tunnelIdleTimeoutMs > 0 &&
          now - g.link.lastMessageAt > limits.tunnelIdleTimeoutMs
        ) {
          this.#closeTunnel(g, CLOSE_GOING_AWAY, `idle for ${limits.tunnelIdleTimeoutMs} ms`);
        }
      } else if (g.phase === "head" || g.phase === "headDone") {
        if (limits.headerTimeoutMs > 0 && age > limits.headerTimeoutMs) {
          this.#opts.onRefused?.("request_timeout");
          void this.#reject(
            g,
            new ProxyError(
              "request_timeout",
              `request head not complete within ${limits.headerTimeoutMs} ms`,
            ),
          );
        }
      } else if (g.phase === "idle") {
        if (limits.idleTimeoutMs > 0 && age > limits.idleTimeoutMs) {
          this.#opts.onRefused?.("idle_timeout");
          this.#drop(g);
        } else if (this.#draining) this.#finish(g);
      }
    }
  }

  /**
   * Ends an idle connection gracefully: half-closes the inner side, so Deno.serve closes it once
   * the bytes of its last response are out, and the client sees them all and then the close
   * (dropping at once could cut a response still in the pipe).
   */
  #finish(g: Guarded): void {
    if (g.closing || g.closed) return;
    g.closing = true;
    // Ferry's own server ends a busy connection after its response (it asks draining()).
    if (g.own) {
      if (g.phase === "idle" || (g.phase === "head" && g.headBytes === 0)) this.#drop(g);
      return;
    }
    // HTTP/2 without a stream yet: nothing to finish (Deno's HTTP/2 server does not end a
    // connection on the half-close, it would stay until shutdown).
    if (!g.inner || (g.h2 && g.phase === "head")) return this.#drop(g);
    g.inner.closeWrite().catch(() => this.#drop(g));
  }

  #drop(g: Guarded): void {
    if (g.closed) return;
    g.closed = true;
    g.upgradeDecided?.(false);
    g.link.close();
    this.#all.delete(g);
    this.#admission.release(g.remote.hostname);
    if (g.inner) {
      this.#byInnerPort.delete((g.inner.localAddr as Deno.NetAddr).port);
      try {
        g.inner.close();
      } catch { /* closed */ }
    }
    try {
      g.conn.close();
    } catch { /* closed */ }
  }
}

/**
 * Drains a listener behind the connection guard: no new connections; idle ones close now and
 * busy ones once their request is done; WebSockets stay open through the drain window and get
 * 1001 when it ends (just before `ms`, so the close frames go out before the process exits).
 * Without the guard, Deno.serve's shutdown() would close WebSockets at once.
 */
export async function drainGuarded(guard: ConnectionGuard, ms: number): Promise<void> {
  guard.beginDrain();
  const windowEnd = performance.now() + Math.max(0, ms - Math.min(1_000, ms / 10));
  while (performance.now() < windowEnd) {
    const { requests, tunnels } = guard.inUse();
    if (requests === 0 && tunnels === 0) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  await guard.shutdownInner();
  // Let the last bytes (WebSocket close frames, final responses) through the pipes before the
  // guard closes what is left.
  const flushBy = performance.now() + 500;
  while (guard.openConnections() > 0 && performance.now() < flushBy) {
    await new Promise((r) => setTimeout(r, 20));
  }
  await guard.close();
}

/** The error table's kind for a status Ferry's own HTTP/1.1 server refuses a request with. */
function refusalKind(status: H1ProtocolError["status"]): ProxyErrorKind & DownstreamRefusal {
  switch (status) {
    case 431:
      return "headers_too_large";
    case 501:
      return "not_implemented";
    case 505:
      return "version_not_supported";
    default:
      return "bad_request";
  }
}

/** An HTTP/1.1 reply from the error table, for connections the guard answers itself. */
async function cannedResponse(err: ProxyError): Promise<Uint8Array> {
  const res = errorResponse(err, crypto.randomUUID());
  const body = new Uint8Array(await res.arrayBuffer());
  let head = `HTTP/1.1 ${res.status} ${JSON.parse(new TextDecoder().decode(body)).error}\r\n`;
  for (const [name, value] of res.headers) head += `${name}: ${value}\r\n`;
  head += `content-length: ${body.length}\r\nconnection: close\r\n\r\n`;
  const head8 = new TextEncoder().encode(head);
  const out = new Uint8Array(head8.length + body.length);
  out.set(head8);
  out.set(body, head8.length);
  return out;
}

function startsWith(buf: Uint8Array, text: string): boolean {
  for (let i = 0; i < text.length; i++) if (buf[i] !== text.charCodeAt(i)) return false;
  return true;
}

async function writeAllRaw(write: RawWrite, buf: Uint8Array, n: number): Promise<void> {
  let off = 0;
  while (off < n) off += await write(off === 0 && n === buf.length ? buf : buf.subarray(off, n));
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let off = 0;
  while (off < bytes.length) off += await conn.write(bytes.subarray(off));
}
