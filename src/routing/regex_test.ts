import assert from "node:assert/strict";
import fc from "fast-check";
import { RE2JS } from "re2js";
import { compileRouteRegex, RegexSyntaxError, UnsafeRegexError } from "./regex.ts";

const EVIL = ["^(a+)+$", "(a|a)*$", "(a|aa)+$", "(\\d*)*x", "(.*a){12}", "\\d*\\d*\\d*x"];

function hostileFor(pattern: string): string[] {
  const n = 30_000;
  return ["a".repeat(n) + "!", "1".repeat(n) + "!", "a".repeat(n), "1".repeat(n)].map((s) =>
    pattern.includes("d") ? s : s
  );
}

Deno.test("evil patterns run on RE2 in linear time on 30,000-char hostile input", () => {
  for (const pattern of EVIL) {
    const re = compileRouteRegex(pattern);
    assert.equal(re.engine, "re2", `${pattern} must not run on a backtracking engine`);
    for (const input of hostileFor(pattern)) {
      const t0 = performance.now();
      re.test(input);
      const ms = performance.now() - t0;
      // Loose bound (timed tests are flaky); a backtracking engine would take years.
      assert.ok(ms < 1000, `${pattern} took ${ms.toFixed(1)} ms`);
    }
  }
});

Deno.test("evil patterns still give RE2's answers", () => {
  assert.equal(compileRouteRegex("^(a+)+$").test("aaaa"), true);
  assert.equal(compileRouteRegex("^(a+)+$").test("aaaa!"), false);
  assert.equal(compileRouteRegex("(a|aa)+$").test("xaaa"), true);
  assert.equal(compileRouteRegex("(\\d*)*x").test("123x"), true);
  assert.equal(compileRouteRegex("\\d*\\d*\\d*x").test("1111"), false);
});

Deno.test("normal route regexes run on native RegExp and match", () => {
  const v = compileRouteRegex("^/v[0-9]+/users/[^/]+$");
  assert.equal(v.engine, "native", v.note);
  assert.equal(v.test("/v12/users/bob"), true);
  assert.equal(v.test("/v12/users/bob/x"), false);
  assert.equal(v.test("/vx/users/bob"), false);
  const alt = compileRouteRegex("^/(api|internal)/");
  assert.equal(alt.engine, "native", alt.note);
  assert.equal(alt.test("/api/x"), true);
  assert.equal(alt.test("/internal/"), true);
  assert.equal(alt.test("/apix/"), false);
  const ext = compileRouteRegex("\\.(png|jpg)$");
  assert.equal(ext.engine, "native", ext.note);
  assert.equal(ext.test("/img/a.jpg"), true);
  assert.equal(ext.test("/img/a.gif"), false);
});

Deno.test("deterministic-subset patterns stay linear on native RegExp", () => {
  for (
    const pattern of [
      "^/v[0-9]+/users/[^/]+$",
      "^/[a-z]*[0-9]*$",
      "^/a?b?c?d?e?f?g?h?i?j?k?l?m?n?o?p?$",
      "^/files/[^/]+/[^/.]+\\.txt$",
    ]
  ) {
    const re = compileRouteRegex(pattern);
    assert.equal(re.engine, "native", `${pattern}: ${re.note}`);
    for (const body of ["a", "1", "/", "x", "."]) {
      const input = "/" + body.repeat(30_000) + "!";
      const t0 = performance.now();
      re.test(input);
      assert.ok(performance.now() - t0 < 1000, pattern);
    }
  }
});

Deno.test("overlapping or unanchored unbounded patterns are left to RE2", () => {
  for (
    const [pattern, why] of [
      ["^/static/.*\\.css$", /overlaps what follows/],
      ["^\\d*\\d*x", /overlaps what follows/],
      ["[0-9]+x", /unanchored/],
      ["^(a+)+$", /nested quantifier \(a\+\)\+ can backtrack exponentially/],
      ["^(ab)*$", /quantified group/],
      ["^/(a|b+)$", /alternation/],
      ["(?i)^/api", /group flags/],
      ["^a\\sb", /\\s/],
      ["^a|^b", /alternation/],
      ["^/a?a$", /overlaps/],
    ] as const
  ) {
    const re = compileRouteRegex(pattern);
    assert.equal(re.engine, "re2", pattern);
    assert.match(re.note, why, pattern);
  }
  assert.equal(compileRouteRegex("(?i)^/API").test("/api"), true);
});

Deno.test("native and RE2 engines agree on ASCII inputs", () => {
  const cases: [string, string, boolean][] = [
    ["^/a.c$", "/a\rc", true],
    ["^/a.c$", "/a\nc", false],
    ["^/[\\w-]+$", "/a-b_c", true],
    ["^/[^a-c]$", "/d", true],
    ["^/\\-\\@x$", "/-@x", true],
    ["^/[\\]x]$", "/]", true],
    ["^/.$", "/\u{1F600}", true],
  ];
  for (const [pattern, input, expected] of cases) {
    const re = compileRouteRegex(pattern);
    assert.equal(re.engine, "native", `${pattern}: ${re.note}`);
    assert.equal(re.test(input), expected, `${pattern} on ${JSON.stringify(input)}`);
  }
});

Deno.test("backreferences and lookaround are refused with a reason", () => {
  for (
    const [pattern, reason] of [
      ["^(a)\\1$", /backreference \\1/],
      ["^(?<x>a)\\k<x>$", /named backreference/],
      ["^/api(?=/)", /lookahead/],
      ["^/api(?!/)", /lookahead/],
      ["(?<=/)api", /lookbehind/],
      ["(?<!/)api", /lookbehind/],
    ] as const
  ) {
    assert.throws(() => compileRouteRegex(pattern), (e: unknown) => {
      assert.ok(e instanceof UnsafeRegexError, pattern);
      assert.match(e.reason, reason);
      return true;
    });
  }
  // Inside a class, "\1" is not a backreference (RE2 still refuses it as syntax).
  assert.throws(() => compileRouteRegex("[\\1]"), RegexSyntaxError);
});

Deno.test("invalid patterns throw RegexSyntaxError (a SyntaxError)", () => {
  for (const pattern of ["[", "(a", "a)", "*a", "a{2,1}", "\\u0041", "a{1001}"]) {
    assert.throws(() => compileRouteRegex(pattern), (e: unknown) => {
      assert.ok(e instanceof SyntaxError, pattern);
      assert.ok(e instanceof RegexSyntaxError, pattern);
      return true;
    });
  }
  assert.throws(() => compileRouteRegex("a".repeat(5000)), UnsafeRegexError);
});

Deno.test("replace expands \\N and $N group references on both engines", () => {
  const native = compileRouteRegex("^/v([0-9]+)/users/([^/]+)$");
  assert.equal(native.engine, "native");
  assert.equal(native.replace("/v2/users/bob", "/users/\\2?v=\\1"), "/users/bob?v=2");
  assert.equal(native.replace("/v2/users/bob", "/users/$2/$1$$\\\\"), "/users/bob/2$\\");
  assert.equal(native.replace("/x", "/y"), "/x", "no match leaves the input alone");
  const re2 = compileRouteRegex("^/(?i)V([0-9]+)/(.*)$");
  assert.equal(re2.engine, "re2");
  assert.equal(re2.replace("/v3/a/b", "/\\2@\\1"), "/a/b@3");
  assert.equal(re2.replace("/v3/a/b", "[$0]"), "[/v3/a/b]");
  assert.equal(re2.replace("/nomatch", "x"), "/nomatch");
});

Deno.test("replace substitutes every non-overlapping match, unmatched groups empty", () => {
  const native = compileRouteRegex("a(b)?");
  assert.equal(native.engine, "native");
  assert.equal(native.replace("xabxa", "[\\1]"), "x[b]x[]");
  const re2 = compileRouteRegex("(?:a)+(b)?");
  assert.equal(re2.engine, "re2");
  assert.equal(re2.replace("xaabxa", "[\\1]"), "x[b]x[]");
  assert.equal(compileRouteRegex("x*").replace("abxxc", "-"), "abxxc".replace(/x*/g, "-"));
});

Deno.test("native fast path agrees with RE2 on random patterns and inputs", () => {
  const token = fc.constantFrom(
    "a",
    "b",
    "/",
    "[ab]",
    "[^a]",
    ".",
    "a*",
    "b+",
    "a?",
    "(a|b)",
    "(ab)",
    "\\d",
    "x{2}",
    "(a|bc)?",
    "[a-c]{1,3}",
    "\\.",
    "(?:b)",
    "\\w+",
    "\\-",
  );
  fc.assert(
    fc.property(
      fc.boolean(),
      fc.array(token, { minLength: 1, maxLength: 6 }),
      fc.boolean(),
      fc.array(fc.string({ unit: fc.constantFrom("a", "b", "c", "x", "1", "/", ".", "-") })),
      (start, body, end, inputs) => {
        const pattern = (start ? "^" : "") + body.join("") + (end ? "$" : "");
        const re = compileRouteRegex(pattern);
        const reference = RE2JS.compile(pattern);
        for (const input of inputs) {
          assert.equal(re.test(input), reference.test(input), `${pattern} (${re.engine}) ${input}`);
          assert.equal(re.replace(input, "<$1>"), referenceReplace(reference, input), pattern);
        }
      },
    ),
    { numRuns: 1000 },
  );
});

function referenceReplace(re: RE2JS, input: string): string {
  const m = re.matcher(input);
  let out = "";
  let last = 0;
  while (m.find()) {
    out += input.slice(last, m.start()) + "<" + (re.groupCount() >= 1 ? m.group(1) ?? "" : "") +
      ">";
    last = m.end();
  }
  return out + input.slice(last);
}

Deno.test("patterns the subset check sends to native RegExp stay fast on hostile input", () => {
  const token = fc.constantFrom(
    "a",
    "b",
    "/",
    "[ab]",
    "[^a]",
    ".",
    "a*",
    "b+",
    "a?",
    "(a|b)",
    "(ab)",
    "\\d*",
    "x{2}",
    "(a|ab)?",
    "[a-c]{1,3}",
    "(a*)",
    "(?:b+)",
    "\\w+",
    "a*?",
    "[^/]+",
  );
  const hostile = ["a", "b", "ab", "/", "1", "aab"].map((s) =>
    s.repeat(Math.ceil(20_000 / s.length))
  );
  let native = 0;
  fc.assert(
    fc.property(
      fc.boolean(),
      fc.array(token, { minLength: 1, maxLength: 6 }),
      fc.boolean(),
      (start, body, end) => {
        const pattern = (start ? "^" : "") + body.join("") + "!?z" + (end ? "$" : "");
        const re = compileRouteRegex(pattern);
        if (re.engine !== "native") return;
        native++;
        for (const input of hostile) {
          const t0 = performance.now();
          re.test(input);
          const ms = performance.now() - t0;
          assert.ok(ms < 250, `${pattern} took ${ms.toFixed(1)} ms`);
        }
      },
    ),
    { numRuns: 500 },
  );
  assert.ok(native > 50, `only ${native} patterns took the native path`);
});
