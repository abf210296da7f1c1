/** Access log lines for proxied, proxy-made and sampled-out requests, read back from a file. */
import assert from "node:assert/strict";
import { startFerry, startUpstream } from "./helpers.ts";

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
