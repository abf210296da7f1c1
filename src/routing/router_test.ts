import assert from "node:assert/strict";
import fc from "fast-check";
import type { RouteMatchConfig } from "../config/schema.ts";
import { type MatchInput, RouteCompileError, Router } from "./router.ts";

type Spec = [name: string, match: Partial<RouteMatchConfig>];

function router(specs: Spec[]): Router<string> {
  return Router.compile(
    specs.map(([name, match], index) => ({
      name,
      index,
      match: { path: { prefix: "/" }, ...match } as RouteMatchConfig,
      value: name,
    })),
  );
}

function req(path: string, more: Partial<Omit<MatchInput, "headers">> & {
  headers?: Record<string, string>;
} = {}): MatchInput {
  return {
    method: more.method ?? "GET",
    host: more.host ?? "example.com",
    path,
    headers: new Headers(more.headers ?? {}),
    search: more.search ?? "",
  };
}

Deno.test("exact path beats prefix, longer prefix beats shorter, prefix beats regex", () => {
  const r = router([
    ["regex", { path: { regex: "^/api/v[0-9]+/x$" } }],
    ["root", { path: { prefix: "/" } }],
    ["api", { path: { prefix: "/api/" } }],
    ["api-v1", { path: { prefix: "/api/v1/" } }],
    ["exact", { path: { exact: "/api/v1/x" } }],
  ]);
  assert.equal(r.match(req("/api/v1/x")), "exact");
  assert.equal(r.match(req("/api/v1/y")), "api-v1");
  assert.equal(r.match(req("/api/v2/x")), "api");
  assert.equal(r.match(req("/other")), "root");
});

Deno.test("regexes are tried in config order after prefixes", () => {
  const r = router([
    ["users", { path: { regex: "^/v[0-9]+/users/[^/]+$" } }],
    ["any-v", { path: { regex: "^/v[0-9]+/" } }],
    ["api-or-internal", { path: { regex: "^/(api|internal)/" } }],
  ]);
  assert.equal(r.match(req("/v2/users/bob")), "users");
  assert.equal(r.match(req("/v2/orders/1")), "any-v");
  assert.equal(r.match(req("/internal/x")), "api-or-internal");
  assert.equal(r.match(req("/nothing")), undefined);
});

Deno.test("routes with the same key keep config order", () => {
  const r = router([
    ["first", { path: { prefix: "/a/" } }],
    ["second", { path: { prefix: "/a/" } }],
    ["x1", { path: { exact: "/x" } }],
    ["x2", { path: { exact: "/x" } }],
  ]);
  assert.equal(r.match(req("/a/b")), "first");
  assert.equal(r.match(req("/x")), "x1");
});

Deno.test("a prefix is a plain string prefix: /api/ skips /api, /api matches /apis", () => {
  const r = router([["slash", { path: { prefix: "/api/" } }], ["bare", {
    path: { prefix: "/api" },
  }]]);
  assert.equal(r.match(req("/api/x")), "slash");
  assert.equal(r.match(req("/api")), "bare");
  assert.equal(r.match(req("/apis")), "bare");
  assert.equal(router([["slash", { path: { prefix: "/api/" } }]]).match(req("/api")), undefined);
});

Deno.test("host tiers: exact host, then longest wildcard suffix, then no host", () => {
  const r = router([
    ["any", { path: { prefix: "/" } }],
    ["star", { host: "*", path: { exact: "/star" } }],
    ["wild", { host: "*.example.com", path: { prefix: "/" } }],
    ["wild-deep", { host: "*.eu.example.com", path: { prefix: "/" } }],
    ["api", { host: "API.Example.com:8443", path: { prefix: "/v1/" } }],
  ]);
  assert.equal(r.match(req("/v1/x", { host: "api.example.com" })), "api");
  // Exact host tier has no matching path: fall through to the wildcard tier.
  assert.equal(r.match(req("/v2/x", { host: "api.example.com" })), "wild");
  assert.equal(r.match(req("/", { host: "a.b.example.com" })), "wild");
  assert.equal(r.match(req("/", { host: "x.eu.example.com" })), "wild-deep");
  assert.equal(r.match(req("/", { host: "eu.example.com" })), "wild", "suffix needs a label");
  assert.equal(r.match(req("/", { host: "example.com" })), "any", "*.x does not match x");
  assert.equal(r.match(req("/", { host: "notexample.com" })), "any");
  assert.equal(r.match(req("/star", { host: "other.org" })), "star");
});

Deno.test("route hosts ignore case, port and a trailing dot", () => {
  const r = router([
    ["a", { host: "Shop.Example.COM:80", path: { prefix: "/" } }],
    ["b", { host: "*.Example.org.", path: { prefix: "/" } }],
  ]);
  assert.equal(r.match(req("/", { host: "shop.example.com" })), "a");
  assert.equal(r.match(req("/", { host: "www.example.org" })), "b");
  assert.equal(r.match(req("/", { host: "nope.net" })), undefined);
});

Deno.test("methods are a condition: a failing candidate lets the search go on", () => {
  const r = router([
    ["write", { path: { prefix: "/api/" }, methods: ["POST", "PUT"] }],
    ["read", { path: { prefix: "/api/" }, methods: ["GET"] }],
    ["fallback", { path: { prefix: "/" } }],
  ]);
  assert.equal(r.match(req("/api/x", { method: "PUT" })), "write");
  assert.equal(r.match(req("/api/x", { method: "GET" })), "read");
  assert.equal(r.match(req("/api/x", { method: "DELETE" })), "fallback");
});

Deno.test("header conditions: case-insensitive names, exact value, presence, regex", () => {
  const r = router([
    ["canary", { headers: { "X-Canary": "yes" } }],
    ["debug", { headers: { "x-debug": { present: true } } }],
    ["mobile", { headers: { "User-Agent": { regex: "(?i)android|iphone" } } }],
    ["default", {}],
  ]);
  assert.equal(r.match(req("/", { headers: { "x-canary": "yes" } })), "canary");
  assert.equal(r.match(req("/", { headers: { "x-canary": "Yes" } })), "default");
  assert.equal(r.match(req("/", { headers: { "X-DEBUG": "" } })), "debug");
  assert.equal(r.match(req("/", { headers: { "user-agent": "Mozilla (iPhone)" } })), "mobile");
  assert.equal(r.match(req("/", { headers: { "user-agent": "curl/8" } })), "default");
});

Deno.test("query conditions: exact value, presence, regex; first value counts", () => {
  const r = router([
    ["v2", { query: { version: "2" } }],
    ["debug", { query: { debug: { present: true } } }],
    ["ids", { query: { id: { regex: "^[0-9]+$" } } }],
    ["default", {}],
  ]);
  assert.equal(r.match(req("/", { search: "?version=2" })), "v2");
  assert.equal(r.match(req("/", { search: "?version=3&version=2" })), "default");
  assert.equal(r.match(req("/", { search: "?debug" })), "debug");
  assert.equal(r.match(req("/", { search: "?a=1&id=42" })), "ids");
  assert.equal(r.match(req("/", { search: "?id=4x" })), "default");
  assert.equal(r.match(req("/", { search: "" })), "default");
  assert.equal(r.match(req("/", { search: "?version=%32" })), "v2", "values are decoded");
});

Deno.test("explain lists candidates in order with reasons and names the match", () => {
  const r = router([
    ["admin", { host: "api.example.com", path: { prefix: "/admin/" }, methods: ["POST"] }],
    ["users", { host: "api.example.com", path: { exact: "/users" } }],
    ["site", { path: { prefix: "/" } }],
    ["other", { host: "other.org", path: { prefix: "/" } }],
  ]);
  const e = r.explain(req("/admin/x", { host: "api.example.com" }));
  assert.deepEqual(e.matched, { name: "site", reason: "any host, path starts with /" });
  assert.deepEqual(e.considered, [
    { name: "users", result: "skipped", reason: "path is not exactly /users" },
    {
      name: "admin",
      result: "skipped",
      reason: "path starts with /admin/, but method GET not in [POST]",
    },
    { name: "site", result: "matched", reason: "any host, path starts with /" },
  ]);
  const none = router([["other", { host: "other.org" }]]).explain(req("/"));
  assert.equal(none.matched, undefined);
  assert.deepEqual(none.considered, [
    { name: "other", result: "skipped", reason: 'host other.org does not match "example.com"' },
  ]);
});

Deno.test("explain reports header and query reasons", () => {
  const r = router([["h", { headers: { "x-env": "prod" }, query: { q: { present: true } } }]]);
  const a = r.explain(req("/", { headers: { "x-env": "dev" } }));
  assert.match(a.considered[0]!.reason, /header x-env: "dev" is not "prod"/);
  const b = r.explain(req("/", { headers: { "x-env": "prod" } }));
  assert.match(b.considered[0]!.reason, /query q missing/);
  const c = r.explain(req("/", { headers: { "x-env": "prod" }, search: "?q=1" }));
  assert.equal(c.matched?.name, "h");
  assert.match(c.matched!.reason, /conditions pass/);
});

Deno.test("shadowed finds routes an earlier route in the same tier always wins over", () => {
  const r = router([
    ["catch-all", { path: { prefix: "/" } }],
    ["exact-x", { path: { exact: "/x" } }], // exact paths are tried first: not shadowed
    ["regex-any", { path: { regex: "^/v[0-9]+/" } }],
    ["api", { path: { prefix: "/api/" }, methods: ["GET"] }],
    ["api-get-post", { path: { prefix: "/api/" }, methods: ["GET"], headers: { a: "1" } }],
    ["api-post", { path: { prefix: "/api/" }, methods: ["POST"] }],
    ["dup", { path: { exact: "/dup" } }],
    ["dup2", { path: { exact: "/dup" } }],
    ["hosted", { host: "a.com", path: { exact: "/dup" } }], // another tier
  ]);
  assert.deepEqual(r.shadowed(), [
    { route: "dup2", by: "dup", reason: "in host tier *, exact /dup is listed first" },
    {
      route: "api-get-post",
      by: "api",
      reason: "in host tier *, the same prefix /api/ is listed first, " +
        "and its conditions are a subset",
    },
    {
      route: "regex-any",
      by: "catch-all",
      reason: "in host tier *, prefix / is tried before every regex",
    },
  ]);
});

Deno.test("shadowed sees a prefix covering a regex's literal start, and stays conservative", () => {
  const r = router([
    ["api", { path: { prefix: "/api/" } }],
    ["api-regex", { path: { regex: "^/api/v[0-9]+$" } }],
    ["alt-regex", { path: { regex: "^/api/x|^/other" } }],
    ["opt-regex", { path: { regex: "^/api?/x" } }],
    ["cond", { path: { prefix: "/b/" }, headers: { h: "1" } }],
    ["cond-later", { path: { prefix: "/b/" } }],
    ["present", { path: { prefix: "/c/" }, query: { q: { present: true } } }],
    ["value", { path: { prefix: "/c/" }, query: { q: "1" } }],
  ]);
  assert.deepEqual(r.shadowed().map((s) => [s.route, s.by]), [
    ["value", "present"],
    ["api-regex", "api"],
  ]);
});

Deno.test("RouteCompileError lists every bad regex at once with its field", () => {
  try {
    router([
      ["ok", { path: { regex: "^/fine$" } }],
      ["bad-path", { path: { regex: "^/(a" } }],
      ["evil", { path: { regex: "^(a)\\1$" } }],
      ["bad-header", { headers: { "X-A": { regex: "[" } }, query: { q: { regex: "(?=x)" } } }],
    ]);
    assert.fail("expected RouteCompileError");
  } catch (e) {
    assert.ok(e instanceof RouteCompileError);
    assert.deepEqual(e.problems.map((p) => [p.route, p.index, p.field, p.value]), [
      ["bad-path", 1, "match.path.regex", "^/(a"],
      ["evil", 2, "match.path.regex", "^(a)\\1$"],
      ["bad-header", 3, "match.headers.X-A.regex", "["],
      ["bad-header", 3, "match.query.q.regex", "(?=x)"],
    ]);
    assert.match(e.problems[1]!.message, /backreference/);
    assert.match(e.problems[3]!.message, /lookahead/);
    assert.match(e.message, /4 route problem/);
  }
});

Deno.test("match agrees with explain on random tables and requests", () => {
  const path = fc.constantFrom("/", "/a", "/a/", "/a/b", "/ab", "/b/c", "/v1/x", "/é");
  const match = fc.record({
    host: fc.option(fc.constantFrom("a.com", "*.a.com", "*", "b.a.com"), { nil: undefined }),
    path: fc.oneof(
      fc.record({ exact: path }),
      fc.record({ prefix: path }),
      fc.record({ regex: fc.constantFrom("^/a", "b", "^/v[0-9]+/", "^/$") }),
    ),
    methods: fc.option(fc.constantFrom(["GET"], ["POST", "GET"]), { nil: undefined }),
    headers: fc.option(fc.constantFrom({ "x-a": "1" }, { "x-a": { present: true as const } }), {
      nil: undefined,
    }),
    query: fc.option(fc.constantFrom({ q: "1" }, { q: { regex: "^[0-9]$" } }), { nil: undefined }),
  }, { requiredKeys: ["path"] });
  const request = fc.record({
    method: fc.constantFrom("GET", "POST"),
    host: fc.constantFrom("a.com", "b.a.com", "c.b.a.com", "z.org"),
    path,
    headers: fc.constantFrom({}, { "x-a": "1" }, { "x-a": "2" }),
    search: fc.constantFrom("", "?q=1", "?q=x"),
  });
  fc.assert(
    fc.property(
      fc.array(match, { maxLength: 8 }),
      fc.array(request, { maxLength: 8 }),
      (ms, rs) => {
        const r = router(ms.map((m, i) => [`r${i}`, m as Partial<RouteMatchConfig>]));
        const dead = new Set(r.shadowed().map((s) => s.route));
        for (const q of rs) {
          const input: MatchInput = { ...q, headers: new Headers(q.headers) };
          const got = r.match(input);
          assert.equal(got, r.explain(input).matched?.name);
          if (got !== undefined) assert.ok(!dead.has(got), `${got} was reported shadowed`);
        }
      },
    ),
    { numRuns: 500 },
  );
});

Deno.test("prefix lookup agrees with a brute-force scan, prefixes sharing first characters", () => {
  // Few characters, so prefixes share long starts and paths diverge inside tree edges; "一"
  // next to ASCII spreads a node's children too wide for a table (the Map branch).
  const text = (max: number) =>
    fc.array(fc.constantFrom("a", "b", "/", "一"), { maxLength: max }).map((cs) =>
      "/" + cs.join("")
    );
  const route = fc.record({
    prefix: text(5),
    post: fc.boolean(),
  });
  const request = fc.record({ path: text(8), method: fc.constantFrom("GET", "POST") });
  fc.assert(
    fc.property(
      fc.array(route, { maxLength: 12 }),
      fc.array(request, { maxLength: 10 }),
      (rs, qs) => {
        const specs: Spec[] = rs.map((x, i) => [
          `p${i}`,
          { path: { prefix: x.prefix }, ...(x.post ? { methods: ["POST"] } : {}) },
        ]);
        specs.push(["fallback", { path: { regex: "^/a" } }]);
        const r = router(specs);
        // Longest first, then config order; a failing method moves on to the next shorter.
        const byLength = rs.map((x, i) => ({ ...x, name: `p${i}` }))
          .sort((x, y) => y.prefix.length - x.prefix.length);
        for (const q of qs) {
          const want = byLength.find((x) =>
            q.path.startsWith(x.prefix) && (!x.post || q.method === "POST")
          )
            ?.name ?? (q.path.startsWith("/a") ? "fallback" : undefined);
          const input = req(q.path, { method: q.method });
          assert.equal(r.match(input), want, `${q.method} ${q.path}`);
          assert.equal(r.explain(input).matched?.name, want);
        }
      },
    ),
    { numRuns: 1000 },
  );
});

Deno.test("prefix lookup: a path leaving the tree mid-edge falls back to the shorter prefix", () => {
  const r = router([
    ["short", { path: { prefix: "/a" } }],
    ["long", { path: { prefix: "/abcdef/" } }],
    ["longer-post", { path: { prefix: "/abcdef/x" }, methods: ["POST"] }],
  ]);
  assert.equal(r.match(req("/abXdef/y")), "short"); // same length as a key, different character
  assert.equal(r.match(req("/abcdef/xyz")), "long"); // deeper candidate's method fails
  assert.equal(r.match(req("/abcdef/xyz", { method: "POST" })), "longer-post");
  assert.equal(r.match(req("/ab")), "short");
  assert.equal(r.match(req("/")), undefined);
});

Deno.test("host tiers and exact paths agree with a brute-force model, few and many hosts", () => {
  // Up to 8 distinct exact hosts: the router compares up to 4 in a list and looks more up in a
  // Map; exact paths of several lengths exercise the length table in front of the exact Map.
  const hostName = fc.constantFrom("a.x", "b.x", "c.x", "d.x", "e.x", "f.x", "g.y", "h.y");
  const routeHost = fc.oneof(
    hostName,
    fc.constantFrom("*.x", "*.y", "*"),
    fc.constant(undefined),
  );
  const path = fc.array(fc.constantFrom("a", "b", "/"), { maxLength: 4 }).map((cs) =>
    "/" + cs.join("")
  );
  const route = fc.record({ host: routeHost, exact: fc.boolean(), path });
  const request = fc.record({ host: fc.oneof(hostName, fc.constant("z.x")), path });
  fc.assert(
    fc.property(
      fc.array(route, { maxLength: 14 }),
      fc.array(request, { maxLength: 10 }),
      (rs, qs) => {
        const named = rs.map((x, i) => ({ ...x, name: `r${i}` }));
        const r = router(named.map((x): Spec => [x.name, {
          ...(x.host === undefined ? {} : { host: x.host }),
          path: x.exact ? { exact: x.path } : { prefix: x.path },
        }]));
        const label = (h: string | undefined) => h ?? "*";
        for (const q of qs) {
          // docs/routing.md: exact host, then wildcards by longest suffix, then any host; in a
          // tier, exact paths, then prefixes longest first; config order breaks ties.
          const tiers = [
            named.filter((x) => label(x.host) === q.host),
            ...["*.x", "*.y"].filter((w) => q.host.endsWith(w.slice(1)))
              .map((w) => named.filter((x) => x.host === w)),
            named.filter((x) => label(x.host) === "*"),
          ];
          let want: string | undefined;
          for (const tier of tiers) {
            want = tier.find((x) => x.exact && x.path === q.path)?.name ??
              tier.filter((x) => !x.exact && q.path.startsWith(x.path))
                .sort((x, y) => y.path.length - x.path.length)[0]?.name;
            if (want !== undefined) break;
          }
          assert.equal(r.match(req(q.path, { host: q.host })), want, `${q.host} ${q.path}`);
        }
      },
    ),
    { numRuns: 1000 },
  );
});
