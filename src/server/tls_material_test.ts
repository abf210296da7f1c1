import assert from "node:assert/strict";
import { pairForServerName } from "./tls_material.ts";
import { tlsFilesOf } from "./tls_watch.ts";
import { parseConfigText } from "../config/load.ts";

Deno.test("pairForServerName: exact before wildcard, a wildcard covers one label, case and a trailing dot ignored, else the default", () => {
  const exact = { serverNames: ["api.example.com"], id: "exact" };
  const wild = { serverNames: ["*.example.com"], id: "wild" };
  const other = { serverNames: ["other.test", "*.apps.test"], id: "other" };
  const fallback = { serverNames: [], id: "default" };
  // The wildcard comes first in config order: the exact name still wins.
  const pairs = [wild, exact, other];
  const pick = (name: string | undefined) => pairForServerName(pairs, fallback, name).id;
  assert.equal(pick("api.example.com"), "exact");
  assert.equal(pick("API.Example.COM."), "exact");
  assert.equal(pick("www.example.com"), "wild");
  assert.equal(pick("a.b.example.com"), "default");
  assert.equal(pick("example.com"), "default");
  assert.equal(pick("x.apps.test"), "other");
  assert.equal(pick("other.test"), "other");
  assert.equal(pick(""), "default");
  assert.equal(pick(undefined), "default");
  assert.equal(pick("localhost"), "default");
});

Deno.test("tlsFilesOf: every TLS file of listeners (SNI pairs, client CA) and clusters, once each", () => {
  const loaded = parseConfigText(
    `listeners:
  - name: a
    address: "127.0.0.1:0"
    tls:
      cert: a.pem
      key: a.key
      client_ca: ca.pem
      certificates: [{ server_names: [x.test], cert: x.pem, key: x.key }]
  - { name: b, address: "127.0.0.1:0", tls: { cert: a.pem, key: a.key } }
clusters:
  - name: up
    endpoints: ["https://127.0.0.1:1"]
    tls: { ca_file: ca.pem, cert_file: c.pem, key_file: c.key }
`,
    "t.yaml",
  );
  assert.ok(loaded.ok, JSON.stringify(loaded));
  assert.deepEqual(tlsFilesOf(loaded.config).sort(), [
    "a.key",
    "a.pem",
    "c.key",
    "c.pem",
    "ca.pem",
    "x.key",
    "x.pem",
  ]);
});

Deno.test("watchTlsFiles: a burst of writes (certificate, then key) is one change; files in a folder named later are followed", async () => {
  const { watchTlsFiles } = await import("./tls_watch.ts");
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  await Deno.writeTextFile(`${a}/cert.pem`, "1");
  await Deno.writeTextFile(`${a}/key.pem`, "1");
  await Deno.writeTextFile(`${b}/ca.pem`, "1");
  let files = [`${a}/cert.pem`, `${a}/key.pem`];
  let changes = 0;
  const w = watchTlsFiles(() => files, () => changes++, { debounceMs: 300, pollMs: 60_000 });
  const settle = async (want: number) => {
    for (let i = 0; i < 50 && changes < want; i++) await new Promise((r) => setTimeout(r, 100));
    await new Promise((r) => setTimeout(r, 500)); // no second call for the same burst
  };
  try {
    await Deno.writeTextFile(`${a}/cert.pem`, "2");
    await Deno.writeTextFile(`${a}/key.pem`, "2");
    await settle(1);
    assert.equal(changes, 1);
    // A reload names a file in another folder: its changes count from the next event on.
    files = [`${a}/cert.pem`, `${a}/key.pem`, `${b}/ca.pem`];
    await Deno.writeTextFile(`${a}/cert.pem`, "3");
    await settle(2);
    assert.equal(changes, 2);
    await Deno.writeTextFile(`${b}/ca.pem`, "2");
    await settle(3);
    assert.equal(changes, 3);
    // Other files in the folder do not count.
    await Deno.writeTextFile(`${b}/unrelated.txt`, "x");
    await new Promise((r) => setTimeout(r, 800));
    assert.equal(changes, 3);
  } finally {
    w.close();
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
});
