/**
 * `random`: weighted random choice, P(endpoint) = effectiveWeight / sum of usable weights.
 * Stateless between picks, so many proxies (or workers) sharing a cluster do not fall into
 * lock-step as round robin instances can. The weighted walk helpers here are shared with
 * `least_request`.
 */
import {
  type BalancerOptions,
  BaseBalancer,
  type EndpointState,
  type PickContext,
  type RandomSource,
  type Weighted,
} from "./types.ts";

export interface RandomOptions extends BalancerOptions {
  /** Injectable for tests; `Math.random` by default. */
  readonly random?: RandomSource;
}

/** Mulberry32: a small, fast, seeded PRNG for tests and benchmarks. Floats in [0, 1). */
export function seededRandom(seed: number): RandomSource {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Sum of the effective weights of usable endpoints other than `skip`. */
export function usableWeight<E>(
  endpoints: readonly E[],
  states: readonly EndpointState[],
  exclude: ReadonlySet<E> | undefined,
  skip: number,
): number {
  let total = 0;
  for (let i = 0; i < states.length; i++) {
    const s = states[i]!;
    const w = s.effectiveWeight;
    if (i === skip || !s.eligible || !(w > 0)) continue;
    if (exclude !== undefined && exclude.has(endpoints[i]!)) continue;
    total += w;
  }
  return total;
}

/**
 * The usable endpoint (other than `skip`) whose cumulative weight first passes `target`;
 * `-1` when none is usable. A target past the end (float rounding) lands on the last one.
 */
export function indexAtWeight<E>(
  endpoints: readonly E[],
  states: readonly EndpointState[],
  exclude: ReadonlySet<E> | undefined,
  skip: number,
  target: number,
): number {
  let last = -1;
  for (let i = 0; i < states.length; i++) {
    const s = states[i]!;
    const w = s.effectiveWeight;
    if (i === skip || !s.eligible || !(w > 0)) continue;
    if (exclude !== undefined && exclude.has(endpoints[i]!)) continue;
    target -= w;
    last = i;
    if (target < 0) return i;
  }
  return last;
}

export class RandomBalancer<E extends Weighted> extends BaseBalancer<E> {
  readonly kind = "random" as const;
  readonly #random: RandomSource;

  constructor(endpoints: readonly E[], options: RandomOptions = {}) {
    super(endpoints, options);
    this.#random = options.random ?? Math.random;
  }

  pick(_ctx?: PickContext, exclude?: ReadonlySet<E>): E | undefined {
    const ex = exclude !== undefined && exclude.size > 0 ? exclude : undefined;
    const eps = this.endpoints;
    const total = usableWeight(eps, this.states, ex, -1);
    if (total <= 0) return undefined;
    return eps[indexAtWeight(eps, this.states, ex, -1, this.#random() * total)];
  }
}
