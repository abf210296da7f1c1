/**
 * `round_robin`: nginx's smooth weighted round robin over effective weights. Each pick adds
 * every usable endpoint's weight to its running score, takes the highest score (the first on a
 * tie) and subtracts the round's total from it. Weights 5,1,1 give a a b a c a a: the heavy
 * endpoint is spread out, never a run of five. Equal weights are plain rotation.
 *
 * Ineligible and excluded endpoints sit the pick out with their score frozen (nginx skips down
 * and already-tried peers the same way); a weight change (slow start) takes effect on the next
 * pick. O(endpoints) per pick, no allocation.
 */
import { type BalancerOptions, BaseBalancer, type PickContext, type Weighted } from "./types.ts";

export type RoundRobinOptions = BalancerOptions;

export class RoundRobinBalancer<E extends Weighted> extends BaseBalancer<E> {
  readonly kind = "round_robin" as const;
  readonly #current: Float64Array;

  constructor(endpoints: readonly E[], options: RoundRobinOptions = {}) {
    super(endpoints, options);
    this.#current = new Float64Array(endpoints.length);
  }

  pick(_ctx?: PickContext, exclude?: ReadonlySet<E>): E | undefined {
    const ex = exclude !== undefined && exclude.size > 0 ? exclude : undefined;
    const eps = this.endpoints;
    const states = this.states;
    const current = this.#current;
    let total = 0;
    let best = -1;
    let bestScore = 0;
    for (let i = 0; i < states.length; i++) {
      const s = states[i]!;
      const w = s.effectiveWeight;
      if (!s.eligible || !(w > 0)) continue;
      if (ex !== undefined && ex.has(eps[i]!)) continue;
      const score = current[i]! + w;
      current[i] = score;
      total += w;
      if (best < 0 || score > bestScore) {
        best = i;
        bestScore = score;
      }
    }
    if (best < 0) return undefined;
    current[best] = bestScore - total;
    return eps[best];
  }
}
