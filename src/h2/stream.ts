/**
 * One HTTP/2 stream as the application sees it: the header lists that arrived, the DATA as a
 * ReadableStream (flow-control credit is returned only as the reader takes chunks, so a slow
 * reader holds at most one window), trailers, and methods to send headers, data and trailers
 * or reset. The connection (connection.ts) owns the frames; this class owns one stream's state.
 */
import { ErrorCode } from "./frames.ts";
import type { HeaderField } from "./hpack.ts";

/** The stream ended with RST_STREAM (either side) or its connection went away. */
export class StreamReset extends Error {
  constructor(readonly code: number, readonly byPeer: boolean, message?: string) {
    super(message ?? `stream reset with code ${code}${byPeer ? " by the peer" : ""}`);
    this.name = "StreamReset";
  }
}

/** What a stream needs from its connection. */
export interface StreamHost {
  sendHeaders(stream: H2Stream, fields: readonly HeaderField[], endStream: boolean): void;
  /** Sends as much of `chunk` as windows allow; resolves when all of it is queued. */
  sendData(stream: H2Stream, chunk: Uint8Array, endStream: boolean): Promise<void>;
  sendReset(stream: H2Stream, code: number): void;
  /** The reader took (or released, or dropped) `n` bytes: return that much credit to the peer. */
  consumed(stream: H2Stream, n: number): void;
  /** The stream is closed in both directions (or reset): forget it. */
  retire(stream: H2Stream): void;
  /**
   * Server role: takes `n` bytes from the client's share of what Ferry may buffer for its calls
   * (upstream answers it has not taken yet); false when the share is full.
   */
  takeShare(n: number): boolean;
  giveShare(n: number): void;
  /** The peer made us reset something on its behalf: costs what its own RST_STREAM would. */
  provokedReset(): void;
}

function deferred<T>() {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // rejections are read by whoever awaits; none is unhandled
  return { promise, resolve, reject };
}

export class H2Stream {
  /** Credit the peer gave us for DATA on this stream (RFC 9113 6.9). */
  sendWindow: number;
  /** Credit we gave the peer, and what the reader consumed but we have not yet returned. */
  recvWindow: number;
  unacked = 0;
  /** Buffered bytes whose connection-level credit went back on arrival (connection.ts). */
  earlyCredited = 0;
  /** The downstream stream whose client's share pays for this stream's buffered data (chargeTo). */
  chargedTo: H2Stream | undefined;
  /** Buffered bytes charged to `chargedTo`'s share, not yet read or dropped. */
  charged = 0;
  /** Server role: reset because its client's share was full (what chargeTo guards). */
  shareExceeded = false;
  localEnded = false;
  remoteEnded = false;
  /** DATA bytes received from the peer (padding not counted). */
  receivedBytes = 0;
  /** The Content-Length the peer declared, once `expectLength` made it binding. */
  #declaredLength: number | undefined;
  headersSent = false;
  headersReceived = false;
  /** Interim (1xx) responses skipped on this stream (connection.ts bounds them). */
  interim = 0;
  /**
   * Client role: the server, its response complete, stopped our upload with RST_STREAM
   * (NO_ERROR); writes fail with it, while the response stays readable (see peerStoppedSending).
   */
  sendStopped: StreamReset | undefined;
  #reset: StreamReset | undefined;

  readonly #headers = deferred<HeaderField[]>();
  readonly #trailers = deferred<HeaderField[] | undefined>();
  readonly #closed = deferred<StreamReset | undefined>();
  #inbox: Uint8Array[] = [];
  #inboxBytes = 0;
  /** With `holdCredit()`: bytes read but not yet `release`d, whose credit the peer still waits for. */
  #holding = false;
  #held = 0;
  #pull: (() => void) | undefined;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  /** Wakes a writer waiting for window. */
  windowWaiter: (() => void) | undefined;

  /** DATA from the peer. Cancelling it resets the stream (CANCEL) unless it already ended. */
  readonly body: ReadableStream<Uint8Array>;

  constructor(
    readonly id: number,
    readonly host: StreamHost,
    sendWindow: number,
    recvWindow: number,
  ) {
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
    this.body = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#controller = c;
      },
      pull: () =>
        new Promise<void>((resolve) => {
          this.#pull = resolve;
          this.#pump();
        }),
      cancel: () => {
        this.#inboxDrop();
        if (!this.remoteEnded) this.reset(ErrorCode.CANCEL);
      },
    }, { highWaterMark: 0 });
  }

  /** Wakes firstData's waiter (DATA, the end, or the reset came). */
  #dataWaiter: ((reset?: StreamReset) => void) | undefined;

  /**
   * Resolves once body bytes or the peer's end have arrived, or once `late` resolves with
   * neither; rejects with the StreamReset when the stream is reset first (the transport's
   * first-bytes wait).
   */
  firstData(late: Promise<unknown>): Promise<void> {
    if (this.#reset) return Promise.reject(this.#reset);
    if (this.#inboxBytes > 0 || this.receivedBytes > 0 || this.remoteEnded) {
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter = (reset?: StreamReset) => {
        if (this.#dataWaiter !== waiter) return;
        this.#dataWaiter = undefined;
        if (reset) reject(reset);
        else resolve();
      };
      this.#dataWaiter = waiter;
      late.then(() => waiter());
    });
  }

  /** The first header list from the peer (request headers, or the response's). */
  get headers(): Promise<HeaderField[]> {
    return this.#headers.promise;
  }
  /** Trailers, or undefined when the peer ended with DATA; rejects with StreamReset. */
  get trailers(): Promise<HeaderField[] | undefined> {
    return this.#trailers.promise;
  }
  /** Resolves when the stream is closed: undefined when clean, the StreamReset otherwise. */
  get closed(): Promise<StreamReset | undefined> {
    return this.#closed.promise;
  }
  get resetReason(): StreamReset | undefined {
    return this.#reset;
  }
  get isClosed(): boolean {
    return this.#reset !== undefined || (this.localEnded && this.remoteEnded);
  }

  /**
   * From now on, reading DATA returns no credit to the peer: `release(n)` does, once the bytes are
   * forwarded or dropped. So bytes the application merely buffers stay inside the peer's windows.
   */
  holdCredit(): void {
    this.#holding = true;
  }

  /** Returns credit for `n` bytes read under `holdCredit()`. */
  release(n: number): void {
    n = Math.min(n, this.#held);
    if (n <= 0) return;
    this.#held -= n;
    this.host.consumed(this, n);
  }

  /**
   * Upstream side: what this stream buffers unread is charged to the share of `client`'s
   * connection. A client whose share is full cannot make Ferry hold more for it: the stream that
   * would go over is reset (CANCEL upstream, ENHANCE_YOUR_CALM to the client) instead of holding
   * memory, or the upstream connection window that other clients' calls need.
   */
  chargeTo(client: H2Stream): void {
    this.chargedTo = client;
  }

  /**
   * The peer provoked a reset we sent elsewhere on its behalf (an upstream stream cancelled on its
   * deadline): counted in its connection's control-frame budget, like its own RST_STREAM.
   */
  countProvokedReset(): void {
    this.host.provokedReset();
  }

  /**
   * The peer's DATA must add up to `n` bytes, its Content-Length (RFC 9113 8.1.1): more, or an end
   * with fewer, is a stream error PROTOCOL_ERROR (the connection checks, `lengthBroken`). Returns
   * false when what arrived already breaks it.
   */
  expectLength(n: number): boolean {
    this.#declaredLength = n;
    return !this.lengthBroken(this.remoteEnded);
  }

  /** What arrived breaks the declared length (`ended`: the peer's side is complete). */
  lengthBroken(ended: boolean): boolean {
    const n = this.#declaredLength;
    return n !== undefined && (this.receivedBytes > n || (ended && this.receivedBytes !== n));
  }

  /** Bytes read under `holdCredit()` and not yet released. */
  get heldBytes(): number {
    return this.#held;
  }

  // ---- sending ----

  sendHeaders(fields: readonly HeaderField[], endStream = false): void {
    if (this.#reset) throw this.#reset;
    if (this.localEnded) throw new Error("stream already ended");
    this.headersSent = true;
    if (endStream) this.localEnded = true;
    this.host.sendHeaders(this, fields, endStream);
    if (endStream) this.#maybeClose();
  }

  async write(chunk: Uint8Array): Promise<void> {
    if (this.#reset) throw this.#reset;
    if (this.sendStopped) throw this.sendStopped;
    if (this.localEnded) throw new Error("stream already ended");
    await this.host.sendData(this, chunk, false);
  }

  /** Ends our side: with trailers (a HEADERS frame) or an empty END_STREAM DATA frame. */
  async end(trailers?: readonly HeaderField[]): Promise<void> {
    if (this.#reset) throw this.#reset;
    if (this.sendStopped) throw this.sendStopped;
    if (this.localEnded) return;
    if (trailers) {
      this.localEnded = true;
      this.host.sendHeaders(this, trailers, true);
    } else {
      this.localEnded = true;
      await this.host.sendData(this, new Uint8Array(0), true);
    }
    this.#maybeClose();
  }

  /**
   * Sends RST_STREAM with `code`. `readerError`, when given, is what a reader of `body` sees
   * instead of the StreamReset (the reason the application gave up, in its own terms); `null`
   * ends the body quietly instead, for a reader known to be gone.
   */
  reset(code: number = ErrorCode.CANCEL, readerError?: unknown): void {
    if (this.#reset || (this.localEnded && this.remoteEnded)) {
      // Closed already, but data may still wait unread: nobody will read it now.
      this.#inboxDrop();
      return;
    }
    this.host.sendReset(this, code);
    this.fail(new StreamReset(code, false), readerError);
  }

  // ---- called by the connection ----

  onHeaders(fields: HeaderField[], endStream: boolean): "headers" | "trailers" {
    if (!this.headersReceived) {
      this.headersReceived = true;
      this.#headers.resolve(fields);
      if (endStream) this.onEnd(undefined);
      return "headers";
    }
    this.onEnd(fields);
    return "trailers";
  }

  onData(chunk: Uint8Array): void {
    if (chunk.length > 0) {
      this.#inbox.push(chunk);
      this.#inboxBytes += chunk.length;
      this.#dataWaiter?.();
    }
    this.#pump();
  }

  onEnd(trailers: HeaderField[] | undefined): void {
    this.remoteEnded = true;
    this.#dataWaiter?.();
    this.#trailers.resolve(trailers);
    this.#pump();
    this.#maybeClose();
  }

  /**
   * RFC 9113 8.1: a server that has sent its whole response may stop the request's upload with
   * RST_STREAM (NO_ERROR), and the client must not discard the response for it. Our side stops
   * sending (a writer waiting for window wakes and fails), the stream is closed on the wire, and
   * what the response left unread stays readable to its end.
   */
  peerStoppedSending(reason: StreamReset): void {
    if (this.#reset || this.sendStopped) return;
    this.sendStopped = reason;
    this.localEnded = true;
    this.windowWaiter?.();
    this.host.retire(this);
    this.#closed.resolve(undefined);
  }

  /** Reset by the peer, by us, or the connection closed: everything pending fails. */
  fail(reason: StreamReset, readerError: unknown = reason): void {
    if (this.#reset) return;
    this.#reset = reason;
    this.#dataWaiter?.(reason);
    this.#headers.reject(reason);
    this.#trailers.reject(reason);
    this.#inboxDrop();
    // Held bytes will never be forwarded: their connection-level credit goes back.
    this.release(this.#held);
    try {
      if (readerError === null) this.#controller.close();
      else this.#controller.error(readerError);
    } catch { /* already closed */ }
    this.#pull?.();
    this.#pull = undefined;
    this.windowWaiter?.();
    this.host.retire(this);
    this.#closed.resolve(reason);
  }

  #inboxDrop(): void {
    // Credit for bytes nobody will read goes back to the connection window.
    if (this.#inboxBytes > 0) this.host.consumed(this, this.#inboxBytes);
    this.#inbox = [];
    this.#inboxBytes = 0;
  }

  #pump(): void {
    if (!this.#pull || this.#reset) return;
    const chunk = this.#inbox.shift();
    if (chunk) {
      this.#inboxBytes -= chunk.length;
      this.#controller.enqueue(chunk);
      if (this.#holding) this.#held += chunk.length;
      else this.host.consumed(this, chunk.length);
    } else if (this.remoteEnded) {
      try {
        this.#controller.close();
      } catch { /* cancelled */ }
    } else return;
    const resolve = this.#pull;
    this.#pull = undefined;
    resolve();
  }

  #maybeClose(): void {
    if (this.localEnded && this.remoteEnded && !this.#reset) {
      this.host.retire(this);
      this.#closed.resolve(undefined);
    }
  }
}
