import assert from "node:assert/strict";
import { workerCount } from "./count.ts";
import type { Snapshot } from "../server/compile.ts";

/** Only what workerCount reads of a snapshot: the server settings and the listeners. */
function snapshotWith(
  workers: number | "auto" | undefined,
  listeners: { name: string; tls?: object; protocol?: "http" | "grpc" }[] = [],
  guard = true,
): Snapshot {
  return {
    config: { server: { workers, connection_guard: guard } },
    listeners: new Map(listeners.map((l) => [l.name, { protocol: "http", ...l }])),
  } as unknown as Snapshot;
}

const withFlag = () => true;

Deno.test("workers: one per CPU by default (auto), a number is itself", () => {
  assert.deepEqual(workerCount(snapshotWith(undefined), 8, withFlag), { ok: true, count: 8 });
  assert.deepEqual(workerCount(snapshotWith("auto"), 8, withFlag), { ok: true, count: 8 });
  assert.deepEqual(workerCount(snapshotWith(3), 8, withFlag), { ok: true, count: 3 });
});

Deno.test("workers: a guarded TLS listener keeps one worker; asked for more it is a config error", () => {
  const tls = [{ name: "web", tls: {} }];
  const auto = workerCount(snapshotWith("auto", tls), 4, withFlag);
  assert.ok(auto.ok && auto.count === 1 && /web/.test(auto.note ?? ""));
  const byDefault = workerCount(snapshotWith(undefined, tls), 4, withFlag);
  assert.ok(byDefault.ok && byDefault.count === 1 && /web/.test(byDefault.note ?? ""));
  const two = workerCount(snapshotWith(2, tls), 4, withFlag);
  assert.ok(!two.ok && /TLS listeners \(web\)/.test(two.message));
  // Without the guard Deno.serve terminates TLS itself and shares the port.
  assert.deepEqual(workerCount(snapshotWith(2, tls, false), 4, withFlag), { ok: true, count: 2 });
});

Deno.test("workers: without --unstable-net, auto gives one and a number is refused", () => {
  const noFlag = () => false;
  const auto = workerCount(snapshotWith("auto"), 4, noFlag);
  assert.ok(auto.ok && auto.count === 1);
  const byDefault = workerCount(snapshotWith(undefined), 4, noFlag);
  assert.ok(byDefault.ok && byDefault.count === 1);
  assert.ok(!workerCount(snapshotWith(2), 4, noFlag).ok);
});
