/**
 * `ring_hash`: consistent hashing on a ring of virtual nodes (Karger et al.; Envoy RING_HASH,
 * Pingora's Ketama). Each endpoint owns points `xxh32("<key>-<j>")` for j = 0..n-1 with
 * n = round(weight * pointsPerWeight); a request key hashes onto the ring and takes the first
 * point at or after it.
 *
 * Ring size: `pointsPerWeight` is 160 (Ketama's count) times the smallest power of two that
 * makes the ring at least `minRingSize` points (halved while it exceeds `maxRingSize`). Since an
 * endpoint's points are a prefix of the same sequence at every scale and the scale only moves at
 * powers of two, removing one of N endpoints remaps only the keys that endpoint owned (about
 * 1/N), unlike scaling to an exact size, which would reshuffle points among the survivors.
 *
 * An ineligible or excluded endpoint's keys walk clockwise to the next usable point, so they
 * spread over the others while every other key stays where it was. Without a `hashKey` a pick
 * lands on a random point. `effectiveWeight` is not read (see `types.ts`). Lookup is a binary
 * search over a `Uint32Array`, no allocation.
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

export interface RingHashOptions<E> extends BalancerOptions {
  /** Stable identity of an endpoint on the ring; `id`, else `origin`, by default. */
  readonly keyOf?: KeyOf<E>;
  /** The ring has at least this many points (default 1024, as Envoy). */
  readonly minRingSize?: number;
  /** ... and at most this many, unless every endpoint already has a single point (2^20). */
  readonly maxRingSize?: number;
  /** For picks without a hash key; `Math.random` by default. */
  readonly random?: RandomSource;
}

const BASE_POINTS_PER_WEIGHT = 160;
/** Points are packed as `hash * 2^21 + index` into a float64 to sort them. */
const MAX_POINTS = 1 << 21;

function checkSize(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1 || value > MAX_POINTS) {
    throw new RangeError(`options.${name} must be an integer in [1, ${MAX_POINTS}], got ${value}`);
  }
}

export class RingHashBalancer<E extends Weighted> extends BaseBalancer<E> {
  readonly kind = "ring_hash" as const;
  /** Point hashes, ascending. */
  readonly #hashes: Uint32Array;
  /** The endpoint index owning each point. */
  readonly #owners: Uint32Array;
  readonly #random: RandomSource;
  readonly #hasher = new StringHasher();

  constructor(endpoints: readonly E[], options: RingHashOptions<E> = {}) {
    super(endpoints, options);
    const minRingSize = options.minRingSize ?? 1024;
    const maxRingSize = options.maxRingSize ?? 1 << 20;
    checkSize("minRingSize", minRingSize);
    checkSize("maxRingSize", maxRingSize);
    if (minRingSize > maxRingSize) {
      throw new RangeError(
        `options.minRingSize (${minRingSize}) exceeds options.maxRingSize (${maxRingSize})`,
      );
    }
    if (endpoints.length > MAX_POINTS) {
      throw new RangeError(`ring_hash supports at most ${MAX_POINTS} endpoints`);
    }
    this.#random = options.random ?? Math.random;
    const keys = endpointKeys(endpoints, options.keyOf ?? defaultKeyOf);
    const counts = pointCounts(endpoints.map((e) => e.weight), minRingSize, maxRingSize);
    const total = counts.reduce((a, b) => a + b, 0);
    // Build in key order so the ring (and tie-breaks between equal hashes) ignores list order.
    const order = endpoints.map((_, i) => i).sort((x, y) => (keys[x]! < keys[y]! ? -1 : 1));
    const packed = new Float64Array(total);
    const pointOwner = new Uint32Array(total);
    let p = 0;
    for (const i of order) {
      for (let j = 0; j < counts[i]!; j++) {
        packed[p] = xxh32String(`${keys[i]}-${j}`) * MAX_POINTS + p;
        pointOwner[p] = i;
        p++;
      }
    }
    packed.sort();
    this.#hashes = new Uint32Array(total);
    this.#owners = new Uint32Array(total);
    for (let k = 0; k < total; k++) {
      const v = packed[k]!;
      const idx = v % MAX_POINTS;
      this.#hashes[k] = (v - idx) / MAX_POINTS;
      this.#owners[k] = pointOwner[idx]!;
    }
  }

  /** Points on the ring. */
  get size(): number {
    return this.#hashes.length;
  }

  /** Points owned by each endpoint, in `endpoints` order. */
  pointsPerEndpoint(): number[] {
    const counts = new Array<number>(this.endpoints.length).fill(0);
    for (const o of this.#owners) counts[o]!++;
    return counts;
  }

  pick(ctx?: PickContext, exclude?: ReadonlySet<E>): E | undefined {
    const hashes = this.#hashes;
    const n = hashes.length;
    if (n === 0) return undefined;
    const key = ctx?.hashKey;
    const h = key === undefined ? Math.floor(this.#random() * 4294967296) : this.#hasher.hash(key);
    // First point with hash >= h, wrapping to 0.
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (hashes[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    const pos = lo === n ? 0 : lo;
    const ex = exclude !== undefined && exclude.size > 0 ? exclude : undefined;
    const owner = this.#owners[pos]!;
    if (this.usable(owner, ex)) return this.endpoints[owner];
    return this.walkOwners(this.#owners, pos, ex);
  }
}

/**
 * Points per endpoint: round(weight * 160 * 2^k), at least 1, with k the smallest power that
 * reaches `min` total points, lowered while the total exceeds `max`.
 */
export function pointCounts(weights: readonly number[], min: number, max: number): number[] {
  if (weights.length === 0) return [];
  const countsAt = (scale: number) => weights.map((w) => Math.max(1, Math.round(w * scale)));
  const sum = (c: number[]) => c.reduce((a, b) => a + b, 0);
  let scale = BASE_POINTS_PER_WEIGHT;
  let counts = countsAt(scale);
  while (sum(counts) < min) counts = countsAt(scale *= 2);
  while (sum(counts) > max && counts.some((c) => c > 1)) counts = countsAt(scale /= 2);
  return counts;
}
