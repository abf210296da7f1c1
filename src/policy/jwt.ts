/**
 * JWT verification for authorization policies, with the `jose` library (never our own crypto):
 * RS256, ES256, EdDSA; signing keys from a JWKS file or a JWKS URL fetched at start and every
 * `refresh_interval` (the last good set is kept when a fetch fails); issuer, audience and clock
 * skew checked. Verified tokens are remembered in a bounded map until their `exp`, so a token
 * is verified once, not on every request.
 */
import {
  createLocalJWKSet,
  errors as joseErrors,
  type JSONWebKeySet,
  type JWTPayload,
  jwtVerify,
} from "jose";
import type { JwtProviderConfig } from "../config/schema.ts";
import type { Logger } from "../observability/log.ts";
import { JwtRejected } from "./jwt_rejected.ts";

export { JwtRejected };

/** Unknown key ids refetch the JWKS at most this often (a rotation seen before the next refresh). */
const UNKNOWN_KID_REFETCH_MS = 5_000;

type KeyResolver = ReturnType<typeof createLocalJWKSet>;

interface CachedToken {
  readonly payload: JWTPayload;
  /** `exp` in ms (every accepted token has one). */
  readonly expMs: number;
  readonly nbfMs: number;
}

export interface JwksStatus {
  readonly source: string;
  readonly keys: number;
  readonly loaded_at: string | null;
  readonly last_error: string | null;
}

/** The largest JWKS document read; real ones are a few KiB. */
const MAX_JWKS_BYTES = 1024 * 1024;

/**
 * The body as text, refused once it passes `max` bytes: a JWKS endpoint that streams without end
 * was read into memory until `fetch_timeout`.
 */
async function boundedText(body: ReadableStream<Uint8Array> | null, max: number): Promise<string> {
  if (body === null) return "";
  const parts: Uint8Array[] = [];
  let size = 0;
  const reader = body.getReader();
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    size += r.value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => {});
      throw new Error(`JWKS document larger than ${max} bytes`);
    }
    parts.push(r.value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return new TextDecoder().decode(all);
}

export class JwtProvider {
  readonly name: string;
  readonly #cfg: JwtProviderConfig;
  readonly #log: Logger | undefined;
  readonly #cache = new Map<string, CachedToken>();
  #resolver: KeyResolver | undefined;
  #keysText = "";
  #keyCount = 0;
  #loadedAt: number | undefined;
  #lastError: string | undefined;
  #lastFetchAt = 0;
  #fetching: Promise<void> | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  #abort = new AbortController();
  #closed = false;

  /**
   * `jwks`: the file's text for `jwks_file` (read by the caller when the config is compiled);
   * for `jwks_url` the first fetch starts with `start()`.
   */
  constructor(cfg: JwtProviderConfig, opts: { jwksText?: string; log?: Logger | undefined }) {
    this.name = cfg.name;
    this.#cfg = cfg;
    this.#log = opts.log;
    if (cfg.jwks_file !== undefined) this.#install(parseJwks(opts.jwksText ?? ""));
  }

  /**
   * For `jwks_url`: the first fetch and the refresh timer. Not done by the constructor, so a
   * provider built for a config that never goes live (`--check`, a rejected reload) fetches
   * nothing.
   */
  start(): void {
    if (this.#cfg.jwks_url === undefined || this.#timer !== undefined || this.#closed) return;
    void this.refresh();
    const timer = setInterval(
      () => void this.refresh(),
      Math.max(100, this.#cfg.refresh_interval),
    );
    // The refresh must not keep a process (or a test) alive on its own.
    Deno.unrefTimer(timer as unknown as number);
    this.#timer = timer;
  }

  /** Verifies a compact JWS; resolves to its claims or throws `JwtRejected` with the reason. */
  async verify(token: string): Promise<JWTPayload> {
    const now = Date.now();
    const skew = this.#cfg.clock_skew;
    const hit = this.#cache.get(token);
    if (hit !== undefined) {
      if (now > hit.expMs + skew) {
        this.#cache.delete(token);
        throw new JwtRejected("token expired");
      }
      if (now + skew < hit.nbfMs) throw new JwtRejected("token not yet valid");
      return hit.payload;
    }
    if (this.#resolver === undefined && this.#fetching) await this.#fetching;
    let payload: JWTPayload;
    try {
      payload = await this.#verifyOnce(token);
    } catch (err) {
      // A key id we do not know may be a rotation the next refresh would bring: fetch now
      // (at most every few seconds, so made-up key ids cannot hammer the JWKS server).
      if (
        err instanceof joseErrors.JWKSNoMatchingKey && this.#cfg.jwks_url !== undefined &&
        Date.now() - this.#lastFetchAt >= UNKNOWN_KID_REFETCH_MS
      ) {
        await this.refresh();
        try {
          payload = await this.#verifyOnce(token);
        } catch (again) {
          throw rejection(again);
        }
      } else throw rejection(err);
    }
    if (this.#cfg.cache_size > 0) {
      // Bounded: the oldest entry goes first (insertion order), so memory stays fixed.
      if (this.#cache.size >= this.#cfg.cache_size) {
        this.#cache.delete(this.#cache.keys().next().value!);
      }
      this.#cache.set(token, {
        payload,
        expMs: payload.exp! * 1000,
        nbfMs: payload.nbf === undefined ? 0 : payload.nbf * 1000,
      });
    }
    return payload;
  }

  #verifyOnce(token: string): Promise<JWTPayload> {
    const resolver = this.#resolver;
    if (resolver === undefined) {
      return Promise.reject(new JwtRejected("no signing keys loaded for this provider"));
    }
    const cfg = this.#cfg;
    return jwtVerify(token, resolver, {
      issuer: cfg.issuer,
      ...(cfg.audiences ? { audience: cfg.audiences } : {}),
      algorithms: cfg.algorithms,
      clockTolerance: Math.ceil(cfg.clock_skew / 1000),
      requiredClaims: ["exp"],
    }).then((r) => r.payload);
  }

  /** Fetches the JWKS URL once (concurrent callers share the fetch); a failure keeps the old set. */
  refresh(): Promise<void> {
    const url = this.#cfg.jwks_url;
    if (url === undefined || this.#closed) return Promise.resolve();
    this.#fetching ??= (async () => {
      this.#lastFetchAt = Date.now();
      try {
        const signal = AbortSignal.any([
          this.#abort.signal,
          AbortSignal.timeout(this.#cfg.fetch_timeout),
        ]);
        const res = await fetch(url, { signal, headers: { accept: "application/json" } });
        if (!res.ok) {
          await res.body?.cancel();
          throw new Error(`HTTP ${res.status}`);
        }
        const text = await boundedText(res.body, MAX_JWKS_BYTES);
        this.#install(parseJwks(text), text);
        this.#lastError = undefined;
      } catch (err) {
        if (this.#closed) return;
        this.#lastError = err instanceof Error ? err.message : String(err);
        this.#log?.warn("JWKS fetch failed; keeping the last good key set", {
          provider: this.name,
          url,
          error: this.#lastError,
          keys: this.#keyCount,
        });
      } finally {
        this.#fetching = undefined;
      }
    })();
    return this.#fetching;
  }

  #install(jwks: JSONWebKeySet, text = JSON.stringify(jwks)): void {
    this.#loadedAt = Date.now();
    if (text === this.#keysText) return;
    this.#keysText = text;
    this.#keyCount = jwks.keys.length;
    this.#resolver = createLocalJWKSet(jwks);
    // A removed key must not keep its tokens valid through the cache.
    this.#cache.clear();
    this.#log?.info("JWKS loaded", { provider: this.name, keys: jwks.keys.length });
  }

  status(): JwksStatus {
    return {
      source: this.#cfg.jwks_url ?? this.#cfg.jwks_file ?? "",
      keys: this.#keyCount,
      loaded_at: this.#loadedAt === undefined ? null : new Date(this.#loadedAt).toISOString(),
      last_error: this.#lastError ?? null,
    };
  }

  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#abort.abort();
  }
}

/** Parses a JWKS document; throws with what is wrong (reported at compile time for files). */
export function parseJwks(text: string): JSONWebKeySet {
  const data = JSON.parse(text) as unknown;
  if (
    data === null || typeof data !== "object" || !Array.isArray((data as { keys?: unknown }).keys)
  ) {
    throw new Error('expected a JWKS document: {"keys": [...]}');
  }
  return data as JSONWebKeySet;
}

/** What a client is told about a token that did not verify (no key material, no stack). */
function rejection(err: unknown): JwtRejected {
  if (err instanceof JwtRejected) return err;
  const code = (err as { code?: string } | null)?.code;
  switch (code) {
    case "ERR_JWT_EXPIRED":
      return new JwtRejected("token expired", { cause: err });
    case "ERR_JWT_CLAIM_VALIDATION_FAILED": {
      const claim = (err as { claim?: string }).claim;
      const reason = (err as { reason?: string }).reason;
      if (claim === "aud") return new JwtRejected("audience not accepted", { cause: err });
      if (claim === "iss") return new JwtRejected("issuer not accepted", { cause: err });
      if (claim === "nbf") return new JwtRejected("token not yet valid", { cause: err });
      return new JwtRejected(`claim ${claim} ${reason ?? "invalid"}`, { cause: err });
    }
    case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
      return new JwtRejected("bad signature", { cause: err });
    case "ERR_JWKS_NO_MATCHING_KEY":
      return new JwtRejected("unknown key id", { cause: err });
    case "ERR_JWKS_MULTIPLE_MATCHING_KEYS":
      return new JwtRejected("ambiguous key id", { cause: err });
    case "ERR_JOSE_ALG_NOT_ALLOWED":
      return new JwtRejected("algorithm not allowed", { cause: err });
    default:
      return new JwtRejected("malformed token", { cause: err });
  }
}
