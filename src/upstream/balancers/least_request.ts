/**
 * `least_request`: power of two choices (Mitzenmacher; Envoy's LEAST_REQUEST with
 * `choice_count: 2`). Draw two distinct usable endpoints at random, each with probability
 * proportional to its effective weight, and keep the one with the lower load score
 *
 *     score = inFlight / effectiveWeight        (lower wins; a tie keeps the first draw)
 *
 * This is Envoy's `active_request_bias = 1` idea (weight / active requests) expressed as a
 * comparison: an endpoint with twice the weight is expected to carry twice the requests, so at
 * steady state in-flight counts settle proportional to weight. Because the draws are already
 * weight-proportional and ties keep the first draw, an idle cluster is picked exactly in
 * proportion to weight; with equal weights it is classic P2C on in-flight counts.
 *
 * Envoy draws candidates with replacement; the second draw here skips the first, so a
 * two-endpoint cluster always compares both. O(endpoints) per pick, no allocation.
 */
import { indexAtWeight, usableWeight } from "./random.ts";
import {
  type BalancerOptions,
  BaseBalancer,
  type PickContext,
  type RandomSource,
  type Weighted,
} from "./types.ts";

export interface LeastRequestOptions extends BalancerOptions {
  /** Injectable for tests; `Math.random` by default. */
  readonly random?: RandomSource;
}

export class LeastRequestBalancer<E extends Weighted> extends BaseBalancer<E> {
  readonly kind = "least_request" as const;
  readonly #random: RandomSource;

  constructor(endpoints: readonly E[], options: LeastRequestOptions = {}) {
    super(endpoints, options);
    this.#random = options.random ?? Math.random;
  }

  pick(_ctx?: PickContext, exclude?: ReadonlySet<E>): E | undefined {
    const ex = exclude !== undefined && exclude.size > 0 ? exclude : undefined;
    const eps = this.endpoints;
    const states = this.states;
    const total = usableWeight(eps, states, ex, -1);
    if (total <= 0) return undefined;
    const a = indexAtWeight(eps, states, ex, -1, this.#random() * total);
    const sa = states[a]!;
    const rest = total - sa.effectiveWeight;
    if (rest <= 0) return eps[a];
    const b = indexAtWeight(eps, states, ex, a, this.#random() * rest);
    if (b < 0) return eps[a];
    const sb = states[b]!;
    // inFlight_b / w_b < inFlight_a / w_a, without dividing.
    return sb.inFlight * sa.effectiveWeight < sa.inFlight * sb.effectiveWeight ? eps[b] : eps[a];
  }
}
