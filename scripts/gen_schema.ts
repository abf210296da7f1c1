/**
 * Writes `config/ferry.schema.json`, the JSON Schema editors use to complete and check Ferry
 * YAML, from `ConfigSchema` in src/config/schema.ts. `src/config/schema_test.ts` fails when the
 * committed file differs from what this prints, so rerun it after changing the schema:
 *
 *     deno run --allow-write=config scripts/gen_schema.ts
 */
import { z } from "zod";
import { ConfigSchema } from "../src/config/schema.ts";

export const SCHEMA_FILE = new URL("../config/ferry.schema.json", import.meta.url);

type Json = { [key: string]: unknown };

/** Short help shown by editors on hover, by path (`[]` is a list item, `*` a map value). */
const DESCRIPTIONS: Record<string, string> = {
  "listeners": "Where Ferry accepts connections; at least one.",
  "listeners[].name": "Unique listener name (letters, digits, _ . -).",
  "listeners[].address": "host:port, [v6]:port or :port (all interfaces).",
  "listeners[].tls": "Terminate TLS; paths are relative to the config file.",
  "listeners[].middleware":
    "Extension middleware of this listener's routes that list none (docs/extending.md).",
  "admin": "Admin API (health, readiness, metrics); off when absent.",
  "admin.address": "host:port of the admin listener; must differ from every listener.",
  "server": "Process-wide behaviour.",
  "server.trusted_proxies": "IPs or CIDRs whose X-Forwarded-For and X-Request-Id are believed.",
  "server.request_id":
    "Keep a client's x-request-id: trusted (from trusted_proxies), always, never.",
  "server.websocket_max_buffer": "Bytes buffered towards a WebSocket peer that does not read.",
  "server.via": "Token added to the Via header sent upstream.",
  "server.workers":
    "Isolates serving the listeners (SO_REUSEPORT); default: the CPUs Ferry may use.",
  "server.send_timeout": "Close a client that accepts no bytes for this long (default 60s).",
  "server.websocket_max_message_bytes": "Largest WebSocket message; bigger gets 1009.",
  "server.websocket_max_frame_bytes": "Largest WebSocket frame from a client; bigger gets 1009.",
  "server.websocket_idle_timeout": "Close a WebSocket with no message for this long (default 5m).",
  "log.level": "Lowest log level written.",
  "routes": "Request routes; each has a match and exactly one action.",
  "routes[].name": "Unique route name.",
  "routes[].listeners": "Serve only on these listeners (default: all).",
  "routes[].match": "What a request must look like; all given conditions must hold.",
  "routes[].match.host": "Host, *.suffix wildcard or *; may include :port.",
  "routes[].match.path": "Exactly one of exact, prefix or regex (default prefix /).",
  "routes[].match.methods": "Allowed methods (upper-cased).",
  "routes[].match.headers": "Header name -> value, {present: true} or {regex}.",
  "routes[].match.query": "Query parameter -> value, {present: true} or {regex}.",
  "routes[].cluster": "Send to this cluster (one of cluster, direct_response, redirect).",
  "routes[].direct_response": "Answer from Ferry itself.",
  "routes[].middleware":
    "Extension middleware, outermost first: {module | name, options} (docs/extending.md).",
  "routes[].redirect": "Answer with a redirect.",
  "routes[].rewrite": "Change the request before it goes upstream.",
  "routes[].request_headers": "Headers added or removed on the way upstream.",
  "routes[].response_headers": "Headers added or removed on the way back.",
  "routes[].timeout": "Time for the upstream to answer, e.g. 15s (default 15s).",
  "routes[].websocket": "Allow WebSocket upgrades (default true).",
  "clusters": "Named groups of upstream endpoints.",
  "clusters[].name": "Unique cluster name, referenced by routes[].cluster.",
  "clusters[].endpoints": "http:// or https:// origins (no path), or {url, weight}.",
  "clusters[].lb": "Load balancing policy.",
  "clusters[].protocol":
    "Upstream protocol: http1, h2c (prior knowledge) or auto (TLS ALPN decides).",
  "clusters[].tls.ca_file":
    "Extra CA bundle (PEM) for https endpoints; relative to the config file.",
  "clusters[].pool.max_idle_per_endpoint": "Idle connections kept per endpoint.",
  "clusters[].pool.idle_timeout": "Close idle connections after this long (default 90s).",
  "clusters[].http2.max_connections_per_endpoint":
    "HTTP/2 connections per endpoint (gRPC, h2 transport); more open when streams or window run out.",
  "clusters[].transport":
    "HTTP client: h1 (Ferry's HTTP/1.1, default for http1), h2 (Ferry's HTTP/2: default for h2c, " +
    "and for auto with server_name or expected_identities) or fetch (default for auto).",
  "clusters[].pool.max_connections_per_endpoint":
    "h1 transport: connections open per endpoint (default 1024); further requests wait.",
  "clusters[].pool.max_requests_per_connection":
    "h1 transport: close a connection after this many requests; 0 = no limit.",
  "clusters[].pool.connect_timeout":
    "h1 transport: time allowed to open a connection, TLS included (default 5s).",
  "clusters[].preserve_host": "Send the client's Host upstream (true) or the endpoint's (false).",
};

const DURATION_PATTERN = "^\\d+(\\.\\d+)?(ms|s|m|h)$";

/** Walks the generated schema: descriptions, durations, and no non-standard formats. */
function decorate(node: unknown, path: string, describe = true): void {
  if (node === null || typeof node !== "object") return;
  const s = node as Json;
  const type = s.type;
  if (
    Array.isArray(type) && type.length === 2 && type.includes("string") && type.includes("number")
  ) {
    // A duration (schema.ts `duration`): "250ms", "15s", "1m", "1h"; a bare number only as 0.
    delete s.type;
    s.anyOf = [
      { type: "string", pattern: DURATION_PATTERN },
      { const: 0 },
    ];
  }
  if (s.format === "starts_with") delete s.format;
  const description = DESCRIPTIONS[path];
  if (describe && description !== undefined && s.description === undefined) {
    s.description = description;
  }
  const props = s.properties as Record<string, unknown> | undefined;
  for (const [key, child] of Object.entries(props ?? {})) {
    decorate(child, path === "" ? key : `${path}.${key}`);
  }
  if (s.items !== undefined) decorate(s.items, `${path}[]`);
  if (typeof s.additionalProperties === "object") decorate(s.additionalProperties, `${path}.*`);
  for (const alt of [...(s.anyOf as unknown[] ?? []), ...(s.oneOf as unknown[] ?? [])]) {
    decorate(alt, path, false);
  }
}

/** The schema file's text: stable key order, two-space indent, trailing newline. */
export function renderSchema(): string {
  const generated = z.toJSONSchema(ConfigSchema, {
    io: "input",
    target: "draft-2020-12",
    unrepresentable: "any",
  }) as Json;
  decorate(generated, "");
  const { $schema: _drop, ...body } = generated;
  const doc = {
    $schema: "https://json-schema.org/draft/2020-12/schema",
    title: "Ferry configuration",
    description: "Config file of Ferry, the Deno reverse proxy. Generated from " +
      "src/config/schema.ts by scripts/gen_schema.ts; see docs/configuration.md.",
    ...body,
  };
  return JSON.stringify(doc, null, 2) + "\n";
}

if (import.meta.main) {
  await Deno.writeTextFile(SCHEMA_FILE, renderSchema());
  console.log(`wrote ${SCHEMA_FILE.pathname}`);
}
