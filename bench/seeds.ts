/**
 * The seed figures the micro-benches are compared with: Rust-ServiceMesh on an Apple M1, in
 * operations per second. Each bench file prints the ones it is compared with (or says it has
 * none) so the figure sits next to the measured time in `deno task bench` output.
 */
export const SEED_OPS_PER_SEC = {
  "circuit breaker": 52e6,
  "rate limiter": 20e6,
  "router exact": 30e6,
  "router prefix": 25e6,
  "router regex": 5e6,
} as const;

export type SeedName = keyof typeof SEED_OPS_PER_SEC;

/**
 * Prints one line per seed: its ops/s and the time per iteration it means for a bench that does
 * `opsPerIteration` operations per iteration (compare with the "time/iter" column).
 */
export function printSeeds(names: SeedName[], opsPerIteration = 1): void {
  for (const name of names) {
    const ops = SEED_OPS_PER_SEC[name];
    const nsPerIter = (1e9 / ops) * opsPerIteration;
    const per = nsPerIter >= 1000
      ? `${(nsPerIter / 1000).toFixed(1)} µs`
      : `${nsPerIter.toFixed(1)} ns`;
    console.log(
      `seed (Rust-ServiceMesh, M1): ${name} ${
        ops / 1e6
      }M ops/s = ${per}/iter at ${opsPerIteration} op(s)/iter`,
    );
  }
}

/** For a bench with no Rust-ServiceMesh counterpart: says so, once. */
export function printNoSeed(what: string): void {
  console.log(`seed: none for ${what} (no Rust-ServiceMesh figure to compare with)`);
}
