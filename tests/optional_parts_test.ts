/**
 * node:tls, the gRPC listener, jose and the Redis client are imported only when the config uses
 * them (src/server/optional_parts.ts): statically, nothing main.ts or mod.ts imports reaches them;
 * at run time, a real Ferry started with a plain HTTP config has loaded none, and a reload that
 * adds a TLS listener, a gRPC listener, a JWT rule and a Redis-backed rate limit loads them then,
 * and each works.
 */
import assert from "node:assert/strict";
import * as jose from "jose";
import { DENO, ROOT, run, spawnFerry, type Started, tempConfig } from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";
import { echoClient, startEchoServer, unary } from "./grpc/peers.ts";
import { startRedis } from "./redis.ts";

/** Modules (by the end of their URL) that only an optional part may import. */
const OPTIONAL_ONLY = [
  "node:tls",
  "node:http2",
  "/jose@",
  "/ioredis@",
  "src/server/node_tls.ts",
  "src/grpc/listener.ts",
  "src/grpc/proxy.ts",
  "src/policy/jwt.ts",
  "src/policy/redis_limiter.ts",
];

interface GraphModule {
  specifier: string;
  dependencies?: {
    code?: { specifier: string };
    isDynamic?: boolean;
  }[];
}

/** Every module reachable from `entry` through static (non-type, non-dynamic) imports, or all. */
async function reachable(entry: string, withDynamic: boolean): Promise<Set<string>> {
  const out = await new Deno.Command(DENO, {
    args: ["info", "--json", entry],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.ok(out.success, new TextDecoder().decode(out.stderr));
  const graph = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    roots: string[];
    modules: GraphModule[];
    redirects: Record<string, string>;
  };
  const bySpec = new Map(graph.modules.map((m) => [m.specifier, m]));
  const resolve = (s: string) => graph.redirects[s] ?? s;
  const seen = new Set<string>();
  const todo = graph.roots.map(resolve);
  while (todo.length > 0) {
    const s = todo.pop()!;
    if (seen.has(s)) continue;
    seen.add(s);
    for (const d of bySpec.get(s)?.dependencies ?? []) {
      if (d.code && (withDynamic || !d.isDynamic)) todo.push(resolve(d.code.specifier));
    }
  }
  return seen;
}

Deno.test("optional parts: nothing main.ts or mod.ts imports statically reaches node:tls, node:http2, the gRPC listener, jose or ioredis; each is behind a dynamic import", async () => {
  for (const entry of ["main.ts", "mod.ts"]) {
    const statically = [...await reachable(entry, false)];
    for (const part of OPTIONAL_ONLY) {
      assert.deepEqual(
        statically.filter((s) => s.includes(part)),
        [],
        `${entry} imports ${part} at start-up`,
      );
    }
  }
  const all = [...await reachable("main.ts", true)];
  for (const part of OPTIONAL_ONLY.filter((p) => p !== "node:http2")) {
    assert.ok(all.some((s) => s.includes(part)), `${part} is still loadable`);
  }
});

/** What only the config validator isolate loads: the YAML parser and the schema. */
const VALIDATOR_ONLY = [
  "/yaml@",
  "/zod@",
  "src/config/schema.ts",
  "src/config/load.ts",
  "src/config/errors.ts",
];

Deno.test("optional parts: no serving isolate loads the YAML parser or the schema (zod); configs are validated in an isolate of their own", async () => {
  for (const entry of ["main.ts", "mod.ts", "src/workers/worker.ts"]) {
    const statically = [...await reachable(entry, false)];
    assert.ok(statically.some((s) => s.endsWith("src/server/compile_config.ts")), entry);
    for (const part of VALIDATOR_ONLY) {
      assert.deepEqual(
        statically.filter((s) => s.includes(part)),
        [],
        `${entry} imports ${part} at start-up`,
      );
    }
  }
  const validator = [...await reachable("src/config/validator_worker.ts", false)];
  for (const part of VALIDATOR_ONLY) assert.ok(validator.some((s) => s.includes(part)), part);
});

async function adminJson(admin: string, path: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${admin}${path}`);
  assert.equal(res.status, 200, path);
  return await res.json();
}

/** The address a listener logged once bound (listeners added by a reload log it too). */
async function boundAddress(ferry: Started, listener: string): Promise<string> {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    for (const line of ferry.logs) {
      try {
        const j = JSON.parse(line);
        if (j.msg === "listening" && j.listener === listener) return j.address;
      } catch { /* not JSON */ }
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`listener ${listener} never bound:\n${ferry.logs.join("\n")}`);
}

Deno.test("optional parts: a plain HTTP config loads none; a reload adding a TLS listener, a gRPC listener, a JWT rule and a Redis rate limit loads each then, and each works", async () => {
  const certs = await makeTestCerts();
  const echo = await startEchoServer();
  const redis = await startRedis();
  const { publicKey, privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
  const jwk = { ...(await jose.exportJWK(publicKey)), kid: "k1", alg: "ES256", use: "sig" };
  const jwksFile = `${certs.dir}/jwks.json`;
  await Deno.writeTextFile(jwksFile, JSON.stringify({ keys: [jwk] }));
  const plain = `listeners:
  - { name: web, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false, workers: 1 }
routes:
  - name: hello
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: plain }
`;
  const file = await tempConfig(plain);
  const ferry = await spawnFerry(["--config", file]);
  try {
    const admin = ferry.admin!;
    const web = ferry.listeners.get("web")!;
    assert.equal(await (await fetch(`${web}/`)).text(), "plain");
    assert.deepEqual((await adminJson(admin, "/config")).optional_parts, []);

    await Deno.writeTextFile(
      file,
      `listeners:
  - { name: web, address: "127.0.0.1:0" }
  - name: secure
    address: "127.0.0.1:0"
    tls: { cert: ${certs.certFile}, key: ${certs.keyFile} }
  - { name: grpc, address: "127.0.0.1:0", protocol: grpc }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false, workers: 1 }
jwt_providers:
  - { name: corp, issuer: https://issuer.test, jwks_file: ${jwksFile} }
rate_limits:
  - name: shared
    scope: global
    rate: 100
    burst: 100
    redis: { address: "${redis.address}", timeout: 500ms }
routes:
  - name: echo
    match: { path: { prefix: /test.Echo/ } }
    cluster: echo
  - name: secret
    match: { path: { prefix: /secret } }
    direct_response: { status: 200, body: secret }
    authorization:
      jwt: { provider: corp }
      rules: [{ name: admins, action: allow, claims: { role: admin } }]
  - name: limited
    match: { path: { prefix: /limited } }
    direct_response: { status: 200, body: limited }
    rate_limit: [shared]
  - name: hello
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: plain }
clusters:
  - name: echo
    protocol: h2c
    endpoints: ["http://127.0.0.1:${echo.port}"]
`,
    );
    ferry.child.kill("SIGHUP");
    const deadline = Date.now() + 15_000;
    let config = await adminJson(admin, "/config");
    while (config.version !== 2 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      config = await adminJson(admin, "/config");
    }
    assert.equal(config.version, 2, `reload not applied:\n${ferry.logs.join("\n")}`);
    assert.deepEqual(
      [...(config.optional_parts as string[])].sort(),
      ["grpc", "jwt", "node-tls", "redis"],
    );
    assert.ok(
      ferry.logs.some((l) => l.includes('"optional parts loaded"') && l.includes("node-tls")),
      "the reload logs what it loaded",
    );

    // TLS listener (node:tls): a real HTTPS request with the test CA.
    const secure = (await boundAddress(ferry, "secure")).replace(/^127\.0\.0\.1:/, "");
    const curl = await run("curl", [
      "-sS",
      "--max-time",
      "10",
      "--cacert",
      certs.caFile,
      `https://127.0.0.1:${secure}/`,
    ]);
    assert.equal(curl.stdout, "plain", curl.stderr);

    // gRPC listener: a grpc-js call through it to the h2c echo server.
    const grpcPort = Number((await boundAddress(ferry, "grpc")).split(":").at(-1));
    const client = echoClient(grpcPort);
    try {
      const r = await unary(client, new TextEncoder().encode("hi"), { deadlineMs: 10_000 });
      assert.equal(r.error, undefined, String(r.error));
      assert.equal(new TextDecoder().decode(r.value), "hi");
    } finally {
      client.close();
    }

    // JWT rule (jose): no token is 401, a signed token with the claim is 200.
    const denied = await fetch(`${web}/secret`);
    await denied.body?.cancel();
    assert.equal(denied.status, 401);
    const now = Math.floor(Date.now() / 1000);
    const token = await new jose.SignJWT({ role: "admin" })
      .setProtectedHeader({ alg: "ES256", kid: "k1" })
      .setIssuer("https://issuer.test")
      .setIssuedAt(now)
      .setExpirationTime(now + 600)
      .sign(privateKey);
    const allowed = await fetch(`${web}/secret`, { headers: { authorization: `Bearer ${token}` } });
    assert.deepEqual([allowed.status, await allowed.text()], [200, "secret"]);

    // Redis rate limit (ioredis): the request takes a lease from the real Redis.
    const limited = await fetch(`${web}/limited`);
    assert.deepEqual([limited.status, await limited.text()], [200, "limited"]);
    assert.notEqual(await redis.cli("DBSIZE"), "0", "the shared limiter wrote to Redis");
  } finally {
    ferry.child.kill("SIGTERM");
    await ferry.child.status;
    await echo.stop();
    await redis.kill();
    await certs.remove();
    await Deno.remove(file.replace(/\/ferry\.yaml$/, ""), { recursive: true });
  }
});
