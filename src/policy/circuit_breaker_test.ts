import assert from "node:assert/strict";
import fc from "fast-check";
import {
  type BreakerConfig,
  type BreakerState,
  BreakerStore,
  CLOSED,
  HALF_OPEN,
  OPEN,
  resolveBreakerConfig,
} from "./circuit_breaker.ts";

type Transition = [slot: number, from: BreakerState, to: BreakerState, at: number];

function harness(config: BreakerConfig = {}, slots = 2) {
  const clock = { t: 0 };
  const transitions: Transition[] = [];
  const store = new BreakerStore(slots, config, {
    now: () => clock.t,
    onTransition: (slot, from, to, at) => transitions.push([slot, from, to, at]),
  });
  return { clock, transitions, store };
}

Deno.test("defaults match Rust-ServiceMesh: 5 failures, 2 successes, 30 s, 1 probe", () => {
  assert.deepEqual(resolveBreakerConfig(), {
    mode: "consecutive",
    failureThreshold: 5,
    successThreshold: 2,
    openTimeoutMs: 30_000,
    maxHalfOpenRequests: 1,
    failureRatePercent: 50,
    minimumRequests: 20,
    windowMs: 10_000,
    windowBuckets: 10,
  });
});

Deno.test("a breaker opens on the 5th consecutive failure, not the 4th", () => {
  const { store, transitions, clock } = harness();
  for (let i = 0; i < 4; i++) store.onFailure(0);
  assert.equal(store.state(0), CLOSED);
  assert.equal(store.tryAcquire(0), true);
  clock.t = 7;
  store.onFailure(0);
  assert.equal(store.state(0), OPEN);
  assert.deepEqual(transitions, [[0, CLOSED, OPEN, 7]]);
  assert.equal(store.state(1), CLOSED, "other slots are untouched");
});

Deno.test("a success resets the run of consecutive failures", () => {
  const { store } = harness();
  for (let i = 0; i < 4; i++) store.onFailure(0);
  store.onSuccess(0);
  for (let i = 0; i < 4; i++) store.onFailure(0);
  assert.equal(store.state(0), CLOSED);
  store.onFailure(0);
  assert.equal(store.state(0), OPEN);
});

Deno.test("an open breaker rejects until the timeout, then lets one probe through", () => {
  const { store, transitions, clock } = harness({ failureThreshold: 1 });
  clock.t = 1_000;
  store.onFailure(0);
  clock.t = 30_999;
  assert.equal(store.tryAcquire(0), false);
  assert.equal(store.retryAfterMs(0), 1);
  assert.equal(store.state(0), OPEN);
  clock.t = 31_000;
  assert.equal(store.tryAcquire(0), true);
  assert.equal(store.state(0), HALF_OPEN);
  assert.equal(store.tryAcquire(0), false, "the single probe is taken");
  assert.deepEqual(transitions, [[0, CLOSED, OPEN, 1_000], [0, OPEN, HALF_OPEN, 31_000]]);
});

Deno.test("half-open closes after 2 probe successes and reopens on a probe failure", () => {
  const { store, transitions, clock } = harness({ failureThreshold: 1, openTimeoutMs: 10 });
  store.onFailure(0);
  clock.t = 10;
  assert.ok(store.tryAcquire(0));
  store.onSuccess(0);
  assert.equal(store.state(0), HALF_OPEN);
  assert.ok(store.tryAcquire(0));
  store.onSuccess(0);
  assert.equal(store.state(0), CLOSED);
  store.onFailure(0);
  clock.t = 25;
  assert.ok(store.tryAcquire(0));
  clock.t = 26;
  store.onFailure(0);
  assert.equal(store.state(0), OPEN);
  assert.equal(store.retryAfterMs(0), 10);
  assert.deepEqual(transitions.map(([, f, t, at]) => [f, t, at]), [
    [CLOSED, OPEN, 0],
    [OPEN, HALF_OPEN, 10],
    [HALF_OPEN, CLOSED, 10],
    [CLOSED, OPEN, 10],
    [OPEN, HALF_OPEN, 25],
    [HALF_OPEN, OPEN, 26],
  ]);
});

Deno.test("half-open admits at most maxHalfOpenRequests probes at once", () => {
  const { store, clock } = harness({
    failureThreshold: 1,
    openTimeoutMs: 0,
    maxHalfOpenRequests: 3,
    successThreshold: 5,
  });
  store.onFailure(0);
  clock.t = 1;
  const permits = [store.acquire(0), store.acquire(0), store.acquire(0)];
  assert.ok(permits.every((p) => p > 0));
  assert.equal(store.acquire(0), 0);
  store.onSuccess(0, permits[0]);
  assert.ok(store.acquire(0) > 0, "a finished probe frees its place");
  assert.equal(store.acquire(0), 0);
  store.release(0, permits[1]!);
  assert.equal(store.snapshot(0).probesInFlight, 2);
  assert.ok(store.acquire(0) > 0, "a released probe frees its place");
});

Deno.test("a late result from a request admitted while closed is not taken for a probe's", () => {
  const { store, clock } = harness({ failureThreshold: 1, openTimeoutMs: 5 });
  const slow = store.acquire(0);
  store.onFailure(0, store.acquire(0));
  assert.equal(store.state(0), OPEN);
  clock.t = 5;
  const probe = store.acquire(0);
  assert.ok(probe > 0);
  store.onFailure(0, slow); // stale: ignored
  assert.equal(store.state(0), HALF_OPEN);
  assert.equal(store.acquire(0), 0, "the probe is still in flight");
  store.onSuccess(0, probe);
  assert.equal(store.snapshot(0).halfOpenSuccesses, 1);
});

Deno.test("rate mode opens at the failure percentage once the window has minimum volume", () => {
  const { store, clock } = harness({
    mode: "rate",
    failureRatePercent: 50,
    minimumRequests: 10,
    windowMs: 1_000,
    windowBuckets: 10,
  });
  for (let i = 0; i < 9; i++) store.onFailure(0);
  assert.equal(store.state(0), CLOSED, "9 failures are below the minimum volume of 10");
  clock.t = 50;
  store.onFailure(0);
  assert.equal(store.state(0), OPEN);

  for (let i = 0; i < 6; i++) store.onSuccess(1);
  for (let i = 0; i < 5; i++) store.onFailure(1);
  assert.equal(store.state(1), CLOSED, "5 of 11 is below 50%");
  store.onFailure(1);
  assert.equal(store.state(1), OPEN, "6 of 12 reaches 50%");
});

Deno.test("rate mode forgets results older than the window", () => {
  const { store, clock } = harness({
    mode: "rate",
    minimumRequests: 4,
    windowMs: 1_000,
    windowBuckets: 10,
  });
  for (let i = 0; i < 3; i++) store.onFailure(0);
  clock.t = 1_000; // the first bucket has slid out
  store.onFailure(0);
  assert.equal(store.state(0), CLOSED);
  assert.equal(store.snapshot(0).windowRequests, 1);
  clock.t = 1_950;
  for (let i = 0; i < 3; i++) store.onFailure(0);
  assert.equal(store.state(0), OPEN);
});

Deno.test("config is validated eagerly and each error names its field", () => {
  const cases: [BreakerConfig, string][] = [
    [{ failureThreshold: 0 }, "failureThreshold"],
    [{ successThreshold: 1.5 }, "successThreshold"],
    [{ openTimeoutMs: -1 }, "openTimeoutMs"],
    [{ openTimeoutMs: Infinity }, "openTimeoutMs"],
    [{ maxHalfOpenRequests: 0 }, "maxHalfOpenRequests"],
    [{ failureRatePercent: 0 }, "failureRatePercent"],
    [{ failureRatePercent: 101 }, "failureRatePercent"],
    [{ minimumRequests: 0 }, "minimumRequests"],
    [{ windowMs: 0 }, "windowMs"],
    [{ windowBuckets: 0 }, "windowBuckets"],
    [{ mode: "sliding" as "rate" }, "mode"],
  ];
  for (const [config, field] of cases) {
    assert.throws(() => new BreakerStore(1, config), (e: unknown) => {
      return e instanceof RangeError && e.message.includes(`'${field}`);
    });
  }
  assert.throws(() => new BreakerStore(-1), /'slots'/);
  assert.throws(() => new BreakerStore(2, {}, { buffer: new ArrayBuffer(8) }), /'buffer'/);
  assert.throws(() => new BreakerStore(2).state(2), RangeError);
  assert.throws(() => new BreakerStore(2).tryAcquire(2.5), RangeError);
});

Deno.test("two stores over one SharedArrayBuffer share state; the mover reports it", () => {
  const config: BreakerConfig = { failureThreshold: 2, mode: "rate", minimumRequests: 2 };
  const sab = new SharedArrayBuffer(BreakerStore.byteLength(8, config));
  const seenA: Transition[] = [];
  const seenB: Transition[] = [];
  const a = new BreakerStore(8, config, {
    buffer: sab,
    now: () => 0,
    onTransition: (...t) => seenA.push(t),
  });
  const b = new BreakerStore(8, config, {
    buffer: sab,
    now: () => 0,
    onTransition: (...t) => seenB.push(t),
  });
  a.onFailure(5);
  b.onFailure(5);
  assert.equal(a.state(5), OPEN);
  assert.equal(a.tryAcquire(5), false);
  assert.deepEqual([seenA.length, seenB.length], [0, 1]);
});

Deno.test("a slot view forwards to its store", () => {
  const { store } = harness({ failureThreshold: 1 });
  const br = store.breaker(1);
  assert.equal(br.tryAcquire(), true);
  br.onFailure();
  assert.equal(br.state, OPEN);
  assert.equal(store.state(1), OPEN);
  assert.throws(() => store.breaker(2), RangeError);
});

// ---- Property-based: the store against a plain reference model ----------------------------

interface Model {
  state: BreakerState;
  epoch: number;
  fails: number;
  succ: number;
  probes: number;
  openedAt: number;
}

type Cmd =
  | { k: "acquire" }
  | { k: "result"; ok: boolean; pick: number; withPermit: boolean }
  | { k: "release"; pick: number }
  | { k: "tick"; ms: number };

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  fc.constant<Cmd>({ k: "acquire" }),
  fc.record({
    k: fc.constant("result" as const),
    ok: fc.boolean(),
    pick: fc.nat(),
    withPermit: fc.boolean(),
  }),
  fc.record({ k: fc.constant("release" as const), pick: fc.nat() }),
  fc.record({ k: fc.constant("tick" as const), ms: fc.integer({ min: 0, max: 60 }) }),
);

Deno.test("property: consecutive mode follows the reference state machine", () => {
  fc.assert(
    fc.property(
      fc.record({
        failureThreshold: fc.integer({ min: 1, max: 6 }),
        successThreshold: fc.integer({ min: 1, max: 3 }),
        maxHalfOpenRequests: fc.integer({ min: 1, max: 3 }),
        openTimeoutMs: fc.integer({ min: 0, max: 100 }),
      }),
      fc.boolean(),
      fc.array(cmdArb, { maxLength: 300, size: "max" }),
      (config, alwaysPermit, cmds) => {
        const { store, clock, transitions } = harness(config, 1);
        const m: Model = { state: CLOSED, epoch: 0, fails: 0, succ: 0, probes: 0, openedAt: 0 };
        const expected: Transition[] = [];
        const move = (to: BreakerState) => {
          expected.push([0, m.state, to, clock.t]);
          m.state = to;
          m.epoch++;
        };
        const open = () => {
          // "Opens exactly when the threshold is reached": checked as it happens.
          if (m.state === CLOSED) assert.equal(m.fails + 1, config.failureThreshold);
          m.openedAt = clock.t;
          m.fails = m.succ = m.probes = 0;
          move(OPEN);
        };
        const outstanding: { permit: number; epoch: number }[] = [];
        for (const cmd of cmds) {
          if (cmd.k === "tick") {
            clock.t += cmd.ms;
          } else if (cmd.k === "acquire") {
            const wasOpen = m.state === OPEN;
            if (m.state === OPEN && clock.t - m.openedAt >= config.openTimeoutMs) {
              move(HALF_OPEN);
            }
            let want = 0;
            if (m.state === CLOSED) want = m.epoch + 1;
            else if (m.state === HALF_OPEN && m.probes < config.maxHalfOpenRequests) {
              m.probes++;
              want = m.epoch + 1;
            }
            const got = store.acquire(0);
            assert.equal(got, want);
            if (wasOpen && clock.t - m.openedAt < config.openTimeoutMs) assert.equal(got, 0);
            if (got) outstanding.push({ permit: got, epoch: m.epoch });
          } else if (outstanding.length > 0) {
            const [o] = outstanding.splice(cmd.pick % outstanding.length, 1);
            if (cmd.k === "release") {
              store.release(0, o!.permit);
              if (m.state === HALF_OPEN && o!.epoch === m.epoch && m.probes > 0) m.probes--;
            } else {
              const permit = alwaysPermit || cmd.withPermit ? o!.permit : 0;
              if (cmd.ok) store.onSuccess(0, permit);
              else store.onFailure(0, permit);
              if (permit === 0 || o!.epoch === m.epoch) {
                if (m.state === CLOSED) {
                  if (cmd.ok) m.fails = 0;
                  else if (m.fails + 1 >= config.failureThreshold) open();
                  else m.fails++;
                } else if (m.state === HALF_OPEN && (permit !== 0 || m.probes > 0)) {
                  m.probes--;
                  if (!cmd.ok) open();
                  else if (++m.succ >= config.successThreshold) {
                    m.fails = 0;
                    move(CLOSED);
                  }
                }
              }
            }
          }
          const snap = store.snapshot(0);
          assert.equal(snap.state, m.state);
          assert.equal(snap.consecutiveFailures, m.fails);
          assert.ok(snap.probesInFlight <= config.maxHalfOpenRequests);
          // Probes admitted in this half-open epoch and not yet finished, counted from outside.
          // Holds when callers pass permits: a permit-less late result from a closed-era
          // request is indistinguishable from a probe's (see the module doc).
          if (alwaysPermit && m.state === HALF_OPEN) {
            const live = outstanding.filter((o) => o.epoch === m.epoch).length;
            assert.ok(live <= config.maxHalfOpenRequests, `${live} probes in flight`);
          }
        }
        assert.deepEqual(transitions, expected);
      },
    ),
    { numRuns: 400 },
  );
});

Deno.test("property: rate mode opens exactly when the window reaches volume and rate", () => {
  fc.assert(
    fc.property(
      fc.record({
        minimumRequests: fc.integer({ min: 1, max: 12 }),
        failureRatePercent: fc.integer({ min: 1, max: 100 }),
        windowBuckets: fc.integer({ min: 1, max: 10 }),
      }),
      fc.array(
        fc.oneof(
          fc.boolean(),
          fc.integer({ min: 0, max: 400 }), // a clock step
        ),
        { maxLength: 300, size: "max" },
      ),
      (c, steps) => {
        const config: BreakerConfig = { ...c, mode: "rate", windowMs: 1_000, openTimeoutMs: 0 };
        const { store, clock } = harness(config, 1);
        const bucketMs = 1_000 / c.windowBuckets;
        let results: { at: number; ok: boolean }[] = [];
        for (const step of steps) {
          if (typeof step === "number") {
            clock.t += step;
            continue;
          }
          if (store.state(0) !== CLOSED) {
            // Probe until closed again, which empties the window.
            while (store.state(0) !== CLOSED) {
              assert.ok(store.tryAcquire(0));
              store.onSuccess(0);
            }
            results = [];
          }
          if (step) store.onSuccess(0);
          else store.onFailure(0);
          results.push({ at: clock.t, ok: step });
          const cur = Math.floor(clock.t / bucketMs);
          const inWindow = results.filter((r) =>
            Math.floor(r.at / bucketMs) > cur - c.windowBuckets
          );
          const total = inWindow.length;
          const fails = inWindow.filter((r) => !r.ok).length;
          const shouldOpen = !step && total >= c.minimumRequests &&
            fails * 100 >= c.failureRatePercent * total;
          assert.equal(store.state(0), shouldOpen ? OPEN : CLOSED);
          if (total < c.minimumRequests) assert.equal(store.state(0), CLOSED);
        }
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("reset gives a slot to a new endpoint: closed, no failures, old permits void", () => {
  for (const mode of ["consecutive", "rate"] as const) {
    const { store, clock } = harness({ mode, failureThreshold: 2, minimumRequests: 2 });
    clock.t = 1_000;
    store.onFailure(1);
    store.onFailure(1);
    store.onFailure(1);
    assert.equal(store.state(1), OPEN, mode);
    clock.t = 40_000;
    const stalePermit = store.acquire(1); // half-open probe of the endpoint that left
    assert.notEqual(stalePermit, 0);
    store.reset(1);
    assert.equal(store.state(1), CLOSED, mode);
    store.onFailure(1, stalePermit); // the old endpoint's late answer
    assert.equal(store.state(1), CLOSED, `${mode}: a stale permit does not count`);
    assert.equal(store.state(0), CLOSED, "other slots untouched");
    store.onFailure(1);
    assert.equal(store.state(1), CLOSED, `${mode}: one fresh failure is below the threshold`);
  }
});
