/**
 * Per-request pieces of Ferry's own HTTP/1.1 server (src/h1/server.ts), each against what it
 * replaced (docs/PERFORMANCE.md, "Ferry's own HTTP/1.1 server, per request"):
 *   deno bench --allow-all bench/own_server_bench.ts
 */
import { buildRequest } from "../src/h1/request_in.ts";
import { responseFor } from "../src/h1/response_out.ts";
import { attachTicket, DownstreamLink, downstreamTicket } from "../src/pipeline/downstream.ts";

const head: [string, string][] = [
  ["host", "127.0.0.1:8080"],
  ["user-agent", "wrk"],
  ["accept", "*/*"],
];

Deno.bench("request: new Request(url, init)", { group: "request", baseline: true }, () => {
  const ctl = new AbortController();
  const req = new Request("http://127.0.0.1:8080/", {
    method: "GET",
    headers: head,
    body: null,
    signal: ctl.signal,
    duplex: "half",
  } as RequestInit);
  req.headers.get("x-request-id");
  void req.signal;
});

Deno.bench("request: buildRequest", { group: "request" }, () => {
  const ctl = new AbortController();
  const req = buildRequest("GET", "http://127.0.0.1:8080/", head, null, ctl.signal);
  req.headers.get("x-request-id");
  void req.signal;
});

const body = new TextEncoder().encode("Hello, world!");
const lines: [string, string][] = [
  ["content-type", "text/plain;charset=UTF-8"],
  ["date", "Thu, 03 Dec 2026 19:00:00 GMT"],
  ["content-length", "13"],
  ["x-request-id", "0123456789abcdef0123456789abcdef"],
];
const plain = new Request("http://h/");
const own = new Request("http://h/");
attachTicket(own, { link: new DownstreamLink(), abandoned: false, url: "http://h/" });

Deno.bench("response: new Response(body, {headers})", { group: "response", baseline: true }, () => {
  const res = responseFor(plain, body, { status: 200, statusText: "OK", headers: lines });
  void res.headers; // the server reads the lines back
});

Deno.bench("response: responseFor an own-server request", { group: "response" }, () => {
  const res = responseFor(own, body, { status: 200, statusText: "OK", headers: lines });
  void res.headers;
});

const tickets = new WeakMap<Request, object>();
class Shell {
  a = 1;
}

Deno.bench("ticket: WeakMap entry per request", { group: "ticket", baseline: true }, () => {
  const req = new Shell() as unknown as Request;
  tickets.set(req, { abandoned: false });
  tickets.get(req);
});

Deno.bench("ticket: attachTicket (symbol property)", { group: "ticket" }, () => {
  const req = new Shell() as unknown as Request;
  attachTicket(req, { link: own as unknown as DownstreamLink, abandoned: false });
  downstreamTicket(req);
});

const pool: Uint8Array[] = [];
Deno.bench("write buffer: new Uint8Array per response", { group: "buffer", baseline: true }, () => {
  const buf = new Uint8Array(220);
  buf[0] = 1;
});

Deno.bench("write buffer: from a pool of 2 KiB", { group: "buffer" }, () => {
  const buf = pool.pop() ?? new Uint8Array(2048);
  buf.subarray(0, 220)[0] = 1;
  pool.push(buf);
});
