/**
 * HTTP/1.1 message parsing (RFC 9112), strict, for both directions: responses from upstreams
 * (the codec, src/h1/connection.ts) and requests from clients (Ferry's own server,
 * src/h1/server.ts). Anything whose framing could be read two ways is an `H1ProtocolError`,
 * answered with the reason (a 502 upstream, a 4xx/5xx downstream), never a guess. Pure functions
 * over byte buffers, so they are tested without sockets.
 */

/**
 * A message Ferry refuses to interpret; `reason` goes to the client and the log. `status` is the
 * answer to a client whose request it is (400 unless the RFC names another).
 */
export class H1ProtocolError extends Error {
  constructor(readonly reason: string, readonly status: 400 | 431 | 501 | 505 = 400) {
    super(reason);
    this.name = "H1ProtocolError";
  }
}

export const LIMITS = {
  /** Status line and header section together (Deno's own downstream limit is about 64 KiB). */
  maxHeadBytes: 64 * 1024,
  maxStatusLine: 8 * 1024,
  /** Header lines (the same count Deno.serve accepts downstream). */
  maxHeaders: 128,
  /** A chunk-size line with its extensions. */
  maxChunkLine: 4 * 1024,
  /** The trailer section of a chunked body. */
  maxTrailerBytes: 16 * 1024,
};

/** How the body of a response is delimited (RFC 9112 6.3). */
export const enum Framing {
  /** HEAD, 204, 304: no body whatever the headers say. */
  None,
  Length,
  Chunked,
  /** No length and no chunking: the body ends when the upstream closes. */
  Close,
}

export interface ResponseHead {
  readonly status: number;
  readonly reason: string;
  /** Lower-case names, values as Latin-1 (byte) strings, in order. */
  readonly headers: [string, string][];
  /** Bytes the head took, final CRLF included. */
  readonly size: number;
  readonly framing: Framing;
  /** The body length when `framing` is Length. */
  readonly contentLength: number;
  /** True when the connection may carry another request after this response. */
  readonly keepAlive: boolean;
}

const CR = 13;
const LF = 10;
const SP = 32;
const HTAB = 9;

/** tchar (RFC 9110 5.6.2). */
const TOKEN = new Uint8Array(256);
for (const c of "!#$%&'*+-.^_`|~") TOKEN[c.charCodeAt(0)] = 1;
for (let c = 0x30; c <= 0x39; c++) TOKEN[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) TOKEN[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) TOKEN[c] = 1;

/** field-vchar, SP and HTAB (obs-text allowed, as RFC 9110 5.5 says recipients must). */
const FIELD = new Uint8Array(256);
FIELD[HTAB] = 1;
for (let c = 0x20; c <= 0x7e; c++) FIELD[c] = 1;
for (let c = 0x80; c <= 0xff; c++) FIELD[c] = 1;

/** Bytes as a Latin-1 string: each byte one char, as Headers expects (TextDecoder's "latin1" is windows-1252). */
export function latin1(buf: Uint8Array, from: number, to: number): string {
  if (to - from <= 4096) {
    return String.fromCharCode.apply(null, buf.subarray(from, to) as unknown as number[]);
  }
  let s = "";
  for (let i = from; i < to; i += 4096) s += latin1(buf, i, Math.min(to, i + 4096));
  return s;
}

/**
 * The end of a request head's line starting at `from`: the index of its CR, or of its LF when a
 * bare LF ends it; -1 if incomplete.
 */
function requestLineEnd(buf: Uint8Array, from: number, end: number): number {
  const lf = buf.indexOf(LF, from);
  if (lf === -1 || lf >= end) return -1;
  // RFC 9112 2.2 lets a recipient accept a bare LF as a line end (Deno.serve does; so did Ferry
  // behind it). A bare CR anywhere else is refused by the byte checks of each line.
  return lf > from && buf[lf - 1] === CR ? lf - 1 : lf;
}

/** The end of a CRLF line starting at `from` (index of its CR), -1 if incomplete. */
function lineEnd(buf: Uint8Array, from: number, end: number, what: string): number {
  const lf = buf.indexOf(LF, from);
  if (lf === -1 || lf >= end) return -1;
  if (lf === from || buf[lf - 1] !== CR) throw new H1ProtocolError(`bare LF in the ${what}`);
  return lf - 1;
}

/**
 * Parses a response head from `buf[from, end)`. Returns undefined while the head is incomplete
 * (and within the limits). `method` is the request's: a HEAD response has no body.
 */
export function parseResponseHead(
  buf: Uint8Array,
  from: number,
  end: number,
  method: string,
): ResponseHead | undefined {
  const statusEnd = lineEnd(buf, from, end, "status line");
  if (statusEnd === -1) {
    if (end - from > LIMITS.maxStatusLine) throw new H1ProtocolError("status line too long");
    return undefined;
  }
  if (statusEnd - from > LIMITS.maxStatusLine) throw new H1ProtocolError("status line too long");
  // HTTP/1.x SP 3DIGIT [SP reason-phrase]
  if (
    statusEnd - from < 12 || buf[from] !== 0x48 || buf[from + 1] !== 0x54 ||
    buf[from + 2] !== 0x54 || buf[from + 3] !== 0x50 || buf[from + 4] !== 0x2f ||
    buf[from + 5] !== 0x31 || buf[from + 6] !== 0x2e || buf[from + 8] !== SP
  ) throw new H1ProtocolError("malformed status line");
  const minor = buf[from + 7]!;
  if (minor !== 0x30 && minor !== 0x31) throw new H1ProtocolError("unsupported HTTP version");
  let status = 0;
  for (let i = from + 9; i < from + 12; i++) {
    const d = buf[i]! - 0x30;
    if (d < 0 || d > 9) throw new H1ProtocolError("malformed status code");
    status = status * 10 + d;
  }
  if (status < 100 || status > 599) {
    throw new H1ProtocolError(`status ${status} outside 100-599`);
  }
  let reason = "";
  if (statusEnd > from + 12) {
    if (buf[from + 12] !== SP) throw new H1ProtocolError("malformed status code");
    for (let i = from + 13; i < statusEnd; i++) {
      if (FIELD[buf[i]!] !== 1) throw new H1ProtocolError("invalid character in reason phrase");
    }
    reason = latin1(buf, from + 13, statusEnd);
  }

  const headers: [string, string][] = [];
  let contentLength = -1;
  let chunked = false;
  let sawTransferEncoding = false;
  let close = minor === 0x30;
  let pos = statusEnd + 2;
  for (;;) {
    const eol = lineEnd(buf, pos, end, "header section");
    if (eol === -1) {
      if (end - from > LIMITS.maxHeadBytes) throw new H1ProtocolError("response head too large");
      return undefined;
    }
    if (eol + 2 - from > LIMITS.maxHeadBytes) throw new H1ProtocolError("response head too large");
    if (eol === pos) {
      pos += 2;
      break;
    }
    if (headers.length >= LIMITS.maxHeaders) {
      throw new H1ProtocolError(`more than ${LIMITS.maxHeaders} headers`);
    }
    const field = fieldLine(buf, pos, eol);
    headers.push(field);
    const [name, value] = field;
    if (name === "content-length") {
      if (contentLength !== -1) throw new H1ProtocolError("more than one Content-Length");
      if (!/^[0-9]{1,15}$/.test(value)) throw new H1ProtocolError("invalid Content-Length");
      contentLength = Number(value);
    } else if (name === "transfer-encoding") {
      if (sawTransferEncoding) throw new H1ProtocolError("more than one Transfer-Encoding");
      sawTransferEncoding = true;
      // Only plain chunked: any other coding would reach the client undone (it is hop-by-hop).
      if (value.toLowerCase() !== "chunked") {
        throw new H1ProtocolError(`unsupported Transfer-Encoding "${value}"`);
      }
      chunked = true;
    } else if (name === "connection") {
      for (const token of value.split(",")) {
        if (token.trim().toLowerCase() === "close") close = true;
      }
    }
    pos = eol + 2;
  }
  if (sawTransferEncoding && contentLength !== -1) {
    throw new H1ProtocolError("both Content-Length and Transfer-Encoding");
  }
  if (sawTransferEncoding && minor === 0x30) {
    throw new H1ProtocolError("Transfer-Encoding in an HTTP/1.0 response");
  }
  let framing: Framing;
  if (method === "HEAD" || status < 200 || status === 204 || status === 304) framing = Framing.None;
  else if (chunked) framing = Framing.Chunked;
  else if (contentLength !== -1) framing = Framing.Length;
  else {
    framing = Framing.Close;
    close = true;
  }
  return {
    status,
    reason,
    headers,
    size: pos - from,
    framing,
    contentLength: framing === Framing.Length ? contentLength : -1,
    keepAlive: !close,
  };
}

const enum Chunk {
  Size,
  Data,
  DataEnd,
  Trailers,
  Done,
}

/**
 * Incremental chunked-body decoder (RFC 9112 7.1). `step` consumes what it can from
 * `buf[from, end)`; when it returns a data span, `dataFrom`/`dataTo` name the body bytes.
 */
export class ChunkedDecoder {
  #state = Chunk.Size;
  #remaining = 0;
  #trailerBytes = 0;
  dataFrom = 0;
  dataTo = 0;

  get done(): boolean {
    return this.#state === Chunk.Done;
  }

  /**
   * Returns the bytes consumed (0: more input needed). After a call, `dataTo > dataFrom` when
   * body bytes were found in the consumed range.
   */
  step(buf: Uint8Array, from: number, end: number): number {
    this.dataFrom = this.dataTo = 0;
    switch (this.#state) {
      case Chunk.Size: {
        const eol = lineEnd(buf, from, end, "chunk size line");
        if (eol === -1) {
          if (end - from > LIMITS.maxChunkLine) {
            throw new H1ProtocolError("chunk size line too long");
          }
          return 0;
        }
        if (eol - from > LIMITS.maxChunkLine) throw new H1ProtocolError("chunk size line too long");
        let i = from;
        let size = 0;
        while (i < eol) {
          const c = buf[i]!;
          const d = c >= 0x30 && c <= 0x39
            ? c - 0x30
            : c >= 0x61 && c <= 0x66
            ? c - 0x57
            : c >= 0x41 && c <= 0x46
            ? c - 0x37
            : -1;
          if (d === -1) break;
          size = size * 16 + d;
          if (size > Number.MAX_SAFE_INTEGER) throw new H1ProtocolError("chunk size overflow");
          i++;
        }
        if (i === from) throw new H1ProtocolError("malformed chunk size");
        // chunk-ext: BWS ";" ... up to the line end; validated as field text.
        while (i < eol && (buf[i] === SP || buf[i] === HTAB)) i++;
        if (i < eol) {
          if (buf[i] !== 0x3b) throw new H1ProtocolError("malformed chunk size");
          for (; i < eol; i++) {
            if (FIELD[buf[i]!] !== 1) throw new H1ProtocolError("invalid chunk extension");
          }
        }
        this.#remaining = size;
        this.#state = size === 0 ? Chunk.Trailers : Chunk.Data;
        return eol + 2 - from;
      }
      case Chunk.Data: {
        const n = Math.min(this.#remaining, end - from);
        if (n === 0) return 0;
        this.dataFrom = from;
        this.dataTo = from + n;
        this.#remaining -= n;
        if (this.#remaining === 0) this.#state = Chunk.DataEnd;
        return n;
      }
      case Chunk.DataEnd: {
        if (end - from < 2) return 0;
        if (buf[from] !== CR || buf[from + 1] !== LF) {
          throw new H1ProtocolError("chunk data longer than its size");
        }
        this.#state = Chunk.Size;
        return 2;
      }
      case Chunk.Trailers: {
        const eol = lineEnd(buf, from, end, "trailer section");
        if (eol === -1) {
          if (this.#trailerBytes + end - from > LIMITS.maxTrailerBytes) {
            throw new H1ProtocolError("trailer section too large");
          }
          return 0;
        }
        this.#trailerBytes += eol + 2 - from;
        if (this.#trailerBytes > LIMITS.maxTrailerBytes) {
          throw new H1ProtocolError("trailer section too large");
        }
        if (eol === from) {
          this.#state = Chunk.Done;
          return 2;
        }
        // Trailers are checked like headers and then dropped: a Response cannot carry them.
        const first = buf[from]!;
        if (first === SP || first === HTAB) throw new H1ProtocolError("obs-fold in a trailer");
        let colon = from;
        while (colon < eol && TOKEN[buf[colon]!] === 1) colon++;
        if (colon === from || buf[colon] !== 0x3a) throw new H1ProtocolError("malformed trailer");
        for (let i = colon + 1; i < eol; i++) {
          if (FIELD[buf[i]!] !== 1) throw new H1ProtocolError("invalid character in a trailer");
        }
        return eol + 2 - from;
      }
      case Chunk.Done:
        return 0;
    }
  }
}

/** Request heads: the guard's limits of today (below Deno.serve's 64 KiB and 128 lines). */
export const REQUEST_LIMITS = {
  /** Request line and header section together, final line end included. */
  maxHeadBytes: 60 * 1024,
  /** Lines, request line and the blank line included. */
  maxHeadLines: 124,
};

/** How a request's body is delimited (RFC 9112 6.3): none, a length, or chunked. */
export interface RequestHead {
  readonly method: string;
  /** As sent (origin-form, absolute-form or `*`). */
  readonly target: string;
  /** 0 or 1 (HTTP/1.0 or HTTP/1.1). */
  readonly minor: number;
  /** Lower-case names, values as Latin-1 (byte) strings, in order. */
  readonly headers: [string, string][];
  /** The Host header's value; undefined when absent. */
  readonly host: string | undefined;
  /** Bytes the head took, final line end included. */
  readonly size: number;
  /** -1: no Content-Length. */
  readonly contentLength: number;
  readonly chunked: boolean;
  /** The client allows another request on this connection after this one. */
  readonly keepAlive: boolean;
  /** `Expect: 100-continue`. */
  readonly expectContinue: boolean;
  /**
   * A WebSocket upgrade: GET with `websocket` in Upgrade and `upgrade` in Connection. Only these
   * leave Ferry's own server for the inner Deno.serve; any other Upgrade (h2c, made-up protocols)
   * is served as a plain request, its Upgrade dropped as hop-by-hop, so a client cannot move its
   * connection to a parser without Ferry's framing rules and per-head timeout by naming one.
   */
  readonly upgrade: boolean;
}

/** A request target's bytes: visible ASCII only (no space, no controls, no obs-text). */
const TARGET = new Uint8Array(256);
for (let c = 0x21; c <= 0x7e; c++) TARGET[c] = 1;

/** Token lists of Connection / Transfer-Encoding, lower-cased and trimmed. */
function tokens(value: string): string[] {
  return value.split(",").map((t) => t.trim().toLowerCase());
}

/**
 * Parses a request head from `buf[from, end)` (RFC 9112 2-7). Returns undefined while the head is
 * incomplete and within the limits; throws H1ProtocolError with the status to answer: 431 over
 * the limits, 505 for a well-formed version other than 1.0/1.1, 501 for a transfer coding other
 * than chunked, 400 for everything else that is not exactly one reading.
 */
export function parseRequestHead(
  buf: Uint8Array,
  from: number,
  end: number,
  /** HTTP/1.0 (RFC 1945 has no Host) may omit Host; `host` is undefined then. */
  hostlessHttp10 = false,
): RequestHead | undefined {
  const max = REQUEST_LIMITS.maxHeadBytes;
  // RFC 9112 2.2: empty lines before the request line are ignored (at most a couple).
  let start = from;
  for (let i = 0; i < 2 && start < end; i++) {
    if (buf[start] === CR && buf[start + 1] === LF) start += 2;
    else if (buf[start] === LF) start += 1;
    else break;
  }
  const lineEnd0 = requestLineEnd(buf, start, end);
  if (lineEnd0 === -1) {
    if (end - from > max) throw tooLarge();
    return undefined;
  }
  // method SP request-target SP HTTP-version
  let i = start;
  while (i < lineEnd0 && TOKEN[buf[i]!] === 1) i++;
  if (i === start || buf[i] !== SP) throw new H1ProtocolError("malformed request line");
  const method = methodText(buf, start, i);
  const targetStart = ++i;
  while (i < lineEnd0 && TARGET[buf[i]!] === 1) i++;
  if (i === targetStart || buf[i] !== SP) {
    throw new H1ProtocolError(
      i < lineEnd0 && buf[i] !== SP
        ? "invalid byte in the request target"
        : "malformed request line",
    );
  }
  const target = latin1(buf, targetStart, i);
  i++;
  // HTTP-version = "HTTP/" DIGIT "." DIGIT
  if (
    lineEnd0 - i !== 8 || buf[i] !== 0x48 || buf[i + 1] !== 0x54 || buf[i + 2] !== 0x54 ||
    buf[i + 3] !== 0x50 || buf[i + 4] !== 0x2f || !isDigit(buf[i + 5]!) ||
    buf[i + 6] !== 0x2e || !isDigit(buf[i + 7]!)
  ) throw new H1ProtocolError("malformed request line");
  if (buf[i + 5] !== 0x31 || (buf[i + 7] !== 0x30 && buf[i + 7] !== 0x31)) {
    throw new H1ProtocolError("HTTP version not supported (only 1.0 and 1.1)", 505);
  }
  const minor = buf[i + 7]! - 0x30;
  // request-target forms (RFC 9112 3.2): origin-form, absolute-form, asterisk-form for OPTIONS.
  // authority-form is CONNECT's, which is answered 405 by the caller.
  const c0 = target.charCodeAt(0);
  if (
    c0 !== 0x2f && !(target === "*" && method === "OPTIONS") && !/^https?:\/\//i.test(target) &&
    method !== "CONNECT"
  ) throw new H1ProtocolError("invalid request target");

  const headers: [string, string][] = [];
  let host: string | undefined;
  let hosts = 0;
  let contentLength = -1;
  let transferCodings: string[] | undefined;
  let close = false;
  let keepAliveToken = false;
  let connectionUpgrade = false;
  let upgradeWebSocket = false;
  let expectContinue = false;
  let lines = 1;
  let pos = buf[lineEnd0] === CR ? lineEnd0 + 2 : lineEnd0 + 1;
  for (;;) {
    const eol = requestLineEnd(buf, pos, end);
    if (eol === -1) {
      if (end - from > max) throw tooLarge();
      return undefined;
    }
    const next = buf[eol] === CR ? eol + 2 : eol + 1;
    if (next - from > max || ++lines > REQUEST_LIMITS.maxHeadLines) throw tooLarge();
    if (eol === pos) {
      pos = next;
      break;
    }
    const field = fieldLine(buf, pos, eol);
    headers.push(field);
    const [name, value] = field;
    switch (name) {
      case "host":
        hosts++;
        host = value;
        break;
      case "content-length":
        // Even equal repeats or lists are refused: one framing, stated once.
        if (contentLength !== -1) throw new H1ProtocolError("more than one Content-Length");
        if (!/^[0-9]{1,15}$/.test(value)) throw new H1ProtocolError("invalid Content-Length");
        contentLength = Number(value);
        break;
      case "transfer-encoding":
        (transferCodings ??= []).push(...tokens(value));
        break;
      case "connection":
        for (const t of tokens(value)) {
          if (t === "close") close = true;
          else if (t === "keep-alive") keepAliveToken = true;
          else if (t === "upgrade") connectionUpgrade = true;
        }
        break;
      case "upgrade":
        if (tokens(value).includes("websocket")) upgradeWebSocket = true;
        break;
      case "expect":
        if (value.toLowerCase() === "100-continue") expectContinue = true;
        break;
    }
    pos = next;
  }
  if (hosts > 1) throw new H1ProtocolError("more than one Host header");
  if (hosts === 0 && !(minor === 0 && hostlessHttp10)) {
    throw new H1ProtocolError("missing Host header");
  }
  let chunked = false;
  if (transferCodings) {
    if (contentLength !== -1) {
      throw new H1ProtocolError("both Content-Length and Transfer-Encoding");
    }
    if (minor === 0) throw new H1ProtocolError("Transfer-Encoding in an HTTP/1.0 request");
    // RFC 9112 6.3: chunked must be the final coding, else the length is unknowable (400); any
    // other coding would reach the upstream undone (501, as RFC 9112 6.1 lets a server answer).
    if (transferCodings[transferCodings.length - 1] !== "chunked") {
      throw new H1ProtocolError("Transfer-Encoding whose final coding is not chunked");
    }
    if (transferCodings.length > 1) {
      throw new H1ProtocolError(
        `unsupported Transfer-Encoding "${transferCodings.join(", ")}"`,
        501,
      );
    }
    chunked = true;
  }
  const upgrade = upgradeWebSocket && connectionUpgrade && method === "GET";
  // Deno's server (where WebSocket upgrades go) refuses these with a bare 400; refused here with
  // the error table's answer instead. RFC 6455 4.1: the handshake is a GET without a body.
  if (upgrade && (chunked || contentLength > 0)) {
    throw new H1ProtocolError("a WebSocket upgrade with a body");
  }
  return {
    method,
    target,
    minor,
    headers,
    host,
    size: pos - from,
    contentLength,
    chunked,
    keepAlive: !close && (minor === 1 || keepAliveToken),
    expectContinue,
    upgrade,
  };
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function tooLarge(): H1ProtocolError {
  return new H1ProtocolError(
    `request head over ${REQUEST_LIMITS.maxHeadBytes} bytes or ${REQUEST_LIMITS.maxHeadLines} lines`,
    431,
  );
}

/**
 * One header field line, `buf[pos, eol)` (no line end), for requests and responses alike: a
 * token name, a colon, the value without surrounding whitespace. obs-fold, a malformed name and
 * control characters in the value are refused (RFC 9112 5.2, RFC 9110 5.5), never guessed at.
 * The name comes back in lower case.
 */
function fieldLine(buf: Uint8Array, pos: number, eol: number): [string, string] {
  const first = buf[pos]!;
  if (first === SP || first === HTAB) throw new H1ProtocolError("obs-fold in a header");
  let colon = pos;
  while (colon < eol && TOKEN[buf[colon]!] === 1) colon++;
  if (colon === pos || colon === eol || buf[colon] !== 0x3a) {
    throw new H1ProtocolError("malformed header name");
  }
  let vStart = colon + 1;
  let vEnd = eol;
  while (vStart < vEnd && (buf[vStart] === SP || buf[vStart] === HTAB)) vStart++;
  while (vEnd > vStart && (buf[vEnd - 1] === SP || buf[vEnd - 1] === HTAB)) vEnd--;
  for (let i = vStart; i < vEnd; i++) {
    if (FIELD[buf[i]!] !== 1) throw new H1ProtocolError("invalid character in a header value");
  }
  // tchars only: ASCII
  return [fieldName(buf, pos, colon), latin1(buf, vStart, vEnd)];
}

/** A request method; the common ones without decoding (one string fewer per request). */
function methodText(buf: Uint8Array, from: number, to: number): string {
  const n = to - from;
  if (n === 3 && buf[from] === 0x47 && buf[from + 1] === 0x45 && buf[from + 2] === 0x54) {
    return "GET";
  }
  if (n === 4 && buf[from + 1] === 0x4f && buf[from + 2] === 0x53 && buf[from + 3] === 0x54) {
    if (buf[from] === 0x50) return "POST";
  }
  return latin1(buf, from, to);
}

/** A header name in lower case; `host` (in every request) without decoding. */
function fieldName(buf: Uint8Array, from: number, to: number): string {
  if (
    to - from === 4 && (buf[from]! | 0x20) === 0x68 && (buf[from + 1]! | 0x20) === 0x6f &&
    (buf[from + 2]! | 0x20) === 0x73 && (buf[from + 3]! | 0x20) === 0x74
  ) return "host";
  return latin1(buf, from, to).toLowerCase();
}

/** A read buffer: `buf[start, end)` are the bytes read and not yet consumed. */
export interface ReadWindow {
  buf: Uint8Array;
  start: number;
  end: number;
}

/**
 * Makes room after `end` for the next read, for the server's and the upstream codec's buffers
 * alike: an empty window starts over, unread bytes move to the front, else the buffer doubles up
 * to `max` bytes. False when it is full at `max`.
 */
export function makeRoom(w: ReadWindow, max: number): boolean {
  if (w.start === w.end) w.start = w.end = 0;
  if (w.end < w.buf.length) return true;
  if (w.start > 0) {
    w.buf.copyWithin(0, w.start, w.end);
    w.end -= w.start;
    w.start = 0;
    return true;
  }
  const size = Math.min(w.buf.length * 2, max);
  if (size <= w.buf.length) return false;
  const grown = new Uint8Array(size);
  grown.set(w.buf.subarray(0, w.end));
  w.buf = grown;
  return true;
}
