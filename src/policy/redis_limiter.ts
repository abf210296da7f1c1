/**
 * A rate limit shared by every Ferry instance that names the same Redis and key prefix.
 *
 * The budget is one GCRA bucket per key kept in Redis (the same algorithm as the local limiter,
 * src/policy/token_bucket.ts), updated atomically by a Lua script run with EVALSHA. A Redis
 * round trip per request would cost too much, so each instance takes *leases*: the script grants
 * up to `batch` tokens at once (about rate x sync_interval), the instance spends them locally
 * with no I/O, and asks for the next lease in the background when fewer than half a batch are
 * left. Only a request that finds no local token waits for Redis (at most `timeout`).
 *
 * Overshoot bound: a lease is spent within `ttl = 2 x sync_interval + timeout` of the moment it
 * was asked for (later its tokens are dropped; counting from the ask, not the answer, keeps the
 * bound independent of Redis latency, and the `timeout` term means a lease that arrives in time
 * still has 2 x sync_interval to be spent). Redis never grants more than `burst + rate x L`
 * tokens in any span of L, and a token is granted after it was asked for. Hence across all
 * instances at most `burst + rate x (e + ttl)` requests pass in any window of e: the overshoot
 * over one limiter is at most `rate x ttl` tokens (15 at 50/s with the defaults, 100 ms each).
 * Unspent tokens of an expired lease are lost (undershoot), never given twice.
 *
 * Failure: a call that fails or outlasts `timeout` marks the backend down (one warning, the
 * `ferry_rate_limit_backend_up` gauge to 0, every failure counted). While down, `failure_mode`
 * decides: `open` answers from this instance's own local limiter (same rate and burst, so N
 * instances allow up to N times the limit), `closed` refuses with 429. Traffic probes Redis at
 * most once per second; the first answer marks it up again (one log line, gauge to 1) and shared
 * limiting resumes by itself.
 */
import { createHash } from "node:crypto";
import { isIP } from "node:net";
import { Redis, type RedisOptions } from "ioredis";
import type { RateLimitConfig, RedisStoreConfig } from "../config/schema.ts";
import type { Logger } from "../observability/log.ts";
import { newDecision, type RateDecision } from "./token_bucket.ts";

/**
 * GCRA "take up to ARGV[3] tokens" on KEYS[1], on Redis's clock (TIME), so instances with skewed
 * clocks still agree. Returns {granted, retry_after_ms, reset_ms}; floats as strings because
 * Redis truncates Lua numbers to integers.
 */
export const GCRA_LEASE_SCRIPT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local free = math.floor((tau - (tat - now)) / interval + 1e-9)
local n = want
if free < n then n = free end
if n < 0 then n = 0 end
if n > 0 then
  tat = tat + n * interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
end
local retry = 0
if n == 0 then retry = (tat - now) - tau + interval end
return {n, string.format('%.3f', retry), string.format('%.3f', tat - now)}
`;

const SCRIPT_SHA = createHash("sha1").update(GCRA_LEASE_SCRIPT).digest("hex");
/** How often traffic may probe a backend that is down. */
const PROBE_INTERVAL_MS = 1_000;

export interface LeaseAnswer {
  readonly granted: number;
  readonly retryAfterMs: number;
  readonly resetMs: number;
}

export interface SharedLimiterDeps {
  /** Reads a file named in the config (relative to the config file). */
  readonly readTextFile: (path: string) => string;
  readonly env?: (name: string) => string | undefined;
  readonly log?: Logger | undefined;
  readonly backendMetrics?: { error(): void; up(isUp: boolean): void } | undefined;
}

/** A store setting that cannot be used (an unset variable, an unreadable file). */
export class RedisStoreError extends Error {
  constructor(readonly field: string, readonly value: string, message: string) {
    super(message);
  }
}

function readSetting(
  deps: Pick<SharedLimiterDeps, "readTextFile">,
  field: string,
  path: string,
): string {
  try {
    return deps.readTextFile(path);
  } catch (err) {
    throw new RedisStoreError(
      field,
      path,
      `cannot read: ${err instanceof Error ? err.message : err}`,
    );
  }
}

/** The ioredis options for a store: bounded waits everywhere, no retries hidden inside a call. */
export function redisOptions(
  store: RedisStoreConfig,
  deps: Pick<SharedLimiterDeps, "readTextFile" | "env">,
): RedisOptions {
  const sep = store.address.lastIndexOf(":");
  const host = store.address.slice(0, sep).replace(/^\[(.*)\]$/, "$1") || "127.0.0.1";
  const port = Number(store.address.slice(sep + 1));
  let password: string | undefined;
  if (store.password_file !== undefined) {
    password = readSetting(deps, "password_file", store.password_file).split(/\r?\n/)[0]!.trim();
  } else if (store.password_env !== undefined) {
    password = (deps.env ?? Deno.env.get)(store.password_env);
    if (password === undefined) {
      throw new RedisStoreError(
        "password_env",
        store.password_env,
        `environment variable ${store.password_env} is not set`,
      );
    }
  }
  const tlsOpts = typeof store.tls === "object" ? store.tls : {};
  // node:tls refuses an IP as SNI name; without one it checks the certificate against the host.
  const servername = tlsOpts.server_name ?? (isIP(host) ? undefined : host);
  const tls = store.tls === false ? undefined : {
    ...(tlsOpts.ca_file ? { ca: readSetting(deps, "tls.ca_file", tlsOpts.ca_file) } : {}),
    ...(servername ? { servername } : {}),
  };
  return {
    host,
    port,
    ...(store.username !== undefined ? { username: store.username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(tls ? { tls } : {}),
    // Connect on the first call: `--check` and dry runs never open a connection.
    lazyConnect: true,
    connectTimeout: Math.max(store.timeout, 1_000),
    commandTimeout: store.timeout,
    // A call made while disconnected fails now instead of waiting for a reconnect.
    maxRetriesPerRequest: 0,
    retryStrategy: (times: number) => Math.min(times * 100, 1_000),
  };
}

/** One Redis connection and the lease script; marks itself up or down from call outcomes. */
export class RedisLeaseBackend {
  readonly #client: Redis;
  readonly #name: string;
  readonly #deps: SharedLimiterDeps;
  /** Optimistic until a call fails. */
  #up = true;
  /** Whether any call has answered or failed yet (the gauge is set from the first one). */
  #known = false;
  #closed = false;

  constructor(name: string, store: RedisStoreConfig, deps: SharedLimiterDeps) {
    this.#name = name;
    this.#deps = deps;
    this.#client = new Redis(redisOptions(store, deps));
    // ioredis reports connection errors as events too; the call outcomes are what count.
    this.#client.on("error", () => {});
  }

  get up(): boolean {
    return this.#up;
  }

  /** Takes up to `want` tokens from `key`; rejects on failure or timeout (and marks down). */
  async lease(key: string, intervalMs: number, tauMs: number, want: number): Promise<LeaseAnswer> {
    try {
      const args = [String(intervalMs), String(tauMs), String(want)];
      let reply: unknown;
      try {
        reply = await this.#client.evalsha(SCRIPT_SHA, 1, key, ...args);
      } catch (err) {
        // A restarted or flushed Redis has lost the script: load it once and retry.
        if (!String((err as Error)?.message).startsWith("NOSCRIPT")) throw err;
        await this.#client.script("LOAD", GCRA_LEASE_SCRIPT);
        reply = await this.#client.evalsha(SCRIPT_SHA, 1, key, ...args);
      }
      const [granted, retry, reset] = reply as [number, string, string];
      this.#mark(true);
      return { granted: Number(granted), retryAfterMs: Number(retry), resetMs: Number(reset) };
    } catch (err) {
      // Calls cut short by close() (a reload dropped the limiter) are not backend failures.
      if (!this.#closed) this.#deps.backendMetrics?.error();
      this.#mark(false, err);
      throw err;
    }
  }

  #mark(up: boolean, err?: unknown): void {
    if (this.#closed) return;
    const changed = this.#up !== up;
    if (changed || !this.#known) this.#deps.backendMetrics?.up(up);
    this.#known = true;
    if (!changed) return;
    this.#up = up;
    if (up) {
      this.#deps.log?.warn("rate limit backend is back; shared limiting resumed", {
        limit: this.#name,
      });
    } else {
      this.#deps.log?.warn("rate limit backend unreachable; failure mode applies", {
        limit: this.#name,
        error: err instanceof Error ? err.message : String(err),
      });
    }
  }

  close(): void {
    this.#closed = true;
    this.#client.disconnect();
  }
}

/** Tokens leased for one key: a short queue of (count, expiry), oldest first. */
class KeyLeases {
  readonly counts: number[] = [];
  readonly expiries: number[] = [];
  pending: Promise<void> | undefined;
  /** Requests waiting for a lease: the next lease asks for at least this many tokens. */
  waiting = 0;
  /** Redis said the bucket is empty: ask again no earlier than this. */
  blockedUntil = 0;
  retryAfterMs = 0;
  resetMs = 0;

  available(at: number): number {
    while (this.expiries.length > 0 && this.expiries[0]! <= at) {
      this.expiries.shift();
      this.counts.shift();
    }
    let n = 0;
    for (const c of this.counts) n += c;
    return n;
  }

  spend(): void {
    if (--this.counts[0]! === 0) {
      this.counts.shift();
      this.expiries.shift();
    }
  }
}

export interface SharedLimitOptions {
  readonly config: RateLimitConfig;
  readonly store: RedisStoreConfig;
  readonly backend: RedisLeaseBackend;
  /** This instance's own limiter: the fallback in failure mode `open`. */
  readonly local: (key: string, at: number) => RateDecision;
}

/**
 * One shared rate limit: per key, spends leased tokens locally and leases more from Redis.
 * `take` answers synchronously whenever it can; it returns a promise only when the key has no
 * local token and Redis must be asked (bounded by `timeout`).
 */
export class SharedRateLimit {
  readonly #opts: SharedLimitOptions;
  readonly #keys = new Map<string, KeyLeases>();
  readonly #maxKeys: number;
  readonly #prefix: string;
  readonly #interval: number;
  readonly #tau: number;
  readonly #batch: number;
  readonly #lowWater: number;
  readonly #leaseTtl: number;
  readonly #syncMs: number;
  #nextProbe = 0;
  readonly #decision = newDecision();

  constructor(opts: SharedLimitOptions) {
    this.#opts = opts;
    const c = opts.config;
    this.#maxKeys = c.scope === "global" ? 1 : c.max_keys;
    this.#prefix = `${opts.store.key_prefix}${c.name}:`;
    this.#interval = 1000 / c.rate;
    this.#tau = c.burst * this.#interval;
    this.#syncMs = opts.store.sync_interval;
    this.#batch = Math.min(c.burst, Math.max(1, Math.ceil((c.rate * this.#syncMs) / 1000)));
    this.#lowWater = Math.ceil(this.#batch / 2);
    this.#leaseTtl = 2 * this.#syncMs + opts.store.timeout;
  }

  /** The overshoot bound over a single limiter with the same rate and burst, in tokens. */
  get overshootBound(): number {
    return Math.ceil((this.#opts.config.rate * this.#leaseTtl) / 1000);
  }

  take(key: string, at: number): RateDecision | Promise<RateDecision> {
    const backend = this.#opts.backend;
    const st = this.#state(key);
    const have = st.available(at);
    if (have > 0) {
      st.spend();
      if (have - 1 < this.#lowWater && backend.up) this.#fetch(key, st, at);
      return this.#allow(have - 1, this.#decision);
    }
    if (!backend.up) {
      if (at >= this.#nextProbe) {
        this.#nextProbe = at + PROBE_INTERVAL_MS;
        this.#fetch(key, st, at);
      }
      return this.#failureMode(key, at, this.#decision);
    }
    if (at < st.blockedUntil) return this.#deny(st, st.blockedUntil - at, this.#decision);
    st.waiting++;
    this.#fetch(key, st, at);
    return st.pending!.then(() => this.#afterLease(key, st, true));
  }

  /**
   * A request that waited for a lease: a token if one came, else the answer Redis gave. When
   * more requests waited than the lease held and Redis did not say "empty", it waits for one
   * more lease (sized for every request still waiting), so a burst on a cold key is not refused
   * while the shared bucket has tokens.
   */
  #afterLease(
    key: string,
    st: KeyLeases,
    mayWaitAgain: boolean,
  ): Promise<RateDecision> | RateDecision {
    st.waiting--;
    const at = Date.now();
    const out = newDecision();
    const have = st.available(at);
    if (have > 0) {
      st.spend();
      return this.#allow(have - 1, out);
    }
    if (!this.#opts.backend.up) return this.#failureMode(key, at, out);
    if (mayWaitAgain && at >= st.blockedUntil) {
      st.waiting++;
      this.#fetch(key, st, at);
      return st.pending!.then(() => this.#afterLease(key, st, false));
    }
    return this.#deny(st, Math.max(st.blockedUntil - at, st.retryAfterMs), out);
  }

  #fetch(key: string, st: KeyLeases, at: number): void {
    if (st.pending) return;
    const expires = at + this.#leaseTtl;
    st.pending = this.#opts.backend.lease(
      this.#redisKey(key),
      this.#interval,
      this.#tau,
      Math.min(this.#opts.config.burst, Math.max(this.#batch, st.waiting)),
    )
      .then((a) => {
        st.retryAfterMs = a.retryAfterMs;
        st.resetMs = a.resetMs;
        if (a.granted > 0) {
          st.counts.push(a.granted);
          st.expiries.push(expires);
        } // Empty: wait at least a sync interval, so a saturated limit costs few calls.
        else st.blockedUntil = Date.now() + Math.max(a.retryAfterMs, this.#syncMs);
      }, () => {/* the backend marked itself down and counted the error */})
      .finally(() => (st.pending = undefined));
  }

  #failureMode(key: string, at: number, out: RateDecision): RateDecision {
    if (this.#opts.store.failure_mode === "open") {
      const d = this.#opts.local(key, at);
      out.allowed = d.allowed;
      out.remaining = d.remaining;
      out.retryAfterMs = d.retryAfterMs;
      out.resetMs = d.resetMs;
      return out;
    }
    out.allowed = false;
    out.remaining = 0;
    out.retryAfterMs = PROBE_INTERVAL_MS;
    out.resetMs = PROBE_INTERVAL_MS;
    return out;
  }

  #allow(remaining: number, out: RateDecision): RateDecision {
    out.allowed = true;
    out.remaining = remaining;
    out.retryAfterMs = 0;
    out.resetMs = this.#opts.config.burst * this.#interval;
    return out;
  }

  #deny(st: KeyLeases, retryAfterMs: number, out: RateDecision): RateDecision {
    out.allowed = false;
    out.remaining = 0;
    out.retryAfterMs = retryAfterMs;
    out.resetMs = st.resetMs;
    return out;
  }

  #state(key: string): KeyLeases {
    let st = this.#keys.get(key);
    if (st === undefined) {
      // Bounded like the local table: the oldest key goes (its unspent lease is lost, never doubled).
      if (this.#keys.size >= this.#maxKeys) this.#keys.delete(this.#keys.keys().next().value!);
      this.#keys.set(key, st = new KeyLeases());
    }
    return st;
  }

  #redisKey(key: string): string {
    // Header values can be long: a digest keeps Redis keys short and free of odd bytes.
    return this.#prefix +
      (key.length <= 64 && /^[\x21-\x7e]*$/.test(key)
        ? key
        : createHash("sha256").update(key).digest("hex"));
  }

  close(): void {
    this.#opts.backend.close();
  }
}
