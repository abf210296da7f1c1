import assert, { deepStrictEqual as assertEquals } from "node:assert/strict";
import { buildRequest, innerRequests } from "./request_in.ts";

const encoder = new TextEncoder();

function streamOf(...chunks: string[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(ctl) {
      for (const c of chunks) ctl.enqueue(encoder.encode(c));
      ctl.close();
    },
  });
}

Deno.test("the server's Request is built from Deno's internals on this Deno", () => {
  // If this fails, a Deno upgrade changed the Request's shape: the public constructor is used
  // (correct, but the per-request cost measured in docs/PERFORMANCE.md comes back).
  assert(innerRequests());
});

Deno.test("a built Request reads back as the public constructor's would", async () => {
  const headers: [string, string][] = [
    ["host", "example.com"],
    ["x-b", "2"],
    ["x-a", "1"],
    ["x-b", "3"],
    ["content-type", "text/plain"],
  ];
  const ctl = new AbortController();
  const built = buildRequest(
    "POST",
    "http://example.com/a/../b?q=1",
    headers.map(([n, v]) => [n, v]),
    streamOf("he", "llo"),
    ctl.signal,
  );
  const ctl2 = new AbortController();
  const made = new Request("http://example.com/a/../b?q=1", {
    method: "POST",
    headers,
    body: streamOf("he", "llo"),
    signal: ctl2.signal,
    duplex: "half",
  } as RequestInit);
  assert(built instanceof Request);
  assertEquals(built.method, made.method);
  assertEquals(built.url, made.url);
  assertEquals(built.url, "http://example.com/b?q=1");
  assertEquals([...built.headers], [...made.headers]);
  assertEquals(built.headers.get("x-b"), "2, 3");
  assertEquals(built.bodyUsed, false);
  assertEquals(await built.text(), await made.text());
  assertEquals(built.bodyUsed, true);
  // The signal is the connection's own: aborting it aborts req.signal with the same reason.
  assertEquals(built.signal.aborted, false);
  const reason = new DOMException("gone", "AbortError");
  ctl.abort(reason);
  assert(built.signal.aborted);
  assertEquals(built.signal.reason, reason);
});

Deno.test("a built Request without a body, copied, cloned, and with an URL the parser refuses", () => {
  const ctl = new AbortController();
  const req = buildRequest("GET", "https://h:8443/p", [["host", "h:8443"]], null, ctl.signal);
  assertEquals(req.body, null);
  assertEquals(req.url, "https://h:8443/p");
  const copy = new Request(req, { headers: { "x-c": "1" } });
  assertEquals(copy.url, "https://h:8443/p");
  assertEquals([...copy.headers], [["x-c", "1"]]);
  const clone = req.clone();
  assertEquals(clone.headers.get("host"), "h:8443");
  ctl.abort();
  assert(clone.signal.aborted, "a clone follows the original's signal");
  assert(copy.signal.aborted, "a copy follows the original's signal");
  const bad = buildRequest("GET", "http://a b/", [["host", "a b"]], null, ctl.signal);
  assertEquals(bad.url, "http://invalid.invalid/");
  // Request.url is made when read: a handler that never reads it never pays for the parse.
  assertEquals(bad.method, "GET");
});

Deno.test("fetch sends a built Request as it is (method, headers, streamed body)", async () => {
  const seen: { method: string; headers: [string, string][]; body: string }[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    seen.push({ method: req.method, headers: [...req.headers], body: await req.text() });
    return new Response("ok");
  });
  try {
    const url = `http://127.0.0.1:${server.addr.port}/up`;
    const req = buildRequest(
      "PUT",
      url,
      [["x-a", "1"], ["content-length", "5"]],
      streamOf("abc", "de"),
      new AbortController().signal,
    );
    const res = await fetch(req);
    assertEquals(await res.text(), "ok");
    assertEquals(seen.length, 1);
    assertEquals(seen[0]!.method, "PUT");
    assertEquals(seen[0]!.body, "abcde");
    assert(seen[0]!.headers.some(([n, v]) => n === "x-a" && v === "1"));
  } finally {
    await server.shutdown();
  }
});
