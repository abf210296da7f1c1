import assert from "node:assert/strict";
import { healthState, quantile } from "./admin_stats.ts";
import { RecentErrors } from "../pipeline/errors.ts";

Deno.test("healthState: ejection first, then failing checks, slow start, healthy / not checked", () => {
  const e = { healthy: true, ejected: false, eligible: true, weight: 2, effective: 2 };
  assert.equal(healthState(false, e), "not checked");
  assert.equal(healthState(true, e), "healthy");
  assert.equal(healthState(true, { ...e, effective: 0.5 }), "slow start");
  assert.equal(healthState(true, { ...e, healthy: false, eligible: false }), "failing checks");
  assert.equal(healthState(false, { ...e, ejected: true, eligible: false }), "ejected (outlier)");
  // Without checks `healthy` stays true: never "healthy" unless a check says so.
  assert.equal(healthState(false, { ...e, healthy: false }), "not checked");
});

Deno.test("quantile interpolates inside the bucket, as histogram_quantile() does", () => {
  const b: [number, number][] = [[0.01, 50], [0.1, 100], [Infinity, 100]];
  assert.equal(quantile(0.5, b), 0.01);
  assert.ok(Math.abs(quantile(0.75, b)! - 0.055) < 1e-9);
  assert.equal(quantile(0.5, [[0.1, 0], [Infinity, 0]]), null);
});

Deno.test("RecentErrors groups by route, flag and reason with counts, most recent first, bounded", () => {
  const r = new RecentErrors(5);
  const err = (at: number, route: string | null, flag: string, reason: string, status = 502) =>
    r.add({ at, request_id: `id-${at}`, status, flag, reason, listener: "p", route });
  for (let i = 0; i < 100; i++) err(i, "a", "UF", "refused");
  err(100, "a", "UO", "breaker open", 503);
  err(101, null, "NR", "no route");
  assert.deepEqual(
    r.groups().map((g) => [g.route, g.flag, g.count, g.last_at, g.first_at, g.last_request_id]),
    [
      [null, "NR", 1, 101, 101, "id-101"],
      ["a", "UO", 1, 100, 100, "id-100"],
      ["a", "UF", 100, 99, 0, "id-99"],
    ],
  );
  assert.equal(r.list().length, 5, "the ring of single errors stays bounded");
  for (let i = 0; i < 300; i++) err(200 + i, `r${i}`, "UF", "refused");
  assert.equal(r.groups().length, 200, "groups are bounded too; the least recently seen go");
  assert.equal(r.groups().at(-1)!.route, "r100");
});
