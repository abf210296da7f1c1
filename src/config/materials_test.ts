import assert from "node:assert/strict";
import { parseConfigText } from "./load.ts";
import { ConfigProblemsError, readMaterials } from "./materials.ts";

function config(text: string) {
  const loaded = parseConfigText(text, "f.yaml");
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
  return loaded.config;
}

Deno.test("materials: every file the config names is read once, by name, and every problem is listed at once", () => {
  const cfg = config(`listeners:
  - { name: tls, address: "127.0.0.1:0", tls: { cert: c.pem, key: k.pem } }
admin: { address: "127.0.0.1:0", token_file: token.txt }
rate_limits:
  - name: a
    scope: global
    rate: 1
    burst: 1
    redis: { address: "127.0.0.1:6379", password_file: pw.txt, tls: { ca_file: ca.pem } }
  - { name: b, scope: global, rate: 1, burst: 1, redis: { address: "127.0.0.1:6379", password_env: NOPE } }
routes: [{ name: r, direct_response: { status: 200 } }]
`);
  const files: Record<string, string> = {
    "c.pem": "CERT",
    "k.pem": "KEY",
    "token.txt": "0123456789abcdef0123\nignored",
    "pw.txt": "secret",
    "ca.pem": "CA",
  };
  const reads: string[] = [];
  const readTextFile = (p: string) => {
    reads.push(p);
    const text = files[p];
    if (text === undefined) throw new Error(`no ${p}`);
    return text;
  };
  const ok = readMaterials(cfg, { readTextFile, env: (n) => n === "NOPE" ? "set" : undefined });
  assert.deepEqual(ok.listenerTls.get("tls"), { cert: "CERT", key: "KEY", sni: [] });
  assert.equal(ok.adminToken, "0123456789abcdef0123");
  assert.equal(ok.storeFiles.get("pw.txt"), "secret");
  assert.equal(ok.storeFiles.get("ca.pem"), "CA");
  assert.deepEqual(reads.sort(), ["c.pem", "ca.pem", "k.pem", "pw.txt", "token.txt"]);

  delete files["pw.txt"];
  files["token.txt"] = "short";
  let problems: string[] = [];
  try {
    readMaterials(cfg, { readTextFile, env: () => undefined });
    assert.fail("expected ConfigProblemsError");
  } catch (e) {
    if (!(e instanceof ConfigProblemsError)) throw e;
    problems = e.problems.map((p) => p.path).sort();
  }
  assert.deepEqual(problems, [
    "admin.token_file",
    "rate_limits[0].redis.password_file",
    "rate_limits[1].redis.password_env",
  ]);
});
