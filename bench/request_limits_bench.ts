/**
 * The per-request cost of the handler's size checks (candidate A of docs/connections.md):
 * counting a typical header block, and the body-limit decision for a bodiless request.
 */
import { checkHeaderLimits, limitBody } from "../src/server/request_limits.ts";
import { printNoSeed } from "./seeds.ts";

printNoSeed("request size checks");

const headers = new Headers([
  ["host", "api.example.com"],
  ["user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"],
  ["accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
  ["accept-language", "en-GB,en;q=0.5"],
  ["accept-encoding", "gzip, deflate, br"],
  ["cookie", "session=0123456789abcdef; theme=dark"],
  ["x-request-id", "5f0c7d1e-8a7b-4c1d-9e2f-3a4b5c6d7e8f"],
  ["connection", "keep-alive"],
]);
const get = new Request("http://api.example.com/x", { headers });

Deno.bench("checkHeaderLimits: 8 typical request headers", () => {
  checkHeaderLimits(headers, 12 * 1024, 100);
});

Deno.bench("limitBody: a GET without a body", () => {
  limitBody(get, 10 * 1024 * 1024);
});
