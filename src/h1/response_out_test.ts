import assert from "node:assert/strict";
import { responseFor, responseOut } from "./response_out.ts";
import { attachTicket, DownstreamLink } from "../pipeline/downstream.ts";

const pairs: [string, string][] = [
  ["content-type", "text/plain"],
  ["set-cookie", "a=1"],
  ["x-request-id", "r1"],
  ["set-cookie", "b=2"],
];

function ownServerRequest(): Request {
  const req = new Request("http://h/p");
  attachTicket(req, { link: new DownstreamLink(), abandoned: false, url: "http://h/p" });
  return req;
}

Deno.test("responseFor: the own server's Response has the constructor's lines, status and body", async () => {
  for (const req of [ownServerRequest(), new Request("http://h/p")]) {
    for (const status of [200, 404]) {
      const body = new TextEncoder().encode("hello");
      const init = { status, statusText: "Some Text", headers: pairs };
      const made = new Response(body, init);
      const res = responseFor(req, body, init);
      assert.equal(res.status, made.status);
      assert.equal(res.statusText, made.statusText);
      assert.deepEqual([...res.headers], [...made.headers]);
      // The lines and body as the server writes them: in order, repeats kept.
      const out = responseOut(res);
      assert.deepEqual(out.headers, pairs);
      assert.equal(new TextDecoder().decode(out.body as Uint8Array), await made.text());
    }
  }
});

Deno.test("responseFor: lines Headers refuses are refused the same way", () => {
  for (const req of [ownServerRequest(), new Request("http://h/p")]) {
    for (const bad of [["x-a", "1\r\nx-b: 2"], ["bad name", "1"], ["x-a", "\u0100"]]) {
      assert.throws(
        () =>
          responseFor(req, null, {
            status: 200,
            statusText: "",
            headers: [bad as [string, string]],
          }),
        TypeError,
      );
    }
    assert.throws(
      () => responseFor(req, "x", { status: 204, statusText: "", headers: [] }),
      TypeError,
      "a null-body status with a body",
    );
  }
});
