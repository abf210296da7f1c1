/** The command line as a user runs it: main.ts in a subprocess, real sockets, real signals. */
import assert from "node:assert/strict";
import { DENO, ROOT, RUN, run, spawnFerry, startEchoUpstream, tempConfig } from "./helpers.ts";

Deno.test("--version and --help exit 0; an unknown argument exits 2 with usage", async () => {
  const v = await run(DENO, [...RUN, "--version"]);
  assert.equal(v.code, 0);
  assert.match(v.stdout, /^ferry \d+\.\d+\.\d+/);
  const h = await run(DENO, [...RUN, "--help"]);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /Usage:/);
  const bad = await run(DENO, [...RUN, "--frobnicate"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /unknown argument: --frobnicate/);
});

Deno.test("--check validates every shipped config and prints a summary", async () => {
  const files = [...Deno.readDirSync(`${ROOT}config`)].map((e) => e.name)
    .filter((n) => n.endsWith(".yaml")).sort();
  assert.ok(files.length >= 5, files.join(", "));
  for (const file of files) {
    const out = await new Deno.Command(DENO, {
      args: [...RUN, "--config", `${ROOT}config/${file}`, "--check"],
      // container.yaml and fleet.yaml read the admin token (and the Redis password) from the
      // environment.
      env: { FERRY_ADMIN_TOKEN: "0123456789abcdef0123", FERRY_REDIS_PASSWORD: "x" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const r = {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
    assert.equal(r.code, 0, `${file}: ${r.stderr}`);
    assert.doesNotMatch(r.stderr, /warning/, `${file} has no warnings`);
    assert.match(r.stdout, /: OK/);
    assert.match(r.stdout, /listeners \(\d+\):/);
    assert.match(r.stdout, /routes \(\d+\):/);
    assert.match(r.stdout, /clusters \(\d+\):/);
  }
});

Deno.test("an invalid config exits 1 naming file, line, column, field and value, all at once", async () => {
  const file = await tempConfig(`listeners:
  - name: a
    address: 127.0.0.1:99999
routes:
  - name: r
    cluster: c
    timeout: soon
    bogus_key: 1
clusters:
  - name: c
    endpoints: [ftp://x]
`);
  const r = await run(DENO, [...RUN, "--config", file, "--check"]);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    new RegExp(`${file}:7:14: routes\\[0\\]\\.timeout: expected a duration.*"soon"`),
  );
  assert.match(r.stderr, new RegExp(`${file}:8:5: .*bogus_key`));
  assert.match(r.stderr, /listeners\[0\]\.address/);
});

Deno.test("--check warns about a route that can never match", async () => {
  const file = await tempConfig(`listeners: [{ name: a, address: "127.0.0.1:0" }]
routes:
  - { name: first, match: { path: { prefix: /api/ } }, cluster: c }
  - { name: second, match: { path: { prefix: /api/ } }, cluster: c }
clusters: [{ name: c, endpoints: [http://127.0.0.1:9] }]
`);
  const r = await run(DENO, [...RUN, "--config", file, "--check"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /route second can never match.*shadowed by first/);
});

Deno.test("the shipped config starts with its upstreams down, answers 502, and drains on SIGTERM", async () => {
  const shipped = await Deno.readTextFile(`${ROOT}config/ferry.yaml`);
  // Same config, but on free ports so the test never collides with anything.
  const file = await tempConfig(shipped.replace(/127\.0\.0\.1:(8080|9901)/g, "127.0.0.1:0"));
  const f = await spawnFerry(["--config", file]);
  try {
    const base = f.listeners.get("public")!;
    const health = await fetch(`${base}/ferry/health`);
    assert.equal(health.status, 200);
    assert.equal(await health.text(), "ok\n");
    const down = await fetch(`${base}/api/users`);
    assert.equal(down.status, 502);
    const body = await down.json();
    assert.equal(body.flag, "UF");
    assert.ok(body.request_id);
    assert.ok(f.admin, "admin listener started");
    const ready = await fetch(`${f.admin}/ready`);
    assert.equal(ready.status, 200);
    assert.equal((await ready.json()).status, "ready");
    const live = await fetch(`${f.admin}/healthz`);
    assert.equal(live.status, 200);
    await live.body?.cancel();
  } finally {
    f.child.kill("SIGTERM");
  }
  const status = await f.child.status;
  assert.equal(status.code, 0, "exits 0 after draining");
});

Deno.test("environment quick start proxies without a config file", async () => {
  const up = startEchoUpstream("env");
  const f = await spawnFerry([], {
    PROXY_LISTEN_ADDR: "127.0.0.1:0",
    PROXY_UPSTREAM_ADDRS: `127.0.0.1:${up.port}`,
    PROXY_REQUEST_TIMEOUT_MS: "2000",
  });
  try {
    const base = [...f.listeners.values()][0]!;
    const res = await fetch(`${base}/hello?x=1`);
    assert.equal(res.status, 200);
    const body = await res.json();
    assert.equal(body.upstream, "env");
    assert.equal(body.path, "/hello");
  } finally {
    f.child.kill("SIGTERM");
    await f.child.status;
    await up.close();
  }
});

Deno.test("a listener that cannot bind: exit 3 naming the listener and its address", async () => {
  const taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (taken.addr as Deno.NetAddr).port;
  try {
    const file = await tempConfig(`listeners:
  - { name: free, address: "127.0.0.1:0" }
  - { name: public, address: "127.0.0.1:${port}" }
routes: [{ name: r, direct_response: { status: 200, body: ok } }]
`);
    const r = await run(DENO, [...RUN, "--config", file]);
    assert.equal(r.code, 3, r.stdout + r.stderr);
    assert.match(
      r.stdout + r.stderr,
      new RegExp(
        `cannot bind listener \\\\?"public\\\\?" on 127\\.0\\.0\\.1:${port}: .*in use`,
        "i",
      ),
    );
  } finally {
    taken.close();
  }
});

Deno.test("problems found while compiling are placed at file:line like the loader's", async () => {
  const file = await tempConfig(`listeners: [{ name: a, address: "127.0.0.1:0" }]
admin:
  address: "127.0.0.1:0"
  token_env: FERRY_TEST_SURELY_UNSET_VARIABLE
routes: [{ name: r, direct_response: { status: 200 } }]
`);
  const r = await run(DENO, [...RUN, "--config", file, "--check"]);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    new RegExp(`${file}:4:14: admin\\.token_env: variable is not set`),
  );
});

Deno.test("a bare number in a duration field exits 1 asking for a unit", async () => {
  const file = await tempConfig(`listeners: [{ name: a, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c }]
clusters:
  - name: c
    endpoints: [http://127.0.0.1:9]
    health_check: { path: /h, interval: 2 }
`);
  const r = await run(DENO, [...RUN, "--config", file, "--check"]);
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    new RegExp(
      `${file}:6:41: clusters\\[0\\]\\.health_check\\.interval: a bare number is not a duration: write its unit, such as 2s or 2ms`,
    ),
  );
});

Deno.test("--check prints an unused cluster's warning once, at its file:line", async () => {
  const file = await tempConfig(`listeners: [{ name: a, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c }]
clusters:
  - { name: c, endpoints: [http://127.0.0.1:9] }
  - { name: unused, endpoints: [http://127.0.0.1:9] }
`);
  const r = await run(DENO, [...RUN, "--config", file, "--check"]);
  assert.equal(r.code, 0, r.stderr);
  const all = (r.stdout + r.stderr).split("\n").filter((l) => l.includes("unused"));
  assert.deepEqual(all.filter((l) => /not used by any route/.test(l)), [
    `warning: ${file}:5:13: clusters[1].name: cluster 'unused' is not used by any route`,
  ]);
});

Deno.test("the example error in README and docs/configuration.md is what Ferry prints", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/config`);
  const shipped = (await Deno.readTextFile(`${ROOT}config/ferry.yaml`)).split("\n");
  assert.equal(shipped[25], "    timeout: 15s", "line 26 of config/ferry.yaml");
  shipped[25] = "    timeout: 15 seconds";
  await Deno.writeTextFile(`${dir}/config/ferry.yaml`, shipped.join("\n"));
  const out = await new Deno.Command(DENO, {
    args: [...RUN, "--config", "config/ferry.yaml"],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 1);
  const printed = new TextDecoder().decode(out.stderr).trim();
  for (const doc of ["README.md", "docs/configuration.md"]) {
    const text = await Deno.readTextFile(`${ROOT}${doc}`);
    assert.ok(text.includes("```\n" + printed + "\n```"), `${doc} shows:\n${printed}`);
  }
});
