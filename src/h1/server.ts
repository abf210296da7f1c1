/**
 * Ferry's own downstream HTTP/1.1 server: the connection guard (src/server/guard.ts) runs it on
 * every HTTP/1.1 connection it accepts (plain TCP, or TLS with ALPN http/1.1 or none), so an
 * HTTP/1.1 request costs no second loopback hop to an inner Deno.serve. It parses each request
 * head with the same strict parser as the upstream codec (src/h1/parse.ts), builds a standard
 * Request, calls the guard's handler, and writes the Response back, one exchange at a time.
 *
 * Not served here: HTTP/2 and upgrade requests (WebSocket). The guard hands those connections to
 * the inner Deno.serve as before (the bytes already read are replayed to it first).
 *
 * Framing out: a known length (a Content-Length set by the handler, or a body that is complete
 * at once) goes out with content-length; anything else chunked on HTTP/1.1 and close-delimited
 * on HTTP/1.0. A body that fails half-way ends the connection without the last chunk, so the
 * client sees a truncated message, never a complete-looking one.
 */
import {
  ChunkedDecoder,
  H1ProtocolError,
  makeRoom,
  parseRequestHead,
  REQUEST_LIMITS,
  type RequestHead,
} from "./parse.ts";
import { CLIENT_PREFACE as H2_PREFACE } from "../h2/frames.ts";
import { encodeLatin1, relayHeadroom, takeBodyRelay } from "./connection.ts";
import { offerBodyReader } from "./body_reader.ts";
import { responseOut } from "./response_out.ts";
import { buildRequest } from "./request_in.ts";

/** What the server needs from the guard for one connection. */
export interface ServerConnection {
  /** Reads from the client; resolves to 0 at end of stream. */
  read(buf: Uint8Array): Promise<number>;
  /** Writes all of `bytes` to the client (the guard's send timeout watches it). */
  write(bytes: Uint8Array): Promise<void>;
  /** Half-closes towards the client. */
  closeWrite(): Promise<void>;
  /** `http` or `https`: only to build Request.url. */
  readonly scheme: string;
  /**
   * The Host of an HTTP/1.0 request that sends none (as Deno.serve fills in: `localhost:<port>`);
   * absent, such a request gets 400 as on HTTP/1.1. The admin listener's probes need it.
   */
  readonly hostlessHttp10?: string;
  /** Waiting for the next request: `started` when its first bytes are here already. */
  awaitingHead(started: boolean): void;
  /** A complete head: the request goes to the handler now. */
  requestStarted(): void;
  /** The guard is draining: the current response is the last on this connection. */
  draining(): boolean;
  /**
   * Calls the handler. `rawUrl` is the URL as the client sent it (Request.url is normalised by
   * the URL parser); `completed` settles once the response is written or has failed.
   * `sentMethod`: the method as sent when Request.method could not carry it (the handler
   * refuses such a request).
   */
  handle(
    req: Request,
    rawUrl: string,
    completed: Promise<void>,
    sentMethod?: string,
  ): Promise<Response>;
  /** The error table's answer to a request refused before any handler runs. */
  refusal(status: H1ProtocolError["status"], reason: string): Response;
  /**
   * What a request body stream fails with when its framing turns out broken after the handler
   * started (the pipeline answers the error table's row for it).
   */
  bodyError(status: H1ProtocolError["status"], reason: string): Error;
  /**
   * An upgrade request (or an HTTP/2 preface): the connection leaves this server. `bytes` are
   * what was read from the client and not yet consumed, starting at that request; `headSize`,
   * for an upgrade, is its head's length.
   */
  handOver(bytes: Uint8Array, headSize?: number): Promise<void>;
}

/** The connection's read buffer. */
const INITIAL_BUFFER = 4 * 1024;
/** The read buffer never grows past this (a head is at most REQUEST_LIMITS.maxHeadBytes). */
const MAX_BUFFER = REQUEST_LIMITS.maxHeadBytes + 16 * 1024;
/** Bytes read ahead (pipelined requests) while a request is in the handler. */
const READ_AHEAD = 64 * 1024;
/** A request body the handler did not read is read and dropped up to this much, then closed. */
const DRAIN_BYTES = 64 * 1024;
const DRAIN_MS = 1_000;
/** After the last response, what the client still sends is read and dropped this long. */
const LINGER_MS = 1_000;
/** The read buffer while a chunked body is read through a direct reader. */
const BODY_BUFFER = 64 * 1024;
/** A head with a body up to this size, or a chunk with its framing, goes out in one write. */
const OUT_BUFFER = 128 * 1024;

const CR = 13;
const LF = 10;
const encoder = new TextEncoder();
const CONTINUE = encoder.encode("HTTP/1.1 100 Continue\r\n\r\n");
const LAST_CHUNK = encoder.encode("0\r\n\r\n");

/** The client's bytes: one buffer, one read at a time shared by whoever waits for more. */
class Input {
  buf = new Uint8Array(INITIAL_BUFFER);
  start = 0;
  end = 0;
  eof = false;
  #pending: Promise<number> | undefined;

  constructor(readonly read: (buf: Uint8Array) => Promise<number>) {}

  get buffered(): number {
    return this.end - this.start;
  }

  /** Whether a read is outstanding (its result lands in the buffer). */
  get reading(): boolean {
    return this.#pending !== undefined;
  }

  /** Reads more into the buffer; resolves to the count, 0 at end of stream. Rejects on reset. */
  fill(): Promise<number> {
    if (this.#pending) return this.#pending;
    // A body read straight past the buffer is still out: bytes after it come after it.
    if (this.#direct) return this.#direct.then(() => this.fill(), () => this.fill());
    if (this.eof) return Promise.resolve(0);
    if (!makeRoom(this, MAX_BUFFER)) return Promise.reject(new Error("read buffer full"));
    // An empty buffer is read into whole: no view made per read.
    const p = this.read(this.end === 0 ? this.buf : this.buf.subarray(this.end)).then(
      this.#onRead,
      this.#onReadError,
    );
    this.#pending = p;
    return p;
  }

  // Made once per connection, not per read.
  readonly #onRead = (n: number): number => {
    this.#pending = undefined;
    if (n === 0) this.eof = true;
    else this.end += n;
    return n;
  };

  readonly #onReadError = (err: unknown): never => {
    this.#pending = undefined;
    this.eof = true;
    throw err;
  };

  /** Back to the initial size when empty (a large head or body grew it): idle connections are small. */
  shrink(): void {
    if (this.buf.length > INITIAL_BUFFER && this.start === this.end && !this.#pending) {
      this.buf = new Uint8Array(INITIAL_BUFFER);
      this.start = this.end = 0;
    }
  }

  take(n: number): Uint8Array {
    const out = this.buf.slice(this.start, this.start + n);
    this.start += n;
    return out;
  }

  /** A body read straight into `into`, past the buffer (which must be empty, with no read out). */
  readDirect(into: Uint8Array): Promise<number> {
    const p = this.read(into).then((n) => {
      this.#direct = undefined;
      if (n === 0) this.eof = true;
      return n;
    }, (err) => {
      this.#direct = undefined;
      this.eof = true;
      throw err;
    });
    this.#direct = p;
    return p;
  }
  #direct: Promise<number> | undefined;

  /** Room for large reads while a chunked body comes in (shrink() gives it back after). */
  growForBody(): void {
    if (this.buf.length >= BODY_BUFFER || this.#pending) return;
    const grown = new Uint8Array(BODY_BUFFER);
    grown.set(this.buf.subarray(this.start, this.end));
    this.end -= this.start;
    this.start = 0;
    this.buf = grown;
  }
}

/** One request's body as it comes off the connection. */
class RequestBody {
  /** Bytes of a Content-Length body still to come; -1 when chunked. */
  remaining: number;
  readonly decoder: ChunkedDecoder | undefined;
  done: boolean;
  /** Its framing was broken, or the client left half-way. */
  failed = false;
  /** The request has no body at all. */
  readonly empty: boolean;
  /** The client asked for `100 Continue` and has not had it yet. */
  owesContinue: boolean;

  constructor(head: RequestHead) {
    this.remaining = head.chunked ? -1 : Math.max(0, head.contentLength);
    this.decoder = head.chunked ? new ChunkedDecoder() : undefined;
    this.done = this.empty = !head.chunked && this.remaining === 0;
    this.owesContinue = head.expectContinue && !this.done;
  }

  /** Body bytes decoded ahead of the handler (checkAhead); made only for a chunked body. */
  #ahead: Uint8Array[] | undefined;

  /**
   * Decodes the chunked body bytes that came with the head, before the handler runs: a request
   * whose chunk framing is already known to be broken is refused (400) instead of being
   * forwarded with a body that fails half-way. Throws H1ProtocolError.
   */
  checkAhead(input: Input): void {
    const d = this.decoder;
    if (!d || input.buffered === 0) return;
    this.owesContinue = false; // the client is sending its body already
    while (input.buffered > 0 && !d.done) {
      const used = d.step(input.buf, input.start, input.end);
      if (used === 0) break;
      input.start += used;
      if (d.dataTo > d.dataFrom) (this.#ahead ??= []).push(input.buf.slice(d.dataFrom, d.dataTo));
    }
    if (d.done) this.done = true;
  }

  /** Decoded body bytes still in the input buffer that did not fit the last readInto. */
  #leftFrom = 0;
  #leftTo = 0;

  /**
   * The next body bytes copied into `into` (a Content-Length body with nothing buffered is read
   * straight into it); their count, or null at the end. Throws as next() does.
   */
  async readInto(
    input: Input,
    into: Uint8Array,
    write: (b: Uint8Array) => Promise<void>,
  ): Promise<number | null> {
    // Chunks decoded ahead (as many as fit: a body of tiny chunks that came with its head goes
    // on as one piece, not a piece per chunk), then what the last call left over.
    let got = 0;
    const ahead = this.#ahead;
    while (ahead && ahead.length > 0 && got < into.length) {
      const first = ahead[0]!;
      const n = Math.min(first.length, into.length - got);
      into.set(first.subarray(0, n), got);
      got += n;
      if (n === first.length) ahead.shift();
      else ahead[0] = first.subarray(n);
    }
    if (got > 0) return got;
    if (this.#leftTo > this.#leftFrom) {
      const n = Math.min(this.#leftTo - this.#leftFrom, into.length);
      into.set(input.buf.subarray(this.#leftFrom, this.#leftFrom + n));
      this.#leftFrom += n;
      return n;
    }
    if (this.owesContinue) {
      this.owesContinue = false;
      if (input.buffered === 0) await write(CONTINUE);
    }
    const d = this.decoder;
    if (d) input.growForBody();
    for (;;) {
      if (this.done) return null;
      if (d) {
        // Copies decoded bytes until `into` is full or the buffer is used up.
        let n = 0;
        while (input.buffered > 0 && !d.done && n < into.length) {
          const used = d.step(input.buf, input.start, input.end);
          if (used === 0) break;
          input.start += used;
          const size = d.dataTo - d.dataFrom;
          if (size <= 0) continue;
          const fits = Math.min(size, into.length - n);
          into.set(input.buf.subarray(d.dataFrom, d.dataFrom + fits), n);
          n += fits;
          if (fits < size) {
            // Consumed by the decoder but not copied: kept where it is (no read comes first).
            this.#leftFrom = d.dataFrom + fits;
            this.#leftTo = d.dataTo;
          }
        }
        if (d.done) this.done = true;
        if (n > 0) return n;
        if (this.done) return null;
      } else if (input.buffered > 0 || input.reading) {
        if (input.buffered > 0) {
          const n = Math.min(this.remaining, input.buffered, into.length);
          into.set(input.buf.subarray(input.start, input.start + n));
          input.start += n;
          this.remaining -= n;
          if (this.remaining === 0) this.done = true;
          return n;
        }
      } else {
        const n = await input.readDirect(into.subarray(0, Math.min(this.remaining, into.length)));
        if (n === 0) throw new Error("the client closed in the middle of a body");
        this.remaining -= n;
        if (this.remaining === 0) this.done = true;
        return n;
      }
      if (await input.fill() === 0) throw new Error("the client closed in the middle of a body");
    }
  }

  /**
   * The next body bytes, or null at the end (a copy: the buffer is reused). Throws
   * H1ProtocolError on bad chunk framing, and an Error when the client closes half-way.
   */
  async next(input: Input, write: (b: Uint8Array) => Promise<void>): Promise<Uint8Array | null> {
    if (this.#ahead && this.#ahead.length > 0) return this.#ahead.shift()!;
    if (this.owesContinue) {
      this.owesContinue = false;
      if (input.buffered === 0) await write(CONTINUE);
    }
    for (;;) {
      if (this.done) return this.#ahead?.shift() ?? null;
      if (this.decoder) {
        const d = this.decoder;
        while (input.buffered > 0 && !d.done) {
          const used = d.step(input.buf, input.start, input.end);
          if (used === 0) break;
          input.start += used;
          if (d.dataTo > d.dataFrom) return input.buf.slice(d.dataFrom, d.dataTo);
        }
        if (d.done) {
          this.done = true;
          return null;
        }
      } else if (input.buffered > 0) {
        const n = Math.min(this.remaining, input.buffered);
        this.remaining -= n;
        if (this.remaining === 0) this.done = true;
        return input.take(n);
      }
      if (await input.fill() === 0) throw new Error("the client closed in the middle of a body");
    }
  }
}

/** Serves HTTP/1.1 on one connection until it ends; never throws. */
export async function serveHttp1(c: ServerConnection): Promise<void> {
  const input = new Input(c.read);
  const out = new Output(c);
  try {
    // An HTTP/2 client with prior knowledge: its preface goes to the inner server.
    while (input.buffered < H2_PREFACE.length && prefaceSoFar(input)) {
      if (await input.fill() === 0) return;
    }
    if (input.buffered >= H2_PREFACE.length && prefaceSoFar(input)) {
      return await c.handOver(input.buf.subarray(input.start, input.end));
    }
    for (let first = true;; first = false) {
      if (!first) {
        input.shrink();
        c.awaitingHead(input.buffered > 0);
      }
      let head: RequestHead | undefined;
      // Bytes before this were looked at for the head's end already: a head dripped a byte at a
      // time is scanned once, not parsed again from its start on every read (quadratic).
      // Counted from input.start: a read may move the bytes to the buffer's start.
      let scanned = 0;
      for (;;) {
        if (
          input.buffered > 0 &&
          (headEnds(input, input.start + scanned) ||
            input.buffered > REQUEST_LIMITS.maxHeadBytes)
        ) {
          head = parseRequestHead(
            input.buf,
            input.start,
            input.end,
            c.hostlessHttp10 !== undefined,
          );
          if (head) break;
        }
        scanned = input.buffered;
        const wasEmpty = input.buffered === 0;
        if (await input.fill() === 0) return; // closed between requests, or mid-head: no answer
        if (wasEmpty) c.awaitingHead(true);
      }
      if (head.upgrade) {
        return await c.handOver(input.buf.subarray(input.start, input.end), head.size);
      }
      input.start += head.size;
      c.requestStarted();
      if (!await exchange(c, input, out, head)) return;
    }
  } catch (err) {
    // A head that cannot be read one way only: the error table's answer, then the close.
    if (err instanceof H1ProtocolError) {
      await out.response(c.refusal(err.status, err.reason), "GET", 1, false).catch(() => {});
      await linger(c, input);
    }
    // Anything else: a reset or a close by the guard; nothing to answer.
  }
}

/**
 * Whether the bytes from `from` (less two, for a line end split across reads) hold the blank line
 * that ends a head: LF LF or LF CR LF (after the request line: a head starts with no blank line
 * but the two the parser skips).
 */
function headEnds(input: Input, from: number): boolean {
  const buf = input.buf;
  for (let i = buf.indexOf(LF, Math.max(input.start, from - 2)); i >= 0 && i < input.end;) {
    const next = buf[i + 1];
    if (
      i + 1 < input.end && (next === LF || (next === CR && i + 2 < input.end && buf[i + 2] === LF))
    ) {
      return true;
    }
    i = buf.indexOf(LF, i + 1);
  }
  return false;
}

function prefaceSoFar(input: Input): boolean {
  const n = Math.min(input.buffered, H2_PREFACE.length);
  for (let i = 0; i < n; i++) {
    if (input.buf[input.start + i] !== H2_PREFACE[i]) return false;
  }
  return true;
}

/** One request and its response; resolves to whether the connection carries another one. */
async function exchange(
  c: ServerConnection,
  input: Input,
  out: Output,
  head: RequestHead,
): Promise<boolean> {
  const body = new RequestBody(head);
  body.checkAhead(input);
  const ctl = new AbortController();
  let clientGone = false;
  const gone = () => {
    clientGone = true;
    ctl.abort(new DOMException("the client closed the connection", "AbortError"));
  };
  let finished = false;
  // While the handler runs and the body is all read, a read stays pending: it notices a client
  // that goes away (the request's signal aborts, so the upstream call is cancelled) and takes in
  // pipelined requests, up to READ_AHEAD.
  const watch = () => {
    if (finished || clientGone || input.reading || input.eof || !body.done) return;
    if (input.buffered >= READ_AHEAD) return;
    input.fill().then((n) => n === 0 ? gone() : watch(), gone);
  };

  let resolveCompleted!: () => void;
  let rejectCompleted!: (e: unknown) => void;
  const completed = new Promise<void>((res, rej) => {
    resolveCompleted = res;
    rejectCompleted = rej;
  });
  completed.catch(() => {});

  let stream: ReadableStream<Uint8Array> | null = null;
  const method = head.method;
  // Methods the Request constructor forbids (CONNECT, TRACE, TRACK) or rewrites (get -> GET)
  // cannot be carried by Request.method: such a request reaches the handler as a body-less GET
  // with the method as sent beside it, and the handler refuses it like any other request
  // (logged, counted, its request id picked by the same policy).
  const carried = carriedMethod(method);
  if (carried && !body.empty && method !== "GET" && method !== "HEAD") {
    const bodyFailure = (err: unknown) => {
      body.failed = true;
      if (err instanceof H1ProtocolError) return c.bodyError(err.status, err.reason);
      gone();
      return err;
    };
    let streamed = false;
    stream = new ReadableStream<Uint8Array>({
      async pull(ctrl) {
        streamed = true;
        try {
          const chunk = await body.next(input, (b) => out.write(b));
          if (chunk === null) {
            ctrl.close();
            watch();
          } else ctrl.enqueue(chunk);
        } catch (err) {
          ctrl.error(bodyFailure(err));
        }
      },
    }, { highWaterMark: 0 });
    // The same body read straight into the upstream codec's buffer (see body_reader.ts), with
    // the same failures and the same watch once it has ended.
    offerBodyReader(stream, () =>
      streamed ? undefined : {
        async read(into) {
          let n: number | null;
          try {
            n = await body.readInto(input, into, (b) => out.write(b));
          } catch (err) {
            throw bodyFailure(err);
          }
          if (body.done) watch();
          return n;
        },
        cancel() {}, // as the stream's: what is left is drained or the connection closes
      });
  }

  // Deno.serve built Request.url by pasting Host and target together, always as http.
  // `OPTIONS *` reaches routing as the path `/*`, as it did through Deno.serve.
  const host = head.host ?? c.hostlessHttp10;
  const rawUrl = head.target.charCodeAt(0) === 0x2f
    ? `http://${host}${head.target}`
    : head.target === "*"
    ? `http://${host}/*`
    : head.target;
  // A target or Host the URL parser does not take reads as http://invalid.invalid/: the handler
  // refuses the raw URL itself.
  const req = buildRequest(
    carried ? method : "GET",
    c.scheme === "http" ? rawUrl : urlFor(c.scheme, head.target, host, rawUrl),
    head.headers,
    stream,
    ctl.signal,
  );
  watch();
  let res: Response;
  try {
    res = await c.handle(req, rawUrl, completed, carried ? undefined : method);
  } catch (err) {
    finished = true;
    rejectCompleted(err);
    stream?.cancel().catch(() => {});
    return false;
  }
  // Whether this connection can carry another request after this response, as far as known
  // before it is written (an unread body is settled after).
  let keepAlive = head.keepAlive && !clientGone && !c.draining() && !body.failed &&
    !(body.owesContinue && !body.done);
  try {
    keepAlive = await out.response(res, method, head.minor, keepAlive);
    finished = true;
    resolveCompleted();
  } catch (err) {
    finished = true;
    gone();
    rejectCompleted(err);
    return false;
  }
  if (!body.done) {
    // The handler answered without reading the whole body: drop a small rest, else close.
    if (body.owesContinue || !keepAlive || !await drain(body, input, out)) keepAlive = false;
  }
  if (keepAlive && c.draining()) keepAlive = false;
  if (!keepAlive) await linger(c, input);
  return keepAlive;
}

/** Request.url before the URL parser's reading (the handler reads the raw URL). */
function urlFor(scheme: string, target: string, host: string | undefined, rawUrl: string): string {
  return target.charCodeAt(0) === 0x2f ? `${scheme}://${host}${target}` : rawUrl;
}

const FORBIDDEN = new Set(["CONNECT", "TRACE", "TRACK"]);
const NORMALISED = new Set(["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]);

/** Whether Request.method can carry `method` as sent (see exchange). */
function carriedMethod(method: string): boolean {
  if (method === "GET" || method === "POST" || method === "HEAD") return true; // most requests
  const upper = method.toUpperCase();
  return !FORBIDDEN.has(upper) && (upper === method || !NORMALISED.has(upper));
}

/** Reads and drops the rest of an unread body, bounded; true when it ended in the bounds. */
async function drain(body: RequestBody, input: Input, out: Output): Promise<boolean> {
  const until = performance.now() + DRAIN_MS;
  let dropped = 0;
  try {
    while (!body.done) {
      if (dropped > DRAIN_BYTES || performance.now() > until) return false;
      const chunk = await timed(body.next(input, (b) => out.write(b)), until);
      if (chunk === undefined) return false;
      if (chunk === null) return true;
      dropped += chunk.length;
    }
    return true;
  } catch {
    return false;
  }
}

/** `p`, or undefined once `until` (performance.now()) has passed. */
async function timed<T>(p: Promise<T>, until: number): Promise<T | undefined> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<undefined>((r) => {
    timer = setTimeout(() => r(undefined), Math.max(1, until - performance.now()));
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Half-closes, then reads and drops what the client still sends for a moment: closing with
 * unread bytes would send a reset, which can destroy the last response before the client reads it.
 */
async function linger(c: ServerConnection, input: Input): Promise<void> {
  try {
    await c.closeWrite();
    const until = performance.now() + LINGER_MS;
    for (let i = 0; i < 64; i++) {
      input.start = input.end = 0;
      const n = await timed(input.fill(), until);
      if (!n) return;
    }
  } catch { /* gone */ }
}

/** The response writer: one head, the body with its framing, a reused buffer for small writes. */
class Output {
  constructor(readonly c: ServerConnection) {}

  write(bytes: Uint8Array): Promise<void> {
    return this.c.write(bytes);
  }

  /**
   * Writes `res` as the answer to a `method` request of HTTP/1.`minor`. Resolves to whether the
   * connection may carry another request (false when the body was close-delimited); rejects when
   * the client write failed or the body failed half-way (the connection must then end).
   */
  async response(
    res: Response,
    method: string,
    minor: number,
    keepAlive: boolean,
  ): Promise<boolean> {
    const status = res.status;
    const noBody = method === "HEAD" || status === 204 || status === 304 || status < 200;
    let declared: string | null = null;
    let date: string | null = null;
    let lines = `HTTP/1.1 ${status} ${reasonPhrase(status, res.statusText)}\r\n`;
    const out = responseOut(res);
    for (const [given, value] of out.headers) {
      const name = given.toLowerCase(); // as Deno.serve (hyper) writes names
      switch (name) {
        case "content-length":
          declared = value;
          continue;
        case "connection":
        case "keep-alive":
        case "transfer-encoding":
        case "upgrade":
          continue; // hop-by-hop: this connection's framing is ours to state
        case "date":
          date = value;
      }
      lines += `${name}: ${value}\r\n`;
    }
    if (date === null) lines += `date: ${httpDate()}\r\n`;
    const source = out.body;
    if (noBody) {
      if (source instanceof ReadableStream) source.cancel().catch(() => {});
      if (declared !== null && status !== 204 && status >= 200) {
        lines += `content-length: ${declared}\r\n`;
      }
      await this.c.write(encodeLatin1(lines + connectionLine(keepAlive, minor) + "\r\n"));
      return keepAlive;
    }
    if (source === null) {
      await this.c.write(
        encodeLatin1(lines + "content-length: 0\r\n" + connectionLine(keepAlive, minor) + "\r\n"),
      );
      return keepAlive;
    }
    if (!(source instanceof ReadableStream)) {
      // Bytes the Response holds whole: their own length, one write with the head.
      const head = lines + `content-length: ${source.length}\r\n` +
        connectionLine(keepAlive, minor) + "\r\n";
      await this.#writeHeadAndBody(head, source);
      return keepAlive;
    }
    const length = declared !== null ? Number(declared) : -1;
    // A body the upstream codec streams: relayed from its socket through reused buffers.
    const relay = takeBodyRelay(source);
    if (relay) {
      const body = this.#streamed(lines, length, minor, keepAlive);
      // The head goes out with the first bytes when they are here (the forwarder waited for them
      // up to FIRST_BYTE_HOLD_MS); when the relay has to wait on the upstream for them, it goes
      // out alone now, as on the stream path below (a server-sent-events client gets its head).
      let sent = false;
      let flushing: Promise<void> | undefined;
      const relaying = relay((bytes) => {
        sent = true;
        return flushing ? flushing.then(() => body.send(bytes)) : body.send(bytes);
      });
      if (await soon(relaying) === PENDING && !sent) {
        flushing = body.flushHead();
        await flushing;
      }
      await relaying;
      await body.finish();
      return body.keepAlive;
    }
    const reader = source.getReader();
    try {
      // What the body has at once: a body made whole (an error, the codec's small bodies) is
      // all there after at most two reads, and goes out with its length in one write.
      const firstRead = reader.read();
      let first = await soon(firstRead);
      let secondRead: typeof firstRead | undefined;
      let second: typeof first | undefined;
      if (first !== PENDING && !first.done) second = await soon(secondRead = reader.read());
      if (first !== PENDING && (first.done || (second !== PENDING && second!.done))) {
        const bytes = first.done ? EMPTY : first.value;
        if (length >= 0 && length !== bytes.length) {
          throw new Error(`a body of ${bytes.length} bytes with a Content-Length of ${length}`);
        }
        const headBytes = encodeLatin1(
          lines + `content-length: ${bytes.length}\r\n` + connectionLine(keepAlive, minor) +
            "\r\n",
        );
        await this.#writeTwo(headBytes, bytes);
        return keepAlive;
      }
      // A streamed body: the head goes out now (or with the first bytes, when they are here).
      const body = this.#streamed(lines, length, minor, keepAlive);
      if (first === PENDING) {
        await body.flushHead();
        first = await firstRead;
      }
      if (!first.done) {
        await body.send(first.value);
        let r = await (secondRead ?? reader.read());
        while (!r.done) {
          await body.send(r.value);
          r = await reader.read();
        }
      }
      await body.finish();
      return body.keepAlive;
    } catch (err) {
      reader.cancel(err).catch(() => {});
      throw err;
    }
  }

  /**
   * The framing of a streamed body: its Content-Length (exactly that many bytes), else chunked on
   * HTTP/1.1 and close-delimited on HTTP/1.0. The head goes out with the first bytes.
   */
  #streamed(lines: string, length: number, minor: number, keepAlive: boolean) {
    const chunked = length < 0 && minor === 1;
    if (length < 0 && !chunked) keepAlive = false;
    lines += length >= 0
      ? `content-length: ${length}\r\n`
      : chunked
      ? "transfer-encoding: chunked\r\n"
      : "";
    let head: Uint8Array | undefined = encodeLatin1(
      lines + connectionLine(keepAlive, minor) + "\r\n",
    );
    let sent = 0;
    const flushHead = async () => {
      if (!head) return;
      const h = head;
      head = undefined;
      await this.c.write(h);
    };
    return {
      keepAlive,
      flushHead,
      send: async (chunk: Uint8Array) => {
        if (chunk.length === 0) return;
        sent += chunk.length;
        if (length >= 0 && sent > length) {
          throw new Error(`a body longer than its Content-Length of ${length}`);
        }
        const h = head;
        head = undefined;
        if (chunked) await this.#writeChunk(h, chunk);
        else await this.#writeTwo(h, chunk);
      },
      finish: async () => {
        await flushHead();
        if (length >= 0 && sent !== length) {
          throw new Error(`a body of ${sent} bytes with a Content-Length of ${length}`);
        }
        if (chunked) await this.c.write(LAST_CHUNK);
      },
    };
  }

  /**
   * A head (text) and a whole body in one write: an ASCII head is encoded straight into the
   * reused buffer, the body copied after it.
   */
  #writeHeadAndBody(head: string, body: Uint8Array): Promise<void> {
    const size = head.length + body.length;
    if (size <= OUT_BUFFER) {
      const buf = takeBuffer(size);
      // UTF-8 and Latin-1 agree on ASCII: a head that encodes to one byte per char is ASCII.
      const { read, written } = encoder.encodeInto(head, buf);
      if (read === head.length && written === head.length) {
        buf.set(body, written);
        return writeFrom(this.c, buf, size);
      }
      releaseBuffer(buf);
    }
    return this.#writeTwo(encodeLatin1(head), body);
  }

  /** `head` (if any) and `body` in one write when they fit the reused buffer. */
  async #writeTwo(head: Uint8Array | undefined, body: Uint8Array): Promise<void> {
    if (!head) return this.c.write(body);
    if (head.length <= relayHeadroom(body)) {
      // The codec's relay left room before the body: the head goes there, no copy of the body.
      const joined = new Uint8Array(
        body.buffer,
        body.byteOffset - head.length,
        head.length + body.length,
      );
      joined.set(head);
      return this.c.write(joined);
    }
    const total = head.length + body.length;
    if (total > OUT_BUFFER) {
      await this.c.write(head);
      return this.c.write(body);
    }
    return pooledWrite(this.c, total, (buf) => {
      buf.set(head);
      buf.set(body, head.length);
      return total;
    });
  }

  /** One chunk with its size line (and the head before it, once), one write when it fits. */
  async #writeChunk(head: Uint8Array | undefined, chunk: Uint8Array): Promise<void> {
    const size = chunk.length.toString(16);
    const headLen = head?.length ?? 0;
    const total = headLen + size.length + 2 + chunk.length + 2;
    if (total > OUT_BUFFER + 64) {
      if (head) await this.c.write(head);
      await this.c.write(encoder.encode(size + "\r\n"));
      await this.c.write(chunk);
      return this.c.write(CRLF);
    }
    return pooledWrite(this.c, total, (buf) => {
      let o = 0;
      if (head) {
        buf.set(head);
        o = head.length;
      }
      for (let i = 0; i < size.length; i++) buf[o++] = size.charCodeAt(i);
      buf[o++] = 13;
      buf[o++] = 10;
      buf.set(chunk, o);
      o += chunk.length;
      buf[o++] = 13;
      buf[o++] = 10;
      return o;
    });
  }
}

const CRLF = encoder.encode("\r\n");

/**
 * Output buffers shared by every connection: one is taken for a write and given back when the
 * write is done, so memory follows the writes in flight, not the open connections (a buffer per
 * keep-alive connection would be 2,500 x 128 KiB for 2,500 idle clients).
 */
const freeOutput: Uint8Array[] = [];
const KEEP_FREE = 16;
const SMALL_WRITE = 16 * 1024;
/**
 * Small writes (a head with a small body: most responses) come from a pool of 2 KiB buffers:
 * a new ArrayBuffer per response costs an allocation outside the heap and its sweep (about half
 * a microsecond). At most SMALL_POOL of them are ever made; with all of them out (clients that do
 * not read), a write gets a buffer of its own size, as before.
 */
const SMALL_POOLED = 2048;
const SMALL_POOL = 64;
const freeSmall: Uint8Array[] = [];
let smallMade = 0;

/** A buffer for one write of up to `size` bytes; give it back with releaseBuffer. */
function takeBuffer(size: number): Uint8Array {
  if (size <= SMALL_POOLED) {
    const pooled = freeSmall.pop();
    if (pooled) return pooled;
    if (smallMade < SMALL_POOL) {
      smallMade++;
      return new Uint8Array(SMALL_POOLED);
    }
  }
  // Below SMALL_WRITE a buffer of its own size: cheaper than a pooled one, which under many
  // connections writing at once is often out and then costs a 128 KiB allocation.
  if (size <= SMALL_WRITE) return new Uint8Array(size);
  return freeOutput.pop() ?? new Uint8Array(OUT_BUFFER + 64);
}

function releaseBuffer(buf: Uint8Array): void {
  if (buf.length === SMALL_POOLED) {
    if (freeSmall.length < SMALL_POOL) freeSmall.push(buf);
  } else if (buf.length === OUT_BUFFER + 64 && freeOutput.length < KEEP_FREE) freeOutput.push(buf);
}

/** Writes `buf[0, n)`, then gives the buffer back (the write op reads it until it settles). */
async function writeFrom(c: ServerConnection, buf: Uint8Array, n: number): Promise<void> {
  try {
    await c.write(buf.subarray(0, n));
  } finally {
    releaseBuffer(buf);
  }
}

function pooledWrite(
  c: ServerConnection,
  size: number,
  fill: (buf: Uint8Array) => number,
): Promise<void> {
  const buf = takeBuffer(size);
  let n: number;
  try {
    n = fill(buf);
  } catch (err) {
    releaseBuffer(buf);
    throw err;
  }
  return writeFrom(c, buf, n);
}
const EMPTY = new Uint8Array(0);
const PENDING = Symbol("pending");

/**
 * The promise's value if it settles within two microtask turns, else PENDING: a body made whole
 * (a Response from bytes or a string) is read within one.
 */
function soon<T>(p: Promise<T>): Promise<T | typeof PENDING> {
  const pending: Promise<typeof PENDING> = Promise.resolve().then(() => {}).then(() => PENDING);
  return Promise.race([p, pending]);
}

function connectionLine(keepAlive: boolean, minor: number): string {
  if (!keepAlive) return "connection: close\r\n";
  return minor === 0 ? "connection: keep-alive\r\n" : "";
}

/** A `date` header value, as Deno.serve sends it: made once per second. */
let dateText = "";
let dateSecond = -1;
function httpDate(): string {
  const ms = Date.now();
  const second = Math.floor(ms / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(ms).toUTCString();
  }
  return dateText;
}

const REASONS: Record<number, string> = {
  100: "Continue",
  101: "Switching Protocols",
  200: "OK",
  201: "Created",
  202: "Accepted",
  203: "Non-Authoritative Information",
  204: "No Content",
  205: "Reset Content",
  206: "Partial Content",
  300: "Multiple Choices",
  301: "Moved Permanently",
  302: "Found",
  303: "See Other",
  304: "Not Modified",
  307: "Temporary Redirect",
  308: "Permanent Redirect",
  400: "Bad Request",
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  405: "Method Not Allowed",
  406: "Not Acceptable",
  408: "Request Timeout",
  409: "Conflict",
  410: "Gone",
  411: "Length Required",
  412: "Precondition Failed",
  413: "Content Too Large",
  414: "URI Too Long",
  415: "Unsupported Media Type",
  416: "Range Not Satisfiable",
  417: "Expectation Failed",
  421: "Misdirected Request",
  422: "Unprocessable Content",
  425: "Too Early",
  426: "Upgrade Required",
  428: "Precondition Required",
  429: "Too Many Requests",
  431: "Request Header Fields Too Large",
  451: "Unavailable For Legal Reasons",
  499: "Client Closed Request",
  500: "Internal Server Error",
  501: "Not Implemented",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
  505: "HTTP Version Not Supported",
};

/** The standard reason phrase (as Deno.serve writes it); the Response's own for other codes. */
function reasonPhrase(status: number, statusText: string): string {
  const known = REASONS[status];
  if (known) return known;
  return /^[\t -~]*$/.test(statusText) ? statusText : "";
}
