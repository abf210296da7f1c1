/**
 * Load balancers: one `Balancer<E>` interface, five algorithms, one factory. Compile a cluster's
 * balancer once per config snapshot; on reload pass the previous `states` so in-flight counts,
 * health and slow-start weights carry over.
 *
 * @example
 * ```ts
 * import { createBalancer } from "./mod.ts";
 * const endpoints = [{ origin: "http://a:80", weight: 2 }, { origin: "http://b:80", weight: 1 }];
 * const lb = createBalancer("ring_hash", endpoints);
 * const first = lb.pick({ hashKey: "user-42" });
 * const retry = first && lb.pick({ hashKey: "user-42" }, new Set([first]));
 * lb.stateOf(endpoints[0]!)!.eligible = false; // a failed health check
 * ```
 */
import { LeastRequestBalancer, type LeastRequestOptions } from "./least_request.ts";
import { MaglevBalancer, type MaglevOptions } from "./maglev.ts";
import { RandomBalancer, type RandomOptions } from "./random.ts";
import { RingHashBalancer, type RingHashOptions } from "./ring_hash.ts";
import { RoundRobinBalancer, type RoundRobinOptions } from "./round_robin.ts";
import type { Balancer, BalancerKind, Weighted } from "./types.ts";

export type {
  Balancer,
  BalancerKind,
  BalancerOptions,
  EndpointState,
  KeyOf,
  PickContext,
  RandomSource,
  Weighted,
} from "./types.ts";
export { createEndpointState } from "./types.ts";
export { LeastRequestBalancer, type LeastRequestOptions } from "./least_request.ts";
export { MaglevBalancer, type MaglevOptions } from "./maglev.ts";
export { RandomBalancer, type RandomOptions, seededRandom } from "./random.ts";
export { RingHashBalancer, type RingHashOptions } from "./ring_hash.ts";
export { RoundRobinBalancer, type RoundRobinOptions } from "./round_robin.ts";

export const BALANCER_KINDS: readonly BalancerKind[] = Object.freeze([
  "round_robin",
  "least_request",
  "random",
  "ring_hash",
  "maglev",
]);

/** Every algorithm's options; each reads only its own (`states` is shared by all). */
export type CreateBalancerOptions<E> =
  & RoundRobinOptions
  & LeastRequestOptions
  & RandomOptions
  & RingHashOptions<E>
  & MaglevOptions<E>;

/** A balancer of `kind` over `endpoints`. Throws `RangeError` on invalid input or options. */
export function createBalancer<E extends Weighted>(
  kind: BalancerKind,
  endpoints: readonly E[],
  options: CreateBalancerOptions<E> = {},
): Balancer<E> {
  switch (kind) {
    case "round_robin":
      return new RoundRobinBalancer(endpoints, options);
    case "least_request":
      return new LeastRequestBalancer(endpoints, options);
    case "random":
      return new RandomBalancer(endpoints, options);
    case "ring_hash":
      return new RingHashBalancer(endpoints, options);
    case "maglev":
      return new MaglevBalancer(endpoints, options);
    default: {
      const unknown: never = kind;
      throw new RangeError(`unknown balancer kind ${JSON.stringify(unknown)}`);
    }
  }
}
