/**
 * The loader's contract: positions, messages and cross-reference checks. One file past 500
 * lines: every case shares the CONTRACT config and the position helpers.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  checkWritableFile,
  type ConfigIssue,
  formatIssues,
  loadConfigFile,
  parseConfigText,
} from "./load.ts";
import { resolveConfigPath } from "./files.ts";
import type { LoadResult } from "./issues.ts";

const CONTRACT = `listeners:
  - name: public
    address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9901
routes:
  - name: users
    match:
      host: api.example.com
      path: { prefix: /api/ }
      methods: [GET, HEAD]
      headers: { x-canary: "1" }
      query: { debug: "1" }
    cluster: users
    rewrite: { prefix: /v2/ }
    timeout: 15s
clusters:
  - name: users
    endpoints: [ http://127.0.0.1:9001, { url: http://127.0.0.1:9002, weight: 3 } ]
    lb: round_robin
`;

function errorsOf(result: LoadResult): ConfigIssue[] {
  assert.equal(result.ok, false, "expected the config to be rejected");
  return result.ok ? [] : result.errors;
}

/** `line:column path` of each issue, for exact position assertions. */
function positions(issues: ConfigIssue[]): string[] {
  return issues.map((i) => `${i.line}:${i.column} ${i.path}`);
}

Deno.test("the contract example loads with every default applied", () => {
  const result = parseConfigText(CONTRACT, "config/ferry.yaml");
  assert.ok(result.ok, result.ok ? "" : formatIssues(result.errors));
  assert.deepEqual(result.warnings, []);
  assert.deepEqual(result.config, {
    listeners: [{ name: "public", address: "127.0.0.1:8080", protocol: "http" }],
    admin: {
      address: "127.0.0.1:9901",
      persist_config: "memory",
      max_connections: 100,
      max_connections_per_ip: 0,
    },
    server: {
      trusted_proxies: [],
      request_id: "trusted",
      websocket_max_buffer: 4 * 1024 * 1024,
      via: "ferry",
      drain_timeout: 30_000,
      watch_config: true,
      connection_guard: true,
      header_timeout: 30_000,
      idle_timeout: 60_000,
      max_connections: 10_000,
      max_connections_per_ip: 0,
      max_body_bytes: 10 * 1024 * 1024,
      max_header_bytes: 12 * 1024,
      max_headers: 100,
      max_streams_per_connection: 128,
      max_uri_bytes: 8192,
      send_timeout: 60_000,
      websocket_max_message_bytes: 1024 * 1024,
      websocket_max_frame_bytes: 1024 * 1024,
      websocket_idle_timeout: 300_000,
    },
    log: { level: "info" },
    routes: [{
      name: "users",
      match: {
        host: "api.example.com",
        path: { prefix: "/api/" },
        methods: ["GET", "HEAD"],
        headers: { "x-canary": "1" },
        query: { debug: "1" },
      },
      cluster: "users",
      rewrite: { prefix: "/v2/" },
      timeout: 15_000,
      per_try_timeout: 0,
      idle_timeout: 0,
      websocket: true,
    }],
    clusters: [{
      name: "users",
      endpoints: ["http://127.0.0.1:9001", { url: "http://127.0.0.1:9002", weight: 3 }],
      lb: "round_robin",
      protocol: "http1",
      pool: {
        max_idle_per_endpoint: 64,
        idle_timeout: 90_000,
        max_connections_per_endpoint: 1024,
        max_requests_per_connection: 0,
        connect_timeout: 5_000,
      },
      http2: { max_connections_per_endpoint: 4 },
      panic_threshold: 50,
      retry_budget: { percent: 20, min_retries: 3 },
      preserve_host: true,
    }],
    rate_limits: [],
    jwt_providers: [],
  });
});

Deno.test("a minimal config gets default routes, clusters and match", () => {
  const result = parseConfigText(
    "listeners: [{ name: a, address: ':0' }]\nroutes: [{ name: r, redirect: {} }]\n",
    "x.yaml",
  );
  assert.ok(result.ok, result.ok ? "" : formatIssues(result.errors));
  assert.deepEqual(result.config.clusters, []);
  assert.deepEqual(result.config.routes[0]?.match, { path: { prefix: "/" } });
  assert.deepEqual(result.config.routes[0]?.redirect, { status: 302, strip_query: false });
});

Deno.test("every schema error is reported at once with its exact line and column", () => {
  const text = [
    /* 1 */ "listeners:",
    /* 2 */ "  - name: public",
    /* 3 */ "    address: localhost",
    /* 4 */ "  - address: 127.0.0.1:8081",
    /* 5 */ "routes:",
    /* 6 */ "  - name: users",
    /* 7 */ "    match:",
    /* 8 */ "      path: { prefix: api }",
    /* 9 */ "      methods: []",
    /* 10 */ "    cluster: users",
    /* 11 */ "    timeout: 15 seconds",
    /* 12 */ "clusters:",
    /* 13 */ "  - name: users",
    /* 14 */ "    endpoints: [{ url: http://a:1, weight: 0 }]",
    /* 15 */ "    lb: fastest",
    "",
  ].join("\n");
  const errors = errorsOf(parseConfigText(text, "config/ferry.yaml"));
  assert.deepEqual(positions(errors), [
    "3:14 listeners[0].address",
    "4:5 listeners[1].name", // missing key: points at the mapping that lacks it
    "8:23 routes[0].match.path.prefix",
    "9:16 routes[0].match.methods",
    "11:14 routes[0].timeout",
    "14:44 clusters[0].endpoints[0].weight",
    "15:9 clusters[0].lb",
  ]);
  assert.deepEqual(errors.map((e) => e.message), [
    "expected host:port, such as 127.0.0.1:8080",
    "missing required key 'name'; expected a string",
    "expected a path starting with /",
    "expected at least 1 item",
    "expected a duration such as 250ms, 15s or 1m",
    "expected a number >= 1",
    "expected one of round_robin, least_request, random, ring_hash, maglev",
  ]);
  assert.equal(
    formatIssues(errors.filter((e) => e.path === "routes[0].timeout")),
    "config/ferry.yaml:11:14: routes[0].timeout: " +
      'expected a duration such as 250ms, 15s or 1m (got "15 seconds")',
  );
});

Deno.test("an unknown key is rejected at the key, naming it and the keys allowed", () => {
  const text = "listeners:\n  - name: a\n    adress: 127.0.0.1:80\n";
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  const unknown = errors.find((e) => e.path === "listeners[0].adress");
  assert.ok(unknown, formatIssues(errors));
  assert.equal(unknown.line, 3);
  assert.equal(unknown.column, 5);
  assert.equal(
    unknown.message,
    "unknown key 'adress'; expected one of: name, address, tls, protocol, grpc, authorization, " +
      "middleware",
  );
  // The misspelt key also leaves `address` missing, reported on the listener.
  assert.ok(errors.some((e) => e.path === "listeners[0].address" && e.line === 2));
});

Deno.test("a bad duration names the field, the expected format and the value", () => {
  const text = CONTRACT.replace("timeout: 15s", "timeout: 15 secs") +
    "    pool: { idle_timeout: true }\n";
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(
    errors.map((e) => [e.line, e.path, e.value]),
    [[16, "routes[0].timeout", "15 secs"], [21, "clusters[0].pool.idle_timeout", true]],
  );
  for (const e of errors) assert.match(e.message, /expected a duration such as 250ms/);
});

Deno.test("a route naming an unknown cluster lists the defined ones", () => {
  const text = CONTRACT.replace("    cluster: users", "    cluster: user") +
    "  - name: orders\n    endpoints: [http://127.0.0.1:9003]\n";
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.equal(errors.length, 1, formatIssues(errors));
  assert.equal(errors[0]?.path, "routes[0].cluster");
  assert.equal(errors[0]?.line, 14);
  assert.equal(errors[0]?.column, 14);
  assert.equal(errors[0]?.message, "unknown cluster 'user'; defined: users, orders");
});

Deno.test("cross-reference checks report every problem at its node", () => {
  const text = [
    /* 1 */ "listeners:",
    /* 2 */ "  - { name: a, address: 127.0.0.1:8080 }",
    /* 3 */ "  - { name: a, address: 0.0.0.0:8080 }",
    /* 4 */ "admin: { address: 127.0.0.1:8080 }",
    /* 5 */ "server: { trusted_proxies: [10.0.0.0/8, 10.0.0.0/33, '::1', nope] }",
    /* 6 */ "routes:",
    /* 7 */ "  - { name: r, listeners: [a, b], cluster: c }",
    /* 8 */ "  - { name: r, cluster: c }",
    /* 9 */ "clusters:",
    /* 10 */ "  - name: c",
    /* 11 */ "    endpoints:",
    /* 12 */ "      - localhost:9001",
    /* 13 */ "      - https://user:pw@example.com",
    /* 14 */ "      - http://example.com/api",
    /* 15 */ "      - { url: 'http://example.com/?q=1' }",
    /* 16 */ "      - http://[::1]:9000/",
    "",
  ].join("\n");
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(positions(errors), [
    "3:13 listeners[1].name",
    "3:25 listeners[1].address",
    "4:19 admin.address",
    "5:41 server.trusted_proxies[1]",
    "5:61 server.trusted_proxies[3]",
    "7:31 routes[0].listeners[1]",
    "8:13 routes[1].name",
    "12:9 clusters[0].endpoints[0]",
    "13:9 clusters[0].endpoints[1]",
    "14:9 clusters[0].endpoints[2]",
    "15:16 clusters[0].endpoints[3].url",
  ]);
  const byPath = new Map(errors.map((e) => [e.path, e.message]));
  assert.match(byPath.get("listeners[1].name")!, /duplicate listener name 'a'/);
  assert.match(byPath.get("listeners[1].address")!, /conflicts with listener 'a'/);
  assert.match(byPath.get("admin.address")!, /conflicts with listener 'a'/);
  assert.match(byPath.get("routes[0].listeners[1]")!, /unknown listener 'b'; defined: a/);
  assert.match(byPath.get("clusters[0].endpoints[0]")!, /write http:\/\/localhost:9001/);
  assert.match(byPath.get("clusters[0].endpoints[1]")!, /without user:password@/);
  assert.match(byPath.get("clusters[0].endpoints[2]")!, /without a path/);
  assert.match(byPath.get("clusters[0].endpoints[3].url")!, /without a \?query/);
});

Deno.test("header edits and rewrites that would fail per request are rejected at load", () => {
  const text = [
    /* 1 */ "listeners: [{ name: a, address: ':80' }]",
    /* 2 */ "routes:",
    /* 3 */ "  - name: r",
    /* 4 */ "    match: { path: { regex: '^/a' } }",
    /* 5 */ "    cluster: c",
    /* 6 */ "    rewrite: { prefix: /b/ }",
    /* 7 */ "    request_headers:",
    /* 8 */ "      add: { 'bad name': x, x-ok: \"a\\nb\" }",
    /* 9 */ "      remove: [ok, 'no way']",
    /* 10 */ "  - name: s",
    /* 11 */ "    cluster: c",
    /* 12 */ "    rewrite: { prefix: /b/, regex: { pattern: a, substitution: b } }",
    /* 13 */ "clusters: [{ name: c, endpoints: [http://h] }]",
    "",
  ].join("\n");
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(positions(errors), [
    "6:24 routes[0].rewrite.prefix",
    '8:14 routes[0].request_headers.add["bad name"]',
    "8:35 routes[0].request_headers.add.x-ok",
    "9:20 routes[0].request_headers.remove[1]",
    "12:14 routes[1].rewrite",
  ]);
});

Deno.test("a cluster no route uses is a warning, not an error", () => {
  const text = CONTRACT + "  - name: spare\n    endpoints: [http://127.0.0.1:9009]\n";
  const result = parseConfigText(text, "f.yaml");
  assert.ok(result.ok);
  assert.deepEqual(positions(result.warnings), ["21:11 clusters[1].name"]);
  assert.match(result.warnings[0]!.message, /not used by any route/);
});

Deno.test("a YAML syntax error is reported with its line", () => {
  const text = "listeners:\n  - name: a\n    address: [127.0.0.1:80\nroutes: []\n";
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.ok(errors.length >= 1);
  assert.match(errors[0]!.message, /^YAML: /);
  assert.equal(errors[0]!.line, 4);
  assert.ok(errors.every((e) => e.line >= 1 && e.column >= 1));
});

Deno.test("a bad indentation is a YAML error, not a schema error", () => {
  const errors = errorsOf(parseConfigText("listeners:\n  - name: a\n   address: x\n", "f.yaml"));
  assert.ok(errors.every((e) => e.message.startsWith("YAML: ")), formatIssues(errors));
  assert.equal(errors[0]!.line, 3);
});

Deno.test("a duplicate key is reported at the second key, with the schema errors", () => {
  const text = "listeners:\n  - name: a\n    address: ':80'\n    name: b\nroutes: 5\n";
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(positions(errors), ["4:5 listeners[0].name", "5:9 routes"]);
  assert.equal(errors[0]!.message, "duplicate key 'name'; expected each key once per mapping");
  assert.equal(errors[1]!.message, "expected a list");
});

Deno.test("an empty or non-mapping document says what is expected", () => {
  assert.deepEqual(errorsOf(parseConfigText("", "f.yaml")).map((e) => e.message), [
    "the config is empty; expected a mapping with listeners",
  ]);
  const [e] = errorsOf(parseConfigText("- a\n", "f.yaml"));
  assert.equal(e?.message, "expected a mapping");
  assert.deepEqual(e?.value, ["a"]);
});

Deno.test("union values explain the accepted shapes", () => {
  const text = CONTRACT.replace('headers: { x-canary: "1" }', "headers: { x-canary: 1 }")
    .replace("path: { prefix: /api/ }", "path: { prefix: /api/, exact: /api }");
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(errors.map((e) => [e.path, e.message]), [
    ["routes[0].match.path", "expected {exact: ...}, {prefix: ...} or {regex: ...}"],
    ["routes[0].match.headers.x-canary", "expected a string, {present: true} or {regex: ...}"],
  ]);
});

Deno.test("values are shown cut to 60 characters", () => {
  const long = "x".repeat(200);
  const errors = errorsOf(
    parseConfigText(`listeners: [{ name: a, address: ${long} }]\n`, "f.yaml"),
  );
  const line = formatIssues(errors);
  const got = /\(got (.*)\)$/.exec(line)?.[1];
  assert.ok(got !== undefined && got.length <= 60, line);
  assert.ok(got.endsWith("..."));
});

Deno.test("relative TLS paths resolve against the config file's folder", () => {
  assert.equal(resolveConfigPath("config/ferry.yaml", "certs/a.pem"), "config/certs/a.pem");
  assert.equal(resolveConfigPath("/etc/ferry/ferry.yaml", "../tls/a.pem"), "/etc/tls/a.pem");
  assert.equal(resolveConfigPath("/etc/ferry/ferry.yaml", "/abs/a.pem"), "/abs/a.pem");
  const seen: string[] = [];
  const text = "listeners:\n  - name: a\n    address: ':443'\n" +
    "    tls: { cert: certs/a.pem, key: /k.pem }\n";
  const result = parseConfigText(text, "/srv/ferry.yaml", {
    checkFile: (p) => {
      seen.push(p);
      return p === "/k.pem" ? "no such file" : undefined;
    },
  });
  assert.deepEqual(seen, ["/srv/certs/a.pem", "/k.pem"]);
  const [e] = errorsOf(result);
  assert.equal(e?.path, "listeners[0].tls.key");
  assert.equal(e?.line, 4);
  assert.match(e!.message, /cannot read the TLS key \/k\.pem: no such file/);
});

Deno.test("loadConfigFile checks TLS and CA files on disk", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.mkdir(`${dir}/certs`);
    await Deno.writeTextFile(`${dir}/certs/cert.pem`, "cert");
    await Deno.writeTextFile(
      `${dir}/ferry.yaml`,
      "listeners:\n  - name: a\n    address: ':0'\n" +
        "    tls: { cert: certs/cert.pem, key: certs/key.pem }\n" +
        "routes: [{ name: r, cluster: c }]\n" +
        "clusters:\n  - name: c\n    endpoints: [https://example.com]\n" +
        "    tls: { ca_file: certs }\n",
    );
    const errors = errorsOf(await loadConfigFile(`${dir}/ferry.yaml`));
    assert.deepEqual(positions(errors), [
      "4:39 listeners[0].tls.key",
      "9:21 clusters[0].tls.ca_file",
    ]);
    assert.match(errors[0]!.message, /no such file/);
    assert.match(errors[1]!.message, /not a regular file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a missing config file is one issue at line 0", async () => {
  const path = `${await Deno.makeTempDir()}/nope.yaml`;
  const errors = errorsOf(await loadConfigFile(path));
  assert.deepEqual(errors, [{
    file: path,
    line: 0,
    column: 0,
    path: "",
    message: "cannot read the config file: no such file",
  }]);
  assert.equal(formatIssues(errors), `${path}: cannot read the config file: no such file`);
});

Deno.test("parseConfigText never throws and places every issue in the text", () => {
  const yamlish = fc.array(
    fc.constantFrom(
      "listeners:",
      "  - name: a",
      "    address: ':80'",
      "routes:",
      "  - { name: r, cluster: c }",
      "clusters: [{ name: c, endpoints: [http://h] }]",
      "  bogus: [1",
      "- x",
      "timeout: 1s",
      "  &a x: *a",
      "\t",
      "}",
      "'",
    ),
    { maxLength: 10 },
  );
  const lines = (t: string) => t.split("\n").length;
  fc.assert(
    fc.property(fc.oneof(yamlish.map((l) => l.join("\n")), fc.string()), (text) => {
      const result = parseConfigText(text, "f.yaml");
      const issues = result.ok ? result.warnings : result.errors;
      if (!result.ok) assert.ok(result.errors.length > 0);
      for (const i of issues) {
        assert.ok(i.line >= 1 && i.line <= lines(text) + 1, JSON.stringify(i));
        assert.ok(i.column >= 1, JSON.stringify(i));
      }
    }),
    { numRuns: 300 },
  );
});

Deno.test("an admin listener beyond loopback without a token is a warning", () => {
  const open =
    "listeners: [{ name: p, address: '127.0.0.1:0' }]\nadmin: { address: '0.0.0.0:9901' }\n";
  const warned = parseConfigText(open, "f.yaml");
  assert.ok(warned.ok);
  assert.deepEqual(positions(warned.warnings), ["2:19 admin.address"]);
  assert.match(warned.warnings[0]!.message, /without a token/);
  for (
    const quiet of [
      open.replace("0.0.0.0", "127.0.0.1"),
      open.replace("}\n", ", token_env: FERRY_ADMIN_TOKEN }\n"),
    ]
  ) {
    const r = parseConfigText(quiet, "f.yaml");
    assert.ok(r.ok);
    assert.deepEqual(r.warnings, []);
  }
});

Deno.test("a gRPC health check on a cluster with HTTP/1.1 http:// endpoints is refused at its line", () => {
  const text = [
    /* 1 */ "listeners: [{ name: a, address: 127.0.0.1:8080 }]",
    /* 2 */ "routes: [{ name: r, cluster: c }]",
    /* 3 */ "clusters:",
    /* 4 */ "  - name: c",
    /* 5 */ "    endpoints: [http://127.0.0.1:9001]",
    /* 6 */ "    health_check:",
    /* 7 */ "      grpc: { service: svc }",
    "",
  ].join("\n");
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(positions(errors), ["7:13 clusters[0].health_check.grpc"]);
  assert.match(errors[0]!.message, /needs HTTP\/2/);
  // h2c, or only https:// endpoints, is fine.
  const h2c = text.replace("    endpoints:", "    protocol: h2c\n    endpoints:");
  assert.ok(parseConfigText(h2c, "f.yaml").ok);
  const tls = text.replace("http://127.0.0.1:9001", "https://127.0.0.1:9001");
  assert.ok(parseConfigText(tls, "f.yaml").ok);
  const auto = text.replace("    endpoints:", "    protocol: auto\n    endpoints:");
  assert.equal(errorsOf(parseConfigText(auto, "f.yaml"))[0]?.path, "clusters[0].health_check.grpc");
});

Deno.test("an access-log template naming an unknown field is refused at its line", () => {
  const text = CONTRACT + 'access_log:\n  path: stdout\n  format: "$method $pathh $status"\n';
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(positions(errors), ["23:11 access_log.format"]);
  assert.match(errors[0]!.message, /unknown access log field "\$pathh"; known: time, /);
  const both = errorsOf(
    parseConfigText(CONTRACT + "access_log: { format: combined, fields: [status] }\n", "f.yaml"),
  );
  assert.deepEqual(both.map((e) => e.path), ["access_log.fields"]);
  const ok = parseConfigText(
    CONTRACT + 'access_log: { format: "$status ${route}x $$" }\n',
    "f.yaml",
  );
  assert.equal(ok.ok, true);
});

Deno.test("a bare number in a duration field is an error that asks for a unit; 0 needs none", () => {
  const text = CONTRACT.replace("timeout: 15s", "timeout: 2");
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(errors.map((e) => [e.line, e.path, e.value]), [[16, "routes[0].timeout", 2]]);
  assert.equal(
    errors[0]!.message,
    "a bare number is not a duration: write its unit, such as 2s or 2ms",
  );
  const zero = parseConfigText(CONTRACT.replace("timeout: 15s", "timeout: 0"), "f.yaml");
  assert.ok(zero.ok && zero.config.routes[0]!.timeout === 0);
});

Deno.test("one indentation mistake or one tab gives one error, with a clean path", () => {
  const deeper = errorsOf(
    parseConfigText("listeners:\n  - name: public\n     address: 127.0.0.1:80\n", "f.yaml"),
  );
  assert.deepEqual(positions(deeper), ["3:6 listeners[0]"]);
  assert.match(deeper[0]!.message, /^YAML: this line is indented deeper than the key above it/);
  const tab = errorsOf(parseConfigText(
    "listeners:\n  - name: a\n    address: ':80'\nclusters:\n  - name: c\n    endpoints:\n\t- http://127.0.0.1:9\n",
    "f.yaml",
  ));
  assert.deepEqual(positions(tab), ["7:1 "]);
  assert.equal(tab[0]!.message, "YAML: a tab in the indentation; YAML indents with spaces only");
  const item = errorsOf(
    parseConfigText("listeners:\n  - name: a\n   address: ':80'\n", "f.yaml"),
  );
  assert.equal(item.length, 1, formatIssues(item));
});

Deno.test("the loader refuses a cluster reached from a grpc listener that speaks HTTP/1.1, at the route's line", () => {
  const text = [
    /* 1 */ "listeners: [{ name: g, address: 127.0.0.1:8080, protocol: grpc }]",
    /* 2 */ "routes: [{ name: r, cluster: c }]",
    /* 3 */ "clusters: [{ name: c, endpoints: [http://127.0.0.1:9001] }]",
    "",
  ].join("\n");
  const errors = errorsOf(parseConfigText(text, "f.yaml"));
  assert.deepEqual(positions(errors), ["2:30 routes[0].cluster"]);
  assert.match(errors[0]!.message, /grpc listener but speaks http1/);
  assert.ok(parseConfigText(text.replace("endpoints:", "protocol: h2c, endpoints:"), "f.yaml").ok);
});

Deno.test("the loader refuses an access log it could not open, without creating it", () => {
  const dir = Deno.makeTempDirSync();
  try {
    const text = (path: string) =>
      `listeners: [{ name: p, address: 127.0.0.1:8080 }]\naccess_log: { path: ${path} }\n`;
    const missing = errorsOf(
      parseConfigText(text(`${dir}/no/such/folder/a.log`), "f.yaml", {
        checkWritable: checkWritableFile,
      }),
    );
    assert.deepEqual(positions(missing), ["2:21 access_log.path"]);
    assert.match(missing[0]!.message, /no such file/);
    const folder = errorsOf(
      parseConfigText(text(dir), "f.yaml", { checkWritable: checkWritableFile }),
    );
    assert.match(folder[0]!.message, /is a directory/);
    assert.ok(
      parseConfigText(text(`${dir}/a.log`), "f.yaml", { checkWritable: checkWritableFile }).ok,
    );
    assert.deepEqual([...Deno.readDirSync(dir)], [], "nothing created");
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
