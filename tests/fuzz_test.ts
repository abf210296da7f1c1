/**
 * Property-based fuzzing (fast-check) of the request parser surface and the router: the pure
 * functions on random input, then random raw requests over TCP to a live Ferry in front of a
 * recording upstream. Each test reports how many cases ran.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { normalizeHost, normalizePath } from "../src/routing/path.ts";
import { Router } from "../src/routing/router.ts";
import type { RouteMatchConfig } from "../src/config/schema.ts";
import { hidesDotSegment, splitTarget } from "../src/server/handler.ts";
import { ProxyError } from "../src/pipeline/errors.ts";
import { rawRequest, startFerry, startUpstream } from "./helpers.ts";

/** Path pieces chosen to hit the interesting branches, mixed with arbitrary characters. */
const pathPiece = fc.oneof(
  fc.constantFrom(
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E%2e",
    "%2f",
    "%2F",
    "%5C",
    "%",
    "%4",
    "%zz",
    "%00",
    "%41",
    "%c3%a9",
    "\\",
    "?",
    "#",
    "a",
    "b",
    "~",
  ),
  fc.string({ maxLength: 4 }),
  fc.string({ unit: "binary", maxLength: 3 }),
);
const rawPath = fc.array(pathPiece, { maxLength: 12 }).map((p) => "/" + p.join(""));
const hostText = fc.oneof(
  fc.constantFrom("a", "A.Example.COM", "a.", "a..b", "[::1]", "[::1]:80", "a:80", "a:99999", ""),
  fc.string({ maxLength: 12 }),
  fc.stringMatching(/^[a-zA-Z0-9.:\-\[\]@_~%]{0,16}$/),
);
const RUNS = 2000;

Deno.test("splitTarget: any http(s) URL splits into authority + path + query that rebuild it, or a ProxyError", () => {
  let runs = 0;
  fc.assert(
    fc.property(
      fc.constantFrom("http://", "https://"),
      hostText,
      rawPath,
      fc.option(fc.string({ maxLength: 8 }), { nil: undefined }),
      (scheme, host, path, query) => {
        runs++;
        const url = scheme + host.replaceAll("/", "") + path +
          (query === undefined ? "" : `?${query}`);
        try {
          const t = splitTarget(url);
          assert.ok(t.path.startsWith("/"));
          assert.ok(t.search === "" || t.search.startsWith("?"));
          assert.ok(!t.authority.includes("/"));
          const rebuilt = scheme + t.authority +
            (t.path === "/" && !url.slice(scheme.length).includes("/") ? "" : t.path) + t.search;
          assert.equal(rebuilt, url);
        } catch (e) {
          assert.ok(e instanceof ProxyError, `only ProxyError may escape, got ${e}`);
          assert.ok(e.status === 400 || e.status === 414);
        }
      },
    ),
    { numRuns: RUNS },
  );
  console.log(`splitTarget: ${runs} cases`);
});

Deno.test("normalizePath: never throws; a result starts with /, has no dot segment or //, and is a fixed point", () => {
  let runs = 0;
  let accepted = 0;
  fc.assert(
    fc.property(fc.oneof(rawPath, fc.string({ maxLength: 40 })), (raw) => {
      runs++;
      const r = normalizePath(raw);
      if (!r.ok) {
        assert.ok(r.reason.length > 0);
        return;
      }
      accepted++;
      assert.ok(r.path.startsWith("/"));
      assert.ok(!r.path.includes("//"), r.path);
      const segments = r.path.split("/");
      assert.ok(!segments.includes(".") && !segments.includes(".."), r.path);
      // Idempotent: normalising the normal form changes nothing.
      assert.deepEqual(normalizePath(r.path), { ok: true, path: r.path });
      // hidesDotSegment is total on it too.
      assert.equal(typeof hidesDotSegment(r.path), "boolean");
    }),
    { numRuns: RUNS },
  );
  console.log(`normalizePath: ${runs} cases, ${accepted} accepted`);
  assert.ok(accepted > runs / 10, "the generator reaches the accepting branches");
});

Deno.test("normalizeHost: never throws; a result is lower case, portless, and a fixed point", () => {
  let runs = 0;
  fc.assert(
    fc.property(hostText, (raw) => {
      runs++;
      const h = normalizeHost(raw);
      if (h === null) return;
      assert.equal(h, h.toLowerCase());
      assert.ok(!h.includes("@") && !h.includes("/") && !h.includes("%"), h);
      if (!h.startsWith("[")) assert.ok(!h.includes(":"), h);
      assert.equal(normalizeHost(h), h);
    }),
    { numRuns: RUNS },
  );
  console.log(`normalizeHost: ${runs} cases`);
});

Deno.test("router: random paths never throw and the route explain() names is the one match() uses", () => {
  const prefixes = ["/", "/a", "/a/", "/a/b", "/%2F", "/b"];
  const router = Router.compile<string>([
    ...prefixes.map((p, i) => ({
      name: `prefix${i}`,
      index: i,
      match: { host: i % 2 ? "a.test" : undefined, path: { prefix: p } } as RouteMatchConfig,
      value: `prefix${i}`,
    })),
    {
      name: "exact",
      index: prefixes.length,
      match: { path: { exact: "/a/b/c" } } as RouteMatchConfig,
      value: "exact",
    },
    {
      name: "regex",
      index: prefixes.length + 1,
      match: { path: { regex: "^/r/[0-9]+$" }, methods: ["GET"] } as RouteMatchConfig,
      value: "regex",
    },
  ]);
  let runs = 0;
  fc.assert(
    fc.property(
      rawPath,
      fc.constantFrom("a.test", "b.test", "A.TEST"),
      fc.constantFrom("GET", "POST"),
      (raw, host, method) => {
        runs++;
        const p = normalizePath(raw);
        const h = normalizeHost(host);
        if (!p.ok || h === null) return;
        const input = { method, host: h, path: p.path, headers: new Headers(), search: "" };
        const used = router.match(input);
        assert.equal(router.explain(input).matched?.name, used);
      },
    ),
    { numRuns: RUNS },
  );
  console.log(`router: ${runs} cases`);
});

/** Request-line targets and header blocks for the wire fuzz. */
const target = fc.oneof(
  rawPath,
  fc.constantFrom("*", "http://a.test/x/../y", "http://u@a/", "a", ""),
).map((t) => t.replace(/[\r\n ]/g, ""));
const method = fc.oneof(
  { weight: 4, arbitrary: fc.constant("GET") },
  fc.constantFrom("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE", "get"),
  fc.stringMatching(/^[A-Za-z@!#]{0,8}$/),
);
const header = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom("Accept: */*", "X-Ok: 1", "User-Agent: fuzz") },
  fc.constantFrom(
    "Host: a",
    "Host: a/b",
    "Host: ",
    "Content-Length: 0",
    "Content-Length: 5",
    "Transfer-Encoding: chunked",
    "X-A: b\r\n c",
    "X-A: \u00e9",
    "X-A: b\rc",
  ),
  fc.tuple(fc.stringMatching(/^[A-Za-z-]{1,8}$/), fc.string({ maxLength: 10 })).map(([n, v]) =>
    `${n}: ${v.replace(/[\r\n]/g, "")}`
  ),
);

Deno.test("wire fuzz: random raw requests get a 2xx/4xx or a close, never a 5xx; forwarded paths are normal", async () => {
  const seen: string[] = [];
  const up = startUpstream((req) => {
    seen.push(new URL(req.url).pathname);
    return new Response("ok");
  });
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: all, cluster: u }]
clusters: [{ name: u, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  let runs = 0;
  const statuses = new Map<string, number>();
  try {
    await fc.assert(
      fc.asyncProperty(
        method,
        target,
        fc.array(header, { maxLength: 5 }),
        fc.string({ maxLength: 8 }),
        async (m, t, hs, body) => {
          runs++;
          const head = `${m} ${t} HTTP/1.1\r\n${hs.join("\r\n")}${hs.length ? "\r\n" : ""}`;
          const raw = `${head}Connection: close\r\n\r\n${body}`;
          const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0) & 0xff);
          const res = await rawRequest(px.port, bytes, 2000);
          const status = /^HTTP\/1\.1 (\d{3})/.exec(res)?.[1] ?? "closed";
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          assert.ok(!status.startsWith("5"), `${JSON.stringify(raw)} -> ${res.slice(0, 300)}`);
        },
      ),
      { numRuns: 300 },
    );
    for (const path of seen) {
      assert.deepEqual(normalizePath(path), { ok: true, path }, `forwarded ${path}`);
    }
    const ok = await fetch(`http://127.0.0.1:${px.port}/still-up`);
    assert.equal(ok.status, 200);
    await ok.text();
    console.log(
      `wire fuzz: ${runs} requests, ${seen.length} forwarded; statuses ${
        JSON.stringify(Object.fromEntries(statuses))
      }; proxy still serving`,
    );
  } finally {
    await px.close();
    await up.close();
  }
});
