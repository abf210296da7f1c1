/**
 * Balancer micro-benchmarks, one `pick()` per iteration, 3 and 20 endpoints:
 * `deno bench --allow-all --no-lock bench/balancer_bench.ts`.
 * Hash kinds hash a fresh key each pick (cycling through 1,024 `user-N` keys).
 */
import { BALANCER_KINDS, createBalancer, seededRandom } from "../src/upstream/balancers/mod.ts";
import { printNoSeed } from "./seeds.ts";

printNoSeed("load balancer pick()");

const KEYS = Array.from({ length: 1024 }, (_, i) => ({ hashKey: `user-${i}` }));

function endpoints(n: number) {
  return Array.from({ length: n }, (_, i) => ({
    origin: `http://10.0.0.${i + 1}:8080`,
    weight: 1 + (i % 3),
  }));
}

for (const n of [3, 20]) {
  const eps = endpoints(n);
  for (const kind of BALANCER_KINDS) {
    const lb = createBalancer(kind, eps, { random: seededRandom(n) });
    lb.states.forEach((s, i) => s.inFlight = i % 5);
    let k = 0;
    Deno.bench({
      name: `${kind} pick, ${n} endpoints`,
      group: `${n} endpoints`,
      baseline: kind === "round_robin",
      fn() {
        lb.pick(KEYS[k++ & 1023]);
      },
    });
  }
  const exclude = new Set([eps[0]!]);
  for (const kind of ["round_robin", "ring_hash"] as const) {
    const lb = createBalancer(kind, eps);
    let k = 0;
    Deno.bench({
      name: `${kind} pick with a 1-endpoint exclude set (retry), ${n} endpoints`,
      group: `${n} endpoints`,
      fn() {
        lb.pick(KEYS[k++ & 1023], exclude);
      },
    });
  }
}
