/**
 * Hot reload: POST /reload, SIGHUP and file changes; rollback on a bad config; state of unchanged
 * clusters and rate limits kept; listeners added and removed; long-lived connections untouched.
 */
import assert from "node:assert/strict";
import { configSource } from "../src/config/source.ts";
import { buildSnapshot } from "../src/server/build.ts";
import { createLogger } from "../src/observability/log.ts";
import { Ferry } from "../src/server/ferry.ts";
import { Reloader } from "../src/server/reload.ts";
import { metricValue, run, spawnFerry, startEchoUpstream, tempConfig } from "./helpers.ts";
import { makeTestCerts } from "./fixtures/certs.ts";

const quiet = createLogger("error", () => {});

interface Reloadable {
  readonly ferry: Ferry;
  readonly reloader: Reloader;
  readonly file: string;
  url(listener?: string): string;
  readonly admin: string;
  write(text: string): Promise<void>;
  close(): Promise<void>;
}

/** Ferry in-process from a config file, with a reloader as main.ts wires it (no file watch). */
async function startReloadable(text: string): Promise<Reloadable> {
  const file = await tempConfig(text);
  const source = configSource(file, {});
  const built = await buildSnapshot(source, { version: 1, log: quiet });
  if (!built.ok) throw new Error(built.message);
  const ferry = Ferry.start(built.snapshot, quiet);
  const reloader = new Reloader(ferry, source, quiet);
  ferry.setAdminExtras({
    reload: () => reloader.reload("admin"),
    reloadStatus: () => reloader.status,
  });
  const at = (a: { hostname: string; port: number }) => `http://${a.hostname}:${a.port}`;
  return {
    ferry,
    reloader,
    file,
    url: (listener = "public") => at(ferry.addresses().listeners[listener]!),
    admin: at(ferry.addresses().admin!),
    write: (t) => Deno.writeTextFile(file, t),
    close: async () => {
      await ferry.shutdown(2_000);
    },
  };
}

function directConfig(body: string, extra = ""): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false }
routes:
  - name: hello
    match: { path: { prefix: / } }
    direct_response: { status: 200, body: "${body}" }
${extra}`;
}

async function text(url: string, init?: RequestInit): Promise<{ status: number; body: string }> {
  const r = await fetch(url, init);
  return { status: r.status, body: await r.text() };
}

Deno.test("POST /reload applies a valid config; a bad one is refused with file:line and the old config keeps serving", async () => {
  const f = await startReloadable(directConfig("v1"));
  try {
    assert.equal((await text(f.url())).body, "v1");
    await f.write(directConfig("v2"));
    const ok = await fetch(`${f.admin}/reload`, { method: "POST" });
    const okBody = await ok.json();
    assert.equal(ok.status, 200, JSON.stringify(okBody));
    assert.equal(okBody.version, 2);
    assert.equal((await text(f.url())).body, "v2");

    // Line 9 has a field the schema does not know.
    await f.write(directConfig("v3", "    bogus_field: 1\n"));
    const bad = await fetch(`${f.admin}/reload`, { method: "POST" });
    const badBody = await bad.json();
    assert.equal(bad.status, 400);
    assert.equal(badBody.ok, false);
    assert.match(badBody.error, new RegExp(`${f.file}:9:5: .*bogus_field`));
    assert.equal(badBody.version, 2);
    assert.equal((await text(f.url())).body, "v2", "the previous config still serves");

    const cfg = await (await fetch(`${f.admin}/config`)).json();
    assert.equal(cfg.version, 2);
    assert.equal(cfg.reloads.succeeded, 1);
    assert.equal(cfg.reloads.failed, 1);
    assert.equal(cfg.reloads.last.ok, false);
    assert.match(cfg.reloads.last.error, /bogus_field/);
    assert.equal((await fetch(`${f.admin}/reload`)).status, 405, "GET /reload is refused");
    const metrics = await (await fetch(`${f.admin}/metrics`)).text();
    assert.equal(metricValue(metrics, "ferry_config_reloads_total", { result: "success" }), 1);
    assert.equal(metricValue(metrics, "ferry_config_reloads_total", { result: "failure" }), 1);
    assert.equal(metricValue(metrics, "ferry_config_info", { version: "2" }), 1);
  } finally {
    await f.close();
  }
});

Deno.test("a reload keeps unchanged clusters and rate-limit buckets; changed ones start fresh", async () => {
  const up = startEchoUpstream();
  const config = (burst: number, extraRoute = "") =>
    `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false }
rate_limits:
  - { name: per-ip, scope: client_ip, rate: 0.01, burst: ${burst} }
routes:
${extraRoute}  - name: all
    match: { path: { prefix: / } }
    cluster: up
    rate_limit: [per-ip]
clusters:
  - name: up
    endpoints: ["${up.url}"]
  - name: other
    endpoints: ["${up.url}"]
`;
  const f = await startReloadable(config(2));
  try {
    const before = f.ferry.snapshot.clusters.get("up");
    for (let i = 0; i < 2; i++) assert.equal((await text(f.url())).status, 200);
    assert.equal((await text(f.url())).status, 429, "burst of 2 used up");

    // An unrelated change: the bucket and the cluster are the same objects after it.
    await f.write(config(
      2,
      `  - name: ping
    match: { path: { exact: /ping } }
    direct_response: { status: 200, body: pong }
`,
    ));
    assert.equal((await f.reloader.reload("admin")).ok, true);
    assert.equal((await text(`${f.url()}/ping`)).body, "pong");
    assert.equal((await text(f.url())).status, 429, "the bucket survived the reload");
    assert.equal(f.ferry.snapshot.clusters.get("up"), before, "unchanged cluster kept");

    // Changing the limit itself gives it fresh buckets.
    await f.write(config(3));
    assert.equal((await f.reloader.reload("admin")).ok, true);
    assert.equal((await text(f.url())).status, 200, "a changed limit starts full");
    assert.equal(f.ferry.snapshot.clusters.get("up"), before);
  } finally {
    await f.close();
    await up.close();
  }
});

Deno.test("listeners added by a reload serve at once; removed ones stop accepting; the other listener is not rebound", async () => {
  const two = `  - { name: second, address: "127.0.0.1:0" }\n`;
  const config = (extraListener: string) =>
    directConfig("one").replace(
      `  - { name: public, address: "127.0.0.1:0" }\n`,
      `  - { name: public, address: "127.0.0.1:0" }\n${extraListener}`,
    );
  const f = await startReloadable(config(""));
  try {
    const publicPort = f.ferry.addresses().listeners.public!.port;
    assert.equal(f.ferry.addresses().listeners.second, undefined);
    await f.write(config(two));
    assert.equal((await f.reloader.reload("admin")).ok, true);
    const second = f.url("second");
    assert.equal((await text(second)).body, "one");
    assert.equal(f.ferry.addresses().listeners.public!.port, publicPort, "public not rebound");

    await f.write(config(""));
    assert.equal((await f.reloader.reload("admin")).ok, true);
    assert.equal(f.ferry.addresses().listeners.second, undefined);
    // The removed listener's socket closes as its drain begins: connecting ends up refused.
    let refused = false;
    for (let i = 0; i < 50 && !refused; i++) {
      try {
        const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(second).port) });
        c.close();
        await new Promise((r) => setTimeout(r, 20));
      } catch (err) {
        refused = err instanceof Deno.errors.ConnectionRefused;
      }
    }
    assert.ok(refused, "the removed listener refuses connections");
    assert.equal((await text(f.url())).body, "one");
  } finally {
    await f.close();
  }
});

/** A port nothing listens on now (bound, read back, released). */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Binds `port` within a few seconds (a released listener may close asynchronously), or fails. */
async function canBind(port: number): Promise<boolean> {
  const deadline = Date.now() + 3_000;
  while (true) {
    try {
      Deno.listen({ hostname: "127.0.0.1", port }).close();
      return true;
    } catch (err) {
      if (!(err instanceof Deno.errors.AddrInUse) || Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

Deno.test("a reload whose last new listener cannot bind releases the ones it bound before it; the old config keeps serving", async () => {
  const blocker = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const f = await startReloadable(directConfig("v1"));
  const [first, second] = [freePort(), freePort()];
  try {
    await f.write(
      directConfig("v2").replace(
        `  - { name: public, address: "127.0.0.1:0" }\n`,
        `  - { name: public, address: "127.0.0.1:0" }
  - { name: first, address: "127.0.0.1:${first}" }
  - { name: second, address: "127.0.0.1:${second}" }
  - { name: taken, address: "127.0.0.1:${(blocker.addr as Deno.NetAddr).port}" }\n`,
      ),
    );
    const outcome = await f.reloader.reload("admin");
    assert.equal(outcome.ok, false);
    assert.match(outcome.error!, /cannot bind listener/);
    assert.ok(await canBind(first), "the first listener the reload bound was released");
    assert.ok(await canBind(second), "the second listener the reload bound was released");
    assert.deepEqual(Object.keys(f.ferry.addresses().listeners), ["public"]);
    assert.equal((await text(f.url())).body, "v1", "old snapshot still serving");
    assert.equal(f.ferry.snapshot.version, 1);
  } finally {
    blocker.close();
    await f.close();
  }
});

async function eventually(url: string, want: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  let got = "";
  while (Date.now() < deadline && (got = (await text(url)).body) !== want) {
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(got, want);
}

Deno.test("a change to the config file reloads a running ferry (debounced)", async () => {
  const watched = (body: string) =>
    directConfig(body).replace("watch_config: false", "watch_config: true");
  const file = await tempConfig(watched("v1"));
  const ferry = await spawnFerry(["--config", file]);
  const url = ferry.listeners.get("public")!;
  try {
    await eventually(url, "v1");
    // An editor's save: several writes in a burst, one reload once they settle.
    for (const b of ["v2-partial", "v2-more", "v2"]) await Deno.writeTextFile(file, watched(b));
    await eventually(url, "v2");
    const reloads = ferry.logs.filter((l) => l.includes('"msg":"config reloaded"'));
    assert.ok(reloads.length >= 1 && reloads.length <= 2, reloads.join("\n"));
    assert.ok(reloads.every((l) => l.includes('"trigger":"file"')));
  } finally {
    ferry.child.kill("SIGTERM");
    await ferry.child.status;
  }
});

Deno.test("SIGHUP reloads; a bad file on SIGHUP is logged with its line and the old config serves", async () => {
  const file = await tempConfig(directConfig("v1"));
  const ferry = await spawnFerry(["--config", file]);
  const url = ferry.listeners.get("public")!;
  try {
    await Deno.writeTextFile(file, directConfig("v2"));
    assert.equal((await text(url)).body, "v1", "watch_config: false ignores the write");
    ferry.child.kill("SIGHUP");
    await eventually(url, "v2");
    await Deno.writeTextFile(file, directConfig("v3", "    bogus_field: 1\n"));
    ferry.child.kill("SIGHUP");
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && !ferry.logs.some((l) => l.includes("reload failed"))) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const failed = ferry.logs.find((l) => l.includes("reload failed"));
    assert.ok(failed, "the failure is logged");
    assert.match(failed, /:9:5: .*bogus_field/);
    assert.match(failed, /"trigger":"signal"/);
    assert.equal((await text(url)).body, "v2");
  } finally {
    ferry.child.kill("SIGTERM");
    await ferry.child.status;
  }
});

Deno.test("a certificate rotated on disk is served after a reload; other listeners stay bound", async () => {
  const a = await makeTestCerts();
  const b = await makeTestCerts();
  const dir = await Deno.makeTempDir();
  await Deno.copyFile(a.certFile, `${dir}/server.crt`);
  await Deno.copyFile(a.keyFile, `${dir}/server.key`);
  const config = directConfig("tls").replace(
    `  - { name: public, address: "127.0.0.1:0" }\n`,
    `  - { name: public, address: "127.0.0.1:0" }
  - { name: secure, address: "127.0.0.1:0", tls: { cert: ${dir}/server.crt, key: ${dir}/server.key } }\n`,
  );
  const f = await startReloadable(config);
  const curlWith = async (ca: string) => {
    const port = f.ferry.addresses().listeners.secure!.port;
    return (await run("curl", ["-s", "--cacert", ca, `https://localhost:${port}/`])).code;
  };
  try {
    const publicPort = f.ferry.addresses().listeners.public!.port;
    assert.equal(await curlWith(a.caFile), 0);
    await Deno.copyFile(b.certFile, `${dir}/server.crt`);
    await Deno.copyFile(b.keyFile, `${dir}/server.key`);
    assert.equal((await f.reloader.reload("signal")).ok, true);
    assert.equal(await curlWith(b.caFile), 0, "the new certificate is served");
    assert.notEqual(await curlWith(a.caFile), 0, "the old one is gone");
    assert.equal(f.ferry.addresses().listeners.public!.port, publicPort);
  } finally {
    await f.close();
    await Promise.all([a.remove(), b.remove(), Deno.remove(dir, { recursive: true })]);
  }
});

Deno.test("turning the connection guard off by reload rebinds the listener without it", async () => {
  const f = await startReloadable(directConfig("guarded"));
  try {
    assert.equal((await text(f.url())).body, "guarded");
    assert.ok("public" in f.ferry.openConnections(), "the guard counts connections");
    await f.write(
      directConfig("bare").replace(
        "{ watch_config: false }",
        "{ watch_config: false, connection_guard: false }",
      ),
    );
    assert.equal((await f.reloader.reload("admin")).ok, true);
    assert.deepEqual(f.ferry.openConnections(), {}, "no guard any more");
    assert.equal((await text(f.url())).body, "bare");
  } finally {
    await f.close();
  }
});
