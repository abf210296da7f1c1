/** Helpers for the balancer tests and benchmarks: named endpoints and pick counting. */
import type { Balancer, PickContext } from "./types.ts";

export interface TestEndpoint {
  readonly id: string;
  readonly weight: number;
}

/** Endpoints "a", "b", ... (then "e26", ...) with these weights. */
export function endpoints(...weights: number[]): TestEndpoint[] {
  return weights.map((weight, i) => ({
    id: i < 26 ? String.fromCharCode(97 + i) : `e${i}`,
    weight,
  }));
}

/** How many of `picks` picks landed on each endpoint id (`undefined` counted as "none"). */
export function countPicks<E extends { readonly id: string }>(
  lb: Balancer<E>,
  picks: number,
  ctx?: (n: number) => PickContext,
): Map<string, number> {
  const counts = new Map<string, number>();
  for (let n = 0; n < picks; n++) {
    const id = lb.pick(ctx?.(n))?.id ?? "none";
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

/** The endpoint id each of `keys` maps to. */
export function mapKeys<E extends { readonly id: string }>(
  lb: Balancer<E>,
  keys: readonly string[],
): string[] {
  return keys.map((hashKey) => lb.pick({ hashKey })?.id ?? "none");
}

export function share(counts: Map<string, number>, id: string, total: number): number {
  return (counts.get(id) ?? 0) / total;
}
