import assert from "node:assert/strict";
import { errorResponse, ProxyError, RecentErrors } from "./errors.ts";

Deno.test("errorResponse feeds the recent-errors ring with the same flag and request id it answers with", async () => {
  const recent = new RecentErrors(3);
  const res = errorResponse(new ProxyError("upstream_reset", "reset by peer"), "rid-1", undefined, {
    errors: recent,
    listener: "public",
    route: "api",
  });
  const body = await res.json();
  const [e] = recent.list();
  assert.equal(e!.flag, res.headers.get("x-ferry-flag"));
  assert.equal(e!.flag, body.flag);
  assert.equal(e!.request_id, body.request_id);
  assert.deepEqual([e!.status, e!.route, e!.listener, e!.reason], [
    502,
    "api",
    "public",
    "reset by peer",
  ]);
});

Deno.test("RecentErrors keeps only the newest entries, oldest first, and counts all", () => {
  const recent = new RecentErrors(3);
  for (let i = 0; i < 5; i++) {
    recent.add({
      at: i,
      request_id: `r${i}`,
      status: 503,
      flag: "UO",
      reason: "x",
      listener: "l",
      route: null,
    });
  }
  assert.deepEqual(recent.list().map((e) => e.request_id), ["r2", "r3", "r4"]);
  assert.equal(recent.total, 5);
});
