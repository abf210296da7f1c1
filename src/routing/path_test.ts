import assert from "node:assert/strict";
import fc from "fast-check";
import { normalizeHost, normalizePath } from "./path.ts";

function ok(raw: string): string {
  const r = normalizePath(raw);
  assert.ok(r.ok, `expected ${raw} to normalise, got ${JSON.stringify(r)}`);
  return r.path;
}

function refused(raw: string): string {
  const r = normalizePath(raw);
  assert.ok(!r.ok, `expected ${raw} to be refused, got ${JSON.stringify(r)}`);
  return r.reason;
}

Deno.test("normalizePath returns a clean path unchanged (same string)", () => {
  for (
    const p of [
      "/",
      "/a",
      "/api/v1/users/42",
      "/a/b/",
      "/.well-known/x",
      "/a.b/c..d/...",
      "/a-_~!$&'()*+,;=:@",
    ]
  ) {
    assert.equal(ok(p), p);
  }
});

Deno.test("normalizePath requires a leading slash", () => {
  assert.equal(refused(""), "path must start with /");
  assert.equal(refused("a/b"), "path must start with /");
  assert.equal(refused("*"), "path must start with /");
});

Deno.test("normalizePath removes dot segments", () => {
  assert.equal(ok("/public/../admin"), "/admin");
  assert.equal(ok("/a/./b"), "/a/b");
  assert.equal(ok("/a/b/.."), "/a/");
  assert.equal(ok("/a/b/."), "/a/b/");
  assert.equal(ok("/a/.."), "/");
  assert.equal(ok("/."), "/");
  assert.equal(ok("/a/b/../../c/"), "/c/");
});

Deno.test("normalizePath refuses a path that climbs above the root", () => {
  assert.equal(refused("/../x"), "path escapes the root");
  assert.equal(refused("/.."), "path escapes the root");
  assert.equal(refused("/a/../../x"), "path escapes the root");
  assert.equal(refused("/%2e%2e/x"), "path escapes the root");
});

Deno.test("normalizePath decodes unreserved escapes so %2e%2E is a dot segment", () => {
  assert.equal(ok("/public/%2e%2E/admin"), "/admin");
  assert.equal(ok("/a/%2E/b"), "/a/b");
  assert.equal(ok("/%41%62%7e%2D%5f"), "/Ab~-_");
  assert.equal(ok("/a/.%2e/b"), "/b");
});

Deno.test("normalizePath keeps other escapes encoded with upper-case hex, %2F included", () => {
  assert.equal(ok("/a%2fb"), "/a%2Fb");
  assert.equal(ok("/a%2F..%2Fb"), "/a%2F..%2Fb");
  assert.equal(ok("/caf%c3%a9"), "/caf%C3%A9");
  assert.equal(ok("/x%20y"), "/x%20y");
  assert.equal(ok("/%25"), "/%25");
});

Deno.test("normalizePath refuses bad escapes, NUL, controls, space, non-ASCII, backslash", () => {
  assert.match(refused("/a%zz"), /invalid percent-encoding "%zz"/);
  assert.match(refused("/a%4"), /invalid percent-encoding "%4"/);
  assert.match(refused("/a%"), /invalid percent-encoding/);
  assert.equal(refused("/a%00b"), "encoded NUL (%00) in path");
  assert.match(refused("/a b"), /control character or space \(0x20\)/);
  assert.match(refused("/a\tb"), /0x09/);
  assert.match(refused("/a\x7f"), /0x7F/);
  assert.match(refused("/caf\u00e9"), /non-ASCII character U\+E9/);
  assert.match(refused("/%41/\u00e9"), /non-ASCII/);
  assert.equal(refused("/a\\..\\b"), "backslash in path");
});

Deno.test("normalizePath merges repeated slashes and keeps a trailing slash", () => {
  assert.equal(ok("//a///b//"), "/a/b/");
  assert.equal(ok("//"), "/");
  assert.equal(ok("/a//../b"), "/b");
  assert.equal(ok("/a/b/"), "/a/b/");
});

Deno.test("normalizePath refuses path parameters on dot segments (Tomcat/Spring read ..; as ..)", () => {
  for (
    const p of [
      "/api/..;/admin",
      "/api/..;x/admin",
      "/api/.;x/admin",
      "/api/.;",
      "/api/%2e%2e;/admin",
      "/api/.%2E;jsessionid=1/admin",
      "/api/..%3b/admin",
      "/api/..%3Bx/admin",
      "/api/%2e%3b/admin",
      "/..;",
    ]
  ) {
    assert.equal(refused(p), "path parameter on a dot segment (..;)", p);
  }
  // Parameters on ordinary segments are left alone.
  assert.equal(ok("/a;jsessionid=1/b"), "/a;jsessionid=1/b");
  assert.equal(ok("/a/...;x"), "/a/...;x");
  assert.equal(ok("/a/x..;y"), "/a/x..;y");
});

const segment = fc.constantFrom(
  "a",
  "b",
  "api",
  "..",
  ".",
  "%2e",
  "%2E%2e",
  ".%2e",
  "",
  "%41",
  "%2f",
  "x.y",
  "...",
  "%7E",
  "..;",
  "..;x",
  ".;y",
  "%2e%2e;",
  "..%3b",
  "a;b",
);

Deno.test("normalizePath output has no dot segments, stays under /, and is idempotent", () => {
  fc.assert(
    fc.property(fc.array(segment, { maxLength: 12 }), (segs) => {
      const raw = "/" + segs.join("/");
      const r = normalizePath(raw);
      const dotWithParameter = segs.some((s) => /^(\.|%2e){1,2}(;|%3b)/i.test(s));
      if (!r.ok) {
        assert.ok(
          r.reason === "path escapes the root" ||
            (dotWithParameter && r.reason === "path parameter on a dot segment (..;)"),
          `${raw}: ${r.reason}`,
        );
        return;
      }
      assert.ok(!dotWithParameter, `${raw} -> ${r.path} should be refused`);
      const p = r.path;
      assert.ok(p.startsWith("/"));
      for (const bad of ["/../", "/./", "//"]) assert.ok(!p.includes(bad), `${raw} -> ${p}`);
      assert.ok(!p.endsWith("/..") && !p.endsWith("/."), `${raw} -> ${p}`);
      assert.ok(!/%2e/i.test(p), `${raw} -> ${p}`);
      assert.ok(!/\/\.{1,2}(;|%3b)/i.test(p), `${raw} -> ${p}`);
      const again = normalizePath(p);
      assert.deepEqual(again, { ok: true, path: p });
    }),
    { numRuns: 2000 },
  );
});

Deno.test("normalizeHost lower-cases and strips the port", () => {
  assert.equal(normalizeHost("api.example.com"), "api.example.com");
  assert.equal(normalizeHost("API.Example.COM"), "api.example.com");
  assert.equal(normalizeHost("api.example.com:8443"), "api.example.com");
  assert.equal(normalizeHost("Api.example.com:80"), "api.example.com");
  assert.equal(normalizeHost("example.com:"), "example.com");
  assert.equal(normalizeHost("example.com."), "example.com");
  assert.equal(normalizeHost("my_host~1"), "my_host~1");
});

Deno.test("normalizeHost accepts IPv4 and bracketed IPv6", () => {
  assert.equal(normalizeHost("127.0.0.1:8080"), "127.0.0.1");
  assert.equal(normalizeHost("[::1]"), "[::1]");
  assert.equal(normalizeHost("[::1]:443"), "[::1]");
  assert.equal(normalizeHost("[2001:DB8:0:0:0:0:0:1]"), "[2001:db8::1]");
});

Deno.test("normalizeHost refuses userinfo, spaces, commas, empties and bad ports", () => {
  for (
    const bad of [
      "",
      ":80",
      "user@evil.com",
      "a b",
      "a,b",
      "a.com,b.com",
      "a.com:99999",
      "a.com:8o",
      "a.com:80:80",
      "a%2ecom",
      "[::1",
      "[::1]x",
      "[::1]:99999",
      "[fe80::1%25eth0]",
      "[zz::1]",
      ".a.com",
      "a..com",
      ".",
      "a/b",
      "caf\u00e9.com",
      "a.com:123456",
    ]
  ) {
    assert.equal(normalizeHost(bad), null, bad);
  }
});
