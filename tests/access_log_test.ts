/** Access log lines for proxied, proxy-made and sampled-out requests, read back from a file. */
import assert from "node:assert/strict";
import { rawRequest, startFerry, startUpstream } from "./helpers.ts";

async function linesOf(px: ReturnType<typeof startFerry>, file: string) {
  // Lines are written once each response completes, then flushed in batches.
  await new Promise((r) => setTimeout(r, 50));
  await px.ferry.snapshot.accessLog!.writer.flush();
  const text = await Deno.readTextFile(file);
  return text.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l));
}

Deno.test("every request gets one JSON line with id, status, route, endpoint and flags", async () => {
  const up = startUpstream(() => new Response("hello", { headers: { "content-length": "5" } }));
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const dead = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadUrl = `http://127.0.0.1:${(dead.addr as Deno.NetAddr).port}`;
  dead.close();
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
access_log: { path: "${file}" }
routes:
  - { name: ok, match: { path: { prefix: /ok } }, cluster: up }
  - { name: down, match: { path: { prefix: /down } }, cluster: gone }
clusters:
  - { name: up, endpoints: ["{{U}}"] }
  - { name: gone, endpoints: ["${deadUrl}"] }
`,
    { U: up.url },
  );
  try {
    const ok = await fetch(`${px.url}/ok?q=1`, { headers: { "user-agent": "t/1" } });
    assert.equal(await ok.text(), "hello");
    const nr = await fetch(`${px.url}/nope`);
    await nr.body?.cancel();
    const uf = await fetch(`${px.url}/down`);
    await uf.body?.cancel();
    const lines = await linesOf(px, file);
    assert.equal(lines.length, 3);
    const [a, b, c] = lines;
    assert.equal(a.request_id, ok.headers.get("x-request-id"));
    assert.equal(a.status, 200);
    assert.equal(a.path, "/ok?q=1");
    assert.equal(a.route, "ok");
    assert.equal(a.cluster, "up");
    assert.equal(a.endpoint, up.url);
    assert.equal(a.attempts, 1);
    assert.equal(a.flags, "-");
    assert.equal(a.bytes_out, 5);
    assert.equal(a.user_agent, "t/1");
    assert.equal(typeof a.duration_ms, "number");
    assert.equal(typeof a.upstream_ms, "number");
    assert.equal(b.status, 404);
    assert.equal(b.flags, "NR");
    assert.equal(b.request_id, nr.headers.get("x-request-id"));
    assert.equal(c.status, 502);
    assert.equal(c.flags, "UF", "the same flag as the error body");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("sampling drops ordinary lines but never proxy-made errors; fields can be chosen", async () => {
  const up = startUpstream(() => new Response("x"));
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
access_log: { path: "${file}", sample: 0, fields: [request_id, status, flags] }
routes: [{ name: ok, match: { path: { prefix: /ok } }, cluster: up }]
clusters: [{ name: up, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    for (let i = 0; i < 5; i++) await (await fetch(`${px.url}/ok`)).body?.cancel();
    await (await fetch(`${px.url}/missing`)).body?.cancel();
    const lines = await linesOf(px, file);
    assert.equal(lines.length, 1);
    assert.deepEqual(Object.keys(lines[0]).sort(), ["flags", "request_id", "status"]);
    assert.equal(lines[0].flags, "NR");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("a retry the retry budget refuses is flagged URX in the access log; a retry it allows is not", async () => {
  // Per path: the first call is a 503, the next one a 200.
  const calls = new Map<string, number>();
  const up = startUpstream((req) => {
    const path = new URL(req.url).pathname;
    calls.set(path, (calls.get(path) ?? 0) + 1);
    return calls.get(path) === 1 ? new Response("busy", { status: 503 }) : new Response("ok");
  });
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
access_log: { path: "${file}" }
routes:
  - name: stingy
    match: { path: { prefix: /stingy } }
    cluster: stingy
    retry: { retries: 2, retry_on: [gateway-error], backoff: { base: 1ms, max: 2ms } }
  - name: generous
    match: { path: { prefix: /generous } }
    cluster: generous
    retry: { retries: 2, retry_on: [gateway-error], backoff: { base: 1ms, max: 2ms } }
clusters:
  - { name: stingy, endpoints: ["{{U}}"], retry_budget: { percent: 0, min_retries: 0 } }
  - { name: generous, endpoints: ["{{U}}"] }
`,
    { U: up.url },
  );
  try {
    const refused = await fetch(`${px.url}/stingy`);
    assert.equal(refused.status, 503, "no retry allowed: the upstream's 503 is returned");
    await refused.body?.cancel();
    const retried = await fetch(`${px.url}/generous`);
    assert.equal(await retried.text(), "ok");
    const [a, b] = await linesOf(px, file);
    assert.equal(a.route, "stingy");
    assert.equal(a.attempts, 1);
    assert.equal(a.flags, "URX");
    assert.equal(b.route, "generous");
    assert.equal(b.attempts, 2);
    assert.equal(b.flags, "-");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("behind trusted proxies the logged client is the rightmost untrusted X-Forwarded-For hop", async () => {
  const up = startUpstream(() => new Response("x"));
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
server: { trusted_proxies: [127.0.0.0/8, 10.0.0.0/8] }
access_log: { path: "${file}", fields: [client, status] }
routes: [{ name: ok, match: { path: { prefix: / } }, cluster: up }]
clusters: [{ name: up, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    // 6.6.6.6 is whatever the client wrote; 203.0.113.7 is what the first trusted proxy saw.
    const res = await fetch(px.url, {
      headers: { "x-forwarded-for": "6.6.6.6, 203.0.113.7, 10.0.0.2" },
    });
    await res.body?.cancel();
    const [line] = await linesOf(px, file);
    assert.equal(line.client, "203.0.113.7");
  } finally {
    await px.close();
    await up.close();
  }
});

/** Raw lines (not JSON) of a text-format access log. */
async function textLinesOf(px: ReturnType<typeof startFerry>, file: string) {
  await new Promise((r) => setTimeout(r, 50));
  await px.ferry.snapshot.accessLog!.writer.flush();
  return (await Deno.readTextFile(file)).split("\n").filter(Boolean);
}

Deno.test("format: combined writes Apache/nginx combined lines", async () => {
  const up = startUpstream(() => new Response("hello", { headers: { "content-length": "5" } }));
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
access_log: { path: "${file}", format: combined }
routes: [{ name: ok, match: { path: { prefix: /ok } }, cluster: up }]
clusters: [{ name: up, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    const ok = await fetch(`${px.url}/ok?q=1`, {
      headers: { "user-agent": 'agent "quoted"', referer: "http://ref.example/" },
    });
    assert.equal(await ok.text(), "hello");
    await (await fetch(`${px.url}/missing`, { headers: { "user-agent": "t/2" } })).body?.cancel();
    const [a, b] = await textLinesOf(px, file);
    assert.match(
      a!,
      /^127\.0\.0\.1 - - \[\d\d\/[A-Z][a-z]{2}\/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET \/ok\?q=1 HTTP\/1\.1" 200 5 "http:\/\/ref\.example\/" "agent \\x22quoted\\x22"$/,
    );
    // A proxy-made 404 without Content-Length or Referer: "-" in their places.
    assert.match(b!, /"GET \/missing HTTP\/1\.1" 404 \S+ "-" "t\/2"$/);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("a template format writes the named JSON fields, '-' for a missing one", async () => {
  const up = startUpstream(() => new Response("x"));
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
access_log:
  path: "${file}"
  format: "$method $path $status $duration_ms route=\${route}/$flags $$5"
routes: [{ name: ok, match: { path: { prefix: /ok } }, cluster: up }]
clusters: [{ name: up, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    await (await fetch(`${px.url}/ok/a`)).body?.cancel();
    await (await fetch(`${px.url}/nope`, { method: "DELETE" })).body?.cancel();
    const [a, b] = await textLinesOf(px, file);
    assert.match(a!, /^GET \/ok\/a 200 \d+(\.\d+)? route=ok\/- \$5$/);
    assert.match(b!, /^DELETE \/nope 404 \d+(\.\d+)? route=-\/NR \$5$/);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("CONNECT, TRACE and a lower-case get on HTTP/1.1 are refused through the handler: logged with the method as sent", async () => {
  let upstreamCalls = 0;
  const up = startUpstream(() => {
    upstreamCalls++;
    return new Response("x");
  });
  const dir = await Deno.makeTempDir();
  const file = `${dir}/access.log`;
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
access_log: { path: "${file}" }
routes: [{ name: ok, match: { path: { prefix: / } }, cluster: up }]
clusters: [{ name: up, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    const port = Number(new URL(px.url).port);
    const sent = [
      ["CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405],
      ["TRACE", "TRACE /t HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 405],
      ["get", "get /g HTTP/1.1\r\nHost: a\r\n\r\n", 400],
    ] as const;
    const ids: string[] = [];
    for (const [, raw, status] of sent) {
      const text = await rawRequest(port, raw);
      assert.match(text, new RegExp(`^HTTP/1\\.1 ${status} `));
      ids.push(/x-request-id: (\S+)/i.exec(text)![1]!);
    }
    const lines = await linesOf(px, file);
    assert.equal(lines.length, 3, "one line per refused request");
    sent.forEach(([method, , status], i) => {
      assert.equal(lines[i].method, method);
      assert.equal(lines[i].status, status);
      assert.equal(lines[i].request_id, ids[i]);
      assert.equal(lines[i].flags, status === 405 ? "NR" : "DPE");
    });
    assert.equal(upstreamCalls, 0, "nothing of them reaches the upstream");
  } finally {
    await px.close();
    await up.close();
  }
});
