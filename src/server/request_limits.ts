/**
 * Per-request size limits, checked in the entry handler so that HTTP/1.1 and HTTP/2 requests
 * get the same answer from the one error table: 431 for header size or count, 413 for a body
 * over the limit (up front from Content-Length, or while streaming a body without one).
 */
import { attachTicket, downstreamTicket } from "../pipeline/downstream.ts";
import { ProxyError } from "../pipeline/errors.ts";
import { type BodyReader, offerBodyReader, takeBodyReader } from "../h1/body_reader.ts";

/**
 * Refuses a request whose header block is larger or longer than the limits (431). Size is the
 * sum over fields of name + value + 4 (": " and CRLF), as in an HTTP/1.1 head, on both protocols.
 * The same pass finds an Expect that Ferry cannot meet (417).
 */
export function checkHeaderLimits(headers: Headers, maxBytes: number, maxCount: number): void {
  let count = 0;
  let bytes = 0;
  let expect: string | undefined;
  // forEach, not for-of: Deno's Headers iterator costs about 10x more (deno bench, 8 headers).
  headers.forEach((value, name) => {
    count++;
    bytes += name.length + value.length + 4;
    if (name === "expect") expect = value;
  });
  // Repeated Expect lines arrive joined ("100-continue, foo"): any member but 100-continue fails.
  if (expect !== undefined && expect.trim().toLowerCase() !== "100-continue") {
    throw new ProxyError("expectation_failed", `unsupported expectation "${expect}"`);
  }
  if (count > maxCount) {
    throw new ProxyError(
      "headers_too_large",
      `${count} header fields, more than the limit of ${maxCount}`,
    );
  }
  if (bytes > maxBytes) {
    throw new ProxyError(
      "headers_too_large",
      `header fields of ${bytes} bytes, more than the limit of ${maxBytes}`,
    );
  }
}

/**
 * The request to forward: itself when it has no body, or a Content-Length within the limit
 * (Deno enforces the framing); 413 when the Content-Length is over. Otherwise a copy whose body
 * stream fails once it passes the limit; the upstream call then fails with a transport error, so
 * `overLimit()` tells the caller that this failure is the client's 413.
 */
export function limitBody(
  req: Request,
  maxBodyBytes: number,
): {
  req: Request;
  overLimit?: () => ProxyError | undefined;
  /** After the limit tripped: settles once the rest of a small body was read and dropped. */
  settled?: () => Promise<void>;
  /** Set when the request is refused already: settles (rejects with the 413) once it is read. */
  early?: Promise<never>;
} {
  if (maxBodyBytes <= 0 || req.body === null) return { req };
  const declared = req.headers.get("content-length");
  if (declared !== null) {
    const n = Number(declared);
    if (n > maxBodyBytes) {
      // A small body is read and dropped before the 413 goes out: an HTTP/2 client still
      // sending it otherwise meets a reset stream before it reads the answer (curl error 92).
      if (n <= LINGER_BYTES) return { req, early: discard(req.body, tooLarge(maxBodyBytes)) };
      throw tooLarge(maxBodyBytes);
    }
    if (Number.isSafeInteger(n) && n >= 0) return { req };
  }
  const limit = countingLimit(req.body, maxBodyBytes);
  const copy = new Request(req, { body: limit.stream });
  const ticket = downstreamTicket(req);
  if (ticket) attachTicket(copy, ticket);
  return { req: copy, overLimit: limit.overLimit, settled: limit.settled };
}

/**
 * `body` passed through until more than `max` bytes have passed; then the stream fails (413) and
 * the source is cancelled. Pull-based, so it reads only as fast as the upstream takes.
 */
export function countingLimit(body: ReadableStream<Uint8Array>, max: number): {
  stream: ReadableStream<Uint8Array>;
  overLimit: () => ProxyError | undefined;
  /** Resolves once the source is done with after the limit tripped (at once before). */
  settled: () => Promise<void>;
} {
  // Taken on the first read: until then the source's direct reader may be taken instead.
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let seen = 0;
  let failure: ProxyError | undefined;
  let lingering: Promise<void> | undefined;
  const stream = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      const source = reader ??= body.getReader();
      const r = await source.read();
      if (r.done) return ctl.close();
      seen += r.value.byteLength;
      if (seen <= max) return ctl.enqueue(r.value);
      failure = tooLarge(max);
      ctl.error(failure);
      // Not cancelled at once: cancelling resets an HTTP/2 stream before the 413 can reach a
      // client still sending (curl: "Empty reply"), so a small remainder is read and dropped.
      lingering = lingerThenCancel(streamDrain(source));
    },
    cancel(reason) {
      return (reader ?? body).cancel(reason).catch(() => {});
    },
  }, { highWaterMark: 0 });
  // The same count over the source's direct reader, when it has one (src/h1/body_reader.ts).
  offerBodyReader(stream, () => {
    const inner = reader ? undefined : takeBodyReader(body);
    return inner && {
      async read(buf) {
        const n = await inner.read(buf);
        if (n === null) return null;
        seen += n;
        if (seen <= max) return n;
        failure = tooLarge(max);
        lingering = lingerThenCancel(directDrain(inner));
        throw failure;
      },
      cancel: (reason) => inner.cancel(reason),
    };
  });
  return {
    stream,
    overLimit: () => failure,
    settled: () => lingering ?? Promise.resolve(),
  };
}

/** How lingerThenCancel reads and drops a body: a read's size (null at the end), and cancel. */
interface Drain {
  read(): Promise<number | null>;
  cancel(): Promise<void>;
}

function streamDrain(reader: ReadableStreamDefaultReader<Uint8Array>): Drain {
  return {
    read: () => reader.read().then((r) => r.done ? null : r.value.byteLength),
    cancel: () => reader.cancel().catch(() => {}),
  };
}

function directDrain(inner: BodyReader): Drain {
  const scratch = new Uint8Array(16 * 1024);
  return {
    read: () => inner.read(scratch),
    cancel: () => Promise.resolve(inner.cancel()),
  };
}

/** Declared over-limit bodies up to this size are read and dropped before the 413 is sent. */
const LINGER_BYTES = 64 * 1024;
/** The most time spent reading such a body. */
const LINGER_MS = 1_000;

async function discard(body: ReadableStream<Uint8Array>, refusal: ProxyError): Promise<never> {
  await lingerThenCancel(streamDrain(body.getReader()));
  throw refusal;
}

/**
 * Reads and drops what the client still sends, up to `LINGER_BYTES` and `LINGER_MS`, then
 * cancels the body: the client has finished its upload by the time the refusal reaches it.
 */
async function lingerThenCancel(drain: Drain): Promise<void> {
  const deadline = AbortSignal.timeout(LINGER_MS);
  const stop = () => void drain.cancel();
  deadline.addEventListener("abort", stop, { once: true });
  let dropped = 0;
  try {
    while (dropped <= LINGER_BYTES) {
      const n = await drain.read();
      if (n === null) break;
      dropped += n;
    }
  } catch { /* the client left or the deadline passed: answer anyway */ }
  deadline.removeEventListener("abort", stop);
  await drain.cancel();
}

function tooLarge(max: number): ProxyError {
  return new ProxyError("payload_too_large", `request body larger than ${max} bytes`);
}
