import assert from "node:assert/strict";
import { acceptErrorReason, ConnectionAdmission } from "./admission.ts";

Deno.test("admission: the global cap, the per-address cap, and release making room again", () => {
  const caps = { maxConnections: 3, maxConnectionsPerIp: 2 };
  const a = new ConnectionAdmission(() => caps);
  assert.equal(a.admit("10.0.0.1"), undefined);
  assert.equal(a.admit("10.0.0.1"), undefined);
  assert.equal(a.admit("10.0.0.1"), "too many connections from you");
  assert.equal(a.admit("10.0.0.2"), undefined);
  assert.equal(a.admit("10.0.0.3"), "too many connections");
  assert.equal(a.open, 3, "refusals are not counted");
  a.release("10.0.0.1");
  assert.equal(a.admit("10.0.0.3"), undefined);
  assert.equal(a.admit("10.0.0.1"), "too many connections");
  // Caps are read at every admission (a reload changes them): 0 is no cap.
  caps.maxConnections = 0;
  caps.maxConnectionsPerIp = 0;
  assert.equal(a.admit("10.0.0.1"), undefined);
  assert.equal(a.open, 4);
});

Deno.test("accept errors are classified from Deno's messages", () => {
  assert.equal(acceptErrorReason(new Error("Too many open files (os error 24)")), "emfile");
  assert.equal(
    acceptErrorReason(new Error("Too many open files in system (os error 23)")),
    "enfile",
  );
  assert.equal(acceptErrorReason(new Error("Connection aborted (os error 103)")), "other");
});
