/**
 * What the connection guard knows about a client connection and its handlers need: whether a
 * write to the client is blocked (the client stopped reading), so response relays stop pulling
 * from the upstream instead of filling the loopback socket pair behind the guard, and how the
 * guard asks an upgraded connection (WebSocket) to close with a code.
 */
/** How a byte tunnel writes to its client through the guard. */
export interface TunnelClient {
  /** Writes to the client; the guard's send timeout watches the write. */
  write(bytes: Uint8Array): Promise<void>;
  /** Nothing more for the client: half-close, dropped after a grace period if it lingers. */
  finish(): void;
}

/**
 * An upgraded connection joined byte for byte to its upstream socket (WebSocket over the h1
 * codec, src/upstream/ws_tunnel.ts). The handler sets it on the link before its 101 goes out; the
 * guard then sends the client's bytes to it and, once Deno.serve's 101 head has reached the
 * client, starts it.
 */
export interface ByteTunnel {
  /** Where Deno.serve's 101 head ends in bytes on their way to the client; -1: not here. */
  headEnd(buf: Uint8Array, n: number): number;
  /** Starts relaying the upstream's bytes to the client; resolves once the upstream side ends. */
  start(client: TunnelClient): Promise<void>;
  /** The client's bytes, in order, after the guard's frame limits. */
  fromClient(bytes: Uint8Array): Promise<void>;
  /** The client closed its side. */
  clientEnded(): void;
  /** Called by the guard's sweep: an upstream write blocked past the send timeout ends it. */
  sweep(now: number, sendTimeoutMs: number): void;
  /** The connection is gone. */
  close(): void;
}

export class DownstreamLink {
  /** The connection speaks HTTP/2 (set by the guard before a request is handed on). */
  h2 = false;
  /** performance.now() when the pending client write last made progress; 0: none pending. */
  writingSince = 0;
  closed = false;
  /**
   * performance.now() of the last WebSocket message either way, set by the relay: the tunnel
   * idle timeout counts messages, not bytes, since Deno's own pings would keep any tunnel busy.
   */
  lastMessageAt = 0;
  /** Set by the WebSocket relay: closes both sides with this code (client) and reason. */
  closeTunnel: ((code: number, reason: string) => void) | undefined;
  /** Set by the WebSocket proxy when the upgraded connection is a byte tunnel. */
  tunnel: ByteTunnel | undefined;
  /** Requests whose relay gave up (see RequestTicket.abandoned) and that are not done yet. */
  abandoned = 0;
  /** Set by the guard: a request was abandoned. */
  onAbandon: (() => void) | undefined;
  #waiters: (() => void)[] = [];

  /** undefined when the client can take bytes now; else resolves once it can (or is gone). */
  writable(): Promise<void> | undefined {
    if (this.writingSince === 0 || this.closed) return undefined;
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** The guard's client write finished. */
  wrote(): void {
    this.writingSince = 0;
    this.#wake();
  }

  /** A relay gave up on its client; the guard stops counting the request as in flight. */
  abandon(ticket: RequestTicket): void {
    if (ticket.abandoned) return;
    ticket.abandoned = true;
    this.abandoned++;
    this.onAbandon?.();
  }

  /** The connection is gone: nobody waits any more. */
  close(): void {
    this.closed = true;
    this.closeTunnel = undefined;
    this.tunnel?.close();
    this.#wake();
  }

  #wake(): void {
    if (this.#waiters.length === 0) return;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }
}

/** One request's place on its connection, shared by copies of the Request (body limits). */
export interface RequestTicket {
  readonly link: DownstreamLink;
  /**
   * Its response relay gave up on the client (send timeout) while Deno.serve still holds the
   * stream: an HTTP/2 stream waiting for window cannot be reset from JavaScript. The guard then
   * stops counting it as in flight, so the connection's idle timeout can end it.
   */
  abandoned: boolean;
  /**
   * The request's URL as the client sent it, when Request.url is not (Ferry's own HTTP/1.1
   * server builds Request with the URL parser's reading, which resolves dot segments).
   */
  readonly url?: string | undefined;
  /**
   * The method as sent, when Request.method could not carry it (CONNECT, TRACE, TRACK and the
   * lower-case forms fetch rewrites): the Request is a body-less GET and the handler refuses it.
   */
  readonly method?: string | undefined;
}

/**
 * The ticket rides on the Request itself, under a symbol, not in a WeakMap: an entry per request in
 * a WeakMap keyed by a young object cost about half a microsecond (a microbenchmark, with the
 * collections it causes), once per request (docs/PERFORMANCE.md, "Ferry's own HTTP/1.1 server,
 * per request").
 */
const TICKET = Symbol("ferry.downstreamTicket");
type Ticketed = Request & { [TICKET]?: RequestTicket };

/** Called by the guard for each request it hands to the inner server (and for copies). */
export function attachTicket(req: Request, ticket: RequestTicket): void {
  (req as Ticketed)[TICKET] = ticket;
}

/** The guard's ticket of a request; undefined without the guard. */
export function downstreamTicket(req: Request): RequestTicket | undefined {
  return (req as Ticketed)[TICKET];
}

const served = new WeakMap<Request, Request>();

/**
 * A copy of a request made on its way (an extension's `new Request(req, { headers })`) keeps what
 * the original carries: the guard's ticket, and the Request Deno.serve handed in, the only one a
 * WebSocket upgrade works on (Deno 2.9.6: upgrading a copy completes the handshake, then the
 * socket fails on its first frame with "Reserved bits are not zero").
 */
export function carryOver(copy: Request, from: Request): void {
  if (copy === from) return;
  served.set(copy, servedRequest(from));
  const ticket = downstreamTicket(from);
  if (ticket && downstreamTicket(copy) === undefined) attachTicket(copy, ticket);
}

/** The Request Deno.serve handed in that `req` is (a copy of). */
export function servedRequest(req: Request): Request {
  return served.get(req) ?? req;
}

/** The guard's link of the connection a request came on; undefined without the guard. */
export function downstreamLink(req: Request): DownstreamLink | undefined {
  return downstreamTicket(req)?.link;
}
