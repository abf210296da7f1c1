/**
 * Authorization policies end to end: a real Ferry, real HTTP clients (fetch), real grpc-js, a
 * JWKS served by a real Deno.serve, and JWTs signed in the test with `jose` (RS256, ES256, EdDSA).
 */
import assert from "node:assert/strict";
import * as jose from "jose";
import { metricValue, startFerry } from "./helpers.ts";
import { echoClient, grpc, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";
import { formatIssues, parseConfigText } from "../src/config/load.ts";

const ISSUER = "https://issuer.test";
const AUDIENCE = "ferry-api";

interface SigningKey {
  readonly kid: string;
  readonly alg: "RS256" | "ES256" | "EdDSA";
  readonly privateKey: jose.CryptoKey;
  readonly jwk: jose.JWK;
}

async function signingKey(alg: SigningKey["alg"], kid: string): Promise<SigningKey> {
  const { publicKey, privateKey } = await jose.generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await jose.exportJWK(publicKey)), kid, alg, use: "sig" };
  return { kid, alg, privateKey, jwk };
}

/** A token from `key`; `opts` override the claims (exp in seconds from now, aud, iss). */
function token(
  key: SigningKey,
  claims: Record<string, unknown> = {},
  opts: { expIn?: number; aud?: string; iss?: string; kid?: string } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new jose.SignJWT(claims)
    .setProtectedHeader({ alg: key.alg, kid: opts.kid ?? key.kid })
    .setIssuer(opts.iss ?? ISSUER)
    .setAudience(opts.aud ?? AUDIENCE)
    .setIssuedAt(now)
    .setExpirationTime(now + (opts.expIn ?? 600))
    .sign(key.privateKey);
}

async function get(
  url: string,
  init: { method?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; flag: string | null; body: string; headers: Headers }> {
  const res = await fetch(url, init);
  return {
    status: res.status,
    flag: res.headers.get("x-ferry-flag"),
    body: await res.text(),
    headers: res.headers,
  };
}

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

Deno.test("authz: ordered allow/deny rules over method, path, header and client CIDR; default deny; /explain names the rule; decisions counted", async () => {
  const px = startFerry(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server:
  trusted_proxies: ["127.0.0.1/32"]
routes:
  - name: guarded
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: served }
    authorization:
      default: deny
      rules:
        - { name: no-delete, action: deny, methods: [DELETE] }
        - { name: no-admin, action: deny, paths: [{ prefix: /admin }] }
        - { name: blue-team, action: allow, headers: { x-team: blue } }
        - { name: office, action: allow, client_cidrs: ["10.0.0.0/8", "fd00::/8"] }
`);
  try {
    // The trusted proxy (127.0.0.1) speaks for the client through X-Forwarded-For.
    const from = (ip: string, extra: Record<string, string> = {}) => ({
      "x-forwarded-for": ip,
      ...extra,
    });
    const office = await get(`${px.url}/x`, { headers: from("10.1.2.3") });
    assert.deepEqual([office.status, office.body], [200, "served"]);
    const outside = await get(`${px.url}/x`, { headers: from("192.0.2.7") });
    assert.deepEqual([outside.status, outside.flag], [403, "AZ"]);
    assert.match(JSON.parse(outside.body).reason, /no rule matched; default deny/);
    const blue = await get(`${px.url}/x`, { headers: from("192.0.2.7", { "x-team": "blue" }) });
    assert.equal(blue.status, 200);
    const red = await get(`${px.url}/x`, { headers: from("192.0.2.7", { "x-team": "red" }) });
    assert.equal(red.status, 403);
    // Order matters: the deny rules come first, so the office network cannot DELETE or see /admin.
    const del = await get(`${px.url}/x`, { method: "DELETE", headers: from("10.1.2.3") });
    assert.deepEqual([del.status, del.flag], [403, "AZ"]);
    assert.match(JSON.parse(del.body).reason, /rule no-delete/);
    const admin = await get(`${px.url}/admin/users`, { headers: from("10.1.2.3") });
    assert.equal(admin.status, 403);
    assert.match(JSON.parse(admin.body).reason, /rule no-admin/);
    // The path rule sees the normalised path: /x/../admin is /admin.
    const sneaky = await get(`${px.url}/x/%2e%2e/admin`, { headers: from("10.1.2.3") });
    assert.equal(sneaky.status, 403);

    const explain = await (await fetch(
      `${px.adminUrl}/explain?path=/admin/x&client_ip=10.1.2.3`,
    )).json();
    assert.equal(explain.policies.authorization.policy, "route guarded");
    assert.equal(explain.policies.authorization.action, "deny");
    assert.equal(explain.policies.authorization.rule, "no-admin");
    assert.equal(explain.policies.authorization.default, "deny");
    const byCidr = await (await fetch(`${px.adminUrl}/explain?path=/x&client_ip=10.9.9.9`)).json();
    assert.deepEqual(
      [byCidr.policies.authorization.action, byCidr.policies.authorization.rule],
      ["allow", "office"],
    );

    const metrics = await (await fetch(`${px.adminUrl}/metrics`)).text();
    const decisions = (decision: string) =>
      metricValue(metrics, "ferry_authz_decisions_total", {
        listener: "public",
        route: "guarded",
        decision,
      });
    assert.equal(decisions("allow"), 2);
    assert.equal(decisions("deny"), 5);
  } finally {
    await px.close();
  }
});

Deno.test("authz: a listener's policy applies to routes without their own; a route's replaces it; no policy anywhere allows", async () => {
  const px = startFerry(`listeners:
  - name: locked
    address: "127.0.0.1:0"
    authorization: { default: deny }
  - { name: open, address: "127.0.0.1:0" }
routes:
  - name: inherits
    match: { path: { prefix: /a } }
    direct_response: { status: 200, body: a }
  - name: own
    match: { path: { prefix: /b } }
    direct_response: { status: 200, body: b }
    authorization:
      rules: [{ action: allow, methods: [GET] }]
`);
  try {
    assert.equal((await get(`${px.listenerUrl("locked")}/a`)).status, 403);
    assert.equal((await get(`${px.listenerUrl("open")}/a`)).status, 200);
    assert.equal((await get(`${px.listenerUrl("locked")}/b`)).status, 200);
    const post = await get(`${px.listenerUrl("open")}/b`, { method: "POST" });
    assert.equal(post.status, 403, "the route's own policy holds on every listener");
  } finally {
    await px.close();
  }
});

/** A JWKS file in a temp dir, a provider `corp` and a route allowing role=admin. */
async function jwtFerry(keys: SigningKey[], providerExtra = "") {
  const dir = await Deno.makeTempDir({ prefix: "ferry-jwks-" });
  const jwksFile = `${dir}/jwks.json`;
  await Deno.writeTextFile(jwksFile, JSON.stringify({ keys: keys.map((k) => k.jwk) }));
  const px = startFerry(`listeners:
  - { name: public, address: "127.0.0.1:0" }
jwt_providers:
  - name: corp
    issuer: ${ISSUER}
    audiences: [${AUDIENCE}]
    jwks_file: ${jwksFile}
${providerExtra}routes:
  - name: api
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: hello }
    authorization:
      jwt: { provider: corp }
      rules:
        - { name: admins, action: allow, claims: { role: admin } }
        - { name: readers, action: allow, methods: [GET], claims: { groups: [readers, auditors] } }
`);
  return {
    px,
    close: async () => {
      await px.close();
      await Deno.remove(dir, { recursive: true });
    },
  };
}

Deno.test("authz: JWT from a JWKS file (RS256, ES256, EdDSA): claims allow, other claims deny, a missing token is 401 with a Bearer challenge", async () => {
  const keys = await Promise.all([
    signingKey("RS256", "rsa-1"),
    signingKey("ES256", "ec-1"),
    signingKey("EdDSA", "ed-1"),
  ]);
  const { px, close } = await jwtFerry(keys);
  try {
    for (const key of keys) {
      const ok = await get(px.url, { headers: bearer(await token(key, { role: "admin" })) });
      assert.deepEqual([ok.status, ok.body], [200, "hello"], key.alg);
    }
    // A list claim matches when any element is allowed; the rule also needs GET.
    const reader = await token(keys[0]!, { role: "user", groups: ["staff", "readers"] });
    assert.equal((await get(px.url, { headers: bearer(reader) })).status, 200);
    const readerPost = await get(px.url, { method: "POST", headers: bearer(reader) });
    assert.deepEqual([readerPost.status, readerPost.flag], [403, "AZ"]);
    const user = await get(px.url, { headers: bearer(await token(keys[1]!, { role: "user" })) });
    assert.deepEqual([user.status, user.flag], [403, "AZ"]);

    const missing = await get(px.url);
    assert.deepEqual([missing.status, missing.flag], [401, "UA"]);
    assert.equal(missing.headers.get("www-authenticate"), 'Bearer realm="corp"');
    assert.equal(JSON.parse(missing.body).reason, "missing bearer token");
    const basic = await get(px.url, { headers: { authorization: "Basic dTpw" } });
    assert.equal(basic.status, 401);
  } finally {
    await close();
  }
});

Deno.test("authz: expired token, wrong audience, wrong issuer, bad signature and unknown key id are each 401 with their reason", async () => {
  const key = await signingKey("ES256", "ec-1");
  const impostor = await signingKey("ES256", "ec-1"); // same kid, another key
  const stranger = await signingKey("ES256", "ec-9"); // a kid the JWKS does not have
  const { px, close } = await jwtFerry([key]);
  try {
    const cases: [string, string][] = [
      // Default clock skew is 30 s: two minutes past exp is expired.
      ["token expired", await token(key, { role: "admin" }, { expIn: -120 })],
      ["audience not accepted", await token(key, { role: "admin" }, { aud: "other-api" })],
      ["issuer not accepted", await token(key, { role: "admin" }, { iss: "https://evil.test" })],
      ["bad signature", await token(impostor, { role: "admin" })],
      ["unknown key id", await token(stranger, { role: "admin" })],
      ["malformed token", "not.a.jwt"],
    ];
    for (const [reason, t] of cases) {
      const res = await get(px.url, { headers: bearer(t) });
      assert.deepEqual([res.status, res.flag], [401, "UA"], reason);
      assert.equal(JSON.parse(res.body).reason, reason);
      const challenge = res.headers.get("www-authenticate") ?? "";
      assert.match(challenge, /^Bearer realm="corp", error="invalid_token"/);
      assert.ok(challenge.includes(reason), challenge);
    }
    // A tampered payload under a good signature is refused too.
    const good = await token(key, { role: "user" });
    const [h, , s] = good.split(".");
    const forged = `${h}.${jose.base64url.encode(JSON.stringify({ role: "admin" }))}.${s}`;
    assert.equal((await get(px.url, { headers: bearer(forged) })).status, 401);
  } finally {
    await close();
  }
});

Deno.test("authz: a verified token is cached only until its exp", async () => {
  const key = await signingKey("EdDSA", "ed-1");
  const { px, close } = await jwtFerry([key], "    clock_skew: 0s\n");
  try {
    const shortLived = await token(key, { role: "admin" }, { expIn: 2 });
    assert.equal((await get(px.url, { headers: bearer(shortLived) })).status, 200);
    assert.equal((await get(px.url, { headers: bearer(shortLived) })).status, 200);
    await new Promise((r) => setTimeout(r, 3_200));
    const later = await get(px.url, { headers: bearer(shortLived) });
    assert.equal(later.status, 401);
    assert.equal(JSON.parse(later.body).reason, "token expired");
  } finally {
    await close();
  }
});

Deno.test("authz: a JWKS URL is refreshed on its interval: a new key is picked up, and a failing fetch keeps the last good set", async () => {
  const first = await signingKey("RS256", "k1");
  const second = await signingKey("ES256", "k2");
  let served: SigningKey[] = [first];
  let failing = false;
  let fetches = 0;
  const jwks = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, () => {
    fetches++;
    if (failing) return new Response("down", { status: 503 });
    return Response.json({ keys: served.map((k) => k.jwk) });
  });
  const px = startFerry(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
jwt_providers:
  - name: corp
    issuer: ${ISSUER}
    jwks_url: http://127.0.0.1:${jwks.addr.port}/jwks
    refresh_interval: 200ms
    fetch_timeout: 2s
routes:
  - name: api
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: hello }
    authorization:
      jwt: { provider: corp }
      default: allow
`);
  try {
    // The first fetch happens at start; a request waits for it.
    assert.equal((await get(px.url, { headers: bearer(await token(first)) })).status, 200);
    const withSecond = await token(second);
    const before = await get(px.url, { headers: bearer(withSecond) });
    assert.equal(JSON.parse(before.body).reason, "unknown key id");

    served = [first, second];
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      await new Promise((r) => setTimeout(r, 100));
      status = (await get(px.url, { headers: bearer(withSecond) })).status;
    }
    assert.equal(status, 200, "the rotated-in key is used after a refresh");

    failing = true;
    const failedFrom = fetches;
    for (let i = 0; i < 50 && fetches < failedFrom + 2; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(fetches >= failedFrom + 2, "refreshes went on while the JWKS server failed");
    // A token not seen before (not in the cache) still verifies with the kept keys.
    const fresh = await token(second, { n: 2 });
    assert.equal((await get(px.url, { headers: bearer(fresh) })).status, 200);
    const explain = await (await fetch(`${px.adminUrl}/explain?path=/`)).json();
    const provider = explain.policies.authorization.jwt_provider;
    assert.equal(provider.keys, 2);
    assert.match(provider.last_error, /HTTP 503/);
  } finally {
    await px.close();
    await jwks.shutdown();
  }
});

Deno.test("authz: gRPC calls get UNAUTHENTICATED without a valid token and PERMISSION_DENIED when denied (grpc-js)", async () => {
  const key = await signingKey("EdDSA", "ed-1");
  const dir = await Deno.makeTempDir({ prefix: "ferry-jwks-" });
  await Deno.writeTextFile(`${dir}/jwks.json`, JSON.stringify({ keys: [key.jwk] }));
  const server = await startEchoServer();
  const px = startFerry(
    grpcEchoConfig({
      route: `    authorization:
      jwt: { provider: corp }
      rules:
        - { name: callers, action: allow, claims: { sub: { regex: "^svc-" } } }
`,
    }) + `jwt_providers:
  - { name: corp, issuer: "${ISSUER}", jwks_file: ${dir}/jwks.json }
`,
    { PORT: String(server.port) },
  );
  const client = echoClient(px.port);
  const withToken = (t: string) => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${t}`);
    return md;
  };
  try {
    const none = await unary(client, new TextEncoder().encode("hi"), { deadlineMs: 10_000 });
    assert.equal(none.error?.code, grpc.status.UNAUTHENTICATED, String(none.error));
    assert.match(none.error?.details ?? "", /missing bearer token/);
    const expired = await unary(client, new TextEncoder().encode("hi"), {
      deadlineMs: 10_000,
      metadata: withToken(await token(key, { sub: "svc-a" }, { expIn: -120 })),
    });
    assert.equal(expired.error?.code, grpc.status.UNAUTHENTICATED);
    const denied = await unary(client, new TextEncoder().encode("hi"), {
      deadlineMs: 10_000,
      metadata: withToken(await token(key, { sub: "user-1" })),
    });
    assert.equal(denied.error?.code, grpc.status.PERMISSION_DENIED, String(denied.error));
    assert.equal(server.calls.n, 0, "refused calls never reach the upstream");
    const ok = await unary(client, new TextEncoder().encode("hi"), {
      deadlineMs: 10_000,
      metadata: withToken(await token(key, { sub: "svc-a" })),
    });
    assert.equal(ok.error, undefined);
    assert.equal(ok.value?.toString(), "hi");
  } finally {
    client.close();
    await px.close();
    await server.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("authz config: unknown provider, claims without a JWT, a bad CIDR and a bad regex are reported at their line", () => {
  const result = parseConfigText(
    `listeners:
  - name: public
    address: "127.0.0.1:0"
    authorization:
      jwt: { provider: nobody }
routes:
  - name: r
    direct_response: { status: 200 }
    authorization:
      rules:
        - action: allow
          claims: { role: admin }
        - action: deny
          client_cidrs: ["10.0.0.0/33"]
        - action: deny
          paths: [{ regex: "(a" }]
`,
    "authz.yaml",
  );
  assert.equal(result.ok, false);
  const text = formatIssues(result.ok ? [] : result.errors);
  assert.match(text, /authz\.yaml:5:\d+.*unknown JWT provider 'nobody'/);
  assert.match(text, /authz\.yaml:12:\d+.*claims need a verified token/);
  assert.match(text, /authz\.yaml:14:\d+.*expected an IP address or CIDR/);
  assert.match(text, /authz\.yaml:16:\d+/);
  const provider = parseConfigText(
    `listeners: [{ name: public, address: "127.0.0.1:0" }]
jwt_providers:
  - { name: corp, issuer: x, jwks_file: a.json, jwks_url: "http://x/" }
`,
    "jwt.yaml",
  );
  assert.match(
    formatIssues(provider.ok ? [] : provider.errors),
    /jwt\.yaml:3:\d+.*exactly one of jwks_file or jwks_url/,
  );
});

Deno.test("authz: a JWKS URL that never answers is abandoned after fetch_timeout; requests get 401, not a hang", async () => {
  const key = await signingKey("ES256", "k1");
  let release!: () => void;
  const hung = new Promise<void>((r) => (release = r));
  const jwks = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async () => {
    await hung;
    return Response.json({ keys: [] });
  });
  const px = startFerry(`listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
jwt_providers:
  - name: corp
    issuer: ${ISSUER}
    jwks_url: http://127.0.0.1:${jwks.addr.port}/jwks
    refresh_interval: 1m
    fetch_timeout: 300ms
routes:
  - name: api
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: hello }
    authorization: { jwt: { provider: corp }, default: allow }
`);
  try {
    const started = Date.now();
    const res = await get(px.url, { headers: bearer(await token(key)) });
    assert.deepEqual([res.status, res.flag], [401, "UA"]);
    assert.equal(JSON.parse(res.body).reason, "no signing keys loaded for this provider");
    assert.ok(Date.now() - started < 5_000, "the request waited for the fetch's timeout only");
    const explain = await (await fetch(`${px.adminUrl}/explain?path=/`)).json();
    assert.match(explain.policies.authorization.jwt_provider.last_error, /time|abort/i);
  } finally {
    release();
    await px.close();
    await jwks.shutdown();
  }
});
