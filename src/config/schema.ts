/**
 * The config contract: what a YAML file may say, with every default applied here and only here.
 * `docs/configuration.md` documents each field; `config/ferry.schema.json` is generated from this.
 *
 * One piece past 500 lines: the schema is the config contract, read top to bottom like
 * docs/configuration.md and turned into config/ferry.schema.json in one pass.
 */
import { z } from "zod";
import { parseDuration } from "./duration.ts";
import { ADMIN_MAX_CONNECTIONS } from "./admin_defaults.ts";
import { ACCESS_LOG_FIELDS, parseLogTemplate } from "../observability/log_template.ts";

const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const ms = parseDuration(v);
  if (ms === undefined) {
    ctx.addIssue({
      code: "custom",
      message: typeof v === "number"
        ? `a bare number is not a duration: write its unit, such as ${v}s or ${v}ms`
        : `expected a duration such as 250ms, 15s or 1m`,
    });
    return z.NEVER;
  }
  return ms;
});

/** `host:port`, `[v6]:port` or `:port` (all interfaces). */
const address = z.string().regex(
  /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):\d{1,5}$/,
  "expected host:port, such as 127.0.0.1:8080",
).refine(
  // Only judges the port when there is one; a malformed address already has its message.
  (a) => {
    const port = /:(\d{1,5})$/.exec(a);
    return !port || Number(port[1]) <= 65535;
  },
  "expected a port from 0 to 65535",
);

const name = z.string().regex(
  /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/,
  "expected a name of letters, digits, _ . -",
);

const tls = z.strictObject({
  cert: z.string().min(1),
  key: z.string().min(1),
  /** Downstream mTLS: CA bundle (PEM) client certificates must chain to. */
  client_ca: z.string().min(1).optional(),
  /** require: no valid client certificate, no connection; optional: none is served too. */
  client_auth: z.enum(["require", "optional"]).optional(),
  /** The header that carries the client identity upstream (Envoy's XFCC format). */
  client_cert_header: z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, "expected a header name")
    .transform((h) => h.toLowerCase()).optional(),
  /** More certificates, chosen by the client's server name (SNI); `cert`/`key` is the default. */
  certificates: z.array(z.strictObject({
    /** Exact names, or `*.example.com` (one label, as in RFC 6125). */
    server_names: z.array(
      z.string().regex(
        /^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/,
        "expected a DNS name, or *.example.com",
      ).transform((n) => n.toLowerCase()),
    ).min(1),
    cert: z.string().min(1),
    key: z.string().min(1),
  })).optional(),
  /** Lowest TLS version accepted; YAML reads an unquoted 1.3 as a number, taken too. */
  min_version: z.union([z.enum(["1.2", "1.3"]), z.literal(1.2), z.literal(1.3)])
    .transform((v) => String(v) as "1.2" | "1.3").default("1.2"),
  /** The TLS handshake must finish within this; default 10s, never above server.header_timeout. */
  handshake_timeout: duration.optional(),
}).refine((t) => t.client_auth === undefined || t.client_ca !== undefined, {
  message: "client_auth needs client_ca",
  path: ["client_auth"],
});

const stringMatch = z.union([
  z.string(),
  z.strictObject({ present: z.literal(true) }),
  z.strictObject({ regex: z.string().min(1) }),
]);

const pathMatch = z.union([
  z.strictObject({ exact: z.string().startsWith("/", "a path starts with /") }),
  z.strictObject({ prefix: z.string().startsWith("/", "a path starts with /") }),
  z.strictObject({ regex: z.string().min(1) }),
]);

const METHOD = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** A client certificate identity: the whole ID, a prefix of it, or a SPIFFE trust domain. */
const identityMatch = z.union([
  z.strictObject({ exact: z.string().min(1) }),
  z.strictObject({ prefix: z.string().min(1) }),
  z.strictObject({
    trust_domain: z.string().regex(
      /^[a-z0-9._-]+$/,
      "expected a SPIFFE trust domain such as cluster.local",
    ),
  }),
]);

/** A JWT claim: equal to a string, one of a list, present, or matching a regex. */
const claimMatch = z.union([
  z.string(),
  z.array(z.string()).min(1),
  z.strictObject({ present: z.literal(true) }),
  z.strictObject({ regex: z.string().min(1) }),
]);

/** One authorization rule: every condition it gives must hold (none given: every request). */
export const AuthzRuleSchema = z.strictObject({
  /** Named in /explain and logs; default `rules[N]`. */
  name: z.string().regex(/^[A-Za-z0-9_.:-]{1,63}$/, "expected a name of letters, digits, _ . : -")
    .optional(),
  action: z.enum(["allow", "deny"]),
  /** Any of these client certificate identities (downstream mTLS). */
  identities: z.array(identityMatch).min(1).optional(),
  /** Any of these CIDRs contains the client address (after trusted_proxies). */
  client_cidrs: z.array(z.string()).min(1).optional(),
  methods: z.array(
    z.string().regex(METHOD, "expected an HTTP method token").transform((m) => m.toUpperCase()),
  ).min(1).optional(),
  /** Any of these path matches (on the normalised path). */
  paths: z.array(pathMatch).min(1).optional(),
  /** Every header condition holds. */
  headers: z.record(z.string().regex(HEADER_NAME, "expected a header name"), stringMatch)
    .optional(),
  /** Every claim condition holds on the verified JWT (`a.b` reaches into objects). */
  claims: z.record(z.string().min(1), claimMatch).optional(),
});

/**
 * Who may call: a route's own policy, else its listener's. Rules are tried in order and the first
 * that matches decides; `default` decides when none does.
 */
export const AuthorizationSchema = z.strictObject({
  /** Verify a bearer JWT with this provider (401 when it is missing or invalid, if required). */
  jwt: z.strictObject({
    provider: name,
    /** false: a request without a token goes on with no claims (an invalid one is still 401). */
    required: z.boolean().default(true),
  }).optional(),
  rules: z.array(AuthzRuleSchema).default([]),
  default: z.enum(["allow", "deny"]).default("deny"),
});

/** Where JWTs are checked against: issuer, audiences, signing keys (a JWKS file or URL). */
export const JwtProviderSchema = z.strictObject({
  name,
  /** The `iss` a token must carry. */
  issuer: z.string().min(1),
  /** The token's `aud` must name one of these; not checked when not set. */
  audiences: z.array(z.string().min(1)).min(1).optional(),
  algorithms: z.array(z.enum(["RS256", "ES256", "EdDSA"])).min(1).default([
    "RS256",
    "ES256",
    "EdDSA",
  ]),
  /** A JWKS (JSON) file, relative to the config file; read when the config is loaded. */
  jwks_file: z.string().min(1).optional(),
  /** A JWKS URL, fetched at start and every `refresh_interval`; the last good set is kept. */
  jwks_url: z.string().regex(/^https?:\/\/[^\s]+$/, "expected an http:// or https:// URL")
    .optional(),
  refresh_interval: duration.default(300_000),
  /** One JWKS fetch may take this long. */
  fetch_timeout: duration.default(5_000),
  /** Allowed clock difference for exp and nbf. */
  clock_skew: duration.default(30_000),
  /** Verified tokens remembered (until their exp), so a token is verified once, not per request. */
  cache_size: z.number().int().min(0).max(1_000_000).default(10_000),
}).superRefine((p, ctx) => {
  if ((p.jwks_file === undefined) === (p.jwks_url === undefined)) {
    ctx.addIssue({
      code: "custom",
      message: "a JWT provider needs exactly one of jwks_file or jwks_url",
      path: [],
    });
  }
});

/**
 * One extension middleware (docs/extending.md): a local TypeScript/JavaScript module whose default
 * export is a factory, or a factory registered by name in code (mod.ts `start`), with options.
 */
export const MiddlewareRefSchema = z.strictObject({
  /** A local file (relative to the config file), or a `file:` URL; loaded with `import()`. */
  module: z.string().min(1).optional(),
  /** A factory registered in code by this name. */
  name: name.optional(),
  /** Handed to the factory, which validates them. */
  options: z.record(z.string(), z.unknown()).default({}),
}).refine((m) => (m.module === undefined) !== (m.name === undefined), {
  message: "expected exactly one of module or name",
});

export const ListenerSchema = z.strictObject({
  name,
  address,
  tls: tls.optional(),
  /** Downstream HTTP/2 without TLS (prior knowledge) is always accepted by Deno.serve; documented here. */
  /** `grpc`: Ferry's own HTTP/2 server (h2c, or TLS with ALPN h2) forwarding gRPC with trailers. */
  protocol: z.enum(["http", "grpc"]).default("http"),
  /** Connection timeouts of a `protocol: grpc` listener (Ferry's own HTTP/2 server). */
  grpc: z.strictObject({
    /** A connection with no open stream and no frame for this long gets GOAWAY. Default 5m. */
    idle_timeout: duration.optional(),
    /** The client preface and first SETTINGS must arrive within this. Default 10s. */
    handshake_timeout: duration.optional(),
    /** The client must acknowledge our SETTINGS within this (else SETTINGS_TIMEOUT). Default 10s. */
    settings_timeout: duration.optional(),
  }).optional(),
  /** The authorization policy of every route on this listener that has none of its own. */
  authorization: AuthorizationSchema.optional(),
  /** Extension middleware of every route on this listener that lists none of its own. */
  middleware: z.array(MiddlewareRefSchema).optional(),
}).refine((l) => l.grpc === undefined || l.protocol === "grpc", {
  message: "the grpc block applies only to a listener with protocol: grpc",
  path: ["grpc"],
});

export const RouteMatchSchema = z.strictObject({
  host: z.string().regex(
    /^(\*\.)?[A-Za-z0-9.-]+(:\d+)?$|^\*$/,
    "expected a host such as api.example.com or *.example.com",
  )
    .optional(),
  path: pathMatch.default({ prefix: "/" }),
  methods: z.array(
    z.string().regex(METHOD, "expected an HTTP method token").transform((m) => m.toUpperCase()),
  )
    .min(1).optional(),
  headers: z.record(
    z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/, "expected a header name"),
    stringMatch,
  )
    .optional(),
  query: z.record(z.string().min(1), stringMatch).optional(),
});

const headerEdits = z.strictObject({
  add: z.record(z.string(), z.string()).optional(),
  remove: z.array(z.string()).optional(),
});

const rewrite = z.strictObject({
  prefix: z.string().startsWith("/").optional(),
  regex: z.strictObject({ pattern: z.string().min(1), substitution: z.string() }).optional(),
  host: z.string().min(1).optional(),
});

const directResponse = z.strictObject({
  status: z.number().int().min(200).max(599),
  body: z.string().default(""),
  content_type: z.string().default("text/plain; charset=utf-8"),
});

const redirect = z.strictObject({
  status: z.union([z.literal(301), z.literal(302), z.literal(303), z.literal(307), z.literal(308)])
    .default(302),
  scheme: z.enum(["http", "https"]).optional(),
  host: z.string().min(1).optional(),
  port: z.number().int().min(1).max(65535).optional(),
  path: z.string().startsWith("/").optional(),
  prefix: z.string().startsWith("/").optional(),
  strip_query: z.boolean().default(false),
});

/** Circuit breaker: consecutive failures, or a failure rate over a window; per endpoint or cluster. */
export const BreakerSchema = z.strictObject({
  /** One breaker per endpoint (default), or one for the whole cluster. */
  scope: z.enum(["endpoint", "cluster"]).default("endpoint"),
  mode: z.enum(["consecutive", "rate"]).default("consecutive"),
  /** consecutive: failures in a row that open the breaker. */
  failures: z.number().int().min(1).max(1_000_000).default(5),
  /** Successful probes in half-open that close it again. */
  successes: z.number().int().min(1).max(1_000_000).default(2),
  open_timeout: duration.default(30_000),
  /** Probes allowed at once while half-open. */
  max_half_open: z.number().int().min(1).max(1_000_000).default(1),
  /** rate: failure percentage over `window` that opens, given at least `min_requests`. */
  failure_rate: z.number().min(1).max(100).default(50),
  min_requests: z.number().int().min(1).max(1_000_000).default(20),
  window: duration.default(10_000),
});

export const RouteSchema = z.strictObject({
  name,
  /** Limit a route to some listeners; by default a route serves every listener. */
  listeners: z.array(name).min(1).optional(),
  match: RouteMatchSchema.default({ path: { prefix: "/" } }),
  cluster: name.optional(),
  direct_response: directResponse.optional(),
  redirect: redirect.optional(),
  rewrite: rewrite.optional(),
  request_headers: headerEdits.optional(),
  response_headers: headerEdits.optional(),
  timeout: duration.default(15_000),
  /** Time allowed for each attempt when retrying (0: only the route timeout applies). */
  per_try_timeout: duration.default(0),
  retry: z.strictObject({
    /** Retries after the first attempt. */
    retries: z.number().int().min(0).max(10).default(2),
    retry_on: z.array(
      z.enum([
        "connect-failure",
        "reset",
        "5xx",
        "gateway-error",
        "retriable-status-codes",
        // gRPC listeners: statuses of a trailers-only answer that are retried.
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
      ]),
    )
      .min(1).default(["connect-failure", "reset", "gateway-error"]),
    statuses: z.array(z.number().int().min(100).max(599)).default([]),
    backoff: z.strictObject({ base: duration.default(25), max: duration.default(250) }).prefault(
      {},
    ),
    /** Also retry POST and PATCH (only safe when the upstream is idempotent for them). */
    non_idempotent: z.boolean().default(false),
    /** Bodies up to this size are kept so they can be sent again; larger ones are not retried. */
    max_body_bytes: z.number().int().min(0).max(16 * 1024 * 1024).default(64 * 1024),
    /** A longer upstream Retry-After is not waited for: the response goes to the client. */
    max_retry_after: duration.default(5_000),
  }).optional(),
  /** Cuts a streamed response body that sends nothing for this long (0: never). */
  idle_timeout: duration.default(0),
  /** Overrides the cluster's breaker thresholds for this route's traffic (its own state). */
  circuit_breaker: BreakerSchema.optional(),
  /** Names of `rate_limits` applied to this route, in order. */
  rate_limit: z.array(name).min(1).optional(),
  /** Chaos testing: delay and/or abort a share of requests. */
  fault: z.strictObject({
    delay: z.strictObject({ duration, percent: z.number().min(0).max(100) }).optional(),
    abort: z.strictObject({
      status: z.number().int().min(400).max(599).default(503),
      /** What a gRPC call gets instead; default the error table's UNAVAILABLE (14). */
      grpc_status: z.number().int().min(1).max(16).optional(),
      percent: z.number().min(0).max(100),
    }).optional(),
  }).optional(),
  websocket: z.boolean().default(true),
  /** Who may call this route; replaces the listener's policy. */
  authorization: AuthorizationSchema.optional(),
  /** Extension middleware, outermost first; replaces the listener's list (`[]`: none). */
  middleware: z.array(MiddlewareRefSchema).optional(),
}).superRefine((r, ctx) => {
  const actions = [r.cluster, r.direct_response, r.redirect].filter((a) => a !== undefined).length;
  if (actions !== 1) {
    ctx.addIssue({
      code: "custom",
      message: "a route needs exactly one of cluster, direct_response or redirect",
      path: [],
    });
  }
});

const endpoint = z.union([
  z.string(),
  z.strictObject({ url: z.string(), weight: z.number().int().min(1).max(1000).default(1) }),
]);

/** Endpoints from DNS (Envoy's STRICT_DNS, plus SRV), re-resolved every `interval`. */
export const DnsDiscoverySchema = z.strictObject({
  /** Host name to resolve; for SRV the full service name such as `_http._tcp.api.internal`. */
  name: z.string().regex(/^[A-Za-z0-9_.-]+$/, "expected a DNS name").min(1),
  type: z.enum(["A", "AAAA", "A+AAAA", "SRV"]).default("A"),
  /** The endpoints' port for A / AAAA answers (SRV answers carry their own). */
  port: z.number().int().min(1).max(65535).optional(),
  scheme: z.enum(["http", "https"]).default("http"),
  interval: duration.default(5_000),
  /** One resolution (SRV and its targets included) may take this long; the old list stays. */
  timeout: duration.default(2_000),
  /** `ip` or `ip:port` of the name server; the system's resolvers when not set. */
  name_server: z.string().regex(
    /^(\d{1,3}(\.\d{1,3}){3}(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?)$/,
    "expected an IP address, optionally with :port",
  ).optional(),
  /** Consecutive empty answers before a non-empty cluster is emptied (guards SERVFAIL). */
  empty_confirmations: z.number().int().min(1).max(100).default(1),
}).superRefine((d, ctx) => {
  if (d.type !== "SRV" && d.port === undefined) {
    ctx.addIssue({ code: "custom", message: `type ${d.type} needs a port`, path: ["port"] });
  }
});

export const ClusterSchema = z.strictObject({
  name,
  /** Static endpoints; or leave out and use `discovery`. */
  endpoints: z.array(endpoint).min(1).optional(),
  discovery: z.strictObject({ dns: DnsDiscoverySchema }).optional(),
  lb: z.enum(["round_robin", "least_request", "random", "ring_hash", "maglev"]).default(
    "round_robin",
  ),
  /** What ring_hash and maglev hash on; the client address when not set. */
  hash_key: z.union([
    z.strictObject({ header: z.string().min(1) }),
    z.strictObject({ cookie: z.string().min(1) }),
    z.strictObject({ source: z.enum(["client_ip", "path"]) }),
  ]).optional(),
  /** Upstream protocol: http1 (default), h2c (prior knowledge) or h2 over TLS; https endpoints use TLS. */
  protocol: z.enum(["http1", "h2c", "auto"]).default("http1"),
  tls: z.strictObject({
    ca_file: z.string().min(1).optional(),
    /** Client certificate chain (PEM) presented to upstreams that ask (mTLS); with key_file. */
    cert_file: z.string().min(1).optional(),
    key_file: z.string().min(1).optional(),
    /** SNI / certificate name when it differs from the endpoint host. */
    server_name: z.string().regex(
      /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/,
      "expected a DNS name such as api.internal",
    ).optional(),
    /** The upstream's certificate must carry one of these as a URI SAN (SPIFFE ID) or DNS SAN. */
    expected_identities: z.array(z.string().min(1)).min(1).optional(),
  }).refine((t) => (t.cert_file === undefined) === (t.key_file === undefined), {
    message: "cert_file and key_file go together",
  }).optional(),
  /**
   * The client HTTP requests use: `h1`, Ferry's own HTTP/1.1 codec (byte-exact, the default for
   * http1); `h2`, Ferry's own HTTP/2 client (h2c and auto: the connections gRPC uses; the default
   * for h2c, and for auto when the upstream's server name or identity is checked); `fetch`, Deno's
   * fetch (the default for auto otherwise). See `httpTransportOf` (transport_of.ts).
   */
  transport: z.enum(["h1", "h2", "fetch"]).optional(),
  pool: z.strictObject({
    max_idle_per_endpoint: z.number().int().min(0).max(10_000).default(64),
    idle_timeout: duration.default(90_000),
    /** The h1 transport only: connections open per endpoint; requests beyond wait in order. */
    max_connections_per_endpoint: z.number().int().min(1).max(100_000).default(1024),
    /** The h1 transport only: a connection is closed after this many requests; 0: no limit. */
    max_requests_per_connection: z.number().int().min(0).default(0),
    /** The h1 transport only: time allowed to open a connection (TLS handshake included). */
    connect_timeout: duration.default(5_000),
  }).prefault({}),
  /** Ferry's own HTTP/2 upstream connections (gRPC routes). */
  http2: z.strictObject({
    /** Connections per endpoint, opened when streams or window run out on the ones open. */
    max_connections_per_endpoint: z.number().int().min(1).max(64).default(4),
  }).prefault({}),
  circuit_breaker: BreakerSchema.optional(),
  /** Active HTTP probes per endpoint, on their own connection pool. */
  health_check: z.strictObject({
    path: z.string().startsWith("/").default("/"),
    /** Probe with the standard gRPC health service (grpc.health.v1.Health/Check) instead. */
    grpc: z.strictObject({
      /** Service name asked about; "" is the server as a whole. */
      service: z.string().default(""),
      /** `:authority` sent; default the endpoint's host:port. */
      authority: z.string().min(1).optional(),
    }).optional(),
    /** Statuses that pass: numbers or "200-399" ranges. */
    expected_statuses: z.array(
      z.union([z.number().int().min(100).max(599), z.string().regex(/^\d{3}-\d{3}$/)]),
    )
      .min(1).default(["200-399"]),
    host: z.string().min(1).optional(),
    interval: duration.default(5_000),
    timeout: duration.default(1_000),
    /** Up to this share of the interval is added at random, so probes do not align. */
    jitter: z.number().min(0).max(1).default(0.1),
    healthy_threshold: z.number().int().min(1).max(100).default(2),
    unhealthy_threshold: z.number().int().min(1).max(100).default(3),
    initial_state: z.enum(["healthy", "unhealthy"]).default("healthy"),
  }).optional(),
  /** Passive health: eject endpoints that keep failing real traffic, for a growing time. */
  outlier_detection: z.strictObject({
    consecutive_5xx: z.number().int().min(1).default(5),
    consecutive_gateway_failure: z.number().int().min(1).default(5),
    base_ejection_time: duration.default(30_000),
    max_ejection_time: duration.default(300_000),
    max_ejection_percent: z.number().min(0).max(100).default(10),
    interval: duration.default(10_000),
  }).optional(),
  /** Below this share of usable endpoints, balance across all of them (Envoy's panic mode). */
  panic_threshold: z.number().min(0).max(100).default(50),
  /** A returning endpoint's share ramps up over `window` instead of taking full traffic at once. */
  slow_start: z.strictObject({
    window: duration,
    aggression: z.number().positive().max(10).default(1),
    min_weight_percent: z.number().min(0).max(100).default(10),
  }).optional(),
  /** Envoy-style thresholds: overflow is answered at once with 503, never queued. */
  limits: z.strictObject({
    max_requests: z.number().int().min(1).optional(),
    max_requests_per_endpoint: z.number().int().min(1).optional(),
    /** Retries in flight in the cluster, a hard cap on top of retry_budget. */
    max_retries: z.number().int().min(0).optional(),
  }).optional(),
  /** Retries in flight may be at most `percent` of active requests, but at least `min_retries`. */
  retry_budget: z.strictObject({
    percent: z.number().min(0).max(100).default(20),
    min_retries: z.number().int().min(0).max(10_000).default(3),
  }).prefault({}),
  /** Send the client's Host upstream (true) or the endpoint's host (false). */
  preserve_host: z.boolean().default(true),
}).superRefine((c, ctx) => {
  if (c.transport === "h1" && c.protocol !== "http1") {
    ctx.addIssue({
      code: "custom",
      message: "transport: h1 applies only to protocol: http1 (h2c and auto use h2 or fetch)",
      path: ["transport"],
    });
  }
  if (c.transport === "h2" && c.protocol === "http1") {
    ctx.addIssue({
      code: "custom",
      message: "transport: h2 applies only to protocol: h2c or auto (http1 uses h1 or fetch)",
      path: ["transport"],
    });
  }
  if ((c.endpoints === undefined) === (c.discovery === undefined)) {
    ctx.addIssue({
      code: "custom",
      message: "a cluster needs exactly one of endpoints or discovery",
      path: [],
    });
  }
});

/**
 * A shared store for a rate limit (docs/resilience.md, "Shared rate limits"): every Ferry naming
 * the same Redis and key_prefix enforces one limit together. Set at most one of password_file
 * and password_env.
 */
export const RedisStoreSchema = z.strictObject({
  /** host:port of Redis or Valkey. */
  address,
  /** TLS to Redis: true for the system roots, or a CA file and/or server name. */
  tls: z.union([
    z.boolean(),
    z.strictObject({
      /** PEM CA bundle (relative to the config file). */
      ca_file: z.string().min(1).optional(),
      /** Name checked against the server certificate; default the address's host. */
      server_name: z.string().min(1).optional(),
    }),
  ]).default(false),
  /** ACL user name (Redis 6+); the password alone authenticates as `default`. */
  username: z.string().min(1).optional(),
  /** A file whose first line is the password (relative to the config file). */
  password_file: z.string().min(1).optional(),
  /** The name of an environment variable holding the password. */
  password_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/).optional(),
  /** Instances with the same prefix (and limit name) share one budget. */
  key_prefix: z.string().min(1).max(200).default("ferry:rl:"),
  /** How long a Redis answer may take before the failure mode applies. */
  timeout: duration.default(100),
  /** While Redis is unreachable: `open` falls back to this instance's own limiter, `closed` refuses (429). */
  failure_mode: z.enum(["open", "closed"]).default("open"),
  /**
   * Each instance takes its share in leases of about rate x sync_interval tokens, each spent
   * within 2 x sync_interval + timeout: the overshoot bound is rate x that many tokens.
   */
  sync_interval: duration.default(100),
}).refine((r) => !(r.password_file !== undefined && r.password_env !== undefined), {
  message: "set at most one of password_file and password_env",
});

/**
 * A named token-bucket limiter. Its scope says what one bucket counts: each client IP, each value
 * of a header, each route that references it, or everything (global). A limiter referenced by
 * several routes shares its buckets across them, except with scope `route`.
 */
export const RateLimitSchema = z.strictObject({
  name,
  scope: z.enum(["client_ip", "header", "route", "global"]),
  /** For scope `header`: whose value keys the bucket (an API key, a tenant id). */
  header: z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/).optional(),
  /** Tokens per second. */
  rate: z.number().positive().max(1_000_000),
  burst: z.number().int().min(1).max(1_000_000_000),
  /** Most keys tracked at once (client_ip, header); memory is allocated for this many up front. */
  max_keys: z.number().int().min(16).max(16_777_216).default(65_536),
  /** Share this limit with other Ferry instances through Redis (else it is this process's own). */
  redis: RedisStoreSchema.optional(),
});

/**
 * The admin listener (loopback unless you say otherwise). With a token, every endpoint except
 * /healthz needs `Authorization: Bearer <token>`; set at most one of token, token_file, token_env.
 */
export const AdminSchema = z.strictObject({
  address,
  /** The bearer token itself (prefer token_file or token_env: config files get shared). */
  token: z.string().min(16).optional(),
  /** A file whose first line is the token (relative to the config file). */
  token_file: z.string().min(1).optional(),
  /** The name of an environment variable holding the token. */
  token_env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/).optional(),
  /**
   * A config applied with PUT /config: `memory` serves it until the next file reload or restart;
   * `file` also writes it over the config file (atomic write + rename; needs --allow-write).
   */
  persist_config: z.enum(["memory", "file"]).default("memory"),
  /**
   * Open connections to the admin listener (its own cap, apart from the proxy listeners', so a
   * flood there cannot lock out scrapes and probes, nor one here take the proxy's). 0: no cap.
   */
  max_connections: z.number().int().min(0).default(ADMIN_MAX_CONNECTIONS),
  /** Open admin connections per client address; 0: no cap. */
  max_connections_per_ip: z.number().int().min(0).default(0),
}).refine(
  (a) => [a.token, a.token_file, a.token_env].filter((x) => x !== undefined).length <= 1,
  { message: "set at most one of admin.token, admin.token_file and admin.token_env" },
);

/** Connection and request limits, as an nginx or Envoy operator would expect (docs/connections.md). */
export const SERVER_LIMIT_DEFAULTS = {
  connection_guard: true,
  header_timeout: 30_000,
  idle_timeout: 60_000,
  max_connections: 10_000,
  max_connections_per_ip: 0,
  max_streams_per_connection: 128,
  max_body_bytes: 10 * 1024 * 1024,
  max_header_bytes: 12 * 1024,
  max_headers: 100,
  max_uri_bytes: 8192,
  send_timeout: 60_000,
  websocket_max_message_bytes: 1024 * 1024,
  websocket_max_frame_bytes: 1024 * 1024,
  websocket_idle_timeout: 300_000,
} as const;

export const ServerSchema = z.strictObject({
  /** CIDRs of proxies whose X-Forwarded-For and X-Request-Id are believed. */
  trusted_proxies: z.array(z.string()).default([]),
  /** Keep a client-sent x-request-id: "trusted" (only from trusted_proxies), "always", "never". */
  request_id: z.enum(["trusted", "always", "never"]).default("trusted"),
  /** WebSocket: bytes buffered towards a peer that does not read before it is closed (1008). */
  websocket_max_buffer: z.number().int().min(1024).default(4 * 1024 * 1024),
  /** Added to the Via header sent upstream. */
  via: z.string().regex(/^[!#$%&'*+.^_`|~0-9A-Za-z-]*$/).default("ferry"),
  /** On SIGTERM/SIGINT: how long in-flight requests and WebSockets may run before they are cut. */
  drain_timeout: duration.default(30_000),
  /** Reload when the config file changes (debounced); SIGHUP and POST /reload always work. */
  watch_config: z.boolean().default(true),
  /**
   * Isolates serving the listeners, sharing each port with SO_REUSEPORT (docs/design.md,
   * "Workers"). Default: the CPUs this process may use. 1 serves everything in one isolate.
   * Read at start; a reload does not change it.
   */
  workers: z.union([z.number().int().min(1).max(256), z.literal("auto")]).optional(),
  /**
   * Accept TCP/TLS in Ferry's own connection guard (header and idle timeouts, connection caps)
   * in front of Deno.serve; false serves Deno.serve directly, without those protections.
   */
  connection_guard: z.boolean().default(SERVER_LIMIT_DEFAULTS.connection_guard),
  /** The head of a request must arrive completely within this time (0: no limit). */
  header_timeout: duration.default(SERVER_LIMIT_DEFAULTS.header_timeout),
  /** A connection with no request in flight is closed after this time (0: never). */
  idle_timeout: duration.default(SERVER_LIMIT_DEFAULTS.idle_timeout),
  /** Open downstream connections per listener (0: no cap). */
  max_connections: z.number().int().min(0).default(SERVER_LIMIT_DEFAULTS.max_connections),
  /** Open downstream connections per client address per listener (0: no cap). */
  max_connections_per_ip: z.number().int().min(0).default(
    SERVER_LIMIT_DEFAULTS.max_connections_per_ip,
  ),
  /**
   * Requests in flight at once on one HTTP/2 client connection, through the guard (0: no cap);
   * more get 503 `DO`, as nginx's http2_max_concurrent_streams bounds what one connection holds.
   */
  max_streams_per_connection: z.number().int().min(0).default(
    SERVER_LIMIT_DEFAULTS.max_streams_per_connection,
  ),
  /** Request body bytes (0: no limit); larger bodies get 413. */
  max_body_bytes: z.number().int().min(0).default(SERVER_LIMIT_DEFAULTS.max_body_bytes),
  /** Sum of name + value + 4 over the request's headers; more gets 431. */
  max_header_bytes: z.number().int().min(256).max(60 * 1024).default(
    SERVER_LIMIT_DEFAULTS.max_header_bytes,
  ),
  /** Number of request header fields; more gets 431. */
  max_headers: z.number().int().min(8).max(120).default(SERVER_LIMIT_DEFAULTS.max_headers),
  /** Path + query bytes; longer gets 414. */
  max_uri_bytes: z.number().int().min(256).max(60 * 1024).default(
    SERVER_LIMIT_DEFAULTS.max_uri_bytes,
  ),
  /**
   * A write to a client that stays unaccepted this long (the client stopped reading) closes the
   * connection and releases its upstream, like nginx's send_timeout (0: never).
   */
  send_timeout: duration.default(SERVER_LIMIT_DEFAULTS.send_timeout),
  /** WebSocket: a message (all its fragments) larger than this is closed with 1009. */
  websocket_max_message_bytes: z.number().int().min(125).default(
    SERVER_LIMIT_DEFAULTS.websocket_max_message_bytes,
  ),
  /** WebSocket: a single frame from a client larger than this is closed with 1009. */
  websocket_max_frame_bytes: z.number().int().min(125).default(
    SERVER_LIMIT_DEFAULTS.websocket_max_frame_bytes,
  ),
  /** WebSocket: no message either way for this long closes it with 1001 (0: never). */
  websocket_idle_timeout: duration.default(SERVER_LIMIT_DEFAULTS.websocket_idle_timeout),
}).default({
  trusted_proxies: [],
  request_id: "trusted",
  websocket_max_buffer: 4 * 1024 * 1024,
  via: "ferry",
  drain_timeout: 30_000,
  watch_config: true,
  ...SERVER_LIMIT_DEFAULTS,
});

export const LogSchema = z.strictObject({
  level: z.enum(["debug", "info", "warn", "error"]).default("info"),
}).default({ level: "info" });

/** One JSON line per request; off unless configured (it costs CPU per request). */
export const AccessLogSchema = z.strictObject({
  /** "stdout", "stderr" or a file path (appended to). */
  path: z.string().min(1).default("stdout"),
  /**
   * "json" (one JSON object a line), "combined" (Apache/nginx combined) or a template of `$field`
   * placeholders naming the JSON fields, such as "$method $path $status $duration_ms".
   */
  format: z.string().min(1).default("json"),
  /** Share of requests logged, 0..1; proxy-made errors are always logged. */
  sample: z.number().min(0).max(1).default(1),
  /** Fields to write in the JSON format; all when not set. */
  fields: z.array(z.enum(ACCESS_LOG_FIELDS)).min(1).optional(),
}).superRefine((a, ctx) => {
  if (a.format === "json") return;
  if (a.format !== "combined") {
    const parsed = parseLogTemplate(a.format);
    if (!parsed.ok) ctx.addIssue({ code: "custom", path: ["format"], message: parsed.error });
  }
  if (a.fields) {
    ctx.addIssue({
      code: "custom",
      path: ["fields"],
      message: "fields applies to the json format only; a template names its own fields",
    });
  }
});

export const ConfigSchema = z.strictObject({
  listeners: z.array(ListenerSchema).min(1),
  admin: AdminSchema.optional(),
  server: ServerSchema,
  log: LogSchema,
  access_log: AccessLogSchema.optional(),
  routes: z.array(RouteSchema).default([]),
  clusters: z.array(ClusterSchema).default([]),
  rate_limits: z.array(RateLimitSchema).default([]),
  jwt_providers: z.array(JwtProviderSchema).default([]),
});

export type FerryConfig = z.output<typeof ConfigSchema>;
export type ListenerConfig = z.output<typeof ListenerSchema>;
export type RouteConfig = z.output<typeof RouteSchema>;
export type RouteMatchConfig = z.output<typeof RouteMatchSchema>;
export type ClusterConfig = z.output<typeof ClusterSchema>;

export type StringMatchConfig = z.output<typeof stringMatch>;
export type PathMatchConfig = z.output<typeof pathMatch>;
export type BreakerConfigSchema = z.output<typeof BreakerSchema>;
export type RateLimitConfig = z.output<typeof RateLimitSchema>;
export type AuthorizationConfig = z.output<typeof AuthorizationSchema>;
export type AuthzRuleConfig = z.output<typeof AuthzRuleSchema>;
export type JwtProviderConfig = z.output<typeof JwtProviderSchema>;
export type RedisStoreConfig = z.output<typeof RedisStoreSchema>;
export type AccessLogConfig = z.output<typeof AccessLogSchema>;
export type MiddlewareRefConfig = z.output<typeof MiddlewareRefSchema>;
