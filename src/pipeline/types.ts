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
 * What the protocol-neutral parts of the request path read of a call, HTTP or gRPC alike: the
 * hash key of ring_hash / maglev, and the route's policy layers (authorization, rate limits).
 */
export interface CallFacts {
  readonly method: string;
  /** Normalised path, without the query. */
  readonly path: string;
  /** A request header (lower-case name); undefined when absent. */
  header(name: string): string | undefined;
  /** The client address Ferry believes (see RequestContext.clientIp). */
  readonly clientIp: string;
  readonly identity: ClientIdentity | undefined;
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

/**
 * A route policy that runs before the cluster call, the same for HTTP and gRPC: it may delay the
 * call, or refuse it by throwing a ProxyError (which each protocol answers from the one error
 * table). Returns nothing when it decided at once, so the common path allocates no promise.
 */
export interface PolicyLayer {
  readonly name: string;
  admit(
    call: CallFacts,
    where: { readonly listener: string; readonly route: string },
  ): void | Promise<void>;
}

/** Why a call's signal aborted: a deadline (route timeout, per-try timeout, idle body). */
export class TimeoutReason extends Error {}
/** Why a call's signal aborted: the client went away. */
export class ClientGoneReason extends Error {}

/** What an attempt layer knows of an endpoint: its breaker slot and its id. */
export interface AttemptEndpoint {
  readonly slot: number;
  readonly origin: string;
}

/** What an attempt said about its endpoint: a success, a failure, or nothing (the client left). */
export type AttemptVerdict = "success" | "failure" | "none";

/**
 * A route policy that acts on each attempt of a cluster call rather than on the request (the
 * circuit breaker, the per-try timeout). The cluster call (src/upstream/call.ts) enters the
 * route's attempt layers, outermost first, for the endpoint it picked; a layer may refuse that
 * endpoint (the call then tries another), hand the attempt a signal of its own, and learn the
 * attempt's verdict.
 */
export interface AttemptLayer {
  readonly name: string;
  /** A ticket for an attempt on `endpoint`, or undefined to refuse the endpoint. */
  enter(endpoint: AttemptEndpoint, signal: AbortSignal): AttemptTicket | undefined;
  /** The error when this layer refused every endpoint there was. */
  refusal(endpoints: readonly AttemptEndpoint[], cluster: string): ProxyError;
}

export interface AttemptTicket {
  /** The signal the attempt runs on from here in; default the one the layer was given. */
  readonly signal?: AbortSignal;
  /** The attempt has its answer (response headers). */
  answered?(): void;
  /** Called once, when the attempt is over (or was never made). */
  settle?(verdict: AttemptVerdict): void;
}

export type Handler = (req: Request, ctx: RequestContext) => Promise<Response>;
export type Middleware = (next: Handler) => Handler;

/** Folds middleware around a terminal handler; the first middleware is the outermost. */
export function compose(middleware: readonly Middleware[], terminal: Handler): Handler {
  return middleware.reduceRight<Handler>((next, mw) => mw(next), terminal);
}

/** Where a factory is used; handed to it so it can name itself in its own logs. */
export interface MiddlewareUse {
  /** The route whose entry this is, or undefined for a listener's default list. */
  readonly route: string | undefined;
  /** The listener whose default list this is, or undefined for a route's own list. */
  readonly listener: string | undefined;
}

/**
 * Builds a middleware from the entry's `options` (always an object; `{}` when none are given).
 * Throw (or reject) to refuse the options: the message becomes the config error. Called once per
 * config entry on every start, reload and `--check`, so it should validate and build, not start
 * background work.
 */
export type MiddlewareFactory = (
  options: Readonly<Record<string, unknown>>,
  use: MiddlewareUse,
) => Middleware | Promise<Middleware>;
