import assert from "node:assert/strict";
import { hidesDotSegment, MAX_URI_LENGTH, namesPort, splitTarget } from "./handler.ts";
import { ProxyError } from "../pipeline/errors.ts";

Deno.test("splitTarget separates authority, raw path and raw query without decoding", () => {
  assert.deepEqual(splitTarget("http://a.test:8080/p/%2F?q=1&r=%20"), {
    authority: "a.test:8080",
    path: "/p/%2F",
    search: "?q=1&r=%20",
  });
  assert.deepEqual(splitTarget("https://[::1]:9/"), {
    authority: "[::1]:9",
    path: "/",
    search: "",
  });
  assert.deepEqual(splitTarget("http://h"), { authority: "h", path: "/", search: "" });
});

Deno.test("splitTarget refuses an over-long target with 414", () => {
  assert.throws(
    () => splitTarget(`http://h/${"x".repeat(MAX_URI_LENGTH)}`),
    (e: unknown) => e instanceof ProxyError && e.status === 414,
  );
});

Deno.test("encoded slashes are data unless they hide a dot segment", () => {
  assert.equal(hidesDotSegment("/files/a%2Fb"), false);
  assert.equal(hidesDotSegment("/files/a%2F.b"), false);
  assert.equal(hidesDotSegment("/files/..%2Fetc"), true);
  assert.equal(hidesDotSegment("/files/a%2F..%2Fb"), true);
  assert.equal(hidesDotSegment("/files/%2E%2E%5Cwin"), true);
  assert.equal(hidesDotSegment("/plain/../never-here"), false, "no encoded slash: not this check");
});

Deno.test("namesPort: a loopback name with exactly the inner port (Deno's fill-in for a missing Host)", () => {
  for (const a of ["localhost:4100", "127.0.0.1:4100", "LOCALHOST:4100", "[::1]:4100"]) {
    assert.ok(namesPort(a, 4100), a);
  }
  for (const a of ["localhost:41000", "localhost", "example.com:4100", "10.0.0.1:4100", "a:b"]) {
    assert.ok(!namesPort(a, 4100), a);
  }
});
