/**
 * Request size limits answered from the one error table, the same way on HTTP/1.1 and HTTP/2
 * (curl --http2-prior-knowledge): 413 for bodies, 431 for header size and count, 414 for targets.
 */
import assert from "node:assert/strict";
import { catchAllConfig, rawRequest, run, startFerry, startUpstream } from "./helpers.ts";

const LIMITS = `server:
  max_body_bytes: 1000
  max_header_bytes: 2048
  max_headers: 20
  max_uri_bytes: 1024
`;

/** curl over h1 or h2c; returns status, the JSON body and the x-ferry-flag header. */
async function curl(url: string, h2: boolean, args: string[], stdin?: Uint8Array) {
  const r = await run("curl", [
    "-sS",
    "-D",
    "-",
    ...(h2 ? ["--http2-prior-knowledge"] : ["--http1.1"]),
    ...args,
    url,
  ], stdin ? { stdin } : {});
  const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(r.stdout)?.[1]);
  if (Number.isNaN(status)) {
    return { status, flag: undefined, body: {}, text: `curl ${r.code}: ${r.stderr}` };
  }
  const flag = /^x-ferry-flag: (\S+)/im.exec(r.stdout)?.[1];
  const bodyText = r.stdout.slice(r.stdout.indexOf("\r\n\r\n") + 4);
  let body: { reason?: string } = {};
  try {
    body = JSON.parse(bodyText);
  } catch { /* not JSON */ }
  return { status, flag, body, text: bodyText };
}

function withUpstream(fn: (url: string, port: number, hits: () => number) => Promise<void>) {
  return async () => {
    let hits = 0;
    const up = startUpstream(async (req) => {
      hits++;
      const body = req.body ? await req.arrayBuffer() : new ArrayBuffer(0);
      return new Response(`got ${body.byteLength}`);
    });
    const px = startFerry(catchAllConfig(LIMITS), { UP: up.url });
    try {
      await fn(px.url, px.port, () => hits);
    } finally {
      await px.close();
      await up.close();
    }
  };
}

for (const h2 of [false, true]) {
  const proto = h2 ? "HTTP/2" : "HTTP/1.1";

  Deno.test(
    `${proto}: a body over max_body_bytes is 413 (Content-Length and streamed), one within is forwarded`,
    withUpstream(async (url) => {
      const ok = await curl(`${url}/up`, h2, ["--data-binary", "x".repeat(1000)]);
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.text, "got 1000");

      const declared = await curl(`${url}/up`, h2, ["--data-binary", "x".repeat(1001)]);
      assert.equal(declared.status, 413, declared.text);
      assert.equal(declared.flag, "DPE");
      assert.match(declared.body.reason ?? "", /larger than 1000 bytes/);

      // No Content-Length: chunked on HTTP/1.1, plain DATA frames on HTTP/2 (curl -T -).
      const streamedArgs = h2
        ? ["-T", "-", "-X", "POST"]
        : ["-H", "Transfer-Encoding: chunked", "--data-binary", "@-"];
      const streamed = await curl(
        `${url}/up`,
        h2,
        streamedArgs,
        new TextEncoder().encode("y".repeat(50_000)),
      );
      assert.equal(streamed.status, 413, streamed.text);
      assert.match(streamed.body.reason ?? "", /larger than 1000 bytes/);

      const smallStreamed = await curl(
        `${url}/up`,
        h2,
        streamedArgs,
        new TextEncoder().encode("z".repeat(900)),
      );
      assert.equal(smallStreamed.status, 200, smallStreamed.text);
      assert.equal(smallStreamed.text, "got 900");
    }),
  );

  Deno.test(
    `${proto}: header size and count over the limits are 431 with the same JSON`,
    withUpstream(async (url, _port, hits) => {
      const big = await curl(url, h2, ["-H", `X-Big: ${"b".repeat(3000)}`]);
      assert.equal(big.status, 431);
      assert.equal(big.flag, "DPE");
      assert.match(
        big.body.reason ?? "",
        /header fields of \d+ bytes, more than the limit of 2048/,
      );

      const many = Array.from({ length: 25 }, (_, i) => ["-H", `X-N${i}: v`]).flat();
      const count = await curl(url, h2, many);
      assert.equal(count.status, 431);
      assert.match(count.body.reason ?? "", /header fields, more than the limit of 20/);
      assert.equal(hits(), 0, "nothing was forwarded");
    }),
  );

  Deno.test(
    `${proto}: a target over max_uri_bytes is 414`,
    withUpstream(async (url, _port, hits) => {
      const long = await curl(`${url}/${"u".repeat(1100)}`, h2, []);
      assert.equal(long.status, 414);
      assert.match(long.body.reason ?? "", /longer than 1024 bytes/);
      const fine = await curl(`${url}/${"u".repeat(900)}`, h2, []);
      assert.equal(fine.status, 200);
      assert.equal(hits(), 1);
    }),
  );
}

Deno.test(
  "an HTTP/1.1 head over Deno's own parser limit gets the guard's 431, not a bare 400",
  withUpstream(async (_url, port, hits) => {
    const headers = Array.from({ length: 70 }, (_, i) => `X-H${i}: ${"v".repeat(1000)}\r\n`);
    const res = await rawRequest(port, `GET / HTTP/1.1\r\nHost: a\r\n${headers.join("")}\r\n`);
    assert.match(res, /^HTTP\/1\.1 431 /);
    assert.match(res, /"flag":"DPE"/);
    const lines = Array.from({ length: 140 }, (_, i) => `X-L${i}: v\r\n`);
    const res2 = await rawRequest(port, `GET / HTTP/1.1\r\nHost: a\r\n${lines.join("")}\r\n`);
    assert.match(res2, /^HTTP\/1\.1 431 /);
    assert.equal(hits(), 0);
  }),
);

Deno.test(
  "HTTP/1.1: exactly max_headers header fields pass; one more is 431",
  withUpstream(async (_url, port, hits) => {
    // Host + Connection + the X- lines: `fields` header fields in all.
    const request = (fields: number) =>
      `GET /count HTTP/1.1\r\nHost: a\r\nConnection: close\r\n` +
      Array.from({ length: fields - 2 }, (_, i) => `X-N${i}: v\r\n`).join("") + "\r\n";
    const atLimit = await rawRequest(port, request(20));
    assert.match(atLimit, /^HTTP\/1\.1 200 /, "20 fields, the limit itself");
    assert.equal(hits(), 1);
    const over = await rawRequest(port, request(21));
    assert.match(over, /^HTTP\/1\.1 431 /);
    assert.match(over, /21 header fields, more than the limit of 20/);
    assert.equal(hits(), 1, "nothing forwarded over the limit");
  }),
);
