/**
 * `maglev`: Google's Maglev consistent hashing (Eisenbud et al., NSDI 2016; Envoy MAGLEV). Each
 * endpoint walks its own permutation of a prime-sized table (`offset = h0(key) % M`,
 * `skip = h1(key) % (M - 1) + 1`) and the endpoints take turns claiming their next free slot
 * until the table is full. Weights use Envoy's rule: an endpoint with weight w takes a turn in
 * an iteration only when `iteration * w >= claimed * maxWeight`, so slots come out proportional
 * to weight. A lookup is one hash and one array read: O(1), flatter than a ring, at the cost of
 * slightly more disruption when the endpoint set changes (measured in `maglev_test.ts`).
 *
 * An ineligible or excluded endpoint's slots fall through to the next usable slot of the table,
 * whose owners are spread across all endpoints in proportion to weight, and every other key
 * stays put. Without a `hashKey` a pick takes a random slot. `effectiveWeight` is not read.
 */
import { StringHasher, xxh32String } from "./hash.ts";
import {
  type BalancerOptions,
  BaseBalancer,
  defaultKeyOf,
  endpointKeys,
  type KeyOf,
  type PickContext,
  type RandomSource,
  type Weighted,
} from "./types.ts";

export interface MaglevOptions<E> extends BalancerOptions {
  /** Stable identity of an endpoint; `id`, else `origin`, by default. */
  readonly keyOf?: KeyOf<E>;
  /** A prime at least the endpoint count, ideally 100x it; 65537 by default (as Envoy). */
  readonly tableSize?: number;
  /** For picks without a hash key; `Math.random` by default. */
  readonly random?: RandomSource;
}

const MAX_TABLE_SIZE = 16_777_259; // a prime just above 2^24

export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

export class MaglevBalancer<E extends Weighted> extends BaseBalancer<E> {
  readonly kind = "maglev" as const;
  /** Slot -> endpoint index; empty when there are no endpoints. */
  readonly #table: Uint32Array;
  readonly #random: RandomSource;
  readonly #hasher = new StringHasher();

  constructor(endpoints: readonly E[], options: MaglevOptions<E> = {}) {
    super(endpoints, options);
    const m = options.tableSize ?? 65537;
    if (!isPrime(m) || m > MAX_TABLE_SIZE) {
      throw new RangeError(`options.tableSize must be a prime <= ${MAX_TABLE_SIZE}, got ${m}`);
    }
    if (m < endpoints.length) {
      throw new RangeError(
        `options.tableSize (${m}) must be at least the endpoint count (${endpoints.length})`,
      );
    }
    this.#random = options.random ?? Math.random;
    this.#table = endpoints.length === 0 ? new Uint32Array(0) : buildTable(
      endpointKeys(endpoints, options.keyOf ?? defaultKeyOf),
      endpoints.map((e) => e.weight),
      m,
    );
  }

  /** Slots owned by each endpoint, in `endpoints` order. */
  slotsPerEndpoint(): number[] {
    const counts = new Array<number>(this.endpoints.length).fill(0);
    for (const o of this.#table) counts[o]!++;
    return counts;
  }

  pick(ctx?: PickContext, exclude?: ReadonlySet<E>): E | undefined {
    const table = this.#table;
    const m = table.length;
    if (m === 0) return undefined;
    const key = ctx?.hashKey;
    const slot = key === undefined ? Math.floor(this.#random() * m) : this.#hasher.hash(key) % m;
    const ex = exclude !== undefined && exclude.size > 0 ? exclude : undefined;
    const owner = table[slot]!;
    if (this.usable(owner, ex)) return this.endpoints[owner];
    return this.walkOwners(this.#table, slot, ex);
  }
}

/** The Maglev lookup table for endpoints with these keys and weights (Envoy's weighted fill). */
export function buildTable(keys: readonly string[], weights: readonly number[], m: number) {
  const n = keys.length;
  // Take turns in key order, so the table does not depend on the order endpoints are listed.
  const order = keys.map((_, i) => i).sort((x, y) => (keys[x]! < keys[y]! ? -1 : 1));
  const next = new Float64Array(n);
  const skip = new Float64Array(n);
  const claimed = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    next[i] = xxh32String(keys[i]!, 0) % m;
    skip[i] = (xxh32String(keys[i]!, 1) % (m - 1)) + 1;
  }
  const maxWeight = weights.reduce((a, b) => Math.max(a, b), 0);
  const table = new Uint32Array(m);
  const filled = new Uint8Array(m);
  let count = 0;
  for (let iteration = 1; count < m; iteration++) {
    for (let o = 0; o < n && count < m; o++) {
      const i = order[o]!;
      if (iteration * weights[i]! < claimed[i]! * maxWeight) continue;
      let c = next[i]!;
      while (filled[c] === 1) c = (c + skip[i]!) % m;
      table[c] = i;
      filled[c] = 1;
      next[i] = (c + skip[i]!) % m;
      claimed[i]!++;
      count++;
    }
  }
  return table;
}
