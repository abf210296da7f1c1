import assert from "node:assert/strict";
import fc from "fast-check";
import { DeadlineQueue, laneLength } from "./deadlines.ts";

Deno.test("deadlines fire once their time has passed, in order, and never when cancelled", () => {
  let now = 0;
  const q = new DeadlineQueue({ now: () => now, autoTick: false });
  const fired: string[] = [];
  q.arm(100, () => fired.push("a"));
  const b = q.arm(100, () => fired.push("b"));
  q.arm(50, () => fired.push("c"));
  now = 49;
  assert.equal(q.tick(), 0);
  now = 50;
  assert.equal(q.tick(), 1);
  b.cancel();
  b.cancel();
  now = 100;
  assert.equal(q.tick(), 1);
  assert.deepEqual(fired, ["c", "a"]);
  assert.equal(q.size, 0);
});

Deno.test("a deadline fires for real through the shared interval", async () => {
  const q = new DeadlineQueue({ tickMs: 5 });
  const fired = Promise.withResolvers<number>();
  const t0 = performance.now();
  q.arm(30, () => fired.resolve(performance.now() - t0));
  // The queue's interval is unref'd (it must not keep a process alive), so hold the loop open.
  const guard = setTimeout(() => fired.resolve(-1), 2_000);
  const elapsed = await fired.promise;
  clearTimeout(guard);
  assert.ok(elapsed >= 30, `fired early after ${elapsed} ms`);
  q.close();
});

Deno.test("property: exactly the uncancelled deadlines at or before now have fired", () => {
  fc.assert(fc.property(
    fc.array(fc.record({ ms: fc.constantFrom(10, 20, 50), cancel: fc.boolean(), at: fc.nat(60) }), {
      maxLength: 60,
    }),
    fc.nat(120),
    (ops, end) => {
      let now = 0;
      const q = new DeadlineQueue({ now: () => now, autoTick: false });
      const fired = new Set<number>();
      const expect = new Set<number>();
      const sorted = ops.map((o, i) => ({ ...o, i })).sort((x, y) => x.at - y.at);
      const final = Math.max(end, ...ops.map((o) => o.at));
      for (const o of sorted) {
        now = o.at;
        q.tick();
        const d = q.arm(o.ms, () => fired.add(o.i));
        if (o.cancel) d.cancel();
        else if (o.at + o.ms <= final) expect.add(o.i);
      }
      now = final;
      q.tick();
      assert.deepEqual([...fired].sort(), [...expect].sort());
    },
  ));
});

Deno.test("rounded lanes: never shorter, at most 1/128 + 10 ms longer, few lanes for many lengths", () => {
  const lanes = new Set<number>();
  for (let ms = 1; ms < 600_000; ms += 7.3) {
    const l = laneLength(ms);
    assert.ok(l >= ms, `${ms} -> ${l}`);
    assert.ok(l - ms <= ms / 128 + 10, `${ms} -> ${l}`);
    lanes.add(l);
  }
  assert.ok(lanes.size < 128 * 10, `${lanes.size} lanes`);
  let now = 0;
  const q = new DeadlineQueue({ now: () => now, autoTick: false });
  let fired = 0;
  for (let i = 0; i < 1000; i++) q.armRoundedUp(4000 + i * 3.1, () => fired++);
  now = 3999;
  assert.equal(q.tick(), 0);
  now = 10_000;
  assert.equal(q.tick(), 1000);
  assert.equal(fired, 1000);
  assert.equal(q.size, 0);
});
