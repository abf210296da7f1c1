import assert from "node:assert/strict";
import { hostAllowed } from "./admin.ts";

Deno.test("hostAllowed: loopback names, IP literals and the configured admin host; other names only with a token on a wildcard address", () => {
  for (const h of ["localhost", "localhost:9901", "127.0.0.1:1", "[::1]:9901", "10.0.0.7"]) {
    assert.ok(hostAllowed(h, "127.0.0.1:9901", false), h);
  }
  assert.ok(hostAllowed("Admin.Internal:9901", "admin.internal:9901", false));
  assert.ok(!hostAllowed("other.internal:9901", "admin.internal:9901", false));
  assert.ok(!hostAllowed("other.internal:9901", "admin.internal:9901", true), "named address");
  assert.ok(!hostAllowed("evil.example", "0.0.0.0:9901", false));
  assert.ok(hostAllowed("evil.example", "0.0.0.0:9901", true));
  assert.ok(hostAllowed("evil.example", "[::]:9901", true));
  assert.ok(!hostAllowed("evil.example", undefined, true));
  assert.ok(!hostAllowed("user@localhost", "127.0.0.1:9901", false), "not a valid Host");
});
