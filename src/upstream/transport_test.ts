import assert from "node:assert/strict";
import { ProxyError } from "../pipeline/errors.ts";
import { checkUpstreamHead, classifyUpstreamError, clientBodyError } from "./transport.ts";

const kindOf = (f: () => unknown) => {
  try {
    f();
  } catch (err) {
    return err instanceof ProxyError ? err.kind : `not a ProxyError: ${err}`;
  }
  return "accepted";
};

Deno.test("checkUpstreamHead: statuses Response cannot carry and ambiguous framing are UPE", () => {
  const h = (init: Record<string, string>) => new Headers(init);
  for (const status of [0, 99, 100, 199, 600, 999]) {
    assert.equal(kindOf(() => checkUpstreamHead(status, h({}))), "upstream_protocol_error");
  }
  for (const status of [101, 200, 404, 599]) {
    assert.equal(kindOf(() => checkUpstreamHead(status, h({}))), "accepted", String(status));
  }
  const bad = [
    { "content-length": "2", "transfer-encoding": "chunked" },
    { "transfer-encoding": "gzip" },
    { "transfer-encoding": "gzip, chunked" },
    { "content-length": "2, 5" },
    { "content-length": "-1" },
    { "content-length": "1e3" },
  ];
  for (const init of bad) {
    assert.equal(kindOf(() => checkUpstreamHead(200, h(init))), "upstream_protocol_error");
  }
  assert.equal(checkUpstreamHead(200, h({ "content-length": "5, 5" })), "5");
  assert.equal(checkUpstreamHead(200, h({ "content-length": "7" })), "7");
  assert.equal(checkUpstreamHead(200, h({ "transfer-encoding": "Chunked" })), null);
  assert.equal(checkUpstreamHead(200, h({})), null);
});

Deno.test("classifyUpstreamError: node codes and Deno error classes by type, fetch text by words", () => {
  const live = new AbortController().signal;
  const withCode = (code: string) => Object.assign(new Error("x"), { code });
  const cases: [unknown, string][] = [
    [withCode("ECONNREFUSED"), "upstream_connect_failure"],
    [withCode("ENOTFOUND"), "upstream_connect_failure"],
    [withCode("ERR_TLS_CERT_ALTNAME_INVALID"), "upstream_connect_failure"],
    [withCode("UNABLE_TO_VERIFY_LEAF_SIGNATURE"), "upstream_connect_failure"],
    [withCode("ECONNRESET"), "upstream_reset"],
    [withCode("HPE_INVALID_CONSTANT"), "upstream_protocol_error"],
    [new Deno.errors.ConnectionRefused("no"), "upstream_connect_failure"],
    [new Deno.errors.ConnectionReset("no"), "upstream_reset"],
    [
      new TypeError("fetch failed", {
        cause: new Error("connection closed before message completed"),
      }),
      "upstream_reset",
    ],
    [
      new TypeError("fetch failed", { cause: new Error("invalid HTTP status-code parsed") }),
      "upstream_protocol_error",
    ],
    // A typed error of Ferry's own, wrapped by fetch, is kept.
    [
      new TypeError("fetch failed", { cause: new ProxyError("payload_too_large", "big") }),
      "payload_too_large",
    ],
  ];
  for (const [err, kind] of cases) {
    assert.equal(classifyUpstreamError(err, live).kind, kind, String((err as Error).message));
  }
});

Deno.test("clientBodyError: the limit's own 413 is kept, anything else is the client going away", () => {
  assert.equal(clientBodyError(new ProxyError("payload_too_large", "x")).kind, "payload_too_large");
  assert.equal(clientBodyError(new Deno.errors.BadResource("gone")).kind, "client_closed");
});
