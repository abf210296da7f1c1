/**
 * Authorization policies: per route, else the listener's. A policy may verify a bearer JWT
 * (src/policy/jwt.ts), then tries its rules in order; the first whose conditions all hold
 * decides allow or deny, and the policy's `default` decides when none does. Conditions: client
 * certificate identity, client CIDR, method, path, headers, JWT claims. Compiled once per
 * snapshot; the same compiled policy serves HTTP requests and gRPC calls.
 */
import type { JWTPayload } from "jose";
import type {
  AuthorizationConfig,
  AuthzRuleConfig,
  PathMatchConfig,
  StringMatchConfig,
} from "../config/schema.ts";
import type { ClientIdentity, PolicyLayer } from "../pipeline/types.ts";
import { compileRouteRegex, type RouteRegex } from "../routing/regex.ts";
import { ProxyError } from "../pipeline/errors.ts";
import { TrustedProxies } from "../pipeline/trust.ts";
import type { JwtProvider } from "./jwt.ts";
import { JwtRejected } from "./jwt_rejected.ts";

/** What a policy looks at, the same for an HTTP request and a gRPC call. */
export interface AuthzInput {
  readonly method: string;
  /** The normalised path. */
  readonly path: string;
  /** A request header by lower-case name (the first value), undefined when absent. */
  header(name: string): string | undefined;
  readonly clientIp: string;
  readonly identity: ClientIdentity | undefined;
}

export type AuthzAction = "allow" | "deny" | "unauthenticated";

export interface AuthzDecision {
  readonly action: AuthzAction;
  /** The rule that decided; null when the default did (or the JWT check refused first). */
  readonly rule: string | null;
  readonly reason: string;
  /** JWT providers' realm, for WWW-Authenticate on a 401. */
  readonly provider?: string;
}

type Test = (input: AuthzInput, claims: JWTPayload | undefined) => boolean;

interface CompiledRule {
  readonly name: string;
  readonly action: "allow" | "deny";
  readonly tests: readonly Test[];
}

export interface AuthzPolicy {
  /** "route NAME" or "listener NAME": whose policy this is. */
  readonly source: string;
  readonly jwt: { readonly provider: JwtProvider; readonly required: boolean } | undefined;
  readonly rules: readonly CompiledRule[];
  readonly defaultAction: "allow" | "deny";
}

/** Compiles a policy; throws an Error naming the field for what load.ts could not catch. */
export function compilePolicy(
  cfg: AuthorizationConfig,
  source: string,
  providers: ReadonlyMap<string, JwtProvider>,
): AuthzPolicy {
  let jwt: AuthzPolicy["jwt"];
  if (cfg.jwt) {
    const provider = providers.get(cfg.jwt.provider);
    if (!provider) throw new Error(`unknown JWT provider '${cfg.jwt.provider}'`);
    jwt = { provider, required: cfg.jwt.required };
  }
  return Object.freeze({
    source,
    jwt,
    rules: cfg.rules.map((r, i) => compileRule(r, i)),
    defaultAction: cfg.default,
  });
}

function compileRule(r: AuthzRuleConfig, i: number): CompiledRule {
  const tests: Test[] = [];
  if (r.identities) {
    const matchers = r.identities.map((m): (id: ClientIdentity) => boolean => {
      if ("exact" in m) return (id) => id.id === m.exact;
      if ("prefix" in m) return (id) => id.id.startsWith(m.prefix);
      return (id) => id.trustDomain === m.trust_domain;
    });
    tests.push((input) => input.identity !== undefined && matchers.some((f) => f(input.identity!)));
  }
  if (r.client_cidrs) {
    // The trusted-proxy CIDR set is a CIDR set with a memo: one implementation of "ip in CIDRs".
    const cidrs = new TrustedProxies(r.client_cidrs);
    tests.push((input) => cidrs.has(input.clientIp));
  }
  if (r.methods) {
    const methods = new Set(r.methods);
    tests.push((input) => methods.has(input.method));
  }
  if (r.paths) {
    const matchers = r.paths.map(pathMatcher);
    tests.push((input) => matchers.some((f) => f(input.path)));
  }
  for (const [rawName, cond] of Object.entries(r.headers ?? {})) {
    const name = rawName.toLowerCase();
    const match = stringMatcher(cond);
    tests.push((input) => match(input.header(name)));
  }
  for (const [claim, cond] of Object.entries(r.claims ?? {})) {
    const path = claim.split(".");
    const match = claimMatcher(cond);
    tests.push((_input, claims) => claims !== undefined && match(claimAt(claims, path)));
  }
  return Object.freeze({ name: r.name ?? `rules[${i}]`, action: r.action, tests });
}

function pathMatcher(m: PathMatchConfig): (path: string) => boolean {
  if ("exact" in m) return (p) => p === m.exact;
  if ("prefix" in m) return (p) => p.startsWith(m.prefix);
  const re: RouteRegex = compileRouteRegex(m.regex);
  return (p) => re.test(p);
}

function stringMatcher(m: StringMatchConfig): (value: string | undefined) => boolean {
  if (typeof m === "string") return (v) => v === m;
  if ("present" in m) return (v) => v !== undefined;
  const re = compileRouteRegex(m.regex);
  return (v) => v !== undefined && re.test(v);
}

type ClaimMatch = NonNullable<AuthzRuleConfig["claims"]>[string];

/** A claim that is a list (aud, groups, roles) matches when any element does. */
function claimMatcher(m: ClaimMatch): (value: unknown) => boolean {
  let one: (v: string) => boolean;
  if (typeof m === "string") one = (v) => v === m;
  else if (Array.isArray(m)) {
    const allowed = new Set(m);
    one = (v) => allowed.has(v);
  } else if ("present" in m) return (v) => v !== undefined && v !== null;
  else {
    const re = compileRouteRegex(m.regex);
    one = (v) => re.test(v);
  }
  const scalar = (v: unknown) =>
    (typeof v === "string" || typeof v === "number" || typeof v === "boolean") && one(String(v));
  return (v) => Array.isArray(v) ? v.some(scalar) : scalar(v);
}

function claimAt(claims: JWTPayload, path: readonly string[]): unknown {
  let v: unknown = claims;
  for (const key of path) {
    if (v === null || typeof v !== "object" || Array.isArray(v)) return undefined;
    v = (v as Record<string, unknown>)[key];
  }
  return v;
}

/**
 * The identity a certificate name stands for: `spiffe://td/...` is a SPIFFE ID of trust domain
 * `td`; a name with a dot a DNS name; anything else a subject CN.
 */
export function identityFromId(id: string): ClientIdentity {
  const spiffe = /^spiffe:\/\/([^/]+)/.exec(id);
  if (spiffe) return { id, kind: "spiffe", trustDomain: spiffe[1]!.toLowerCase() };
  return {
    id,
    kind: /^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$/.test(id) ? "dns" : "cn",
    trustDomain: undefined,
  };
}

/** `Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750); undefined without one. */
export function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined || header.length < 8) return undefined;
  if (header.slice(0, 7).toLowerCase() !== "bearer ") return undefined;
  const token = header.slice(7).trim();
  return token === "" ? undefined : token;
}

/** Runs a policy: the JWT check first (when it has one), then the rules, then the default. */
export async function decide(policy: AuthzPolicy, input: AuthzInput): Promise<AuthzDecision> {
  let claims: JWTPayload | undefined;
  if (policy.jwt) {
    const provider = policy.jwt.provider.name;
    const token = bearerToken(input.header("authorization"));
    if (token === undefined) {
      if (policy.jwt.required) {
        return { action: "unauthenticated", rule: null, reason: "missing bearer token", provider };
      }
    } else {
      try {
        claims = await policy.jwt.provider.verify(token);
      } catch (err) {
        const reason = err instanceof JwtRejected ? err.reason : "token not verified";
        return { action: "unauthenticated", rule: null, reason, provider };
      }
    }
  }
  for (const rule of policy.rules) {
    let all = true;
    for (const t of rule.tests) {
      if (!t(input, claims)) {
        all = false;
        break;
      }
    }
    if (all) {
      return { action: rule.action, rule: rule.name, reason: `rule ${rule.name} (${rule.action})` };
    }
  }
  return {
    action: policy.defaultAction,
    rule: null,
    reason: `no rule matched; default ${policy.defaultAction}`,
  };
}

/** Counts decisions by listener and route (see FerryMetrics.authzRecorder). */
export type AuthzRecorder = (listener: string, action: AuthzAction) => void;

/**
 * A route's authorization: its own policy for every listener, or each listener's default policy.
 * `check` throws the error-table error for a refusal; HTTP and gRPC both call it.
 */
export class RouteAuthz {
  constructor(
    readonly own: AuthzPolicy | undefined,
    readonly byListener: ReadonlyMap<string, AuthzPolicy>,
    readonly record: AuthzRecorder | undefined,
  ) {}

  policyFor(listener: string): AuthzPolicy | undefined {
    return this.own ?? this.byListener.get(listener);
  }

  async check(listener: string, input: AuthzInput): Promise<void> {
    const policy = this.policyFor(listener);
    if (policy === undefined) return;
    const d = await decide(policy, input);
    this.record?.(listener, d.action);
    if (d.action === "allow") return;
    throw refusal(d);
  }
}

/** The error-table error for a decision that is not allow: 401 with a Bearer challenge, or 403. */
export function refusal(d: AuthzDecision): ProxyError {
  if (d.action === "unauthenticated") {
    const realm = `Bearer realm="${d.provider ?? "ferry"}"`;
    const challenge = d.reason === "missing bearer token"
      ? realm
      : `${realm}, error="invalid_token", error_description="${d.reason.replaceAll('"', "'")}"`;
    return new ProxyError("unauthenticated", d.reason, {
      headers: { "www-authenticate": challenge },
    });
  }
  return new ProxyError("access_denied", `access denied by ${d.reason}`);
}

/** Authorization as a route layer: runs first, before rate limits and faults (HTTP and gRPC). */
export function authorization(authz: RouteAuthz): PolicyLayer {
  return { name: "authorization", admit: (call, where) => authz.check(where.listener, call) };
}
