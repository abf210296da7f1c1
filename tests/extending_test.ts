/**
 * Extension middleware (docs/extending.md) end to end: the two examples through a real Ferry
 * process and a real upstream, named in a config file and registered in code through mod.ts;
 * config errors at their line at start and on reload (the old config keeps serving); a
 * middleware that throws gets 500 with flag MF and the process keeps serving.
 */
import assert from "node:assert/strict";
import {
  DENO,
  metricValue,
  ROOT,
  RUN,
  run,
  spawnFerry,
  type Started,
  startUpstream,
  tempConfig,
} from "./helpers.ts";
import { ConfigError, start } from "../mod.ts";
import tokenCheck from "../examples/token_check.ts";
import { loadConfigFile } from "../src/config/load.ts";
import { formatIssues } from "../src/config/issues.ts";

const TOKEN = "0123456789abcdef-test-token";
const TOKEN_CHECK = `${ROOT}examples/token_check.ts`;
const RESPONSE_HEADERS = `${ROOT}examples/response_headers.ts`;

/** A real upstream that records what reached it. */
function recordingUpstream() {
  const seen: { path: string; headers: Record<string, string>; body: string }[] = [];
  const up = startUpstream(async (req) => {
    const body = await req.text();
    seen.push({ path: new URL(req.url).pathname, headers: Object.fromEntries(req.headers), body });
    return new Response(`upstream saw ${body.length} bytes`);
  });
  return { up, seen };
}

async function stop(f: Started): Promise<void> {
  try {
    f.child.kill("SIGTERM");
  } catch { /* gone */ }
  await f.child.status;
}

/** Checks the token check and the header injector as the examples' configs set them up. */
async function checkExamples(base: string, seen: { headers: Record<string, string> }[]) {
  const refused = await fetch(`${base}/api/x`);
  assert.equal(refused.status, 401);
  assert.equal(refused.headers.get("www-authenticate"), 'Token header="x-api-token"');
  assert.equal((await refused.json()).error, "unauthorized");
  assert.equal(seen.length, 0, "a refused request never reaches the upstream");

  const wrong = await fetch(`${base}/api/x`, { headers: { "x-api-token": `${TOKEN}-no` } });
  assert.equal(wrong.status, 401);
  await wrong.body?.cancel();

  const ok = await fetch(`${base}/api/x`, {
    method: "POST",
    headers: { "x-api-token": TOKEN },
    body: "hello",
  });
  assert.equal(ok.status, 200);
  assert.equal(await ok.text(), "upstream saw 5 bytes");
  assert.equal(ok.headers.get("x-served-by"), "ferry-test");
  assert.equal(seen.length, 1);
  assert.equal(seen[0]!.headers["x-api-token"], undefined, "the token is stripped upstream");
}

Deno.test("from config: the token check and the header injector work through a real Ferry process", async () => {
  const { up, seen } = recordingUpstream();
  const file = await tempConfig(`listeners:
  - name: public
    address: "127.0.0.1:0"
    middleware:
      - module: ${RESPONSE_HEADERS}
        options: { headers: { x-served-by: ferry-test } }
routes:
  - name: health
    match: { path: { exact: /healthz } }
    direct_response: { status: 200, body: ok }
  - name: api
    match: { path: { prefix: /api } }
    cluster: app
    middleware:
      - module: ${RESPONSE_HEADERS}
        options: { headers: { x-served-by: ferry-test } }
      - module: ${TOKEN_CHECK}
        options: { tokens: ["${TOKEN}"] }
clusters:
  - name: app
    endpoints: ["${up.url}"]
`);
  const f = await spawnFerry(["--config", file]);
  try {
    const base = f.listeners.get("public")!;
    await checkExamples(base, seen);
    // A route with no list of its own gets the listener's.
    const health = await fetch(`${base}/healthz`);
    assert.equal(await health.text(), "ok");
    assert.equal(health.headers.get("x-served-by"), "ferry-test");
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("in code: examples/embed.ts starts Ferry through mod.ts with the factories registered by name", async () => {
  const { up, seen } = recordingUpstream();
  const f = await spawnFerry(
    [],
    { UPSTREAM: up.url, LISTEN: "127.0.0.1:0", API_TOKENS: `other-token-0123456789,${TOKEN}` },
    1,
    [],
    [],
    `${ROOT}examples/embed.ts`,
  );
  try {
    const base = f.listeners.get("public")!;
    // embed.ts stamps "ferry-embed"; otherwise the same behaviour as from config.
    const refused = await fetch(`${base}/api/x`);
    assert.equal(refused.status, 401);
    assert.equal(refused.headers.get("x-served-by"), "ferry-embed");
    await refused.body?.cancel();
    assert.equal(seen.length, 0);
    const ok = await fetch(`${base}/api/x`, {
      method: "POST",
      headers: { "x-api-token": TOKEN },
      body: "hello",
    });
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), "upstream saw 5 bytes");
    assert.equal(ok.headers.get("x-served-by"), "ferry-embed");
    assert.equal(seen[0]!.headers["x-api-token"], undefined);
    // /healthz has no list of its own: the listener's default (the stamp) only, no token asked.
    const health = await fetch(`${base}/healthz`);
    assert.equal(health.status, 200);
    assert.equal(health.headers.get("x-served-by"), "ferry-embed");
    await health.body?.cancel();
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("a bad module path or options at start is a config error at its line; nothing starts", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(`${dir}/nodefault.ts`, "export const x = 1;\n");
  const file = `${dir}/ferry.yaml`;
  await Deno.writeTextFile(
    file,
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: api
    direct_response: { status: 200 }
    middleware:
      - module: ./missing.ts
      - module: ./nodefault.ts
      - module: ${TOKEN_CHECK}
        options: { tokens: [short] }
      - module: npm:left-pad.js
`,
  );
  // Problems the loader sees (unreadable file, refused scheme) are reported first, all at once.
  const first = await run(DENO, [...RUN, "--config", file]);
  assert.equal(first.code, 1, first.stderr);
  assert.match(
    first.stderr,
    new RegExp(
      `${file}:7:17: routes\\[0\\]\\.middleware\\[0\\]\\.module: cannot read module ` +
        `${dir}/missing.ts: no such file`,
    ),
  );
  assert.match(
    first.stderr,
    /ferry\.yaml:11:17: routes\[0\]\.middleware\[3\]\.module: expected a local module path/,
  );
  // With those fixed, the import and the factories: every problem, each at its line.
  await Deno.writeTextFile(
    file,
    (await Deno.readTextFile(file)).replace("      - module: ./missing.ts\n", "")
      .replace("      - module: npm:left-pad.js\n", ""),
  );
  const second = await run(DENO, [...RUN, "--config", file]);
  assert.equal(second.code, 1, second.stderr);
  assert.match(
    second.stderr,
    new RegExp(
      `${file}:7:17: routes\\[0\\]\\.middleware\\[0\\]\\.module: expected module ` +
        `${dir}/nodefault.ts to export default a middleware factory`,
    ),
  );
  assert.match(
    second.stderr,
    /ferry\.yaml:9:18: routes\[0\]\.middleware\[1\]\.options: .*token_check\.ts refused its options: tokens: expected each token to be a string of at least 16 characters/,
  );
  assert.doesNotMatch(second.stderr, /listening/);
});

Deno.test("a reload with a module that does not load keeps the old config serving; a changed module is imported anew", async () => {
  const { up } = recordingUpstream();
  const dir = await Deno.makeTempDir();
  const stamp = (v: string) =>
    `export default () => (next) => async (req, ctx) => {
  const res = await next(req, ctx);
  res.headers.set("x-stamp", "${v}");
  return res;
};
`;
  await Deno.writeTextFile(`${dir}/stamp.js`, stamp("v1"));
  await Deno.writeTextFile(`${dir}/broken.js`, "export default 1 +;\n");
  const config = (extra: string) =>
    `server: { watch_config: false }
admin: { address: "127.0.0.1:0" }
listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: api
    cluster: app
    middleware:
      - module: ./stamp.js
${extra}clusters:
  - name: app
    endpoints: ["${up.url}"]
`;
  const file = `${dir}/ferry.yaml`;
  await Deno.writeTextFile(file, config(""));
  const f = await spawnFerry(["--config", file]);
  try {
    const base = f.listeners.get("public")!;
    const stampOf = async () => {
      const r = await fetch(`${base}/x`);
      await r.body?.cancel();
      return r.headers.get("x-stamp");
    };
    assert.equal(await stampOf(), "v1");

    await Deno.writeTextFile(file, config("      - module: ./broken.js\n"));
    const refused = await fetch(`${f.admin}/reload`, { method: "POST" });
    const body = await refused.json();
    assert.equal(refused.status, 400, JSON.stringify(body));
    assert.match(
      body.error,
      new RegExp(
        `${file}:10:17: routes\\[0\\]\\.middleware\\[1\\]\\.module: cannot load module ` +
          `${dir}/broken.js: SyntaxError`,
      ),
    );
    assert.equal(body.version, 1);
    assert.equal(await stampOf(), "v1", "the old config keeps serving");

    // The module's file changed: the reload imports the new code.
    await Deno.writeTextFile(`${dir}/stamp.js`, stamp("v2"));
    await Deno.writeTextFile(file, config(""));
    const applied = await fetch(`${f.admin}/reload`, { method: "POST" });
    assert.equal(applied.status, 200, await applied.text());
    assert.equal(await stampOf(), "v2");
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("a middleware that throws (sync or async) or returns no Response gets 500 with flag MF, counted; Ferry keeps serving", async () => {
  const { up } = recordingUpstream();
  const dir = await Deno.makeTempDir();
  // Plain JavaScript, as a user might write it: nothing stops a wrong return at compile time.
  await Deno.writeTextFile(
    `${dir}/boom.js`,
    `export default () => (next) => (req, ctx) => {
  const mode = req.headers.get("x-boom");
  if (mode === "sync") throw new Error("sync boom");
  if (mode === "async") return Promise.resolve().then(() => { throw new Error("async boom"); });
  if (mode === "string") throw "a string";
  if (mode === "none") return Promise.resolve(undefined);
  return next(req, ctx);
};
`,
  );
  const file = `${dir}/ferry.yaml`;
  await Deno.writeTextFile(
    file,
    `admin: { address: "127.0.0.1:0" }
listeners:
  - name: public
    address: "127.0.0.1:0"
    middleware: [{ module: ./boom.js, options: { secret: do-not-show-this } }]
routes:
  - name: dead
    match: { path: { prefix: /dead } }
    cluster: nowhere
  - name: api
    cluster: app
clusters:
  - name: app
    endpoints: ["${up.url}"]
  - name: nowhere
    endpoints: ["http://127.0.0.1:1"]
`,
  );
  const f = await spawnFerry(["--config", file]);
  try {
    const base = f.listeners.get("public")!;
    for (const mode of ["sync", "async", "string", "none"]) {
      const r = await fetch(`${base}/x`, { headers: { "x-boom": mode } });
      const body = await r.json();
      assert.equal(r.status, 500, mode);
      assert.equal(r.headers.get("x-ferry-flag"), "MF", mode);
      assert.equal(body.flag, "MF");
      assert.match(body.reason, /middleware \.\/boom\.js (failed|returned undefined)/);
      assert.doesNotMatch(JSON.stringify(body), /boom\.js:\d|sync boom|async boom/, "no detail");
    }
    // An error from further in (the upstream refuses) passes through the middleware as itself.
    const dead = await fetch(`${base}/dead`);
    await dead.body?.cancel();
    assert.equal(dead.headers.get("x-ferry-flag"), "UF");
    // Still serving, and nothing escaped to the process's last line of defence.
    const fine = await fetch(`${base}/x`);
    assert.equal(fine.status, 200);
    await fine.body?.cancel();
    const metrics = await (await fetch(`${f.admin}/metrics`)).text();
    assert.equal(
      metricValue(metrics, "ferry_middleware_failures_total", {
        route: "api",
        middleware: "./boom.js",
      }),
      4,
    );
    assert.equal(
      metricValue(metrics, "ferry_middleware_failures_total", { route: "dead" }) ?? 0,
      0,
    );
    assert.equal(metricValue(metrics, "ferry_internal_errors_total") ?? 0, 0);
    // Options may carry credentials: /config shows their keys only.
    const shown = await (await fetch(`${f.admin}/config`)).text();
    assert.doesNotMatch(shown, /do-not-show-this/);
    assert.match(shown, /"secret":\s*"<redacted>"/);
    assert.match(
      f.logs.join("\n"),
      /"flag":"MF".*"cause":"sync boom"/,
      "the detail goes to the log",
    );
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("start() from mod.ts refuses a config whose factory rejects its options or names none registered", async () => {
  const config = (middleware: unknown[]) => ({
    listeners: [{ name: "public", address: "127.0.0.1:0" }],
    routes: [{ name: "api", direct_response: { status: 200 }, middleware }],
  });
  await assert.rejects(
    start({
      config: config([{ name: "token_check", options: { tokens: [] } }]),
      middleware: { token_check: tokenCheck },
    }),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError);
      assert.match(
        err.message,
        /<code>: routes\[0\]\.middleware\[0\]\.options: token_check refused its options: tokens: expected a non-empty list/,
      );
      return true;
    },
  );
  await assert.rejects(
    start({ config: config([{ name: "nope" }]), middleware: { token_check: tokenCheck } }),
    /routes\[0\]\.middleware\[0\]\.name: unknown middleware 'nope'; registered in code: token_check/,
  );
  // And a good one serves, with the handle's ports, until closed.
  const ferry = await start({
    config: config([{ name: "token_check", options: { tokens: [TOKEN] } }]),
    middleware: { token_check: tokenCheck },
  });
  try {
    const url = `http://127.0.0.1:${ferry.listeners.public!.port}/`;
    const refused = await fetch(url);
    assert.equal(refused.status, 401);
    await refused.body?.cancel();
    const ok = await fetch(url, { headers: { "x-api-token": TOKEN } });
    assert.equal(ok.status, 200);
    await ok.body?.cancel();
    assert.equal(ferry.version, 1);
  } finally {
    assert.deepEqual(await ferry.close(2_000), { clean: true });
  }
});

Deno.test("examples/ferry.yaml validates, its module files included", async () => {
  const result = await loadConfigFile("examples/ferry.yaml");
  assert.ok(result.ok, result.ok ? "" : formatIssues(result.errors));
});

Deno.test("a WebSocket upgrade passes through the token check and the header injector", async () => {
  const up = startUpstream((req) => {
    if (req.headers.get("upgrade") !== "websocket") return new Response("plain");
    const token = req.headers.get("x-api-token") ?? "none";
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send(`echo ${e.data} token=${token}`);
    return response;
  });
  const file = await tempConfig(`listeners:
  - { name: public, address: "127.0.0.1:0" }
routes:
  - name: ws
    cluster: app
    middleware:
      - module: ${RESPONSE_HEADERS}
        options: { headers: { x-served-by: ferry-test } }
      - module: ${TOKEN_CHECK}
        options: { tokens: ["${TOKEN}"] }
clusters:
  - name: app
    endpoints: ["${up.url}"]
`);
  const f = await spawnFerry(["--config", file]);
  try {
    const url = f.listeners.get("public")!.replace("http://", "ws://") + "/chat";
    const talk = (token: string) =>
      new Promise<string>((resolve) => {
        // Deno's WebSocket takes request headers (a browser's would not).
        const ws = new WebSocket(url, { headers: { "x-api-token": token } } as never);
        ws.onopen = () => ws.send("hi");
        ws.onmessage = (e) => {
          resolve(String(e.data));
          ws.close();
        };
        ws.onerror = (e) => resolve(`error: ${(e as ErrorEvent).message}`);
      });
    assert.equal(await talk(TOKEN), "echo hi token=none");
    assert.match(await talk("wrong-token"), /error: .*401/);
  } finally {
    await stop(f);
    await up.close();
  }
});

Deno.test("--check imports the modules, calls the factories and lists the middleware in its summary", async () => {
  const check = (tokens: string) =>
    new Deno.Command(DENO, {
      args: [...RUN, "--config", "examples/ferry.yaml", "--check"],
      env: { API_TOKENS: tokens },
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
  const ok = await check(TOKEN);
  const out = new TextDecoder().decode(ok.stdout);
  assert.equal(ok.code, 0, new TextDecoder().decode(ok.stderr));
  assert.match(
    out,
    /public {2}127\.0\.0\.1:8080 {2}http .* {2}middleware \.\/response_headers\.ts/,
  );
  assert.match(out, /api .* {2}middleware \.\/response_headers\.ts, \.\/token_check\.ts/);
  // The factory reads its tokens from the environment: a short one is refused at --check too.
  const refused = await check("short");
  assert.equal(refused.code, 1);
  assert.match(
    new TextDecoder().decode(refused.stderr),
    /examples\/ferry\.yaml:\d+:\d+: routes\[1\]\.middleware\[1\]\.options: .*at least 16 characters/,
  );
});
