/**
 * The one shape every load-balancing algorithm shares. Balancers are plain classes that know
 * nothing of HTTP (Pingora's `pingora-load-balancing/src/selection`): they pick among endpoint
 * objects using a per-endpoint `EndpointState` that the caller owns and updates.
 *
 * - `eligible`: health checks, outlier ejection and circuit breakers clear it; a balancer never
 *   returns an ineligible endpoint.
 * - `effectiveWeight`: the weight a balancer uses right now, normally the configured weight,
 *   lower while an endpoint warms up (slow start). `round_robin`, `least_request` and `random`
 *   read it on every pick; `<= 0` means "do not pick". `ring_hash` and `maglev` place
 *   endpoints by their configured weight when built and read only `eligible` (a consistent
 *   hash cannot follow a moving weight without remapping keys; Envoy does the same).
 * - `inFlight`: requests outstanding on the endpoint, read by `least_request`.
 *
 * States outlive a balancer: a config reload builds a new balancer over the same state objects
 * (pass them as `options.states`), so in-flight counts and health survive the swap.
 */

export interface Weighted {
  readonly weight: number;
}

export interface PickContext {
  /** The request's hash key (`ring_hash`, `maglev`); without one they pick at random. */
  readonly hashKey?: string;
}

export interface EndpointState {
  /** Requests currently outstanding on the endpoint. */
  inFlight: number;
  /** The weight to balance by now (slow start ramps it up to the configured weight). */
  effectiveWeight: number;
  /** False while the endpoint is unhealthy, ejected or draining. */
  eligible: boolean;
}

export type BalancerKind = "round_robin" | "least_request" | "random" | "ring_hash" | "maglev";

export interface Balancer<E> {
  readonly kind: BalancerKind;
  readonly endpoints: readonly E[];
  /** One state per endpoint, in the order of `endpoints`. */
  readonly states: readonly EndpointState[];
  /**
   * The endpoint for this request, never one in `exclude` (endpoints already tried by a retry)
   * nor an ineligible one; `undefined` when no endpoint qualifies. Allocation-free.
   */
  pick(ctx?: PickContext, exclude?: ReadonlySet<E>): E | undefined;
  /** The state of `endpoint`, or `undefined` when it is not one of this balancer's. */
  stateOf(endpoint: E): EndpointState | undefined;
}

/** A random source returning floats in [0, 1), like `Math.random`. */
export type RandomSource = () => number;

export interface BalancerOptions {
  /** Existing states to reuse, one per endpoint in order; fresh ones by default. */
  readonly states?: readonly EndpointState[];
}

export function createEndpointState(weight: number): EndpointState {
  return { inFlight: 0, effectiveWeight: weight, eligible: true };
}

/**
 * Validates endpoints and states eagerly (every error names the field and value) and returns
 * the states to use.
 */
export function prepareStates<E extends Weighted>(
  endpoints: readonly E[],
  options: BalancerOptions,
): readonly EndpointState[] {
  endpoints.forEach((e, i) => {
    if (!Number.isFinite(e.weight) || e.weight <= 0) {
      throw new RangeError(`endpoints[${i}].weight must be a positive number, got ${e.weight}`);
    }
  });
  if (new Set(endpoints).size !== endpoints.length) {
    throw new RangeError("endpoints must be distinct objects");
  }
  const states = options.states;
  if (states === undefined) return endpoints.map((e) => createEndpointState(e.weight));
  if (states.length !== endpoints.length) {
    throw new RangeError(
      `options.states must have one state per endpoint (${endpoints.length}), got ${states.length}`,
    );
  }
  return [...states];
}

/**
 * Base class: endpoint and state bookkeeping shared by every algorithm. The arrays are typed
 * readonly but deliberately not `Object.freeze`d: V8 reads frozen arrays' elements about 2.5x
 * slower, which is most of a pick's cost (measured with `bench/balancer_bench.ts`).
 */
export abstract class BaseBalancer<E extends Weighted> implements Balancer<E> {
  abstract readonly kind: BalancerKind;
  readonly endpoints: readonly E[];
  readonly states: readonly EndpointState[];
  readonly #index: ReadonlyMap<E, number>;

  constructor(endpoints: readonly E[], options: BalancerOptions) {
    this.states = prepareStates(endpoints, options);
    this.endpoints = [...endpoints];
    this.#index = new Map(endpoints.map((e, i) => [e, i]));
  }

  abstract pick(ctx?: PickContext, exclude?: ReadonlySet<E>): E | undefined;

  stateOf(endpoint: E): EndpointState | undefined {
    const i = this.#index.get(endpoint);
    return i === undefined ? undefined : this.states[i];
  }

  /** Whether endpoint `i` may be returned: eligible and not excluded. */
  /** Per-walk stamps of rejected endpoints (hash balancers), so each is checked once. */
  #seen: Uint32Array | undefined;
  #epoch = 0;

  /**
   * Hash balancers: walks `owners` (ring points or table slots, by endpoint index) from `start`
   * to the first usable endpoint, checking each endpoint once; undefined when none is usable.
   */
  protected walkOwners(
    owners: ArrayLike<number>,
    start: number,
    exclude: ReadonlySet<E> | undefined,
  ): E | undefined {
    const seen = this.#seen ??= new Uint32Array(this.endpoints.length);
    if (++this.#epoch >= 0xffffffff) {
      seen.fill(0);
      this.#epoch = 1;
    }
    const stamp = this.#epoch;
    const n = owners.length;
    let rejected = 0;
    for (let step = 0; step < n; step++) {
      const owner = owners[(start + step) % n]!;
      if (seen[owner] === stamp) continue;
      if (this.usable(owner, exclude)) return this.endpoints[owner];
      seen[owner] = stamp;
      if (++rejected === this.endpoints.length) return undefined;
    }
    return undefined;
  }

  protected usable(i: number, exclude: ReadonlySet<E> | undefined): boolean {
    return this.states[i]!.eligible && (exclude === undefined || !exclude.has(this.endpoints[i]!));
  }
}

/** A stable identity for an endpoint, used to place it on a hash ring or Maglev table. */
export type KeyOf<E> = (endpoint: E) => string;

/**
 * The default key for hashing balancers: `id`, else `origin` (Ferry's `Endpoint`). Never the
 * array index, which shifts when an endpoint is removed and would remap every key.
 */
export function defaultKeyOf(endpoint: unknown): string {
  if (typeof endpoint === "object" && endpoint !== null) {
    const { id, origin } = endpoint as { id?: unknown; origin?: unknown };
    if (typeof id === "string") return id;
    if (typeof origin === "string") return origin;
  }
  throw new RangeError(
    "hash balancers need a stable endpoint key: give endpoints an `id` or " +
      "`origin` string, or pass options.keyOf",
  );
}

/** Keys for every endpoint, checked distinct (two endpoints on one key would share points). */
export function endpointKeys<E>(endpoints: readonly E[], keyOf: KeyOf<E>): string[] {
  const keys = endpoints.map(keyOf);
  const seen = new Set<string>();
  keys.forEach((k, i) => {
    if (seen.has(k)) throw new RangeError(`endpoints[${i}] repeats the key ${JSON.stringify(k)}`);
    seen.add(k);
  });
  return keys;
}
