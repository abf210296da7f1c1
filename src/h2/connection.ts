/**
 * One HTTP/2 connection over a Deno.Conn, usable as server or client (RFC 9113): preface,
 * SETTINGS and ACK, PING, flow control in both directions at stream and connection level with
 * credit returned only as data is read, the stream state machine, RST_STREAM, CONTINUATION
 * assembly, GOAWAY with graceful drain, limits on concurrent streams and header list size, and
 * a budget for control frames that answers floods ("rapid reset", SETTINGS/PING storms) with
 * GOAWAY ENHANCE_YOUR_CALM. Streams are `H2Stream`s (stream.ts).
 *
 * One piece past 500 lines: flow control, the stream state machine and the frame budget all
 * update the same connection state per frame; RFC 9113 reads the same way.
 */
import {
  CLIENT_PREFACE,
  DEFAULT_WINDOW,
  ErrorCode,
  Flag,
  type Frame,
  FrameReader,
  FrameType,
  goawayFrame,
  H2Error,
  headerFrames,
  MAX_FRAME_SIZE_LIMIT,
  MAX_WINDOW,
  MIN_FRAME_SIZE,
  parseSettings,
  pingFrame,
  readUint32,
  rstFrame,
  Setting,
  settingsAck,
  settingsFrame,
  unpad,
  validateFrame,
  windowUpdateFrame,
} from "./frames.ts";
import { type HeaderField, HeaderListTooLarge, HpackDecoder, HpackEncoder } from "./hpack.ts";
import { headerProblem, headerValue } from "./headers.ts";
import { H2Stream, type StreamHost, StreamReset } from "./stream.ts";
import { ByteBudget } from "./budget.ts";

export interface ConnectionOptions {
  readonly role: "server" | "client";
  /** Streams the peer may open at once (advertised). Default 1000. */
  readonly maxConcurrentStreams?: number;
  /** Our per-stream receive window. Default 1 MiB. */
  readonly initialWindowSize?: number;
  /** Our connection receive window: the most one connection can make us buffer. Default 8 MiB. */
  readonly connectionWindowSize?: number;
  /** Largest decoded header list we accept (SETTINGS_MAX_HEADER_LIST_SIZE). Default 64 KiB. */
  readonly maxHeaderListSize?: number;
  /** Control frames (RST_STREAM, SETTINGS, PING, PRIORITY, empty DATA) allowed per second... */
  readonly controlFramesPerSecond?: number;
  /** ...and in one burst. Past that: GOAWAY ENHANCE_YOUR_CALM. Defaults 200 and 1000. */
  readonly controlFrameBurst?: number;
  /** Server role: the client preface and first SETTINGS must arrive within this. 0: no limit. */
  readonly handshakeTimeoutMs?: number;
  /** Our SETTINGS must be acknowledged within this, else GOAWAY SETTINGS_TIMEOUT. 0: no limit. */
  readonly settingsAckTimeoutMs?: number;
  /** With no open stream and no frame received for this long: GOAWAY and close. 0: never. */
  readonly idleTimeoutMs?: number;
  /** Server role: a new stream whose request headers arrived. */
  readonly onStream?: (stream: H2Stream) => void;
  /**
   * Server role: a request refused by the connection itself, before or after it reached
   * `onStream`: reset as malformed (RFC 9113 8.1.1: bad fields, a content-length its DATA does
   * not match), or answered 431 (header list over the limit). Counted and logged by the listener.
   */
  readonly onRefusedStream?: (refusal: "bad_request" | "headers_too_large", reason: string) => void;
  /** One of the timeouts above ended the connection (counted in metrics by the listener). */
  readonly onTimeout?: (timeout: ConnectionTimeout) => void;
  /** Why the connection ended, for logs. */
  readonly onClose?: (reason: { code: number; message: string; byPeer: boolean }) => void;
  /**
   * Return connection-level credit as DATA arrives rather than when it is read, for up to
   * `perConnection` unread bytes on this connection (and while `shared` has room). Each stream
   * still holds its own credit until read, so a stream whose reader stalls stops at its stream
   * window without holding the connection window that every other stream needs. Unset: credit
   * goes back only as data is read.
   */
  readonly earlyCredit?: { readonly perConnection: number; readonly shared?: ByteBudget };
  /**
   * Server role: bytes Ferry may buffer for this client's calls from elsewhere (upstream answers
   * it has not taken yet, on streams `chargeTo`'d one of its streams). Default 8 MiB, the same as
   * the connection window that bounds what it can make us hold of its own data.
   */
  readonly clientShare?: number;
}

/** Which of a connection's own timeouts ended it. */
export type ConnectionTimeout = "handshake" | "settings_ack" | "idle";

/** Pending bytes in the write queue above which writers of DATA wait. */
const WRITE_HIGH_WATER = 1 << 20;
/** Pending bytes (a peer that never reads) above which the connection is dropped. */
const WRITE_HARD_LIMIT = 16 << 20;

/** Highest stream id: the first GOAWAY of a graceful shutdown names it. */
const MAX_STREAM_ID = 0x7fffffff;
/** How long the first GOAWAY's PING may take before the real GOAWAY goes anyway. */
const ANNOUNCE_MS = 1000;
/** Interim (1xx) responses skipped on one stream before a final one (the h1 codec's bound). */
const MAX_INTERIM = 16;

/** How many of the peer's opened stream ids are remembered (see `#openedPeerIds`). */
const PEER_IDS_KEPT = 4096;

export class H2Connection implements StreamHost {
  readonly role: "server" | "client";
  readonly #conn: Deno.Conn;
  readonly #opts: Required<
    Omit<
      ConnectionOptions,
      | "onStream"
      | "onClose"
      | "onTimeout"
      | "onRefusedStream"
      | "handshakeTimeoutMs"
      | "settingsAckTimeoutMs"
      | "idleTimeoutMs"
      | "earlyCredit"
      | "clientShare"
    >
  >;
  readonly #onStream: ConnectionOptions["onStream"];
  readonly #onClose: ConnectionOptions["onClose"];
  readonly #onTimeout: ConnectionOptions["onTimeout"];
  readonly #onRefusedStream: ConnectionOptions["onRefusedStream"];
  readonly #earlyCredit: ConnectionOptions["earlyCredit"];
  readonly #share: ByteBudget;
  /** Unread bytes whose connection credit went back on arrival / is still held. */
  #earlyBytes = 0;
  #heldBytes = 0;
  readonly #reader: FrameReader;
  readonly #encoder = new HpackEncoder();
  readonly #decoder: HpackDecoder;
  readonly #streams = new Map<number, H2Stream>();

  // Peer settings that shape what we send.
  #peerMaxFrameSize = MIN_FRAME_SIZE;
  #peerInitialWindow = DEFAULT_WINDOW;
  #peerMaxConcurrent = Number.POSITIVE_INFINITY;
  #sendWindow = DEFAULT_WINDOW;
  #recvWindow = DEFAULT_WINDOW;
  #recvUnacked = 0;

  #prefaceSeen: boolean;
  #settingsSeen = false;
  #lastPeerStream = 0;
  /**
   * The peer's stream ids this connection has seen opened, newest last, at most PEER_IDS_KEPT: a
   * HEADERS on one of them is a frame on a closed stream (a stream error); on a lower id never
   * opened it breaks the rule that new ids grow (RFC 9113 5.1.1, a connection error).
   */
  #openedPeerIds = new Set<number>();
  #nextLocalStream: number;
  #continuation: { streamId: number; parts: Uint8Array[]; size: number; end: boolean } | undefined;

  #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  #flushing = false;
  #drainWaiters: (() => void)[] = [];
  #windowBlocked = new Set<H2Stream>();
  #openWaiters: (() => void)[] = [];

  #tokens: number;
  #tokensAt = performance.now();

  #goawaySent = false;
  /** Server drain, step one (GOAWAY 2^31-1 + PING) under way or done. */
  #announced: Promise<void> | undefined;
  #goawayReceived: number | undefined;
  #closed = false;
  readonly #done: Promise<void>;
  #resolveDone!: () => void;
  readonly #ready: Promise<void>;
  #resolveReady!: () => void;
  #pings = new Map<string, () => void>();
  /** Connection-level timers (handshake, SETTINGS ACK, idle); cleared when the socket closes. */
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  #settingsAckTimer: ReturnType<typeof setTimeout> | undefined;
  #idleTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #idleMs: number;
  #lastFrameAt = performance.now();
  /** Set while closing with a write in progress: runs when the queue is written. */
  #afterFlush: (() => void) | undefined;

  constructor(conn: Deno.Conn, opts: ConnectionOptions) {
    this.role = opts.role;
    this.#conn = conn;
    this.#opts = {
      role: opts.role,
      maxConcurrentStreams: opts.maxConcurrentStreams ?? 1000,
      initialWindowSize: opts.initialWindowSize ?? (1 << 20),
      connectionWindowSize: opts.connectionWindowSize ?? (8 << 20),
      maxHeaderListSize: opts.maxHeaderListSize ?? 65536,
      controlFramesPerSecond: opts.controlFramesPerSecond ?? 200,
      controlFrameBurst: opts.controlFrameBurst ?? 1000,
    };
    this.#onStream = opts.onStream;
    this.#onClose = opts.onClose;
    this.#onTimeout = opts.onTimeout;
    this.#onRefusedStream = opts.onRefusedStream;
    this.#earlyCredit = opts.earlyCredit;
    this.#share = new ByteBudget(opts.clientShare ?? (8 << 20));
    this.#tokens = this.#opts.controlFrameBurst;
    this.#reader = new FrameReader(MIN_FRAME_SIZE);
    this.#decoder = new HpackDecoder({ maxHeaderListSize: this.#opts.maxHeaderListSize });
    this.#prefaceSeen = opts.role === "client";
    this.#nextLocalStream = opts.role === "client" ? 1 : 2;
    this.#done = new Promise((r) => (this.#resolveDone = r));
    this.#ready = new Promise((r) => (this.#resolveReady = r));

    if (opts.role === "client") this.#send(CLIENT_PREFACE);
    const settings: [number, number][] = [
      [Setting.MAX_CONCURRENT_STREAMS, this.#opts.maxConcurrentStreams],
      [Setting.INITIAL_WINDOW_SIZE, this.#opts.initialWindowSize],
      [Setting.MAX_HEADER_LIST_SIZE, this.#opts.maxHeaderListSize],
    ];
    if (opts.role === "client") settings.push([Setting.ENABLE_PUSH, 0]);
    this.#send(settingsFrame(settings));
    const extra = this.#opts.connectionWindowSize - DEFAULT_WINDOW;
    if (extra > 0) {
      this.#recvWindow += extra;
      this.#send(windowUpdateFrame(0, extra));
    }
    const handshakeMs = opts.handshakeTimeoutMs ?? 0;
    if (handshakeMs > 0 && opts.role === "server") {
      this.#handshakeTimer = setTimeout(() => {
        this.#onTimeout?.("handshake");
        this.close(ErrorCode.PROTOCOL_ERROR, `no preface and SETTINGS in ${handshakeMs} ms`);
      }, handshakeMs);
    }
    const ackMs = opts.settingsAckTimeoutMs ?? 0;
    if (ackMs > 0) {
      this.#settingsAckTimer = setTimeout(() => {
        this.#onTimeout?.("settings_ack");
        this.close(ErrorCode.SETTINGS_TIMEOUT, `SETTINGS not acknowledged in ${ackMs} ms`);
      }, ackMs);
    }
    this.#idleMs = opts.idleTimeoutMs ?? 0;
    if (this.#idleMs > 0) this.#armIdle(this.#idleMs);
    void this.#readLoop();
  }

  /**
   * One timer per connection, re-armed lazily: when it fires, a connection that had a stream
   * open or a frame since is given the rest of its time instead of being closed.
   */
  #armIdle(ms: number): void {
    this.#idleTimer = setTimeout(() => {
      if (this.#closed) return;
      const quiet = performance.now() - this.#lastFrameAt;
      if (this.#streams.size > 0) return this.#armIdle(this.#idleMs);
      if (quiet < this.#idleMs) return this.#armIdle(this.#idleMs - quiet);
      this.#onTimeout?.("idle");
      void this.drain(1_000);
    }, ms);
  }

  /** Resolves when the socket is closed. */
  get done(): Promise<void> {
    return this.#done;
  }
  /** Resolves once the peer's first SETTINGS are applied (its stream limit known), or on close. */
  get ready(): Promise<void> {
    return this.#ready;
  }
  get activeStreams(): number {
    return this.#streams.size;
  }
  /** Client role: requests waiting for a stream slot (the peer's concurrent-stream limit). */
  get waitingStreams(): number {
    return this.#openWaiters.length;
  }
  get isClosed(): boolean {
    return this.#closed;
  }
  /** Client role: new requests may go out (no GOAWAY either way, not closed). */
  get available(): boolean {
    return !this.#closed && this.#goawayReceived === undefined && !this.#goawaySent;
  }
  /** Client role: a new stream would open at once (the peer's stream limit is not reached). */
  get hasStreamSlot(): boolean {
    return this.available && this.#streams.size < this.#peerMaxConcurrent;
  }
  /**
   * Half our connection window or more is held by unread data (the early-credit allowance is
   * used up): new streams here may stall behind slow readers, better open another connection.
   */
  get windowHeld(): boolean {
    return this.#heldBytes >= this.#opts.connectionWindowSize / 2;
  }

  // ---- client side ----

  /** Opens a stream with `fields` (waits while the peer's concurrent-stream limit is reached). */
  async request(fields: readonly HeaderField[], endStream = false): Promise<H2Stream> {
    while (this.#streams.size >= this.#peerMaxConcurrent && this.available) {
      await new Promise<void>((r) => this.#openWaiters.push(r));
    }
    if (!this.available) {
      throw new StreamReset(ErrorCode.REFUSED_STREAM, true, "connection is going away");
    }
    const id = this.#nextLocalStream;
    this.#nextLocalStream += 2;
    const stream = new H2Stream(id, this, this.#peerInitialWindow, this.#opts.initialWindowSize);
    this.#streams.set(id, stream);
    stream.sendHeaders(fields, endStream);
    return stream;
  }

  /** Sends a PING and resolves with the round trip in ms. */
  ping(): Promise<number> {
    const data = crypto.getRandomValues(new Uint8Array(8));
    const key = data.join(",");
    const start = performance.now();
    return new Promise((resolve, reject) => {
      if (this.#closed) return reject(new Error("connection closed"));
      this.#pings.set(key, () => resolve(performance.now() - start));
      this.#send(pingFrame(data, false));
    });
  }

  // ---- shutdown ----

  /**
   * Graceful. A server announces first (RFC 9113 6.8): GOAWAY with the highest possible stream id
   * and a PING; streams the client opens meanwhile are still served. Once the PING is answered
   * (or `ANNOUNCE_MS` passed), the real GOAWAY names the last stream we accepted. Open streams
   * finish, then the socket closes; after `deadlineMs` whatever is left is cut.
   */
  async drain(deadlineMs = 30_000): Promise<void> {
    if (this.#closed) return;
    const startedAt = performance.now();
    if (this.role === "server" && !this.#goawaySent) {
      this.#announced ??= this.#announceGoaway(Math.min(ANNOUNCE_MS, deadlineMs));
      await this.#announced;
      if (this.#closed) return;
    }
    if (!this.#goawaySent) {
      this.#goawaySent = true;
      this.#send(goawayFrame(this.#lastPeerStream, ErrorCode.NO_ERROR, "draining"));
      for (const w of this.#openWaiters.splice(0)) w();
    }
    this.#closeIfIdle();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const left = Math.max(0, deadlineMs - (performance.now() - startedAt));
    await Promise.race([
      this.#done,
      new Promise<void>((r) => (timer = setTimeout(r, left))),
    ]);
    clearTimeout(timer);
    if (!this.#closed) this.#destroy(ErrorCode.NO_ERROR, "drain deadline reached", false);
  }

  /** First GOAWAY (last stream 2^31-1) and a PING; resolves on its ACK or after `boundMs`. */
  async #announceGoaway(boundMs: number): Promise<void> {
    this.#send(goawayFrame(MAX_STREAM_ID, ErrorCode.NO_ERROR, "draining"));
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      this.ping().catch(() => {}),
      new Promise<void>((r) => (timer = setTimeout(r, boundMs))),
    ]);
    clearTimeout(timer);
  }

  /** Hard stop: GOAWAY with `code`, every open stream fails, the socket closes. */
  close(code: number = ErrorCode.NO_ERROR, message = "closed"): void {
    if (this.#closed) return;
    if (!this.#goawaySent) {
      this.#goawaySent = true;
      this.#send(goawayFrame(this.#lastPeerStream, code, message));
    }
    this.#destroy(code, message, false);
  }

  // ---- StreamHost ----

  sendHeaders(stream: H2Stream, fields: readonly HeaderField[], endStream: boolean): void {
    if (this.#closed) throw new StreamReset(ErrorCode.CANCEL, false, "connection closed");
    const block = this.#encoder.encode(fields);
    for (const f of headerFrames(stream.id, block, endStream, this.#peerMaxFrameSize)) {
      this.#send(f);
    }
  }

  async sendData(stream: H2Stream, chunk: Uint8Array, endStream: boolean): Promise<void> {
    let off = 0;
    do {
      if (stream.resetReason) throw stream.resetReason;
      if (stream.sendStopped) throw stream.sendStopped;
      if (this.#closed) throw new StreamReset(ErrorCode.CANCEL, false, "connection closed");
      const left = chunk.length - off;
      const n = Math.min(left, stream.sendWindow, this.#sendWindow, this.#peerMaxFrameSize);
      if (left > 0 && n <= 0) {
        this.#windowBlocked.add(stream);
        await new Promise<void>((r) => (stream.windowWaiter = r));
        stream.windowWaiter = undefined;
        continue;
      }
      stream.sendWindow -= n;
      this.#sendWindow -= n;
      off += n;
      const last = off >= chunk.length;
      this.#send(
        frameData(stream.id, chunk.subarray(off - n, off), last && endStream),
      );
    } while (off < chunk.length);
    if (this.#queuedBytes > WRITE_HIGH_WATER && !this.#closed) {
      await new Promise<void>((r) => this.#drainWaiters.push(r));
    }
  }

  sendReset(stream: H2Stream, code: number): void {
    if (!this.#closed) this.#send(rstFrame(stream.id, code));
  }

  consumed(stream: H2Stream, n: number): void {
    if (n <= 0) return;
    const charged = Math.min(n, stream.charged);
    if (charged > 0) {
      stream.charged -= charged;
      stream.chargedTo?.host.giveShare(charged);
    }
    // Bytes credited on arrival: their connection credit is back already, only the budget is not.
    const early = Math.min(n, stream.earlyCredited);
    if (early > 0) {
      stream.earlyCredited -= early;
      this.#earlyBytes -= early;
      this.#earlyCredit?.shared?.give(early);
    }
    if (this.#closed) return;
    this.#heldBytes = Math.max(0, this.#heldBytes - (n - early));
    this.#creditConnection(n - early);
    this.#creditStream(stream, n);
  }

  #creditStream(stream: H2Stream, n: number): void {
    if (stream.remoteEnded || stream.resetReason) return;
    stream.unacked += n;
    if (stream.unacked >= this.#opts.initialWindowSize / 4) {
      this.#send(windowUpdateFrame(stream.id, stream.unacked));
      stream.recvWindow += stream.unacked;
      stream.unacked = 0;
    }
  }

  retire(stream: H2Stream): void {
    if (this.#streams.get(stream.id) !== stream) return;
    this.#streams.delete(stream.id);
    this.#windowBlocked.delete(stream);
    this.#openWaiters.shift()?.();
    this.#closeIfIdle();
  }

  takeShare(n: number): boolean {
    return this.#share.tryTake(n);
  }

  giveShare(n: number): void {
    this.#share.give(n);
  }

  /** Bytes buffered for this client's calls right now (its share in use). */
  get shareUsed(): number {
    return this.#share.used;
  }

  provokedReset(): void {
    if (this.#closed) return;
    try {
      this.#spend(1);
    } catch (err) {
      if (err instanceof H2Error) this.close(err.code, err.message);
      else throw err;
    }
  }

  // ---- writing ----

  #send(bytes: Uint8Array): void {
    if (this.#closed) return;
    this.#queue.push(bytes);
    this.#queuedBytes += bytes.length;
    if (this.#queuedBytes > WRITE_HARD_LIMIT) {
      this.#destroy(ErrorCode.ENHANCE_YOUR_CALM, "peer does not read what we send", false);
      return;
    }
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => void this.#flush());
    }
  }

  async #flush(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const parts = this.#queue;
        this.#queue = [];
        let total = 0;
        for (const p of parts) total += p.length;
        const buf = parts.length === 1 ? parts[0]! : concat(parts, total);
        let off = 0;
        while (off < buf.length) off += await this.#conn.write(buf.subarray(off));
        this.#queuedBytes -= total;
        if (this.#queuedBytes <= WRITE_HIGH_WATER) {
          for (const w of this.#drainWaiters.splice(0)) w();
        }
      }
    } catch (err) {
      this.#destroy(ErrorCode.INTERNAL_ERROR, `write failed: ${err}`, true);
    } finally {
      this.#flushing = false;
    }
    if (this.#closed) this.#afterFlush?.();
    else this.#closeIfIdle();
  }

  // ---- reading ----

  async #readLoop(): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        this.#reader.push(buf.slice(0, n));
        if (!this.#prefaceSeen) {
          const p = this.#reader.take(CLIENT_PREFACE.length);
          if (!p) continue;
          if (!p.every((b, i) => b === CLIENT_PREFACE[i])) {
            throw new H2Error(ErrorCode.PROTOCOL_ERROR, "bad connection preface");
          }
          this.#prefaceSeen = true;
        }
        let f: Frame | undefined;
        while (!this.#closed && (f = this.#reader.next())) this.#onFrameSafe(f);
        if (this.#closed) return;
      }
      this.#destroy(ErrorCode.NO_ERROR, "peer closed the connection", true);
    } catch (err) {
      if (err instanceof H2Error) this.close(err.code, err.message);
      else this.#destroy(ErrorCode.INTERNAL_ERROR, `read failed: ${err}`, true);
    }
  }

  /** Stream errors reset the stream; connection errors propagate to the read loop. */
  #onFrameSafe(f: Frame): void {
    try {
      this.#onFrame(f);
    } catch (err) {
      if (err instanceof H2Error && err.stream !== 0) {
        if (this.role === "server" && err.code === ErrorCode.PROTOCOL_ERROR) {
          this.#onRefusedStream?.("bad_request", err.message);
        }
        this.#send(rstFrame(err.stream, err.code));
        this.#streams.get(err.stream)?.fail(new StreamReset(err.code, false, err.message));
        // A reset the peer provoked costs what its own RST_STREAM would ("MadeYouReset").
        this.#spend(1);
      } else throw err;
    }
  }

  #onFrame(f: Frame): void {
    this.#lastFrameAt = performance.now();
    if (!this.#settingsSeen && f.type !== FrameType.SETTINGS) {
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, "first frame is not SETTINGS");
    }
    if (this.#continuation && f.type !== FrameType.CONTINUATION) {
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, "expected CONTINUATION");
    }
    validateFrame(f);
    switch (f.type) {
      case FrameType.DATA:
        return this.#onData(f);
      case FrameType.HEADERS:
        return this.#onHeadersFrame(f);
      case FrameType.CONTINUATION:
        return this.#onContinuation(f);
      case FrameType.PRIORITY:
        return this.#spend(1);
      case FrameType.RST_STREAM:
        return this.#onReset(f);
      case FrameType.SETTINGS:
        return this.#onSettings(f);
      case FrameType.PING:
        if (f.flags & Flag.ACK) {
          const key = f.payload.join(",");
          this.#pings.get(key)?.();
          this.#pings.delete(key);
          return;
        }
        this.#spend(1);
        return this.#send(pingFrame(f.payload, true));
      case FrameType.GOAWAY:
        return this.#onGoaway(f);
      case FrameType.WINDOW_UPDATE:
        return this.#onWindowUpdate(f);
      default:
        return; // unknown frame types are ignored (RFC 9113 4.1)
    }
  }

  /** Takes `cost` from the control-frame budget; an empty budget is a flood. */
  #spend(cost: number): void {
    const now = performance.now();
    this.#tokens = Math.min(
      this.#opts.controlFrameBurst,
      this.#tokens + (now - this.#tokensAt) * this.#opts.controlFramesPerSecond / 1000,
    );
    this.#tokensAt = now;
    this.#tokens -= cost;
    if (this.#tokens < 0) {
      throw new H2Error(ErrorCode.ENHANCE_YOUR_CALM, "too many control frames");
    }
  }

  #onData(f: Frame): void {
    const size = f.payload.length;
    if (size > this.#recvWindow) {
      throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded");
    }
    this.#recvWindow -= size;
    const stream = this.#streams.get(f.streamId);
    const end = (f.flags & Flag.END_STREAM) !== 0;
    if (!stream) {
      this.#checkKnownId(f.streamId);
      // A stream we already closed: give the credit back and ignore (RFC 9113 5.1).
      this.#creditConnection(size);
      return;
    }
    if (stream.remoteEnded || !stream.headersReceived) {
      this.#creditConnection(size);
      throw new H2Error(ErrorCode.STREAM_CLOSED, "DATA after END_STREAM", f.streamId);
    }
    if (size > stream.recvWindow) {
      this.#creditConnection(size);
      throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "stream window exceeded", f.streamId);
    }
    stream.recvWindow -= size;
    const data = unpad(f);
    stream.receivedBytes += data.length;
    if (stream.lengthBroken(end)) {
      this.#creditConnection(size);
      throw new H2Error(
        ErrorCode.PROTOCOL_ERROR,
        "DATA does not add up to content-length",
        f.streamId,
      );
    }
    if (data.length === 0 && !end) this.#spend(1); // empty DATA frames cost like control frames
    // Padding is never read by anyone: credit it back at once.
    const padding = size - data.length;
    if (padding > 0) {
      this.#creditConnection(padding);
      this.#creditStream(stream, padding);
    }
    if (data.length > 0 && stream.chargedTo) {
      if (!stream.chargedTo.host.takeShare(data.length)) {
        // The client these bytes are for holds its whole share unread: its call ends here. The
        // upstream reset is one the client provoked, and costs it like its own RST_STREAM.
        const client = stream.chargedTo;
        this.#creditConnection(data.length);
        stream.reset(ErrorCode.CANCEL);
        client.shareExceeded = true;
        client.reset(ErrorCode.ENHANCE_YOUR_CALM);
        client.countProvokedReset();
        return;
      }
      stream.charged += data.length;
    }
    if (data.length > 0) {
      if (this.#takeEarly(data.length)) {
        stream.earlyCredited += data.length;
        this.#creditConnection(data.length);
      } else this.#heldBytes += data.length;
    }
    stream.onData(data);
    if (end) stream.onEnd(undefined);
  }

  /** Room for `n` more early-credited bytes, on this connection and in the shared budget. */
  #takeEarly(n: number): boolean {
    const early = this.#earlyCredit;
    if (!early || this.#earlyBytes + n > early.perConnection) return false;
    if (early.shared && !early.shared.tryTake(n)) return false;
    this.#earlyBytes += n;
    return true;
  }

  #creditConnection(n: number): void {
    if (n <= 0 || this.#closed) return;
    this.#recvUnacked += n;
    if (this.#recvUnacked >= this.#opts.connectionWindowSize / 4) {
      this.#send(windowUpdateFrame(0, this.#recvUnacked));
      this.#recvWindow += this.#recvUnacked;
      this.#recvUnacked = 0;
    }
  }

  /** A frame for a stream not in the table: fine if it was opened and closed, else an error. */
  #checkKnownId(id: number): void {
    const peerInitiated = (id % 2 === 1) === (this.role === "server");
    const known = peerInitiated ? id <= this.#lastPeerStream : id < this.#nextLocalStream;
    if (!known) throw new H2Error(ErrorCode.PROTOCOL_ERROR, `frame on idle stream ${id}`);
  }

  #onHeadersFrame(f: Frame): void {
    const fragment = unpad(f);
    const end = (f.flags & Flag.END_STREAM) !== 0;
    if (f.flags & Flag.END_HEADERS) return this.#onHeaderBlock(f.streamId, fragment, end);
    this.#continuation = { streamId: f.streamId, parts: [fragment], size: fragment.length, end };
  }

  #onContinuation(f: Frame): void {
    const c = this.#continuation;
    if (!c || c.streamId !== f.streamId) {
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION");
    }
    c.parts.push(f.payload);
    c.size += f.payload.length;
    // Bounded: a header block that never ends (CONTINUATION flood) cannot grow past this.
    if (c.size > this.#opts.maxHeaderListSize * 2) {
      throw new H2Error(ErrorCode.ENHANCE_YOUR_CALM, "header block too large");
    }
    if (c.parts.length > 1 && f.payload.length === 0) this.#spend(1);
    if (f.flags & Flag.END_HEADERS) {
      this.#continuation = undefined;
      this.#onHeaderBlock(c.streamId, concat(c.parts, c.size), c.end);
    }
  }

  #onHeaderBlock(id: number, block: Uint8Array, end: boolean): void {
    // Decode first, always: the HPACK table must stay in step even for streams we drop.
    let fields: HeaderField[] | undefined;
    let tooLarge = false;
    try {
      fields = this.#decoder.decode(block);
    } catch (err) {
      if (err instanceof HeaderListTooLarge) tooLarge = true;
      else throw new H2Error(ErrorCode.COMPRESSION_ERROR, String(err));
    }
    const existing = this.#streams.get(id);
    if (existing) {
      if (existing.remoteEnded) {
        throw new H2Error(ErrorCode.STREAM_CLOSED, "HEADERS after END_STREAM", id);
      }
      if (tooLarge) throw new H2Error(ErrorCode.PROTOCOL_ERROR, "header list too large", id);
      const kind = existing.headersReceived ? "trailers" : "response";
      if (kind === "trailers" && !end) {
        throw new H2Error(ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM", id);
      }
      if (kind === "trailers" && existing.lengthBroken(true)) {
        throw new H2Error(ErrorCode.PROTOCOL_ERROR, "DATA does not add up to content-length", id);
      }
      // 1xx informational responses are skipped (gRPC never sends them), a bounded number of
      // them (as the h1 codec): a flood would keep this parsing until the route timeout. One
      // with END_STREAM leaves no final response to come: malformed (RFC 9113 8.1).
      if (
        kind === "response" && /^1\d\d$/.test(fields!.find(([n]) => n === ":status")?.[1] ?? "")
      ) {
        if (end) {
          throw new H2Error(ErrorCode.PROTOCOL_ERROR, "interim (1xx) response ends the stream", id);
        }
        if (++existing.interim > MAX_INTERIM) {
          throw new H2Error(
            ErrorCode.PROTOCOL_ERROR,
            `more than ${MAX_INTERIM} interim (1xx) responses`,
            id,
          );
        }
        return;
      }
      const problem = headerProblem(fields!, kind);
      if (problem) throw new H2Error(ErrorCode.PROTOCOL_ERROR, problem, id);
      existing.onHeaders(fields!, end);
      return;
    }
    if (this.role === "client" || id % 2 === 0) {
      this.#checkKnownId(id);
      return; // headers for a stream we already closed
    }
    if (id <= this.#lastPeerStream) {
      if (this.#openedPeerIds.has(id)) {
        throw new H2Error(ErrorCode.STREAM_CLOSED, "HEADERS on a closed stream", id);
      }
      throw new H2Error(
        ErrorCode.PROTOCOL_ERROR,
        `new stream ${id} below the last one opened (${this.#lastPeerStream})`,
      );
    }
    this.#lastPeerStream = id;
    this.#openedPeerIds.add(id);
    if (this.#openedPeerIds.size > PEER_IDS_KEPT) {
      this.#openedPeerIds.delete(this.#openedPeerIds.values().next().value!);
    }
    if (this.#goawaySent) {
      this.#send(rstFrame(id, ErrorCode.REFUSED_STREAM));
      return;
    }
    if (this.#streams.size >= this.#opts.maxConcurrentStreams) {
      this.#spend(1);
      this.#send(rstFrame(id, ErrorCode.REFUSED_STREAM));
      return;
    }
    if (tooLarge) {
      this.#spend(1);
      this.#onRefusedStream?.("headers_too_large", "header list too large");
      // 431 as a response, then the stream is done (RFC 9113 10.5.1).
      this.#send(
        headerFrames(
          id,
          this.#encoder.encode([[":status", "431"]]),
          true,
          this.#peerMaxFrameSize,
        )[0]!,
      );
      if (!end) this.#send(rstFrame(id, ErrorCode.NO_ERROR));
      return;
    }
    const problem = headerProblem(fields!, "request");
    if (problem) throw new H2Error(ErrorCode.PROTOCOL_ERROR, problem, id);
    // The request's DATA must add up to its content-length (RFC 9113 8.1.1): checked as it
    // arrives, so a body of another length is never forwarded as if complete.
    const declared = headerValue(fields!, "content-length");
    if (declared !== undefined && end && Number(declared) !== 0) {
      throw new H2Error(ErrorCode.PROTOCOL_ERROR, "DATA does not add up to content-length", id);
    }
    const stream = new H2Stream(id, this, this.#peerInitialWindow, this.#opts.initialWindowSize);
    if (declared !== undefined) stream.expectLength(Number(declared));
    this.#streams.set(id, stream);
    stream.onHeaders(fields!, end);
    this.#onStream?.(stream);
  }

  #onReset(f: Frame): void {
    this.#spend(1);
    const stream = this.#streams.get(f.streamId);
    if (!stream) return this.#checkKnownId(f.streamId);
    const code = readUint32(f.payload, 0);
    // A server done with its response stopping our upload: the response stands (RFC 9113 8.1).
    if (code === ErrorCode.NO_ERROR && this.role === "client" && stream.remoteEnded) {
      return stream.peerStoppedSending(new StreamReset(code, true));
    }
    stream.fail(new StreamReset(code, true));
  }

  #onSettings(f: Frame): void {
    if (f.flags & Flag.ACK) {
      clearTimeout(this.#settingsAckTimer);
      this.#settingsAckTimer = undefined;
      return;
    }
    if (!this.#settingsSeen) clearTimeout(this.#handshakeTimer);
    this.#settingsSeen = true;
    this.#spend(1);
    for (const [id, value] of parseSettings(f.payload)) {
      switch (id) {
        case Setting.HEADER_TABLE_SIZE:
          this.#encoder.setMaxTableSize(value);
          break;
        case Setting.ENABLE_PUSH:
          if (value > 1) throw new H2Error(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH above 1");
          break;
        case Setting.MAX_CONCURRENT_STREAMS:
          this.#peerMaxConcurrent = value;
          break;
        case Setting.INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW) {
            throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE too large");
          }
          const delta = value - this.#peerInitialWindow;
          this.#peerInitialWindow = value;
          for (const s of this.#streams.values()) {
            s.sendWindow += delta;
            if (s.sendWindow > MAX_WINDOW) {
              throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow");
            }
          }
          if (delta > 0) this.#wakeWriters();
          break;
        }
        case Setting.MAX_FRAME_SIZE:
          if (value < MIN_FRAME_SIZE || value > MAX_FRAME_SIZE_LIMIT) {
            throw new H2Error(ErrorCode.PROTOCOL_ERROR, "MAX_FRAME_SIZE out of range");
          }
          this.#peerMaxFrameSize = value;
          break;
      }
    }
    this.#send(settingsAck());
    this.#resolveReady();
  }

  #onGoaway(f: Frame): void {
    const last = readUint32(f.payload, 0) & 0x7fffffff;
    const code = readUint32(f.payload, 4);
    this.#goawayReceived = last;
    // Streams we opened above `last` were never processed: safe to retry elsewhere.
    for (const s of [...this.#streams.values()]) {
      const local = (s.id % 2 === 1) === (this.role === "client");
      if (local && s.id > last) {
        s.fail(new StreamReset(ErrorCode.REFUSED_STREAM, true, "refused by GOAWAY"));
      }
    }
    for (const w of this.#openWaiters.splice(0)) w();
    if (code !== ErrorCode.NO_ERROR) {
      this.#destroy(code, `peer sent GOAWAY ${code}`, true);
      return;
    }
    this.#closeIfIdle();
  }

  #onWindowUpdate(f: Frame): void {
    const inc = readUint32(f.payload, 0) & 0x7fffffff;
    if (f.streamId === 0) {
      if (inc === 0) throw new H2Error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0");
      this.#sendWindow += inc;
      if (this.#sendWindow > MAX_WINDOW) {
        throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow");
      }
      this.#wakeWriters();
      return;
    }
    const stream = this.#streams.get(f.streamId);
    if (!stream) return this.#checkKnownId(f.streamId);
    if (inc === 0) throw new H2Error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0", f.streamId);
    stream.sendWindow += inc;
    if (stream.sendWindow > MAX_WINDOW) {
      throw new H2Error(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow", f.streamId);
    }
    if (stream.windowWaiter) {
      this.#windowBlocked.delete(stream);
      stream.windowWaiter();
    }
  }

  #wakeWriters(): void {
    const blocked = [...this.#windowBlocked];
    this.#windowBlocked.clear();
    for (const s of blocked) s.windowWaiter?.();
  }

  #closeIfIdle(): void {
    if (this.#streams.size > 0 || this.#closed) return;
    if (this.#goawaySent || this.#goawayReceived !== undefined) {
      // Let queued frames (the last responses, GOAWAY) go out first.
      if (!this.#flushing) this.#destroy(ErrorCode.NO_ERROR, "drained", false);
    }
  }

  #destroy(code: number, message: string, byPeer: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#resolveReady();
    clearTimeout(this.#handshakeTimer);
    clearTimeout(this.#settingsAckTimer);
    clearTimeout(this.#idleTimer);
    const reason = new StreamReset(
      code === ErrorCode.NO_ERROR ? ErrorCode.CANCEL : code,
      byPeer,
      `connection closed: ${message}`,
    );
    for (const s of [...this.#streams.values()]) s.fail(reason);
    this.#streams.clear();
    for (const w of this.#drainWaiters.splice(0)) w();
    for (const w of this.#openWaiters.splice(0)) w();
    for (const p of this.#pings.values()) p();
    this.#pings.clear();
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      clearTimeout(fallback);
      try {
        this.#conn.close();
      } catch { /* already closed */ }
      this.#onClose?.({ code, message, byPeer });
      this.#resolveDone();
    };
    // What is queued (a GOAWAY, last responses) goes out first, but a peer that does not read
    // cannot hold the socket open for more than a second.
    const fallback = setTimeout(finish, 1000);
    if (this.#flushing) this.#afterFlush = finish;
    else if (this.#queue.length > 0 && !byPeer) {
      const buf = concat(this.#queue, this.#queuedBytes);
      this.#queue = [];
      this.#conn.write(buf).catch(() => 0).finally(finish);
    } else finish();
  }
}

function frameData(streamId: number, data: Uint8Array, end: boolean): Uint8Array {
  const out = new Uint8Array(9 + data.length);
  out[0] = data.length >>> 16;
  out[1] = (data.length >>> 8) & 0xff;
  out[2] = data.length & 0xff;
  out[3] = FrameType.DATA;
  out[4] = end ? Flag.END_STREAM : 0;
  out[5] = (streamId >>> 24) & 0x7f;
  out[6] = (streamId >>> 16) & 0xff;
  out[7] = (streamId >>> 8) & 0xff;
  out[8] = streamId & 0xff;
  out.set(data, 9);
  return out;
}

function concat(parts: readonly Uint8Array[], total: number): Uint8Array {
  const out = new Uint8Array(total);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
