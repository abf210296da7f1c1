/**
 * One HTTP/1.1 upstream connection: a socket, its read buffer, and the exchange of one request
 * and one response at a time. Bytes pass as they are: nothing is decoded, nothing is added but
 * the framing the request already had.
 *
 * One piece past 500 lines: the request writer and the response reader share the socket, its
 * read buffer and the rule for when the connection may go back to the pool.
 */
import {
  ChunkedDecoder,
  Framing,
  H1ProtocolError,
  makeRoom,
  parseResponseHead,
  type ResponseHead,
} from "./parse.ts";
import type { BodyReader } from "./body_reader.ts";
import type { BodyErrorCounter } from "../upstream/transport.ts";

const INITIAL_BUFFER = 16 * 1024;
/** Body reads straight from the socket take at most this much at once. */
const BODY_READ = 64 * 1024;

/** Raised when a reused connection turns out closed before any response byte: safe to retry. */
export class StaleConnection extends Error {
  /** `unsent`: the request's head could not be written, so the upstream cannot have acted on it. */
  constructor(cause?: unknown, readonly unsent = false) {
    super("the upstream closed an idle connection", { cause });
    this.name = "StaleConnection";
  }
}

/** The upstream closed or reset the connection before the response was complete. */
export class UpstreamClosed extends Error {
  constructor(what: string, cause?: unknown) {
    super(`the upstream closed the connection ${what}`, { cause });
    this.name = "UpstreamClosed";
  }
}

export interface ConnectionOwner {
  /** Takes back a connection whose exchange ended cleanly (it may still be closed instead). */
  release(c: H1Connection): void;
  /** Forgets a connection that was closed. */
  closed(c: H1Connection): void;
}

export class H1Connection {
  buf = new Uint8Array(INITIAL_BUFFER);
  start = 0;
  end = 0;
  /** Completed exchanges on this connection. */
  requests = 0;
  idle = false;
  idleSince = 0;
  #closed = false;
  /**
   * A read already in flight whose bytes land in `buf`: one started while idle (it notices an
   * upstream that closes idle connections), or one the first-bytes wait left behind.
   */
  #pending: Promise<number | null> | undefined;

  constructor(readonly conn: Deno.Conn, readonly owner: ConnectionOwner) {}

  get isClosed(): boolean {
    return this.#closed;
  }

  /** Reads more into the buffer; null at EOF. Grows the buffer up to `limit`. */
  fill(limit: number): Promise<number | null> {
    const pending = this.#pending;
    if (pending) {
      this.#pending = undefined;
      return pending;
    }
    if (!makeRoom(this, limit + INITIAL_BUFFER)) {
      throw new H1ProtocolError("response head too large");
    }
    return this.#read();
  }

  /**
   * A read into the buffer that the caller may give up waiting for: left in flight, the next
   * fill() takes it up (see settleRead), so two reads never race for the socket.
   */
  fillLater(limit: number): Promise<number | null> {
    const p = this.fill(limit);
    this.#pending = p;
    return p.finally(() => {
      if (this.#pending === p) this.#pending = undefined;
    });
  }

  /** Waits out a read still in flight (its bytes land in the buffer) before a direct read. */
  settleRead(): Promise<number | null> | undefined {
    return this.#pending && this.fill(0);
  }

  #read(): Promise<number | null> {
    return this.conn.read(this.buf.subarray(this.end)).then((n) => {
      if (n !== null) this.end += n;
      return n;
    });
  }

  /** Parks the connection: a read stays pending so that a close by the upstream is seen at once. */
  park(): void {
    this.idle = true;
    this.idleSince = performance.now();
    this.start = this.end = 0;
    const p = this.#read();
    this.#pending = p;
    p.then(() => {
      // Whatever arrives on an idle connection (EOF, a reset, unasked-for bytes) ends it.
      if (this.idle) this.close();
    }, () => {
      if (this.idle) this.close();
    });
  }

  async writeAll(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) off += await this.conn.write(bytes.subarray(off));
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.idle = false;
    try {
      this.conn.close();
    } catch { /* already closed */ }
    this.owner.closed(this);
  }
}

const encoder = new TextEncoder();
const NON_ASCII = /[^\t\r\n -~]/;
const UNSAFE_VALUE = /[\0\r\n]/;
const UNSAFE_TARGET = /[\0-\x20\x7f]/;

/** Latin-1 (byte string) encoding; header values are byte strings in Headers. */
export function encodeLatin1(s: string): Uint8Array {
  if (!NON_ASCII.test(s)) return encoder.encode(s);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) throw new TypeError("header text outside Latin-1");
    out[i] = c;
  }
  return out;
}

/**
 * The request head, framed exactly as the downstream request was: its Content-Length when it had
 * one, chunked when it has a body of unknown length, nothing when it has no body.
 */
export function serializeHead(
  method: string,
  target: string,
  headers: readonly [string, string][],
  hasBody: boolean,
): { head: Uint8Array; contentLength: number } {
  if (UNSAFE_TARGET.test(target)) throw new TypeError("request target with control characters");
  let s = `${method} ${target} HTTP/1.1\r\n`;
  let contentLength = -1;
  for (const [name, value] of headers) {
    if (UNSAFE_VALUE.test(value)) throw new TypeError(`header ${name} with CR, LF or NUL`);
    if (name === "content-length") {
      if (contentLength !== -1 || !/^[0-9]{1,15}$/.test(value)) {
        throw new TypeError("invalid or repeated Content-Length on the request");
      }
      contentLength = Number(value);
      continue; // written once, below
    } else if (name === "transfer-encoding") continue; // framing is ours to set
    s += `${name}: ${value}\r\n`;
  }
  if (contentLength !== -1) {
    // Never a length without its bytes, nor bytes without their length.
    // Deno.serve hands no body to a GET or HEAD handler, whatever the client sent: refused.
    if (!hasBody && contentLength !== 0) {
      throw new TypeError(`a Content-Length of ${contentLength} without a body to send`);
    }
    s += `content-length: ${contentLength}\r\n`;
  } else if (hasBody) {
    s += "transfer-encoding: chunked\r\n";
  }
  s += "\r\n";
  return { head: encodeLatin1(s), contentLength };
}

const CHUNK_END = encoder.encode("0\r\n\r\n");

/** What an exchange needs beyond the head. */
export interface Exchange {
  readonly method: string;
  readonly head: Uint8Array;
  /** -1: chunked (when there is a body). */
  readonly contentLength: number;
  readonly body: BodySource | undefined;
  readonly signal: AbortSignal;
  /** Called when the signal aborts while the exchange is in progress. */
  readonly abortError: () => unknown;
  /** The Response carries no headers; the caller reads them from h1ResponseParts. */
  readonly headersOutOfBand?: boolean | undefined;
  /**
   * A response body's failure (after the head) as its reader sees it: the transport's error, and
   * noted in `record` for the access log. Absent: the codec's own error. (A shared function, not
   * a closure per request.)
   */
  readonly bodyError?:
    | ((
      err: unknown,
      signal: AbortSignal,
      record: Exchange["record"],
      counter: Exchange["bodyErrors"],
    ) => unknown)
    | undefined;
  readonly record?: { flags?: string | undefined } | undefined;
  /** Passed to `bodyError`: where the transport counts the failure (src/upstream/transport.ts). */
  readonly bodyErrors?: BodyErrorCounter | undefined;
}

/** Stream chunks smaller than this are gathered with those already readable behind them. */
const GATHER_BELOW = 16 * 1024;
/** A gathered piece stops growing at this size. */
const GATHER_BYTES = 64 * 1024;
const NOT_YET = Symbol("not yet");
/**
 * Microtask turns a stream read may take and still count as readable at once: Deno.serve's
 * body resolves a read of data it holds within a few, a wrapping stream (the size limit, the
 * body watch) adds a few per layer; a read that waits on the network takes an event-loop turn.
 */
const SETTLE_TURNS = 12;

/** `p`'s value if it settles within SETTLE_TURNS microtask turns, else NOT_YET. */
function settledSoon<T>(p: Promise<T>): Promise<T | typeof NOT_YET> {
  let later: Promise<typeof NOT_YET> = Promise.resolve(NOT_YET);
  for (let i = 0; i < SETTLE_TURNS; i++) later = later.then(notYet);
  return Promise.race([p, later]);
}
const notYet = (): typeof NOT_YET => NOT_YET;

/** Room kept before a directly read chunk for its size line (hex digits and CRLF). */
const SIZE_LINE_ROOM = 16;
/** Direct request-body reads take at most this much at once. */
const REQUEST_READ = 64 * 1024;
/** The first read of a body of unknown length. */
const REQUEST_READ_FIRST = 8 * 1024;

/**
 * The request body, read once: from its stream, or straight into one buffer of this source's
 * through the body's direct reader (body_reader.ts) when it has one. The first bytes are kept
 * (by reference from a stream, copied from the buffer) so a request that met a stale connection
 * can be sent again when the whole body was kept.
 */
export class BodySource {
  static readonly REPLAY_LIMIT = 64 * 1024;
  readonly #reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  readonly #direct: BodyReader | undefined;
  /** Where direct reads land, after SIZE_LINE_ROOM and with 2 bytes after for a chunk's CRLF. */
  #buf: Uint8Array | undefined;
  #readSize: number;
  /** The body's Content-Length (-1: unknown), and the stream bytes read so far. */
  readonly #length: number;
  #streamed = 0;
  /** The buffer is replaced by a larger one before the next read. */
  #grow = false;
  #kept: Uint8Array[] | undefined = [];
  #keptBytes = 0;
  #replayFrom = -1;
  #ended = false;
  /** A stream read that had not settled when gathering stopped: the next read's. */
  #pendingRead: Promise<ReadableStreamReadResult<Uint8Array>> | undefined;
  /** Gathering read the stream's end: the next call returns it. */
  #endRead = false;
  /** Nothing read from the stream yet. */
  untouched = true;

  /** `length`: the body's Content-Length, -1 when unknown (sizes the direct-read buffer). */
  constructor(source: ReadableStream<Uint8Array> | BodyReader, length: number) {
    if (source instanceof ReadableStream) this.#reader = source.getReader();
    else this.#direct = source;
    // A body of unknown length starts with a smaller buffer: most are small, and 64 KiB of fresh
    // memory per request costs more in GC than it saves (it grows after a read that fills it).
    this.#length = length;
    this.#readSize = length > 0 ? Math.min(length, REQUEST_READ) : REQUEST_READ_FIRST;
  }

  /** True when the body can be sent again from the start. */
  get replayable(): boolean {
    return this.untouched || (this.#ended && this.#kept !== undefined);
  }

  /** Which attempt reads the body now; an earlier attempt's pump must stop reading. */
  epoch = 0;

  rewind(): void {
    this.#replayFrom = 0;
    this.epoch++;
  }

  /** All the body there is has been read (its declared length): what was kept is all of it. */
  markEnded(): void {
    this.#ended = true;
    // Read the stream's end as well (not waited for): Deno.serve keeps the client's connection
    // open only when the request body was read to its end; otherwise it answers with
    // `connection: close` and every POST costs the client a new connection. (A direct reader's
    // server sees the end of the body itself.)
    this.#reader?.read().catch(() => {});
  }

  /**
   * The next body bytes, or null at the end. Bytes read directly are a view of this source's
   * buffer, valid until the next call.
   */
  async next(epoch: number): Promise<Uint8Array | null> {
    if (epoch !== this.epoch) throw new Error("the request body was handed to a retry");
    if (this.#replayFrom >= 0) {
      const kept = this.#kept!;
      if (this.#replayFrom < kept.length) return kept[this.#replayFrom++]!;
      this.#replayFrom = -1;
      if (this.#ended) return null;
    }
    this.untouched = false;
    let chunk: Uint8Array;
    if (this.#direct) {
      if (this.#grow) {
        this.#grow = false;
        this.#buf = undefined;
      }
      const buf = this.#buf ??= new Uint8Array(SIZE_LINE_ROOM + this.#readSize + 2);
      const n = await this.#direct.read(
        buf.subarray(SIZE_LINE_ROOM, SIZE_LINE_ROOM + this.#readSize),
      );
      if (n === null) {
        this.#ended = true;
        return null;
      }
      chunk = buf.subarray(SIZE_LINE_ROOM, SIZE_LINE_ROOM + n);
      if (n === this.#readSize && n < REQUEST_READ) {
        // Filled: a larger body. The next read gets the full size (this chunk is sent first).
        this.#readSize = REQUEST_READ;
        this.#grow = true;
      }
    } else {
      const pending = this.#pendingRead;
      this.#pendingRead = undefined;
      const r = this.#endRead ? undefined : await (pending ?? this.#reader!.read());
      if (!r || r.done) {
        this.#ended = true;
        return null;
      }
      chunk = r.value;
      this.#streamed += chunk.length;
      // A small chunk is gathered with what follows, unless it completes the declared length
      // (the most common body: one small chunk; nothing would follow).
      if (chunk.length < GATHER_BELOW && (this.#length < 0 || this.#streamed < this.#length)) {
        chunk = await this.#gather(chunk);
      }
    }
    if (this.#kept) {
      this.#keptBytes += chunk.length;
      if (this.#keptBytes > BodySource.REPLAY_LIMIT) this.#kept = undefined;
      else this.#kept.push(this.#direct ? chunk.slice() : chunk);
    }
    return chunk;
  }

  /**
   * `first` and the chunks after it that the stream has already (reads that settle at once), up
   * to GATHER_BYTES, as one piece: a body that comes as many tiny chunks (1-byte chunks from a
   * client, one DATA frame per byte) goes upstream in few writes and few chunk framings, not one
   * of each per piece. Never waits for more: a read that has not settled is left for the next
   * call, so a slow drip still goes on piece by piece as it comes.
   */
  async #gather(first: Uint8Array): Promise<Uint8Array> {
    let parts: Uint8Array[] | undefined;
    let size = first.length;
    while (size < GATHER_BYTES) {
      const p = this.#reader!.read();
      const r = await settledSoon(p);
      if (r === NOT_YET) {
        this.#pendingRead = p;
        break;
      }
      if (r.done) {
        this.#endRead = true;
        break;
      }
      if (r.value.length === 0) continue;
      (parts ??= [first]).push(r.value);
      size += r.value.length;
      this.#streamed += r.value.length;
    }
    if (!parts) return first;
    const joined = new Uint8Array(size);
    let at = 0;
    for (const part of parts) {
      joined.set(part, at);
      at += part.length;
    }
    return joined;
  }

  /**
   * `chunk` with its chunked framing (size line before, CRLF after): written around it in place
   * when it is a direct read (no copy), else copied into a new buffer.
   */
  framed(chunk: Uint8Array): Uint8Array {
    const size = chunk.length.toString(16);
    const buf = this.#buf;
    if (
      buf && chunk.buffer === buf.buffer && chunk.byteOffset === buf.byteOffset + SIZE_LINE_ROOM
    ) {
      let o = SIZE_LINE_ROOM - size.length - 2;
      const from = o;
      for (let i = 0; i < size.length; i++) buf[o++] = size.charCodeAt(i);
      buf[o++] = 13;
      buf[o] = 10;
      const end = SIZE_LINE_ROOM + chunk.length;
      buf[end] = 13;
      buf[end + 1] = 10;
      return buf.subarray(from, end + 2);
    }
    const framed = new Uint8Array(size.length + 2 + chunk.length + 2);
    let o = 0;
    for (let i = 0; i < size.length; i++) framed[o++] = size.charCodeAt(i);
    framed[o++] = 13;
    framed[o++] = 10;
    framed.set(chunk, o);
    framed[framed.length - 2] = 13;
    framed[framed.length - 1] = 10;
    return framed;
  }

  cancel(reason?: unknown): void {
    if (this.#direct) this.#direct.cancel(reason);
    else this.#reader!.cancel(reason).catch(() => {});
  }
}

/**
 * Sends one request and resolves with its response once the head has arrived. The response
 * body streams from the socket; the connection goes back to its owner only after both the
 * request body and the response body are complete.
 */
export function exchange(c: H1Connection, x: Exchange): Promise<Response> {
  const reused = c.requests > 0;
  let requestDone = x.body === undefined;
  let responseDone = false;
  let settled = false;
  let bodyFailure: unknown;
  let receivedAny = false;

  const onAbort = () => c.close();
  x.signal.addEventListener("abort", onAbort, { once: true });

  const finish = () => {
    if (!requestDone || !responseDone) return;
    x.signal.removeEventListener("abort", onAbort);
    c.requests++;
    c.owner.release(c);
  };
  const fail = () => {
    x.signal.removeEventListener("abort", onAbort);
    c.close();
  };

  return new Promise<Response>((resolve, reject) => {
    const failWith = (err: unknown, unsent = false) => {
      fail();
      if (settled) return;
      settled = true;
      if (x.signal.aborted) reject(x.abortError());
      else if (bodyFailure !== undefined) reject(bodyFailure);
      else if (!receivedAny && reused && !(err instanceof H1ProtocolError)) {
        reject(new StaleConnection(err, unsent));
      } else reject(err);
    };

    const sendBody = async () => {
      const body = x.body!;
      const epoch = body.epoch;
      // Set while a write to the upstream is in progress: a failure then is the upstream's
      // (it closed or reset the connection), not the client's body.
      let writing = false;
      const next = async () => {
        try {
          return await body.next(epoch);
        } catch (err) {
          bodyFailure = err; // the client's upload failed (aborted, over the size limit)
          throw err;
        }
      };
      try {
        if (x.contentLength >= 0) {
          // Done as soon as the declared length is out: the answer may follow at once, before
          // the client's stream reports its end, and the connection should still be reused.
          for (let sent = 0; sent < x.contentLength;) {
            const chunk = await next();
            if (chunk === null) throw new TypeError("request body shorter than its length");
            sent += chunk.length;
            if (sent > x.contentLength) throw new TypeError("request body longer than its length");
            writing = true;
            await c.writeAll(chunk);
            writing = false;
          }
          body.markEnded();
        } else {
          for (let chunk = await next(); chunk !== null; chunk = await next()) {
            if (chunk.length === 0) continue;
            writing = true;
            await c.writeAll(body.framed(chunk));
            writing = false;
          }
          writing = true;
          await c.writeAll(CHUNK_END);
        }
        requestDone = true;
        finish();
      } catch (err) {
        // A retry owns the body now: leave it alone.
        if (epoch === body.epoch) body.cancel(err);
        if (writing) {
          // The upstream stopped taking the request: it may have answered already (an early
          // 413 or 401, then a close or reset; RFC 9112 9.3), and that answer is still in the
          // socket's buffer. The head reader settles the exchange with it, or with the close
          // it meets instead; the connection is never reused (requestDone stays false).
          return;
        }
        fail();
        if (!settled) failWith(err);
      }
    };

    const readHead = async () => {
      try {
        let head: ResponseHead | undefined;
        let interim = 0;
        for (;;) {
          if (c.end > c.start) {
            receivedAny = true;
            head = parseResponseHead(c.buf, c.start, c.end, x.method);
            if (head) {
              if (head.status >= 200) break;
              if (head.status === 101) {
                throw new H1ProtocolError(
                  "upstream answered 101 to a request that asked for no upgrade",
                );
              }
              // 100, 102, 103: interim, skipped; a flood of them would keep this loop parsing until
              // the route timeout (then 504) while nothing reaches the client.
              if (++interim > MAX_INTERIM) {
                throw new H1ProtocolError(`more than ${MAX_INTERIM} interim (1xx) responses`);
              }
              c.start += head.size;
              continue;
            }
          }
          const n = await c.fill(64 * 1024);
          if (n === null) {
            if (c.end > c.start) throw new UpstreamClosed("in the middle of the response head");
            throw new UpstreamClosed("before sending a response");
          }
        }
        c.start += head.size;
        const keepAlive = head.keepAlive;
        const response = makeResponse(c, head, x, () => {
          responseDone = true;
          // Reused only after a complete exchange with nothing left over. A response that ends
          // before the request body was all sent means the upstream stopped reading it.
          if (!keepAlive || c.start !== c.end || !requestDone) {
            x.body?.cancel();
            fail();
            return;
          }
          finish();
        }, fail);
        if ((response as WithParts)[PARTS] === undefined) {
          (response as WithParts)[PARTS] = {
            headers: head.headers,
            whole: undefined,
            firstBytes: firstBytesWait(c, head),
          };
        }
        settled = true;
        resolve(response);
      } catch (err) {
        failWith(err);
      }
    };

    c.writeAll(x.head).then(() => {
      if (x.body) void sendBody();
    }, (err) => failWith(err, true));
    void readHead();
  });
}

/** Interim (1xx) responses skipped before a final one; more is an upstream protocol error. */
export const MAX_INTERIM = 16;

/**
 * What the codec knows about a Response it made: the head's header lines as they came (in order,
 * repeats kept) and, for a body that came whole with its head, its bytes, so the forwarding path
 * can pass them on without building a stream or reading the headers back out of a Headers object.
 */
export interface H1ResponseParts {
  readonly headers: readonly [string, string][];
  readonly whole: Uint8Array<ArrayBuffer> | undefined;
  /**
   * For a streamed body none of which has arrived yet: waits until `late` for its first byte (or
   * its end); rejects with the body's failure when it fails first (a close, a reset, a malformed
   * chunk). Undefined when the body's first bytes came with the head.
   */
  readonly firstBytes?: ((late: Promise<unknown>) => Promise<void>) | undefined;
}
/**
 * On the Response under a symbol, not in a WeakMap: an entry per response keyed by a young object
 * costs about half a microsecond (docs/PERFORMANCE.md, "Ferry's own HTTP/1.1 server, per request").
 */
const PARTS = Symbol("ferry.h1ResponseParts");
type WithParts = Response & { [PARTS]?: H1ResponseParts };

/**
 * Moves a streamed body to `write` straight from the upstream socket, through one buffer reused
 * for the whole body (and kept by the connection for the next): no chunk object per read, which a
 * 100 MB download otherwise leaves to the garbage collector by the thousand. Each `write` must be
 * done with its bytes when it resolves. Resolves when the body is complete; rejects (and closes
 * the upstream connection) when either side fails.
 */
export type BodyRelay = (write: (bytes: Uint8Array) => Promise<void>) => Promise<void>;
const relays = new WeakMap<ReadableStream<Uint8Array>, BodyRelay>();

/**
 * The relay of a body stream the codec made, when nothing has read from the stream yet; taking it
 * locks the stream (the relay is now the only way to the body).
 */
export function takeBodyRelay(stream: ReadableStream<Uint8Array>): BodyRelay | undefined {
  const relay = relays.get(stream);
  if (!relay || stream.locked) return undefined;
  relays.delete(stream);
  stream.getReader(); // locked: nobody else reads this body
  return relay;
}

/** A connection's relay buffer: body reads go here, one at a time. */
const RELAY_BUFFER = 64 * 1024;
const relayBuffers = new WeakMap<H1Connection, Uint8Array>();
/**
 * Free room kept before a relay buffer's bytes: the writer may put a response head there and send
 * both in one write, with no copy of the body into a buffer of its own.
 */
const RELAY_HEADROOM = 1024;
const relayArrays = new WeakSet<ArrayBufferLike>();

/**
 * How many bytes before `bytes` (a relay write's argument) the writer may overwrite for the
 * duration of that write: RELAY_HEADROOM for a relay buffer's bytes, else 0.
 */
export function relayHeadroom(bytes: Uint8Array): number {
  return relayArrays.has(bytes.buffer) ? Math.min(bytes.byteOffset, RELAY_HEADROOM) : 0;
}

/** The codec's parts of `res`; undefined for a Response the codec did not make. */
export function h1ResponseParts(res: Response): H1ResponseParts | undefined {
  return (res as WithParts)[PARTS];
}

/** The Response for a parsed head; its body streams from the connection (or came with the head). */
function makeResponse(
  c: H1Connection,
  head: ResponseHead,
  x: Exchange,
  complete: () => void,
  fail: () => void,
): Response {
  // Pairs, not a Headers object: Response would copy (and validate) a Headers object again.
  // Without headers when the caller reads them from h1ResponseParts: validating every line into
  // a Headers object nobody reads is a good part of a small exchange's cost.
  const init = x.headersOutOfBand
    ? { status: head.status, statusText: head.reason }
    : { status: head.status, statusText: head.reason, headers: head.headers };
  if (head.framing === Framing.None) {
    complete();
    return new Response(null, init);
  }
  if (head.framing === Framing.Length) {
    let remaining = head.contentLength;
    const buffered = c.end - c.start;
    // Fast path: the whole body is already here.
    if (buffered >= remaining) {
      const bytes = c.buf.slice(c.start, c.start + remaining);
      c.start += remaining;
      complete();
      const res = new Response(remaining === 0 ? null : bytes, init);
      (res as WithParts)[PARTS] = {
        headers: head.headers,
        whole: remaining === 0 ? undefined : bytes,
      };
      return res;
    }
    const short = () =>
      new UpstreamClosed(
        `after ${head.contentLength - remaining} of ${head.contentLength} body bytes`,
      );
    const stream = bodyStream(x, fail, async (ctl) => {
      await c.settleRead();
      if (c.end > c.start) {
        const n = Math.min(remaining, c.end - c.start);
        ctl.enqueue(c.buf.slice(c.start, c.start + n));
        c.start += n;
        remaining -= n;
      } else {
        const chunk = new Uint8Array(Math.min(remaining, BODY_READ));
        const n = await c.conn.read(chunk);
        if (n === null) throw short();
        ctl.enqueue(n === chunk.length ? chunk : chunk.subarray(0, n));
        remaining -= n;
      }
      if (remaining > 0) return;
      ctl.close();
      complete();
    });
    relays.set(
      stream,
      relayWith(x, fail, async (write, buf) => {
        await c.settleRead();
        if (remaining <= buf.length) {
          // A body that fits the buffer is gathered there and written once: the client gets
          // it with its head in one write, not as a write per upstream read.
          const length = remaining;
          let got = Math.min(length, c.end - c.start);
          buf.set(c.buf.subarray(c.start, c.start + got));
          c.start += got;
          remaining -= got;
          try {
            while (remaining > 0) {
              const n = await c.conn.read(buf.subarray(got, length));
              if (n === null) throw short();
              got += n;
              remaining -= n;
            }
          } catch (err) {
            // What came goes out before the failure, as it would have read by read: the client
            // sees the answer break off, not an empty reply.
            if (got > 0) await write(buf.subarray(0, got)).catch(() => {});
            throw err;
          }
          await write(buf.subarray(0, length));
          complete();
          return;
        }
        if (c.end > c.start) {
          const n = Math.min(remaining, c.end - c.start);
          await write(c.buf.subarray(c.start, c.start + n));
          c.start += n;
          remaining -= n;
        }
        while (remaining > 0) {
          const n = await c.conn.read(buf.subarray(0, Math.min(remaining, buf.length)));
          if (n === null) throw short();
          remaining -= n;
          await write(buf.subarray(0, n));
        }
        complete();
      }, c),
    );
    return new Response(stream, init);
  }
  if (head.framing === Framing.Close) {
    const stream = bodyStream(x, fail, async (ctl) => {
      await c.settleRead();
      if (c.end > c.start) {
        ctl.enqueue(c.buf.slice(c.start, c.end));
        c.start = c.end;
        return;
      }
      const chunk = new Uint8Array(BODY_READ);
      const n = await c.conn.read(chunk);
      if (n === null) {
        ctl.close();
        complete();
        return;
      }
      ctl.enqueue(chunk.subarray(0, n));
    });
    relays.set(
      stream,
      relayWith(x, fail, async (write, buf) => {
        await c.settleRead();
        if (c.end > c.start) {
          await write(c.buf.subarray(c.start, c.end));
          c.start = c.end;
        }
        for (;;) {
          const n = await c.conn.read(buf);
          if (n === null) break;
          await write(buf.subarray(0, n));
        }
        complete();
      }, c),
    );
    return new Response(stream, init);
  }
  const decoder = new ChunkedDecoder();
  const stream = bodyStream(x, fail, async (ctl) => {
    for (;;) {
      while (c.end > c.start && !decoder.done) {
        const used = decoder.step(c.buf, c.start, c.end);
        if (used === 0) break;
        c.start += used;
        if (decoder.dataTo > decoder.dataFrom) {
          ctl.enqueue(c.buf.slice(decoder.dataFrom, decoder.dataTo));
          return;
        }
      }
      if (decoder.done) {
        ctl.close();
        complete();
        return;
      }
      const n = await c.fill(64 * 1024);
      if (n === null) throw new UpstreamClosed("in the middle of a chunked body");
    }
  });
  relays.set(
    stream,
    relayWith(x, fail, async (write, buf) => {
      // Small chunks are gathered in `buf` and go out together once nothing more is buffered
      // (or it is full); a large one goes out from the read buffer as it is, with no copy.
      let gathered = 0;
      const flush = async () => {
        if (gathered === 0) return;
        const n = gathered;
        gathered = 0;
        await write(buf.subarray(0, n));
      };
      for (;;) {
        while (c.end > c.start && !decoder.done) {
          const used = decoder.step(c.buf, c.start, c.end);
          if (used === 0) break;
          c.start += used;
          const from = decoder.dataFrom;
          const size = decoder.dataTo - from;
          if (size === 0) continue;
          if (size < SMALL_CHUNK && gathered + size <= buf.length) {
            buf.set(c.buf.subarray(from, from + size), gathered);
            gathered += size;
          } else {
            await flush();
            await write(c.buf.subarray(from, from + size)); // no read moves it before this ends
          }
        }
        await flush();
        if (decoder.done) {
          complete();
          return;
        }
        const n = await c.fill(64 * 1024);
        if (n === null) throw new UpstreamClosed("in the middle of a chunked body");
      }
    }, c),
  );
  return new Response(stream, init);
}

/**
 * The wait for a streamed body's first bytes (H1ResponseParts.firstBytes), or undefined when
 * they came with the head. Reads into the connection's buffer, where the body's stream or relay
 * finds them; a read still out when the wait gives up is taken up by the body's first read.
 */
function firstBytesWait(
  c: H1Connection,
  head: ResponseHead,
): ((late: Promise<unknown>) => Promise<void>) | undefined {
  if (head.framing === Framing.None) return undefined;
  // Whether the buffer holds a first body byte (or the body's end); throws on bad chunk framing.
  let atHand: () => boolean;
  if (head.framing === Framing.Chunked) {
    atHand = () => {
      // A scratch decoder: the body's own starts from c.start again.
      const d = new ChunkedDecoder();
      for (let at = c.start; at < c.end && !d.done;) {
        const used = d.step(c.buf, at, c.end);
        if (used === 0) return false;
        at += used;
        if (d.dataTo > d.dataFrom) return true;
      }
      return d.done;
    };
  } else atHand = () => c.end > c.start;
  if (atHand()) return undefined;
  return async (late) => {
    const gaveUp = late.then(lateMark);
    while (!atHand()) {
      const n = await Promise.race([c.fillLater(64 * 1024), gaveUp]);
      if (n === LATE) return;
      if (n === null) {
        // A close-delimited body may be empty; any other ends with its bytes still owed.
        if (head.framing === Framing.Close) return;
        throw new UpstreamClosed("after the response head, before any body byte");
      }
    }
  };
}

const LATE = Symbol("late");
const lateMark = (): typeof LATE => LATE;

/** Decoded chunks smaller than this are gathered into one relay write. */
const SMALL_CHUNK = 16 * 1024;

/** A body relay over the connection's reused buffer, failing the exchange as the stream would. */
function relayWith(
  x: Exchange,
  fail: () => void,
  run: (write: (bytes: Uint8Array) => Promise<void>, buf: Uint8Array) => Promise<void>,
  c: H1Connection,
): BodyRelay {
  return async (write) => {
    let buf = relayBuffers.get(c);
    if (!buf) {
      const whole = new Uint8Array(RELAY_HEADROOM + RELAY_BUFFER);
      relayArrays.add(whole.buffer);
      relayBuffers.set(c, buf = whole.subarray(RELAY_HEADROOM));
    }
    try {
      await run(write, buf);
    } catch (err) {
      fail();
      throw bodyFailure(x, err);
    }
  };
}

/** What a response body's reader sees when the body fails. */
function bodyFailure(x: Exchange, err: unknown): unknown {
  const e = x.signal.aborted ? x.abortError() : err;
  return x.bodyError ? x.bodyError(e, x.signal, x.record, x.bodyErrors) : e;
}

/** A pull-driven body: nothing is read from the upstream before the client asks for it. */
function bodyStream(
  x: Exchange,
  fail: () => void,
  pull: (ctl: ReadableStreamDefaultController<Uint8Array>) => Promise<void>,
): ReadableStream<Uint8Array> {
  return new ReadableStream<Uint8Array>({
    async pull(ctl) {
      try {
        await pull(ctl);
      } catch (err) {
        fail();
        ctl.error(bodyFailure(x, err));
      }
    },
    cancel() {
      fail();
    },
  }, { highWaterMark: 0 });
}
