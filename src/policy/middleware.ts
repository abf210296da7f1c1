/**
 * Route policy layers built from config: rate limiting and fault injection (authorization is in
 * authz.ts). Each is a named factory returning a `PolicyLayer`, which reads only `CallFacts` and
 * so runs the same for HTTP requests and gRPC calls; src/pipeline/route_chain.ts composes them
 * per route, in the order docs/design.md draws.
 */
import type { RateLimitConfig, RouteConfig } from "../config/schema.ts";
import type { CallFacts, PolicyLayer } from "../pipeline/types.ts";
import { ProxyError } from "../pipeline/errors.ts";
import { KeyedTokenBuckets, type RateDecision, TokenBucketStore } from "./token_bucket.ts";
import type { SharedRegion } from "./shared_memory.ts";
import type { SharedLimiterDeps } from "./redis_limiter.ts";
import { OptionalModule } from "../pipeline/optional_module.ts";

/** The Redis client (ioredis, ~9 MiB resident) and the shared limiter, loaded for `redis` stores. */
export const redisPart = new OptionalModule("redis", () => import("./redis_limiter.ts"));

/** A compiled limiter: one scope, its buckets, and how a request maps to its key. */
export interface Limiter {
  readonly name: string;
  readonly scope: RateLimitConfig["scope"];
  /** The policy, as sent in RateLimit-Policy: quota = burst, window = time to refill it. */
  readonly policyHeader: string;
  /** A promise only when a shared limiter must ask its store (src/policy/redis_limiter.ts). */
  take(call: CallFacts, route: string, at: number): RateDecision | Promise<RateDecision>;
  /** Releases what the limiter holds (a Redis connection); called when a reload drops it. */
  close?(): void;
}

/** Builds every named limiter once per snapshot; routes referencing a name share its buckets. */
export function compileLimiters(
  configs: readonly RateLimitConfig[],
  /** Needed by limiters with a `redis` store. */
  shared?: (c: RateLimitConfig) => SharedLimiterDeps,
  /** Process-wide memory for the buckets (server.workers > 1), by size; else the isolate's. */
  memory?: (bytes: number) => SharedRegion | undefined,
): Map<string, Limiter> {
  const out = new Map<string, Limiter>();
  for (const c of configs) {
    const windowS = Math.max(1, Math.ceil(c.burst / c.rate));
    const policyHeader = `"${c.name}";q=${c.burst};w=${windowS}`;
    const bucketCfg = { rate: c.rate, burst: c.burst };
    let local: (key: string, at: number) => RateDecision;
    const inRegion = (bytes: number) => {
      const region = memory?.(bytes);
      return region ? { buffer: region.buffer, byteOffset: region.byteOffset } : {};
    };
    if (c.scope === "global") {
      const store = new TokenBucketStore(1, bucketCfg, inRegion(TokenBucketStore.byteLength(1)));
      local = (_key, at) => store.take(0, 1, at);
    } else {
      const buckets = new KeyedTokenBuckets(
        { ...bucketCfg, maxKeys: c.max_keys },
        inRegion(KeyedTokenBuckets.byteLength(c.max_keys)),
      );
      local = (key, at) => buckets.take(key, 1, at);
    }
    let keyed: (key: string, at: number) => RateDecision | Promise<RateDecision> = local;
    let close: (() => void) | undefined;
    if (c.redis) {
      const deps = shared?.(c) ?? { readTextFile: Deno.readTextFileSync };
      const { RedisLeaseBackend, SharedRateLimit } = redisPart.get();
      const backend = new RedisLeaseBackend(c.name, c.redis, deps);
      const limit = new SharedRateLimit({ config: c, store: c.redis, backend, local });
      keyed = (key, at) => limit.take(key, at);
      close = () => limit.close();
    }
    let take: Limiter["take"];
    if (c.scope === "global") take = (_call, _route, at) => keyed("", at);
    else if (c.scope === "client_ip") take = (call, _route, at) => keyed(call.clientIp, at);
    else if (c.scope === "route") take = (_call, route, at) => keyed(route, at);
    else {
      const header = c.header!.toLowerCase();
      // Requests without the header share one bucket, so leaving it out is no way around it.
      take = (call, _route, at) => keyed(call.header(header) ?? "", at);
    }
    out.set(
      c.name,
      Object.freeze({
        name: c.name,
        scope: c.scope,
        policyHeader,
        take,
        ...(close ? { close } : {}),
      }),
    );
  }
  return out;
}

/**
 * 429 with Retry-After and draft-ietf-httpapi-ratelimit-headers fields when a bucket is empty
 * (RESOURCE_EXHAUSTED on gRPC, from the same error table row).
 */
export function rateLimit(
  limiters: readonly Limiter[],
  /** Called with the same index as the limiter that refused (metrics). */
  onLimited?: readonly (() => void)[],
): PolicyLayer {
  function check(d: RateDecision, i: number): void {
    if (d.allowed) return;
    const l = limiters[i]!;
    onLimited?.[i]?.();
    const retryS = Math.max(1, Math.ceil(d.retryAfterMs / 1000));
    throw new ProxyError("rate_limited", `rate limit ${l.name} (per ${l.scope}) exceeded`, {
      headers: {
        "retry-after": String(retryS),
        "ratelimit-policy": l.policyHeader,
        "ratelimit": `"${l.name}";r=${d.remaining};t=${Math.ceil(d.resetMs / 1000)}`,
      },
    });
  }
  /** Checks limiters from `from` on; a shared limiter that must wait continues asynchronously. */
  function from(call: CallFacts, route: string, start: number): void | Promise<void> {
    const at = Date.now();
    let i = start;
    for (; i < limiters.length; i++) {
      const d = limiters[i]!.take(call, route, at);
      if (d instanceof Promise) {
        const n = i;
        return d.then((decided) => {
          check(decided, n);
          return from(call, route, n + 1);
        });
      }
      check(d, i);
    }
  }
  return { name: "rate_limit", admit: (call, where) => from(call, where.route, 0) };
}

type Fault = NonNullable<RouteConfig["fault"]>;

/**
 * Delays and/or aborts a share of calls (Envoy's fault filter): delay first, then abort with the
 * configured HTTP status (and gRPC status, for gRPC calls).
 */
export function faultInjection(f: Fault, random: () => number = Math.random): PolicyLayer {
  const abort = () => {
    if (f.abort && random() * 100 < f.abort.percent) {
      throw new ProxyError("fault_injected", `fault injection aborted the request`, {
        status: f.abort.status,
        ...(f.abort.grpc_status !== undefined ? { grpcStatus: f.abort.grpc_status } : {}),
      });
    }
  };
  return {
    name: "fault",
    admit(): void | Promise<void> {
      if (f.delay && random() * 100 < f.delay.percent) {
        return new Promise<void>((r) => setTimeout(r, f.delay!.duration)).then(abort);
      }
      return abort();
    },
  };
}
