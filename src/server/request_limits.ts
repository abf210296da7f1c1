/**
 * Per-request size limits, checked in the entry handler so that HTTP/1.1 and HTTP/2 requests
 * get the same answer from the one error table: 431 for header size or count, 413 for a body
 * over the limit (up front from Content-Length, or while streaming a body without one).
 */
import { ProxyError } from "./errors.ts";

/**
 * Refuses a request whose header block is larger or longer than the limits (431). Size is the
 * sum over fields of name + value + 4 (": " and CRLF), as in an HTTP/1.1 head, on both protocols.
 */
export function checkHeaderLimits(headers: Headers, maxBytes: number, maxCount: number): void {
  let count = 0;
  let bytes = 0;
  for (const [name, value] of headers) {
    count++;
    bytes += name.length + value.length + 4;
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
): { req: Request; overLimit?: () => ProxyError | undefined } {
  if (maxBodyBytes <= 0 || req.body === null) return { req };
  const declared = req.headers.get("content-length");
  if (declared !== null) {
    const n = Number(declared);
    if (n > maxBodyBytes) throw tooLarge(maxBodyBytes);
    if (Number.isSafeInteger(n) && n >= 0) return { req };
  }
  const limit = countingLimit(maxBodyBytes);
  return {
    req: new Request(req, { body: req.body.pipeThrough(limit.stream) }),
    overLimit: limit.overLimit,
  };
}

/** A stream that passes bytes through until more than `max` have passed, then fails (413). */
export function countingLimit(max: number): {
  stream: TransformStream<Uint8Array, Uint8Array>;
  overLimit: () => ProxyError | undefined;
} {
  let seen = 0;
  let failure: ProxyError | undefined;
  const stream = new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, ctl) {
      seen += chunk.byteLength;
      if (seen > max) {
        failure = tooLarge(max);
        ctl.error(failure);
      } else ctl.enqueue(chunk);
    },
  });
  return { stream, overLimit: () => failure };
}

function tooLarge(max: number): ProxyError {
  return new ProxyError("payload_too_large", `request body larger than ${max} bytes`);
}
