/**
 * HTTP requests over Ferry's own HTTP/2 client: the cluster's `H2Pool` (the same connections and
 * code gRPC calls use), so an h2c or TLS-ALPN-h2 upstream can have its identity checked on the
 * connection (node:tls under the pool, src/upstream/upstream_tls.ts), which fetch cannot do.
 *
 * One request is one stream: the request head as HTTP/2 fields (`host` becomes `:authority`,
 * connection-specific fields never go), the body written as the peer's windows allow, the
 * response body read with credit returned only as the downstream takes it. Bytes and
 * Content-Encoding pass untouched; response trailers are dropped (a Response cannot carry them,
 * and HTTP/1.1 clients would not get them either). A request given up (client gone, per-try or
 * route timeout) resets its stream with CANCEL. On an `auto` cluster an endpoint whose TLS picks
 * HTTP/1.1 in ALPN is served by the HTTP/1.1 codec instead (`http1Fallback`).
 */
import { ErrorCode } from "../h2/frames.ts";
import type { HeaderField } from "../h2/hpack.ts";
import { type H2Stream, StreamReset } from "../h2/stream.ts";
import { ProxyError } from "../pipeline/errors.ts";
import { type H2Pool, NoHttp2 } from "./h2_pool.ts";
import {
  classifyUpstreamError,
  ClientGoneReason,
  noteBodyFailure,
  offerFirstBytes,
  type Transport,
  type UpstreamRequest,
} from "./transport.ts";

/** Fields an HTTP/2 request must not carry (RFC 9113 8.2.2), besides `host` (:authority). */
const NOT_ON_H2 = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "upgrade",
  "host",
]);

/** Statuses whose responses have no body (RFC 9110 6.4.1); a Response refuses one. */
const NULL_BODY_STATUS = new Set([204, 205, 304]);

type Target = { readonly origin: string; readonly url: URL };

/** An `auto` cluster's client for `http://` endpoints and those whose TLS picked HTTP/1.1. */
export interface Http1Fallback extends Transport {
  retire(origin: string): void;
}

export class H2Transport implements Transport {
  /** Endpoint targets by origin, so a request parses no URL. */
  readonly #targets = new Map<string, Target>();
  /** Requests sent again after the upstream refused their stream unprocessed. */
  refusedRetries = 0;
  /** Endpoints that answered ALPN with HTTP/1.1: their requests go to the fallback. */
  readonly #http1Origins = new Set<string>();

  constructor(
    /** `http://` endpoints speak HTTP/2 with prior knowledge (h2c), `https://` ones ALPN h2. */
    readonly pool: H2Pool,
    /**
     * auto: the HTTP/1.1 codec, for `http://` endpoints and those whose TLS agreed to HTTP/1.1
     * (the pool then offers both in ALPN). Absent (h2c): every endpoint speaks HTTP/2.
     */
    readonly http1Fallback?: Http1Fallback,
  ) {}

  /** Whether this endpoint's requests go to the HTTP/1.1 fallback (auto clusters only). */
  speaksHttp1(origin: string): boolean {
    // Plain endpoints of an auto cluster have no ALPN: HTTP/1.1, as fetch spoke to them.
    return this.http1Fallback !== undefined &&
      (origin.charCodeAt(4) !== 115 /* s */ || this.#http1Origins.has(origin));
  }

  send(r: UpstreamRequest): Promise<Response> {
    const fallback = this.http1Fallback;
    if (fallback && this.speaksHttp1(originOf(r.url))) return fallback.send(r);
    return this.#send(r).catch((err) => {
      // Nothing of the request was sent (the connection was refused before any stream), so
      // it goes whole to the HTTP/1.1 codec, and so do this endpoint's next ones.
      if (err instanceof NoHttp2 && fallback && !r.signal.aborted) {
        this.#http1Origins.add(err.origin);
        return fallback.send(r);
      }
      // A stream the upstream refused unprocessed (REFUSED_STREAM, or above a GOAWAY's last
      // stream: the race with a connection closing) is sent once more when it has no body to
      // replay, as the h1 codec does for a stale keep-alive connection.
      if (refusedUnprocessed(err) && r.body === null && !r.signal.aborted) {
        this.refusedRetries++;
        return this.#send(r).catch((again) => {
          throw toUpstreamError(again, r.signal);
        });
      }
      throw toUpstreamError(err, r.signal);
    });
  }

  async #send(r: UpstreamRequest): Promise<Response> {
    const origin = originOf(r.url);
    const path = r.url.length === origin.length ? "/" : r.url.slice(origin.length);
    if (r.method === "CONNECT") {
      throw new ProxyError("bad_request", "CONNECT is not forwarded to an HTTP/2 upstream");
    }
    const fields = requestFields(r, origin, path);
    if (r.signal.aborted) throw r.signal.reason;
    const stream = await this.#open(this.#target(origin), fields, r.body === null, r.signal);
    // Given up from here on (client gone, a timeout): the upstream hears it as RST_STREAM. A
    // timeout errors the body (the downstream must see the answer cut short); for a client gone
    // the body just ends, as nobody reads it (an error would only be logged by Deno.serve).
    const onAbort = () =>
      stream.reset(
        ErrorCode.CANCEL,
        r.signal.reason instanceof ClientGoneReason
          ? null
          : classifyUpstreamError(r.signal.reason, r.signal),
      );
    r.signal.addEventListener("abort", onAbort, { once: true });
    let answered = false;
    // False while forward.ts holds the head back for the body's first bytes: a reset then is
    // answered with a 502 (counted as the attempt's error), not a body cut after its head.
    let headOut = true;
    void stream.closed.then((reset) => {
      r.signal.removeEventListener("abort", onAbort);
      // A body the peer broke after its head (a reset, a malformed or short body caught here):
      // noted for the access log. Ferry's own cancels (nobody reads, a retry) are not failures.
      if (
        reset && answered && (headOut || stream.receivedBytes > 0) &&
        (reset.byPeer || reset.code === ErrorCode.PROTOCOL_ERROR)
      ) {
        noteBodyFailure(r.record, toUpstreamError(reset, r.signal), r.bodyErrors, r.signal);
      }
    });
    if (r.body) void sendBody(r.body, stream);
    const head = await stream.headers;
    answered = true;
    const res = toResponse(head, stream, r.method);
    // Body bytes not here yet: forward.ts may hold the head back for them (a reset before the
    // first byte is then still a 502).
    if (res.body && stream.receivedBytes === 0 && !stream.remoteEnded) {
      headOut = false;
      offerFirstBytes(
        res,
        (late) =>
          stream.firstData(late.then(() => headOut = true)).catch((err) => {
            throw toUpstreamError(err, r.signal);
          }),
      );
    }
    return res;
  }

  #target(origin: string): Target {
    let t = this.#targets.get(origin);
    if (!t) {
      t = { origin, url: new URL(origin) };
      // Bounded by the endpoints ever seen; forgotten with them (retire).
      this.#targets.set(origin, t);
    }
    return t;
  }

  /** A stream on the pool, or the signal's reason if it aborts first (the stream is reset). */
  #open(
    target: Target,
    fields: readonly HeaderField[],
    endStream: boolean,
    signal: AbortSignal,
  ): Promise<H2Stream> {
    const opening = this.pool.request(target, fields, endStream);
    return new Promise<H2Stream>((resolve, reject) => {
      const onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
      opening.then((s) => {
        signal.removeEventListener("abort", onAbort);
        // Opened after the request gave up: nobody will read it.
        if (signal.aborted) s.reset(ErrorCode.CANCEL);
        else resolve(s);
      }, (err) => {
        signal.removeEventListener("abort", onAbort);
        reject(err);
      });
    });
  }

  /** `origin` left the cluster; its HTTP/2 connections are the pool's to retire (cluster.ts). */
  retire(origin: string): void {
    this.#targets.delete(origin);
    this.#http1Origins.delete(origin);
    this.http1Fallback?.retire(origin);
  }

  /** Closes the fallback; the pool is the cluster's (shared with gRPC) and closed by it. */
  close(): void {
    this.http1Fallback?.close();
  }
}

/** The URL is endpoint origin + path: the origin ends at the first "/" after "scheme://". */
function originOf(url: string): string {
  const slash = url.indexOf("/", url.indexOf("//") + 2);
  return slash === -1 ? url : url.slice(0, slash);
}

/** The request head as HTTP/2 fields: pseudo-headers first, then the end-to-end fields. */
function requestFields(r: UpstreamRequest, origin: string, path: string): HeaderField[] {
  let authority: string | undefined;
  const regular: HeaderField[] = [];
  for (const [name, value] of r.headers) {
    if (name === "host") authority ??= value;
    if (NOT_ON_H2.has(name)) continue;
    // `te` may only say trailers on HTTP/2 (RFC 9113 8.2.2).
    if (name === "te" && value.trim().toLowerCase() !== "trailers") continue;
    regular.push([name, value]);
  }
  const scheme = origin.charCodeAt(4) === 115 /* s */ ? "https" : "http";
  authority ??= origin.slice(origin.indexOf("//") + 2);
  return [
    [":method", r.method],
    [":scheme", scheme],
    [":authority", authority],
    [":path", path],
    ...regular,
  ];
}

/**
 * Writes the request body as the stream's windows allow (each write waits for credit), then
 * ends the stream. A body that fails (the client gone, the size limit) resets the stream; its
 * failure is forward.ts's to report (it watches the body). A stream that ended first (the
 * upstream answered without reading everything, or was reset) cancels the body.
 */
async function sendBody(body: ReadableStream<Uint8Array>, stream: H2Stream): Promise<void> {
  const reader = body.getReader();
  let chunk: ReadableStreamReadResult<Uint8Array>;
  for (;;) {
    try {
      chunk = await reader.read();
    } catch {
      stream.reset(ErrorCode.CANCEL);
      return;
    }
    try {
      if (chunk.done) return await stream.end();
      if (chunk.value.length > 0) await stream.write(chunk.value);
    } catch (err) {
      reader.cancel(err).catch(() => {});
      return;
    }
  }
}

/** The response head and body as a Response (its body is the stream's, read with flow control). */
function toResponse(head: readonly HeaderField[], stream: H2Stream, method: string): Response {
  const status = Number(statusOf(head));
  // Response takes 200-599 only; 1xx were skipped by the connection, 101 is not HTTP/2.
  if (!Number.isInteger(status) || status < 200 || status > 599) {
    stream.reset(ErrorCode.PROTOCOL_ERROR);
    throw new ProxyError(
      "upstream_protocol_error",
      `the upstream answered with status ${statusOf(head)}, outside 200-599`,
    );
  }
  const headers = new Headers();
  try {
    for (const [name, value] of head) if (name.charCodeAt(0) !== 58) headers.append(name, value);
  } catch (err) {
    stream.reset(ErrorCode.PROTOCOL_ERROR);
    throw new ProxyError("upstream_protocol_error", "the upstream sent an invalid header", {
      cause: err,
    });
  }
  if (method === "HEAD" || NULL_BODY_STATUS.has(status)) {
    // Whatever body an answer that has none would carry is not read.
    if (!stream.remoteEnded) stream.body.cancel().catch(() => {});
    return new Response(null, { status, headers });
  }
  // The body must be as long as its Content-Length says (checked as DATA arrives; a mismatch
  // later resets the stream, which cuts the downstream answer instead of ending it as complete).
  // Several or malformed values are checkUpstreamHead's to refuse.
  const cl = headers.get("content-length");
  if (cl !== null && /^\d{1,15}$/.test(cl) && !stream.expectLength(Number(cl))) {
    stream.reset(ErrorCode.PROTOCOL_ERROR);
    throw new ProxyError(
      "upstream_protocol_error",
      `the upstream's body does not match its content-length ${cl}`,
    );
  }
  return new Response(stream.body, { status, headers });
}

function statusOf(head: readonly HeaderField[]): string {
  for (const [n, v] of head) if (n === ":status") return v;
  return "(none)";
}

function refusedUnprocessed(err: unknown): boolean {
  return err instanceof StreamReset && err.byPeer && err.code === ErrorCode.REFUSED_STREAM;
}

/** A stream's failure in the error table's terms. */
function toUpstreamError(err: unknown, signal: AbortSignal): ProxyError {
  if (err instanceof ProxyError) return err;
  if (signal.aborted) return classifyUpstreamError(err, signal);
  if (err instanceof StreamReset) {
    // A malformed answer caught by our side of the connection (RFC 9113 8.1.1).
    if (!err.byPeer && err.code === ErrorCode.PROTOCOL_ERROR) {
      return new ProxyError("upstream_protocol_error", err.message, { cause: err });
    }
    return new ProxyError(
      "upstream_reset",
      err.code === ErrorCode.REFUSED_STREAM
        ? "the upstream refused the stream (not processed)"
        : `the upstream reset the stream: ${err.message}`,
      { cause: err },
    );
  }
  return classifyUpstreamError(err, signal);
}
