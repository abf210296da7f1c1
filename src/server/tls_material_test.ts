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
