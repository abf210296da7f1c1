/**
 * A route's chain, composed once per snapshot: its policy layers in the order docs/design.md
 * draws, around its terminal (the cluster call, a direct response or a redirect).
 *
 *   authorization -> fault injection -> rate limits -> terminal
 *
 * Authorization is outermost: a refused caller spends no rate-limit token and sees no injected
 * fault. The layers read only `CallFacts`, so the same list serves both protocols: HTTP runs it
 * as middleware (`httpChain`), a gRPC listener runs it before the call (`admitCall`).
 *
 * The per-attempt policies act on each attempt of the cluster call (src/upstream/call.ts), not
 * on the request; `attemptLayers` orders them:
 *
 *   circuit breaker -> per-try timeout -> attempt (HTTP request or gRPC stream)
 *
 * The breaker is outermost: an endpoint it refuses starts no timer; the per-try timeout bounds
 * only the attempt itself. Retries (with their budget and backoff) are the call's loop around
 * these.
 */
import type {
  AttemptLayer,
  CallFacts,
  Handler,
  Middleware,
  PolicyLayer,
  RequestContext,
} from "./types.ts";

/** The layers a route's config asks for, each built by its own named factory. */
export interface RouteLayerParts {
  readonly authorization?: PolicyLayer | undefined;
  readonly fault?: PolicyLayer | undefined;
  readonly rateLimit?: PolicyLayer | undefined;
}

/** The route's layers in their one order; absent ones cost nothing per request. */
export function routeLayers(parts: RouteLayerParts): readonly PolicyLayer[] {
  return Object.freeze(
    [parts.authorization, parts.fault, parts.rateLimit].filter((l): l is PolicyLayer =>
      l !== undefined
    ),
  );
}

/** The route's per-attempt layers, built by their named factories (src/policy/attempt_layers.ts). */
export interface AttemptLayerParts {
  readonly breaker?: AttemptLayer | undefined;
  readonly perTryTimeout?: AttemptLayer | undefined;
}

/** The route's attempt layers in their one order. */
export function attemptLayers(parts: AttemptLayerParts): readonly AttemptLayer[] {
  return Object.freeze(
    [parts.breaker, parts.perTryTimeout].filter((l): l is AttemptLayer => l !== undefined),
  );
}

/** Runs the layers for one call; throws the first refusal (a ProxyError). */
export function admitCall(
  layers: readonly PolicyLayer[],
  call: CallFacts,
  where: { readonly listener: string; readonly route: string },
  from = 0,
): void | Promise<void> {
  for (let i = from; i < layers.length; i++) {
    const r = layers[i]!.admit(call, where);
    if (r) return r.then(() => admitCall(layers, call, where, i + 1));
  }
}

/** What a hash key and the policy layers read of an HTTP request. */
export function httpCallFacts(req: Request, ctx: RequestContext): CallFacts {
  return {
    method: req.method,
    path: ctx.path,
    header: (name) => req.headers.get(name) ?? undefined,
    clientIp: ctx.clientIp,
    identity: ctx.identity,
  };
}

/**
 * The HTTP chain: the route's layers, then the terminal handler. Extension middleware (HTTP only)
 * runs after authorization and before the other layers: a refused caller never reaches user code.
 */
export function httpChain(
  parts: RouteLayerParts,
  terminal: Handler,
  extension?: Middleware,
): Handler {
  if (!extension) return admitThen(routeLayers(parts), terminal);
  const inner = admitThen(routeLayers({ ...parts, authorization: undefined }), terminal);
  return admitThen(routeLayers({ authorization: parts.authorization }), extension(inner));
}

function admitThen(layers: readonly PolicyLayer[], terminal: Handler): Handler {
  if (layers.length === 0) return terminal;
  return function routeChain(req, ctx) {
    const where = { listener: ctx.listener, route: ctx.outcome.route ?? "" };
    let admitted: void | Promise<void>;
    try {
      admitted = admitCall(layers, httpCallFacts(req, ctx), where);
    } catch (err) {
      return Promise.reject(err);
    }
    return admitted ? admitted.then(() => terminal(req, ctx)) : terminal(req, ctx);
  };
}
