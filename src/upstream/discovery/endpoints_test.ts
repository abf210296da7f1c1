import assert from "node:assert/strict";
import { createBalancer } from "../balancers/mod.ts";
import type { EndpointState } from "../balancers/types.ts";
import { type EndpointWithState, originOf, reconcileEndpoints } from "./endpoints.ts";

const d = (url: string, weight = 1) => ({ url, weight });

Deno.test("reconcileEndpoints keeps the very state objects of endpoints that stay", () => {
  const first = reconcileEndpoints([], [d("http://10.0.0.1:80"), d("http://10.0.0.2:80")]);
  assert.equal(first.added.length, 2);
  const [s1, s2] = first.endpoints.map((e) => e.state);
  s1!.inFlight = 3;
  s2!.eligible = false;

  const next = reconcileEndpoints(first.endpoints, [
    d("http://10.0.0.2:80"),
    d("http://10.0.0.3:80"),
  ]);
  assert.deepEqual(next.endpoints.map((e) => e.origin), [
    "http://10.0.0.2:80",
    "http://10.0.0.3:80",
  ]);
  assert.equal(next.kept.length, 1);
  assert.ok(next.kept[0]!.state === s2, "the surviving endpoint keeps its state object");
  assert.ok(next.endpoints[0]!.state === s2);
  assert.equal(next.endpoints[0]!.state.eligible, false, "health survived");
  assert.deepEqual(next.added.map((e) => e.origin), ["http://10.0.0.3:80"]);
  assert.deepEqual(next.added[0]!.state, { inFlight: 0, effectiveWeight: 1, eligible: true });
  assert.deepEqual(next.removed.map((e) => e.origin), ["http://10.0.0.1:80"]);
  assert.ok(next.removed[0]!.state === s1, "removed endpoints hand back their state");
  assert.deepEqual(next.reweighted, []);
});

Deno.test("reconcileEndpoints matches by normalised origin and reports weight changes", () => {
  const old = reconcileEndpoints([], [d("http://[fd00:0::1]:80"), d("https://10.0.0.1", 2)]);
  assert.deepEqual(old.endpoints.map((e) => e.origin), [
    "http://[fd00::1]:80",
    "https://10.0.0.1:443",
  ]);
  const next = reconcileEndpoints(old.endpoints, [
    d("http://[fd00::1]"),
    d("https://10.0.0.1:443", 5),
    d("https://10.0.0.1:443", 9), // a duplicate: the first wins
  ]);
  assert.equal(next.added.length, 0);
  assert.equal(next.removed.length, 0);
  assert.equal(next.endpoints.length, 2);
  next.endpoints.forEach((e, i) => assert.ok(e.state === old.endpoints[i]!.state));
  assert.deepEqual(next.reweighted.map((r) => [r.endpoint.origin, r.from, r.to]), [
    ["https://10.0.0.1:443", 2, 5],
  ]);
  assert.equal(next.endpoints[1]!.weight, 5);
});

Deno.test("reconcileEndpoints does not modify its inputs and works with custom state", () => {
  type Stats = { requests: number };
  const fresh = (): Stats => ({ requests: 0 });
  const old: EndpointWithState<Stats>[] = [
    { origin: "http://a.test:80", weight: 1, state: { requests: 7 } },
  ];
  const snapshot = structuredClone(old);
  const r = reconcileEndpoints(old, [d("http://a.test:80"), d("http://b.test:80")], fresh);
  assert.deepEqual(old, snapshot);
  assert.ok(r.endpoints[0]!.state === old[0]!.state);
  assert.deepEqual(r.endpoints[1]!.state, { requests: 0 });
});

Deno.test("reconcileEndpoints of an empty answer removes everything", () => {
  const old = reconcileEndpoints([], [d("http://10.0.0.1:80")]).endpoints;
  const r = reconcileEndpoints(old, []);
  assert.deepEqual(r.endpoints, []);
  assert.equal(r.removed.length, 1);
});

Deno.test("reconcileEndpoints rejects bad weights and URLs, naming the index", () => {
  assert.throws(
    () => reconcileEndpoints([], [d("http://a:80", 0)]),
    /^RangeError: next\[0\]\.weight/,
  );
  assert.throws(() => reconcileEndpoints([], [d("http://a:80"), d("nope")]), /next\[1\]\.url/);
  assert.throws(() => reconcileEndpoints([], [d("ftp://a:21")]), /must be http or https/);
  assert.equal(originOf("HTTP://Example.TEST"), "http://example.test:80");
});

Deno.test("a rebuilt balancer over reconciled endpoints shares the surviving states", () => {
  const first = reconcileEndpoints([], [d("http://10.0.0.1:80"), d("http://10.0.0.2:80")]);
  const lb1 = createBalancer("round_robin", first.endpoints, {
    states: first.endpoints.map((e) => e.state),
  });
  lb1.stateOf(first.endpoints[1]!)!.eligible = false; // 10.0.0.2 fails a health check

  const next = reconcileEndpoints(first.endpoints, [
    d("http://10.0.0.2:80"),
    d("http://10.0.0.3:80"),
  ]);
  const states: EndpointState[] = next.endpoints.map((e) => e.state);
  const lb2 = createBalancer("maglev", next.endpoints, { states });
  assert.ok(lb2.states[0] === lb1.states[1]);
  for (let i = 0; i < 20; i++) {
    assert.equal(lb2.pick({ hashKey: `k${i}` })?.origin, "http://10.0.0.3:80");
  }
});
