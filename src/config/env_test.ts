import assert from "node:assert/strict";
import { configFromEnv, levelFromRustLog } from "./env.ts";
import { formatIssues } from "./issues.ts";

Deno.test("configFromEnv() is undefined without PROXY_LISTEN_ADDR and PROXY_UPSTREAM_ADDRS", () => {
  assert.equal(configFromEnv({}), undefined);
  assert.equal(
    configFromEnv({ PROXY_METRICS_ADDR: "127.0.0.1:9090", RUST_LOG: "debug" }),
    undefined,
  );
  assert.equal(configFromEnv({ PROXY_LISTEN_ADDR: " ", PROXY_UPSTREAM_ADDRS: "" }), undefined);
});

Deno.test("configFromEnv() builds one listener, one cluster and a catch-all route", () => {
  const result = configFromEnv({
    PROXY_LISTEN_ADDR: "0.0.0.0:3000",
    PROXY_UPSTREAM_ADDRS: "127.0.0.1:9001, http://127.0.0.1:9002,https://api.internal:8443",
    PROXY_METRICS_ADDR: "127.0.0.1:9090",
    PROXY_REQUEST_TIMEOUT_MS: "2500",
    RUST_LOG: "trace",
  });
  assert.ok(result?.ok, result && !result.ok ? formatIssues(result.errors) : "");
  const cfg = result.config;
  assert.deepEqual(cfg.listeners, [{ name: "default", address: "0.0.0.0:3000", protocol: "http" }]);
  assert.deepEqual(cfg.admin, {
    address: "127.0.0.1:9090",
    persist_config: "memory",
    max_connections: 100,
    max_connections_per_ip: 0,
  });
  assert.equal(cfg.log.level, "debug");
  assert.equal(cfg.routes.length, 1);
  assert.equal(cfg.routes[0]?.name, "default");
  assert.equal(cfg.routes[0]?.cluster, "upstream");
  assert.equal(cfg.routes[0]?.timeout, 2500);
  assert.deepEqual(cfg.routes[0]?.match, { path: { prefix: "/" } });
  assert.deepEqual(cfg.clusters[0]?.endpoints, [
    "http://127.0.0.1:9001",
    "http://127.0.0.1:9002",
    "https://api.internal:8443",
  ]);
  assert.deepEqual(result.warnings, []);
});

Deno.test("configFromEnv() uses Rust-ServiceMesh defaults for the unset half", () => {
  const result = configFromEnv({ PROXY_UPSTREAM_ADDRS: "127.0.0.1:9001" });
  assert.ok(result?.ok);
  assert.equal(result.config.listeners[0]?.address, "127.0.0.1:3000");
  assert.equal(result.config.routes[0]?.timeout, 30_000);
  assert.equal(result.config.admin, undefined);
  assert.equal(result.config.log.level, "info");
  const other = configFromEnv({ PROXY_LISTEN_ADDR: "127.0.0.1:8000" });
  assert.ok(other?.ok);
  assert.deepEqual(other.config.clusters[0]?.endpoints, ["http://127.0.0.1:8080"]);
});

Deno.test("a bad PROXY_LISTEN_ADDR is an issue naming the variable", () => {
  const result = configFromEnv({ PROXY_LISTEN_ADDR: "localhost", PROXY_UPSTREAM_ADDRS: "h:1" });
  assert.ok(result && !result.ok);
  assert.deepEqual(result.errors, [{
    file: "<env>",
    line: 0,
    column: 0,
    path: "PROXY_LISTEN_ADDR",
    value: "localhost",
    message: "expected host:port, such as 127.0.0.1:8080",
  }]);
  assert.equal(
    formatIssues(result.errors),
    '<env>: PROXY_LISTEN_ADDR: expected host:port, such as 127.0.0.1:8080 (got "localhost")',
  );
});

Deno.test("every bad variable is reported at once", () => {
  const result = configFromEnv({
    PROXY_LISTEN_ADDR: "127.0.0.1:8080",
    PROXY_UPSTREAM_ADDRS: ",",
    PROXY_REQUEST_TIMEOUT_MS: "5s",
    PROXY_LOG_LEVEL: "loud",
    RUST_LOG: "debug",
  });
  assert.ok(result && !result.ok);
  assert.deepEqual(result.errors.map((e) => e.path), [
    "PROXY_UPSTREAM_ADDRS",
    "PROXY_REQUEST_TIMEOUT_MS",
    "PROXY_LOG_LEVEL",
  ]);
});

Deno.test("schema and cross-reference problems are named by variable", () => {
  const bad = configFromEnv({
    PROXY_LISTEN_ADDR: "127.0.0.1:8080",
    PROXY_UPSTREAM_ADDRS: "http://a:1/path",
    PROXY_METRICS_ADDR: "127.0.0.1:8080",
  });
  assert.ok(bad && !bad.ok);
  assert.deepEqual(bad.errors.map((e) => e.path), ["PROXY_UPSTREAM_ADDRS", "PROXY_METRICS_ADDR"]);
  assert.match(bad.errors[0]!.message, /without a path/);
  assert.match(bad.errors[1]!.message, /conflicts with listener 'default'/);
});

Deno.test("levelFromRustLog() reads the global directive, else the most verbose", () => {
  assert.equal(levelFromRustLog("info"), "info");
  assert.equal(levelFromRustLog("TRACE"), "debug");
  assert.equal(levelFromRustLog("warn,hyper=debug"), "warn");
  assert.equal(levelFromRustLog("rust_servicemesh=debug,hyper=warn"), "debug");
  assert.equal(levelFromRustLog("off"), "error");
  assert.equal(levelFromRustLog("chatty"), undefined);
  const viaProxyVar = configFromEnv({
    PROXY_LISTEN_ADDR: "127.0.0.1:1",
    PROXY_LOG_LEVEL: "warn",
    RUST_LOG: "debug",
  });
  assert.ok(viaProxyVar?.ok);
  assert.equal(viaProxyVar.config.log.level, "warn");
});

Deno.test("PROXY_WORKERS sets server.workers; a value that is not a whole number names the variable", () => {
  const ok = configFromEnv({ PROXY_UPSTREAM_ADDRS: "127.0.0.1:9000", PROXY_WORKERS: "2" });
  assert.ok(ok?.ok);
  assert.equal(ok.config.server.workers, 2);
  const unset = configFromEnv({ PROXY_UPSTREAM_ADDRS: "127.0.0.1:9000" });
  assert.ok(unset?.ok);
  assert.equal(unset.config.server.workers, undefined);
  const auto = configFromEnv({ PROXY_UPSTREAM_ADDRS: "127.0.0.1:9000", PROXY_WORKERS: "auto" });
  assert.ok(auto?.ok);
  assert.equal(auto.config.server.workers, "auto");
  const bad = configFromEnv({ PROXY_UPSTREAM_ADDRS: "127.0.0.1:9000", PROXY_WORKERS: "two" });
  assert.ok(bad && !bad.ok);
  assert.match(JSON.stringify(bad.errors), /PROXY_WORKERS/);
});
