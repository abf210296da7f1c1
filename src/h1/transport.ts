/**
 * Ferry's own HTTP/1.1 upstream transport: one pool per endpoint, requests framed exactly as
 * they came, responses parsed strictly and streamed byte for byte (Content-Encoding untouched).
 */
import { ProxyError } from "../pipeline/errors.ts";
import {
  type BodyErrorCounter,
  classifyUpstreamError,
  noteBodyFailure,
  offerFirstBytes,
  type Transport,
  type UpstreamRequest,
} from "../upstream/transport.ts";
import {
  BodySource,
  exchange,
  type H1Connection,
  h1ResponseParts,
  serializeHead,
  StaleConnection,
  UpstreamClosed,
} from "./connection.ts";
import { H1ProtocolError } from "./parse.ts";
import { isIdempotent } from "../policy/retry.ts";
import { takeBodyReader } from "./body_reader.ts";
import { NotUpgraded, type Upgraded, upgradeWebSocket } from "./upgrade.ts";
import { ConnectError, EndpointPool, type EndpointPoolStats, type H1PoolOptions } from "./pool.ts";

export type { H1PoolOptions } from "./pool.ts";

export class H1Transport implements Transport {
  readonly #pools = new Map<string, EndpointPool>();
  #closed = false;
  /** Requests sent again after meeting a connection the upstream had closed while idle. */
  staleRetries = 0;
  /** Request bodies read straight from Ferry's own HTTP/1.1 server's connection (body_reader.ts). */
  directBodies = 0;

  constructor(readonly opts: H1PoolOptions) {}

  stats(): EndpointPoolStats[] {
    return [...this.#pools.values()].map((p) => p.stats());
  }

  endpointStats(origin: string): EndpointPoolStats | undefined {
    return this.#pools.get(origin)?.stats();
  }

  #pool(origin: string): EndpointPool {
    let p = this.#pools.get(origin);
    if (!p) {
      p = new EndpointPool(origin, this.opts);
      if (this.#closed) p.close();
      this.#pools.set(origin, p);
    }
    return p;
  }

  /** `origin` left the cluster: its pool closes once its requests are done, and is forgotten. */
  retire(origin: string): void {
    const p = this.#pools.get(origin);
    if (!p) return;
    this.#pools.delete(origin);
    p.retire();
  }

  send(r: UpstreamRequest): Promise<Response> {
    return this.#send(r).catch((err) => {
      throw toUpstreamError(err, r.signal);
    });
  }

  async #send(r: UpstreamRequest): Promise<Response> {
    // The URL is endpoint origin + path: split at the first "/" after "scheme://".
    const slash = r.url.indexOf("/", r.url.indexOf("//") + 2);
    const origin = slash === -1 ? r.url : r.url.slice(0, slash);
    const target = slash === -1 ? "/" : r.url.slice(slash);
    const pool = this.#pool(origin);
    let framed: { head: Uint8Array; contentLength: number };
    try {
      framed = serializeHead(r.method, target, r.headers, r.body !== null);
    } catch (err) {
      throw new ProxyError("bad_request", `request cannot be forwarded: ${(err as Error).message}`);
    }
    // Straight from the client's connection into the codec's buffer when Ferry's own HTTP/1.1
    // server made the body and nothing has read it yet; else the stream.
    const direct = r.body ? takeBodyReader(r.body) : undefined;
    if (direct) this.directBodies++;
    const body = r.body ? new BodySource(direct ?? r.body, framed.contentLength) : undefined;
    const abortError = () => classifyUpstreamError(r.signal.reason, r.signal);
    for (let attempt = 0;; attempt++) {
      if (r.signal.aborted) throw abortError();
      const c = (attempt === 0 ? pool.takeIdle() : undefined) ??
        await acquire(pool, r.signal, attempt > 0);
      try {
        const res = await exchange(c, {
          method: r.method,
          head: framed.head,
          contentLength: framed.contentLength,
          body,
          signal: r.signal,
          abortError,
          headersOutOfBand: r.headersOutOfBand,
          bodyError: bodyFailure,
          record: r.record,
          bodyErrors: r.bodyErrors,
        });
        const firstBytes = h1ResponseParts(res)?.firstBytes;
        if (firstBytes) {
          offerFirstBytes(res, (late) =>
            firstBytes(late).catch((err) => {
              throw toUpstreamError(err, r.signal);
            }));
        }
        return res;
      } catch (err) {
        // The keep-alive race: sent once more, on a new connection, if nothing was lost and
        // the upstream cannot have acted on it twice: an idempotent request, or one whose head
        // never went out (a POST it read before closing may have been processed; nginx and Go
        // do not send it again either).
        if (
          err instanceof StaleConnection && attempt === 0 && (!body || body.replayable) &&
          (err.unsent || isIdempotent(r.method))
        ) {
          body?.rewind();
          this.staleRetries++;
          continue;
        }
        throw err;
      }
    }
  }

  /**
   * A WebSocket handshake on a connection of its own; resolves with the upgraded socket after a
   * real 101. Failures are ProxyErrors (a refusal names the upstream's status).
   */
  async upgrade(
    url: string,
    headers: readonly [string, string][],
    signal: AbortSignal,
  ): Promise<Upgraded> {
    const slash = url.indexOf("/", url.indexOf("//") + 2);
    const origin = slash === -1 ? url : url.slice(0, slash);
    const target = slash === -1 ? "/" : url.slice(slash);
    try {
      return await upgradeWebSocket(this.#pool(origin), target, headers, signal);
    } catch (err) {
      if (err instanceof NotUpgraded) {
        throw new ProxyError(
          "upstream_protocol_error",
          `WebSocket upstream ${origin} ${err.message}`,
        );
      }
      throw toUpstreamError(err, signal);
    }
  }

  close(): void {
    this.#closed = true;
    for (const p of this.#pools.values()) p.close();
  }
}

/** Waits for a connection, giving up when the request's signal aborts. */
function acquire(pool: EndpointPool, signal: AbortSignal, fresh: boolean): Promise<H1Connection> {
  const p = pool.acquire(signal, fresh);
  return new Promise<H1Connection>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    p.then((c) => {
      signal.removeEventListener("abort", onAbort);
      // Arrived after the request gave up: it goes back to the pool unused.
      if (signal.aborted) pool.release(c);
      else resolve(c);
    }, (err) => {
      signal.removeEventListener("abort", onAbort);
      reject(err);
    });
  });
}

/** A response body's failure after its head, in the table's terms, noted for the access log. */
function bodyFailure(
  err: unknown,
  signal: AbortSignal,
  record: { flags?: string | undefined } | undefined,
  counter: BodyErrorCounter | undefined,
): ProxyError {
  const pe = toUpstreamError(err, signal);
  noteBodyFailure(record, pe, counter, signal);
  return pe;
}

function toUpstreamError(err: unknown, signal: AbortSignal): ProxyError {
  if (err instanceof ProxyError) return err;
  if (signal.aborted) return classifyUpstreamError(err, signal);
  if (err instanceof H1ProtocolError) {
    return new ProxyError("upstream_protocol_error", err.reason, { cause: err });
  }
  if (err instanceof ConnectError) {
    const why = err.timedOut ? err.message : `${err.message}: ${describeCause(err.cause)}`;
    return new ProxyError("upstream_connect_failure", why, { cause: err });
  }
  if (err instanceof UpstreamClosed || err instanceof StaleConnection) {
    return new ProxyError("upstream_reset", err.message, { cause: err });
  }
  return classifyUpstreamError(err, signal);
}

function describeCause(cause: unknown): string {
  return cause instanceof Error ? cause.message : String(cause);
}
