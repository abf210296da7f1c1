/**
 * Routing micro-benchmarks: `deno bench --allow-all bench/router_bench.ts`.
 * Reference (Rust ServiceMesh, Apple M1): exact 30M, prefix 25M, regex 5M ops/s.
 */
import type { RouteMatchConfig } from "../src/config/schema.ts";
import { normalizeHost, normalizePath } from "../src/routing/path.ts";
import { type MatchInput, Router } from "../src/routing/router.ts";
import { printNoSeed, printSeeds } from "./seeds.ts";

printSeeds(["router exact", "router prefix", "router regex"]);
printNoSeed("normalizePath / normalizeHost");

const SERVICES = [
  "users",
  "orders",
  "billing",
  "search",
  "catalog",
  "cart",
  "auth",
  "media",
  "reviews",
  "ship",
  "stock",
  "price",
  "promo",
  "notify",
  "report",
  "audit",
  "admin",
  "config",
  "health",
  "feed",
  "graph",
  "chat",
  "mail",
  "maps",
  "video",
];

const routes: { name: string; index: number; match: RouteMatchConfig; value: string }[] = [];
const add = (name: string, match: RouteMatchConfig) =>
  routes.push({ name, index: routes.length, match, value: name });
// ~50 prefix routes: /api/<svc>/ and /api/v2/<svc>/, plus exact health checks and regexes.
for (const s of SERVICES) add(`p-${s}`, { path: { prefix: `/api/${s}/` } });
for (const s of SERVICES) add(`p2-${s}`, { path: { prefix: `/api/v2/${s}/` } });
for (const s of SERVICES.slice(0, 10)) add(`e-${s}`, { path: { exact: `/${s}/healthz` } });
add("r-users", { path: { regex: "^/v[0-9]+/users/[^/]+$" } });
add("r-items", { path: { regex: "^/v[0-9]+/items/[0-9]+$" } });
add("site", { host: "www.example.com", path: { prefix: "/" } });
const router = Router.compile(routes);

const input = (path: string): MatchInput => ({
  method: "GET",
  host: "api.example.com",
  path,
  headers: new Headers(),
  search: "",
});
const exactReq = input("/orders/healthz");
const prefixReq = input("/api/v2/reviews/123/comments");
const regexReq = input("/v3/items/42");

if (router.match(exactReq) !== "e-orders") throw new Error("exact setup");
if (router.match(prefixReq) !== "p2-reviews") throw new Error("prefix setup");
if (router.match(regexReq) !== "r-items") throw new Error("regex setup");

Deno.bench("router: exact match (60 routes)", { group: "router" }, () => {
  router.match(exactReq);
});
Deno.bench("router: prefix match (50 prefixes)", { group: "router" }, () => {
  router.match(prefixReq);
});
Deno.bench("router: regex match (after 50 prefixes)", { group: "router" }, () => {
  router.match(regexReq);
});

// The same request with 450 more prefixes, longer than the one it matches and sharing its
// first 9 characters: a scan would try them all first; the lookup should not slow down.
const many = [...routes];
for (let i = 0; i < 450; i++) {
  many.push({
    name: `p3-${i}`,
    index: many.length,
    match: { path: { prefix: `/api/v2/r${i}/items/` } },
    value: `p3-${i}`,
  });
}
const manyRouter = Router.compile(many);
if (manyRouter.match(prefixReq) !== "p2-reviews") throw new Error("500 prefixes setup");
Deno.bench("router: prefix match (500 prefixes)", { group: "router" }, () => {
  manyRouter.match(prefixReq);
});

Deno.bench("normalizePath: fast path (clean path)", { group: "path" }, () => {
  normalizePath("/api/v2/reviews/123/comments");
});
Deno.bench("normalizePath: slow path (%2e, //, ..)", { group: "path" }, () => {
  normalizePath("/api//v2/%2e%2E/reviews/./123/comments%2fx");
});
Deno.bench("normalizeHost: lower-case host", { group: "host" }, () => {
  normalizeHost("api.example.com");
});
Deno.bench("normalizeHost: mixed case with port", { group: "host" }, () => {
  normalizeHost("API.Example.com:8443");
});
