/**
 * How bytes reach an upstream: Ferry's own HTTP/1.1 client (src/h1/) for http1 clusters, fetch
 * over one `Deno.HttpClient` pool per cluster for h2c and auto (see docs/design.md "Upstream
 * transports").
 *
 * fetch always decompresses gzip/br/deflate bodies unless the request says
 * `Accept-Encoding: identity`, yet keeps `content-encoding`, so requests it carries say identity.
 */
import { offerBodyReader, takeBodyReader } from "../h1/body_reader.ts";
import { ProxyError } from "../pipeline/errors.ts";
import { denoTlsOptions, type UpstreamTls } from "./upstream_tls.ts";
import type { BodyErrorReason } from "../observability/metrics.ts";

export interface UpstreamRequest {
  /** Absolute URL: endpoint origin + path + query. */
  readonly url: string;
  readonly method: string;
  /** Lower-case [name, value] pairs (see headers.ts for why not a Headers object). */
  readonly headers: readonly [string, string][];
  readonly body: ReadableStream<Uint8Array> | null;
  readonly signal: AbortSignal;
  /**
   * The caller reads the response's header lines from `h1ResponseParts` (src/h1/connection.ts)
   * when there are any: the h1 codec then leaves the Response's own headers empty. Other
   * transports ignore it.
   */
  readonly headersOutOfBand?: boolean;
  /**
   * Where a response body that fails after its head is noted (its flag, for the access log):
   * the client got the head, so the failure shows nowhere else. The h1 codec and the HTTP/2
   * transport note it; fetch's body fails inside Deno.serve, out of sight.
   */
  readonly record?: { flags?: string | undefined };
  /** Where that failure is counted (the cluster's metrics), when the upstream caused it. */
  readonly bodyErrors?: BodyErrorCounter;
}

/** Counts response bodies the upstream broke off after their head (src/observability/metrics.ts). */
export interface BodyErrorCounter {
  bodyFailed(reason: BodyErrorReason): void;
}

/**
 * Notes a response body's failure in `record` (once per flag), and counts it when the upstream
 * caused it. Ferry's own ends are not counted here: the client gone, its send timeout, and the
 * body idle timeout (which forward.ts counts where it fires), all of which abort `signal` first.
 */
export function noteBodyFailure(
  record: { flags?: string | undefined } | undefined,
  err: ProxyError,
  counter: BodyErrorCounter | undefined,
  signal: AbortSignal,
): void {
  // (A signal not aborted leaves the upstream's two: a close or reset, or broken framing.)
  if (
    counter && !signal.aborted &&
    (err.kind === "upstream_reset" || err.kind === "upstream_protocol_error")
  ) counter.bodyFailed(err.kind);
  if (!record) return;
  const flag = err.flag;
  if (!record.flags) record.flags = flag;
  else if (!record.flags.split(",").includes(flag)) record.flags += `,${flag}`;
}

export interface Transport {
  send(request: UpstreamRequest): Promise<Response>;
  /**
   * True when the transport reads Deno.serve's request body natively (not through JS) and so
   * classifies a failure of that body itself; otherwise forward.ts watches the body for it.
   */
  readonly readsBodyNatively?: boolean;
  /** Whether this transport can reach `origin` at all (absent: any origin). */
  reaches?(origin: URL): boolean;
  close(): void;
}

/**
 * Where a transport can tell when a response body's first bytes arrive, it offers a wait for
 * them on the Response (forward.ts holds the response head back for it, so that a body failing
 * before its first byte is still answered with a 502, docs/design.md "Errors"). The wait
 * resolves when the first bytes (or the body's end) are at hand, or after `ms` with nothing;
 * it rejects with the body's failure as a ProxyError.
 */
const FIRST_BYTES = Symbol("ferry.firstBodyBytes");

/**
 * The longest an answer's head waits for the body's first bytes (HTTP: firstBytesWait; gRPC:
 * the first message): long enough for an upstream that fails right after its head (a crash or a
 * reset comes within milliseconds), short enough that a stream whose first event comes late
 * (server-sent events, long polls, server streaming) gets its head with no delay a client would
 * notice. Envoy and nginx send the head at once; this is the least wait that still turns those
 * failures into a 502.
 */
export const FIRST_BYTE_HOLD_MS = 100;
/**
 * Waits for the first bytes until `late` resolves (the caller's deadline: a timer wheel's, not a
 * timer per request). Resolves to the body to relay from now on when the wait had to read from
 * the Response's own (fetch's: its first chunk is in the new one), else to nothing (the
 * Response's body stands).
 */
export type FirstBytesWait = (late: Promise<unknown>) => Promise<ReadableStream<Uint8Array> | void>;
type WithFirstBytes = Response & { [FIRST_BYTES]?: FirstBytesWait };

export function offerFirstBytes(res: Response, wait: FirstBytesWait): void {
  (res as WithFirstBytes)[FIRST_BYTES] = wait;
}

/** The wait for `res`'s first body bytes (see offerFirstBytes); undefined when none is needed. */
export function firstBytesWait(res: Response): FirstBytesWait | undefined {
  return (res as WithFirstBytes)[FIRST_BYTES];
}

const NOT_YET = Symbol("not yet");
const notYet = (): typeof NOT_YET => NOT_YET;

/**
 * A fetch body's failure: Deno 2.9.6 says only "error reading a body from connection" for a
 * close, a reset and bad chunking alike, so all are the upstream's reset.
 */
function fetchBodyError(err: unknown, signal: AbortSignal): ProxyError {
  const pe = classifyUpstreamError(err, signal);
  if (pe.kind !== "upstream_protocol_error") return pe;
  return new ProxyError("upstream_reset", "the upstream's response body broke off", { cause: err });
}

/**
 * fetch's wait for a body's first bytes: its first read, for at most `ms`. fetch gives no other
 * way to see them, so the body is read from here on through a JS stream that starts with what
 * was read (and whose failures are noted for the access log, as the other transports do).
 */
function fetchFirstBytes(
  body: ReadableStream<Uint8Array>,
  r: UpstreamRequest,
): FirstBytesWait {
  return async (late) => {
    const reader = body.getReader();
    const first = reader.read();
    first.catch(() => {}); // read by the stream below when the wait gives up first
    let got: ReadableStreamReadResult<Uint8Array> | typeof NOT_YET;
    try {
      got = await Promise.race([first, late.then(notYet)]);
    } catch (err) {
      reader.cancel(err).catch(() => {});
      throw fetchBodyError(err, r.signal);
    }
    let pending = got === NOT_YET ? first : undefined;
    let head = got !== NOT_YET && !got.done ? got.value : undefined;
    let done = got !== NOT_YET && got.done;
    return new ReadableStream<Uint8Array>({
      async pull(c) {
        if (head) {
          c.enqueue(head);
          head = undefined;
          return;
        }
        if (done) return c.close();
        try {
          const next = await (pending ?? reader.read());
          pending = undefined;
          if (next.done) {
            done = true;
            c.close();
          } else c.enqueue(next.value);
        } catch (err) {
          const pe = fetchBodyError(err, r.signal);
          noteBodyFailure(r.record, pe, r.bodyErrors, r.signal);
          throw pe;
        }
      },
      cancel: (why) => reader.cancel(why).catch(() => {}),
    }, { highWaterMark: 0 });
  };
}

export interface PoolOptions {
  readonly maxIdlePerEndpoint: number;
  readonly idleTimeoutMs: number;
  readonly protocol: "http1" | "h2c" | "auto";
  readonly caCerts?: string[];
  /** Client certificate, server name, expected identities (upstream mTLS). */
  readonly tls?: UpstreamTls;
}

export class FetchTransport implements Transport {
  /**
   * One Deno.HttpClient per endpoint, so an endpoint that leaves the cluster (DNS, reload) can
   * have its pool closed: a client's pool cannot drop one host.
   */
  readonly #clients = new Map<string, Deno.HttpClient>();
  readonly #opts: PoolOptions;
  #closed = false;
  readonly readsBodyNatively = true;

  constructor(opts: PoolOptions) {
    this.#opts = opts;
  }

  #client(origin: string): Deno.HttpClient {
    let client = this.#clients.get(origin);
    if (client) return client;
    const opts = this.#opts;
    client = Deno.createHttpClient({
      poolMaxIdlePerHost: opts.maxIdlePerEndpoint,
      poolIdleTimeout: opts.idleTimeoutMs,
      // h2c is prior knowledge: no HTTP/1.1 at all. "auto" lets TLS ALPN decide.
      http1: opts.protocol !== "h2c",
      http2: opts.protocol !== "http1",
      // Without allowHost fetch silently replaces the Host header we set.
      allowHost: true,
      ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
      // The client certificate for upstream mTLS (fetch cannot check the peer's identity).
      ...denoTlsOptions(opts.tls),
    });
    this.#clients.set(origin, client);
    return client;
  }

  /**
   * `origin` left the cluster: its client is closed, which lets requests in flight finish and
   * then closes its connections (Deno 2.9.6, checked), and is forgotten.
   */
  retire(origin: string): void {
    this.#clients.get(origin)?.close();
    this.#clients.delete(origin);
  }

  send(r: UpstreamRequest): Promise<Response> {
    // The URL is endpoint origin + path: split at the first "/" after "scheme://".
    const slash = r.url.indexOf("/", r.url.indexOf("//") + 2);
    const origin = slash === -1 ? r.url : r.url.slice(0, slash);
    if (this.#closed) {
      return Promise.reject(new ProxyError("no_healthy_upstream", "the cluster was closed"));
    }
    // No async wrapper: one promise fewer per request on the hottest path.
    return fetch(r.url, {
      method: r.method,
      headers: r.headers,
      body: r.body,
      client: this.#client(origin),
      redirect: "manual",
      signal: r.signal,
    }).then((res) => {
      if (res.body) offerFirstBytes(res, fetchFirstBytes(res.body, r));
      return res;
    }, (err) => {
      // The one failure fetch reports only in words: the downstream request body (a Deno
      // resource) gone, because the client went away mid-upload. Not the upstream's fault.
      if (r.body && !(err instanceof ProxyError) && REQUEST_BODY_GONE.test(describe(err))) {
        throw clientBodyError(err);
      }
      throw classifyUpstreamError(err, r.signal);
    });
  }

  close(): void {
    this.#closed = true;
    for (const c of this.#clients.values()) c.close();
    this.#clients.clear();
  }
}

/**
 * Checks an upstream answer's status and framing before anything of it is relayed, the same for
 * every transport. A status Response cannot carry (outside 200-599, except 101, which the
 * WebSocket path owns), a Transfer-Encoding other than plain `chunked`, a Transfer-Encoding beside
 * a Content-Length, or Content-Length values that disagree: 502 `upstream_protocol_error`.
 * Returns the single Content-Length to relay (`5, 5` becomes `5`), or null when there is none.
 */
export function checkUpstreamHead(status: number, headers: Headers): string | null {
  if (!Number.isInteger(status) || ((status < 200 || status > 599) && status !== 101)) {
    throw new ProxyError(
      "upstream_protocol_error",
      `the upstream answered with status ${status}, outside 100-599 or not a final status`,
    );
  }
  const te = headers.get("transfer-encoding");
  const cl = headers.get("content-length");
  if (te !== null) {
    // Anything but chunked is a coding Ferry cannot undo (and a body delimited by close).
    if (te.trim().toLowerCase() !== "chunked") {
      throw new ProxyError(
        "upstream_protocol_error",
        `the upstream sent Transfer-Encoding "${te}"; only chunked is relayed`,
      );
    }
    if (cl !== null) {
      throw new ProxyError(
        "upstream_protocol_error",
        "the upstream sent both Content-Length and Transfer-Encoding (ambiguous framing)",
      );
    }
    return null;
  }
  if (cl === null) return null;
  const values = cl.split(",").map((v) => v.trim());
  if (!values.every((v) => /^\d{1,15}$/.test(v) && v === values[0])) {
    throw new ProxyError(
      "upstream_protocol_error",
      `the upstream sent an invalid Content-Length "${cl}"`,
    );
  }
  return values[0]!;
}

/**
 * Wraps a request body on its way to any transport so that a failure of the body itself (the
 * client aborting its upload, or the body-size limit) is known by type, not guessed from the
 * transport's error message: `failure()` is then the client's error (`client_closed`, or the
 * limit's `payload_too_large`), which must not count against the upstream.
 */
export function watchRequestBody(source: ReadableStream<Uint8Array>): {
  readonly stream: ReadableStream<Uint8Array>;
  failure(): ProxyError | undefined;
} {
  // Taken on the first read: until then the source's direct reader may be taken instead.
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let failure: ProxyError | undefined;
  const stream = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await (reader ??= source.getReader()).read();
      } catch (err) {
        failure = clientBodyError(err);
        ctl.error(failure);
        return;
      }
      if (r.done) ctl.close();
      else ctl.enqueue(r.value);
    },
    cancel(reason) {
      return (reader ?? source).cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
  // The same watch over the source's direct reader, when it has one (src/h1/body_reader.ts).
  offerBodyReader(stream, () => {
    const inner = reader ? undefined : takeBodyReader(source);
    return inner && {
      async read(buf) {
        try {
          return await inner.read(buf);
        } catch (err) {
          throw failure = clientBodyError(err);
        }
      },
      cancel: (reason) => inner.cancel(reason),
    };
  });
  return { stream, failure: () => failure };
}

/** Deno 2.9.6's words for a request body whose resource closed (tests pin them). */
const REQUEST_BODY_GONE = /Cannot read request body/;

/**
 * A failure while reading the client's request body, as the client's error: a `ProxyError` it
 * already is (the body-size limit's 413) is kept, anything else means the client went away.
 */
export function clientBodyError(err: unknown): ProxyError {
  if (err instanceof ProxyError) return err;
  for (let c: unknown = err, i = 0; c instanceof Error && i < 5; c = c.cause, i++) {
    if (c instanceof ProxyError) return c;
  }
  return new ProxyError("client_closed", "the client went away while sending the request body", {
    cause: err,
  });
}

/** Reasons the signal may carry (defined with the pipeline's types, where layers see them). */
import { ClientGoneReason, TimeoutReason } from "../pipeline/types.ts";
export { ClientGoneReason, TimeoutReason };

/** Maps transport failures onto the error table: refused, reset, timeout, protocol. */
export function classifyUpstreamError(err: unknown, signal: AbortSignal): ProxyError {
  if (err instanceof ProxyError) return err;
  // A stream Ferry made (the body-size limit) failing with its own typed error, wrapped by fetch.
  for (let c: unknown = err, i = 0; c instanceof Error && i < 5; c = c.cause, i++) {
    if (c instanceof ProxyError) return c;
  }
  if (signal.aborted) {
    if (signal.reason instanceof TimeoutReason) {
      return new ProxyError("upstream_timeout", signal.reason.message, { cause: err });
    }
    return new ProxyError("client_closed", "the client went away", { cause: err });
  }
  const typed = classifyByType(err);
  if (typed) return typed;
  // fetch reports every failure as a TypeError whose causes carry only text.
  const text = describe(err);
  if (/refused|ECONNREFUSED|dns error|ENOTFOUND|EHOSTUNREACH|No route|unreachable/i.test(text)) {
    return new ProxyError("upstream_connect_failure", "the upstream refused the connection", {
      cause: err,
    });
  }
  if (/certificate|tls|ssl|handshake/i.test(text)) {
    return new ProxyError("upstream_connect_failure", "TLS handshake with the upstream failed", {
      cause: err,
    });
  }
  if (
    /reset|ECONNRESET|closed|EPIPE|broken pipe|incomplete|connection error|socket hang up/i.test(
      text,
    )
  ) {
    return new ProxyError("upstream_reset", "the upstream closed the connection", { cause: err });
  }
  return new ProxyError("upstream_protocol_error", "the upstream response was not valid HTTP", {
    cause: err,
  });
}

const CONNECT_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
]);
const RESET_CODES = new Set(["ECONNRESET", "EPIPE", "ECONNABORTED", "ERR_STREAM_PREMATURE_CLOSE"]);
const TLS_CODE =
  /^(ERR_TLS_|ERR_SSL_|UNABLE_TO_|CERT_|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_)/;

/**
 * Classification by type where the error has one: Deno's error classes and node's `code`
 * (node:http); undefined when only the text can tell (fetch).
 */
function classifyByType(err: unknown): ProxyError | undefined {
  for (let e: unknown = err, i = 0; e instanceof Error && i < 5; e = e.cause, i++) {
    const code = (e as { code?: unknown }).code;
    if (
      e instanceof Deno.errors.ConnectionRefused ||
      (typeof code === "string" && CONNECT_CODES.has(code))
    ) {
      return new ProxyError("upstream_connect_failure", "the upstream refused the connection", {
        cause: err,
      });
    }
    if (typeof code === "string" && TLS_CODE.test(code)) {
      return new ProxyError("upstream_connect_failure", "TLS handshake with the upstream failed", {
        cause: err,
      });
    }
    if (typeof code === "string" && code.startsWith("HPE_")) {
      return new ProxyError("upstream_protocol_error", "the upstream response was not valid HTTP", {
        cause: err,
      });
    }
    if (
      e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
      e instanceof Deno.errors.ConnectionAborted || e instanceof Deno.errors.UnexpectedEof ||
      (typeof code === "string" && RESET_CODES.has(code))
    ) {
      return new ProxyError("upstream_reset", "the upstream closed the connection", { cause: err });
    }
  }
  return undefined;
}

function describe(err: unknown): string {
  const parts: string[] = [];
  let e: unknown = err;
  for (let depth = 0; e && depth < 5; depth++) {
    if (e instanceof Error) {
      parts.push(e.message, (e as { code?: string }).code ?? "");
      e = e.cause;
    } else {
      parts.push(String(e));
      break;
    }
  }
  return parts.join(" | ");
}
