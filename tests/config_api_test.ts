/**
 * Config over the admin API: PUT /config and POST /config/validate, through the same load,
 * validate and swap as a file reload, against a Ferry subprocess (docs/operations.md).
 */
import assert from "node:assert/strict";
import { metricValue, run, spawnFerry, type Started, tempConfig } from "./helpers.ts";

function config(gen: number, admin = `admin: { address: "127.0.0.1:0" }`): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
${admin}
server: { watch_config: false }
routes:
  - name: all
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: "gen ${gen}" }
`;
}

/** The listener's address must stay the same across PUTs: pin the port the first one got. */
function pinned(text: string, port: string): string {
  return text.replace(
    `name: public, address: "127.0.0.1:0"`,
    `name: public, address: "127.0.0.1:${port}"`,
  );
}

async function put(
  f: Started,
  body: string,
  headers: Record<string, string> = {},
  path = "/config",
  method = "PUT",
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(`${f.admin}${path}`, { method, body, headers });
  return { status: r.status, body: await r.json() };
}

async function stop(f: Started): Promise<void> {
  f.child.kill("SIGTERM");
  await f.child.status;
}

const BAD = (port: string) =>
  pinned(config(0), port).replace(
    "    direct_response:",
    "    no_such_field: 1\n    direct_response:",
  );

Deno.test({
  name:
    "PUT /config under h2load: 0 failed requests; a bad config is refused with <request>:line:col",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const file = await tempConfig(config(0));
    const f = await spawnFerry(["--config", file]);
    const url = f.listeners.get("public")!;
    const port = new URL(url).port;
    try {
      // Pin the port the listener got first: from then on every PUT keeps the same socket.
      assert.equal((await put(f, pinned(config(0), port))).status, 200);
      const load = run("h2load", ["--h1", "-c", "8", "-D", "5", url + "/"]);
      let applied = 0, refused = 0; // besides the pinning PUT
      for (let gen = 1; gen <= 40; gen++) {
        if (gen % 4 === 0) {
          const r = await put(f, BAD(port), { "x-ferry-author": "ci-bad" });
          assert.equal(r.status, 400, JSON.stringify(r.body));
          // The same file-less positions a file reload gives, naming the request.
          assert.match(String(r.body.error), /<request>:8:5: .*no_such_field/);
          refused++;
        } else {
          const r = await put(f, pinned(config(gen), port), { "x-ferry-author": `ci ${gen}` });
          assert.equal(r.status, 200, JSON.stringify(r.body));
          assert.equal(r.body.author, `ci ${gen}`);
          assert.equal(r.body.persisted, false);
          applied++;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
      const h2 = await load;
      const m = h2.stdout.match(
        /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/,
      );
      assert.ok(m, h2.stdout);
      const [total, , done, succeeded, failed, errored] = m.slice(1).map(Number);
      console.log(
        `PUT /config: ${applied} applied, ${refused} refused; h2load ${total} requests, ` +
          `${succeeded} succeeded, ${failed} failed, ${errored} errored`,
      );
      assert.ok(total! > 200, `enough load: ${total}`);
      assert.equal(failed, 0);
      assert.equal(errored, 0);
      assert.equal(done, succeeded);

      // The last applied config serves; the bad one after it changed nothing.
      assert.equal(await (await fetch(url + "/")).text(), "gen 39");
      const view = await (await fetch(`${f.admin}/config`)).json();
      assert.equal(view.source, "<request>");
      assert.equal(view.reloads.current.author, "ci 39");
      assert.equal(view.reloads.current.version, view.version);
      assert.equal(view.reloads.current.trigger, "api");
      const metrics = await (await fetch(`${f.admin}/metrics`)).text();
      assert.equal(
        metricValue(metrics, "ferry_config_info", {
          version: String(view.version),
          author: "ci 39",
        }),
        1,
      );
      assert.equal(metricValue(metrics, "ferry_config_info"), 1, "one series: bounded labels");
      assert.equal(
        metricValue(metrics, "ferry_config_reloads_total", { trigger: "api", result: "success" }),
        applied + 1,
      );
      assert.equal(
        metricValue(metrics, "ferry_config_reloads_total", { trigger: "api", result: "failure" }),
        refused,
      );
      // Memory only (the default): the file still holds the start-up config.
      assert.match(await Deno.readTextFile(file), /gen 0/);
    } finally {
      await stop(f);
    }
  },
});

Deno.test({
  name: "POST /config/validate: a valid config answers 200 and changes nothing; a bad one 400",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const f = await spawnFerry(["--config", await tempConfig(config(0))]);
    const url = f.listeners.get("public")!;
    try {
      const before = await (await fetch(`${f.admin}/config`)).json();
      // With a shared rate limit whose Redis does not exist: a dry run never connects.
      const shared = pinned(config(7), new URL(url).port).replace(
        `body: "gen 7" }`,
        `body: "gen 7" }\n    rate_limit: [fleet]\nrate_limits:\n` +
          `  - { name: fleet, scope: global, rate: 5, burst: 5, redis: { address: "127.0.0.1:1" } }`,
      );
      const ok = await put(f, shared, {}, "/config/validate", "POST");
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.equal(ok.body.dry_run, true);
      // JSON is accepted too, and its positions are line:col in the JSON text.
      const json = JSON.stringify(
        { listeners: [{ name: "public", address: "127.0.0.1:0", bogus: true }] },
        null,
        2,
      );
      const bad = await put(f, json, {}, "/config/validate", "POST");
      assert.equal(bad.status, 400);
      assert.match(String(bad.body.error), /<request>:6:7: .*bogus/);
      const get = await fetch(`${f.admin}/config/validate`);
      assert.equal(get.status, 405);
      await get.body?.cancel();

      const after = await (await fetch(`${f.admin}/config`)).json();
      assert.equal(after.version, before.version);
      assert.deepEqual(after.reloads, before.reloads);
      assert.equal(await (await fetch(url + "/")).text(), "gen 0");
      const metrics = await (await fetch(`${f.admin}/metrics`)).text();
      assert.equal(metricValue(metrics, "ferry_config_reloads_total", { trigger: "api" }), 0);
      assert.equal(metricValue(metrics, "ferry_rate_limit_backend_up"), undefined);
      assert.equal(metricValue(metrics, "ferry_rate_limit_backend_errors_total"), undefined);
    } finally {
      await stop(f);
    }
  },
});

Deno.test({
  name: "PUT /config: refused without a token beyond loopback; with a token it needs the token",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const open = await spawnFerry([
      "--config",
      await tempConfig(config(0, `admin: { address: "0.0.0.0:0" }`)),
    ]);
    try {
      const admin = open.admin!.replace("0.0.0.0", "127.0.0.1");
      const r = await fetch(`${admin}/config`, { method: "PUT", body: config(1) });
      assert.equal(r.status, 403);
      assert.match((await r.json()).error, /admin\.token/);
      const v = await fetch(`${admin}/config/validate`, { method: "POST", body: config(1) });
      assert.equal(v.status, 403);
      await v.body?.cancel();
    } finally {
      await stop(open);
    }
    const token = "s3cret-token-for-the-admin-api";
    const withToken = config(0, `admin: { address: "0.0.0.0:0", token: "${token}" }`);
    const guarded = await spawnFerry(["--config", await tempConfig(withToken)]);
    try {
      const admin = guarded.admin!.replace("0.0.0.0", "127.0.0.1");
      const port = new URL(guarded.listeners.get("public")!).port;
      const next = pinned(withToken.replace("gen 0", "gen 1"), port);
      const r = await fetch(`${admin}/config`, { method: "PUT", body: next });
      assert.equal(r.status, 401);
      await r.body?.cancel();
      const ok = await fetch(`${admin}/config`, {
        method: "PUT",
        body: next,
        headers: { authorization: `Bearer ${token}` },
      });
      assert.equal(ok.status, 200, await ok.text());
      assert.equal(await (await fetch(guarded.listeners.get("public")! + "/")).text(), "gen 1");
    } finally {
      await stop(guarded);
    }
  },
});

Deno.test({
  name: "PUT /config with admin.persist_config: file writes the config back atomically",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const admin = `admin: { address: "127.0.0.1:0", persist_config: file }`;
    const file = await tempConfig(
      config(0, admin).replace("watch_config: false", "watch_config: true"),
    );
    const f = await spawnFerry(["--config", file], {}, 1, [], ["--allow-write"]);
    const url = f.listeners.get("public")!;
    try {
      const next = pinned(config(5, admin), new URL(url).port);
      const r = await put(f, next, { "x-ferry-author": "alice" });
      assert.equal(r.status, 200, JSON.stringify(r.body));
      assert.equal(r.body.persisted, true);
      assert.equal(await Deno.readTextFile(file), next);
      const version = r.body.version;
      // Our own write's file event reloads nothing (no new version, same author).
      await new Promise((res) => setTimeout(res, 1_000));
      const view = await (await fetch(`${f.admin}/config`)).json();
      assert.equal(view.version, version);
      assert.equal(view.reloads.current.author, "alice");
      assert.equal(await (await fetch(url + "/")).text(), "gen 5");
      const dir = file.slice(0, file.lastIndexOf("/"));
      const left = [...Deno.readDirSync(dir)].map((e) => e.name);
      assert.deepEqual(left, ["ferry.yaml"], "no temp file left");
    } finally {
      await stop(f);
    }
  },
});
