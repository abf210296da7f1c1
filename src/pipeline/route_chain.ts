/**
 * A route's chain, composed once per snapshot: its policy layers in the order docs/design.md
 * draws, around its terminal (the cluster call, a direct response or a redirect).
 *
 *   authorization -> fault injection -> rate limits -> terminal
 *
 * Authorization is outermost: a refused caller spends no rate-limit token and sees no injected
 * fault. The layers read only `CallFacts`, so the same list serves both protocols: HTTP runs it
 * as middleware (`httpChain`), a gRPC listener runs it before the call (`admitCall`). The
 * per-attempt policies (breaker, per-try timeout, retries) live in the cluster call itself
 * (src/upstream/call.ts), since they act on each attempt, not on the request.
 */
import type { CallFacts, Handler, PolicyLayer, RequestContext } from "./types.ts";

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

/** The HTTP chain: the layers, then the terminal handler. */
export function httpChain(layers: readonly PolicyLayer[], terminal: Handler): Handler {
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
