/**
 * The request's way through Ferry is a chain of `Handler`s, built once per config snapshot.
 * Code before `await next(req, ctx)` sees the request; code after it sees the response.
 */

import type { ProxyError } from "./errors.ts";

/** Facts about one downstream request, fixed before the pipeline starts. */
export interface RequestContext {
  readonly requestId: string;
  /** The peer address of the TCP connection. */
  readonly peerIp: string;
  /** The client address Ferry believes: the peer, or the first untrusted X-Forwarded-For hop. */
  readonly clientIp: string;
  /** Whether the peer is one of `server.trusted_proxies`. */
  readonly peerTrusted: boolean;
  readonly listener: string;
  /** "https" when the listener terminates TLS. */
  readonly scheme: "http" | "https";
  /** Normalised host (lower case, no port) and the authority as the client sent it. */
  readonly host: string;
  readonly authority: string;
  /** Normalised path (dot segments removed) and raw query ("" or "?..."). */
  readonly path: string;
  readonly search: string;
  readonly startedAt: number;
  /**
   * The client's verified certificate identity (downstream mTLS); undefined when the connection
   * carried no client certificate, which is every connection until listeners ask for one.
   */
  readonly identity: ClientIdentity | undefined;
  /** The listener's header for that identity upstream (XFCC format), lower case. */
  readonly clientCertHeader: string;
  /** What the proxy did, for the access log: written by stages, never read for decisions. */
  readonly outcome: RequestOutcome;
  /**
   * Where Ferry wrapped the request body itself (the size limit on a body without
   * Content-Length): that body's own typed failure, so a transport failing because of it is
   * known to be the client's doing.
   */
  readonly bodyFailure?: () => ProxyError | undefined;
}

/**
 * Who a client certificate says the caller is: the SPIFFE ID from its URI SAN, else its first DNS
 * SAN, else its subject CN. Authorization rules match `id`, its prefix, or the trust domain.
 */
export interface ClientIdentity {
  readonly id: string;
  readonly kind: "spiffe" | "dns" | "cn";
  /** For a SPIFFE ID `spiffe://td/path`: `td`; otherwise undefined. */
  readonly trustDomain: string | undefined;
  /** SHA-256 of the certificate (DER), lower-case hex, for x-forwarded-client-cert `Hash=`. */
  readonly certHash?: string;
}

/** Filled as the request moves on; the access log and error bodies read it at the end. */
export interface RequestOutcome {
  route?: string;
  cluster?: string;
  endpoint?: string;
  attempts: number;
  /** Time from sending upstream to its response headers, last attempt. */
  upstreamMs?: number;
  /** Extra response flags for the access log, such as URX (the retry budget refused a retry). */
  flags?: string;
}

export type Handler = (req: Request, ctx: RequestContext) => Promise<Response>;
export type Middleware = (next: Handler) => Handler;

/** Folds middleware around a terminal handler; the first middleware is the outermost. */
export function compose(middleware: readonly Middleware[], terminal: Handler): Handler {
  return middleware.reduceRight<Handler>((next, mw) => mw(next), terminal);
}
