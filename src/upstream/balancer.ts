/**
 * Endpoint selection. Round robin is nginx's smooth weighted round robin: with weights 5,1,1 the
 * order is a a b a c a a, never a long run of one endpoint; equal weights are plain rotation.
 */

export interface Weighted {
  readonly weight: number;
}

export interface Balancer<E extends Weighted> {
  pick(): E;
}

export class RoundRobin<E extends Weighted> implements Balancer<E> {
  readonly #endpoints: readonly E[];
  readonly #current: Float64Array;
  readonly #total: number;
  readonly #uniform: boolean;
  #next = 0;

  constructor(endpoints: readonly E[]) {
    if (endpoints.length === 0) throw new RangeError("a balancer needs at least one endpoint");
    this.#endpoints = endpoints;
    this.#current = new Float64Array(endpoints.length);
    this.#total = endpoints.reduce((sum, e) => sum + e.weight, 0);
    this.#uniform = endpoints.every((e) => e.weight === endpoints[0]!.weight);
  }

  pick(): E {
    const eps = this.#endpoints;
    if (this.#uniform) {
      const e = eps[this.#next]!;
      this.#next = (this.#next + 1) % eps.length;
      return e;
    }
    let best = 0;
    for (let i = 0; i < eps.length; i++) {
      this.#current[i]! += eps[i]!.weight;
      if (this.#current[i]! > this.#current[best]!) best = i;
    }
    this.#current[best]! -= this.#total;
    return eps[best]!;
  }
}
