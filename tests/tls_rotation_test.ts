/**
 * Certificate rotation without a restart, on Ferry as a user runs it (main.ts in a subprocess):
 * while h2load keeps TLS connections busy, the listener's certificate and key files are replaced
 * in place; new handshakes get the new certificate (fingerprint seen by openssl s_client), open
 * connections carry on (0 failed requests), and a bad pair dropped in place (key not matching,
 * expired) is refused, logged at its config line, with the good one kept. The expiry is in
 * /metrics and /config.
 */
import assert from "node:assert/strict";
import { run, spawnFerry, type Started, tempConfig } from "./helpers.ts";
import { expiredSelfSigned, type Leaf, sClient, selfSigned } from "./fixtures/tls_files.ts";

/** Replaces `to`'s certificate and key by renames (how cert-manager and `mv` rotate). */
async function install(from: Leaf, to: { certFile: string; keyFile: string }): Promise<void> {
  await Deno.copyFile(from.keyFile, `${to.keyFile}.new`);
  await Deno.copyFile(from.certFile, `${to.certFile}.new`);
  await Deno.rename(`${to.keyFile}.new`, to.keyFile);
  await Deno.rename(`${to.certFile}.new`, to.certFile);
}

/** Polls until `check` holds (bounded); returns whether it did. */
async function eventually(check: () => Promise<boolean> | boolean, ms = 15_000): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

function logged(f: Started, since: number, pattern: RegExp): string | undefined {
  return f.logs.slice(since).find((l) => pattern.test(l));
}

Deno.test({
  name:
    "TLS rotation under h2load: 0 failed requests, new handshakes get the new certificate, a bad pair (key not matching, expired) is refused at its config line and the old kept; expiry in /metrics and /config",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ferry-rotate-" });
    const first = await selfSigned(dir, "first", "web.test");
    const second = await selfSigned(dir, "second", "web.test");
    const stranger = await selfSigned(dir, "stranger", "web.test");
    const expired = await expiredSelfSigned(dir, "expired", "web.test");
    const live = { certFile: `${dir}/live.pem`, keyFile: `${dir}/live.key` };
    await install(first, live);
    const file = await tempConfig(`admin: { address: "127.0.0.1:0" }
listeners:
  - name: web
    address: "127.0.0.1:0"
    tls:
      cert: ${live.certFile}
      key: ${live.keyFile}
routes:
  - { name: ok, match: { path: { prefix: / } }, direct_response: { status: 200, body: ok } }
`);
    const f = await spawnFerry(["--config", file]);
    const port = Number(new URL(f.listeners.get("web")!).port);
    try {
      assert.equal((await sClient(port)).fingerprint, first.fingerprint);
      const load = run("h2load", [
        "-c",
        "4",
        "-m",
        "4",
        "-D",
        "10",
        `https://127.0.0.1:${port}/`,
      ]);
      await new Promise((r) => setTimeout(r, 1500));

      // A good pair: new handshakes get it.
      let mark = f.logs.length;
      await install(second, live);
      assert.ok(
        await eventually(async () => (await sClient(port)).fingerprint === second.fingerprint),
        `the new certificate is served:\n${f.logs.slice(mark).join("\n")}`,
      );
      assert.ok(logged(f, mark, /listener certificates replaced/));
      assert.ok(logged(f, mark, /"msg":"config reloaded".*"trigger":"tls"/), "its own trigger");

      // A certificate whose key is not in place: refused at its line, the good pair kept.
      mark = f.logs.length;
      await Deno.copyFile(stranger.certFile, live.certFile);
      assert.ok(
        await eventually(() => logged(f, mark, /config reload failed/) !== undefined),
        f.logs.slice(mark).join("\n"),
      );
      const refusal = logged(f, mark, /config reload failed/)!;
      assert.match(refusal, /ferry\.yaml:6:\d+: listeners\[0\]\.tls: the key does not match/);
      assert.equal((await sClient(port)).fingerprint, second.fingerprint);

      // An expired pair: refused too.
      mark = f.logs.length;
      await install(expired, live);
      assert.ok(
        await eventually(() => logged(f, mark, /the certificate expired on 2020/) !== undefined),
        f.logs.slice(mark).join("\n"),
      );
      assert.equal((await sClient(port)).fingerprint, second.fingerprint);

      const h2 = await load;
      const m = h2.stdout.match(
        /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/,
      );
      assert.ok(m, h2.stdout + h2.stderr);
      const [total, , done, succeeded, failed, errored] = m.slice(1).map(Number);
      console.log(
        `rotation under h2load: ${total} requests, ${succeeded} succeeded, ${failed} failed`,
      );
      assert.ok(succeeded! > 100, h2.stdout);
      assert.equal(failed, 0, h2.stdout);
      assert.equal(errored, 0, h2.stdout);
      assert.equal(done, succeeded);

      // The expiry of what serves (the second pair) in /metrics and /config.
      const notAfter = Date.parse(
        (await run("openssl", ["x509", "-noout", "-enddate", "-in", second.certFile])).stdout
          .replace("notAfter=", "").trim(),
      );
      const metrics = await (await fetch(`${f.admin}/metrics`)).text();
      const line = metrics.split("\n").find((l) =>
        l.startsWith('ferry_tls_certificate_expiry_timestamp_seconds{kind="listener",name="web"}')
      );
      assert.ok(line, metrics);
      assert.equal(Number(line.split(" ").pop()), notAfter / 1000);
      const view = await (await fetch(`${f.admin}/config`)).json();
      assert.deepEqual(view.certificates, [{
        kind: "listener",
        name: "web",
        server_names: [],
        not_after: new Date(notAfter).toISOString(),
        sha256: second.fingerprint,
      }]);
    } finally {
      f.child.kill("SIGTERM");
      await f.child.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
});
