import assert from "node:assert/strict";
import fc from "fast-check";
import {
  BALANCER_KINDS,
  type BalancerKind,
  createBalancer,
  createEndpointState,
  seededRandom,
} from "./mod.ts";
import { endpoints } from "./testing.ts";

/** Kinds that read `effectiveWeight` (<= 0: "do not pick"); hash kinds read only `eligible`. */
const READS_WEIGHT: ReadonlySet<BalancerKind> = new Set(["round_robin", "least_request", "random"]);

Deno.test("createBalancer builds every kind behind the one Balancer interface", () => {
  const eps = endpoints(1, 2, 3);
  for (const kind of BALANCER_KINDS) {
    const lb = createBalancer(kind, eps, { random: seededRandom(1) });
    assert.equal(lb.kind, kind);
    assert.deepEqual(lb.endpoints, eps);
    assert.equal(lb.states.length, 3);
    assert.ok(eps.includes(lb.pick({ hashKey: "k" })!));
    assert.equal(lb.stateOf(eps[1]!), lb.states[1]);
    assert.equal(lb.stateOf({ id: "stranger", weight: 1 }), undefined);
  }
  assert.throws(() => createBalancer("fastest" as BalancerKind, eps), /unknown balancer kind/);
});

Deno.test("createBalancer reuses the caller's states, so a rebuilt balancer keeps health", () => {
  const eps = endpoints(1, 1);
  const old = createBalancer("round_robin", eps);
  old.states[0]!.eligible = false;
  old.states[1]!.inFlight = 3;
  for (const kind of BALANCER_KINDS) {
    const lb = createBalancer(kind, eps, { states: old.states });
    assert.equal(lb.states[1], old.states[1]);
    for (let i = 0; i < 50; i++) assert.equal(lb.pick({ hashKey: `k${i}` }), eps[1]);
  }
});

Deno.test("createBalancer rejects bad weights and mismatched states, naming the field", () => {
  for (const kind of BALANCER_KINDS) {
    assert.throws(() => createBalancer(kind, endpoints(1, 0)), /endpoints\[1\]\.weight/);
    assert.throws(() => createBalancer(kind, endpoints(1, NaN)), /endpoints\[1\]\.weight/);
    assert.throws(
      () => createBalancer(kind, endpoints(1, 1), { states: [createEndpointState(1)] }),
      /options\.states/,
    );
    const e = endpoints(1)[0]!;
    assert.throws(() => createBalancer(kind, [e, e]), /distinct/);
  }
});

Deno.test("pick never returns an excluded or unusable endpoint, and finds one if any", () => {
  const endpointArb = fc.record({
    weight: fc.integer({ min: 1, max: 20 }),
    effectiveWeight: fc.oneof(fc.constant(0), fc.double({ min: 0.01, max: 20, noNaN: true })),
    eligible: fc.boolean(),
    excluded: fc.boolean(),
    inFlight: fc.nat(50),
  });
  fc.assert(
    fc.property(
      fc.constantFrom(...BALANCER_KINDS),
      fc.array(endpointArb, { minLength: 1, maxLength: 12 }),
      fc.option(fc.string({ maxLength: 20 }), { nil: undefined }),
      fc.integer(),
      fc.integer({ min: 1, max: 20 }),
      (kind, specs, hashKey, seed, picks) => {
        const eps = endpoints(...specs.map((s) => s.weight));
        const lb = createBalancer(kind, eps, { random: seededRandom(seed), tableSize: 251 });
        specs.forEach((s, i) => {
          const state = lb.states[i]!;
          state.effectiveWeight = s.effectiveWeight;
          state.eligible = s.eligible;
          state.inFlight = s.inFlight;
        });
        const exclude = new Set(eps.filter((_, i) => specs[i]!.excluded));
        const usable = new Set(
          eps.filter((_, i) => {
            const s = specs[i]!;
            return s.eligible && !s.excluded && (!READS_WEIGHT.has(kind) || s.effectiveWeight > 0);
          }),
        );
        for (let n = 0; n < picks; n++) {
          const got = lb.pick(hashKey === undefined ? undefined : { hashKey }, exclude);
          if (usable.size === 0) assert.equal(got, undefined);
          else assert.ok(got !== undefined && usable.has(got), `${kind} picked ${got?.id}`);
        }
      },
    ),
    { numRuns: 1000 },
  );
});
