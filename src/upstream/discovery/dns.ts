/**
 * DNS endpoint discovery for one cluster (Envoy's STRICT_DNS, plus SRV): resolve a name to the
 * set of endpoints behind it, re-resolve on an interval and report only real changes.
 *
 * Failure policy, following Envoy's strict DNS cluster:
 * - A resolution that FAILS (timeout, network error, any resolver error) keeps the last known
 *   endpoints; the failure is logged and retried on the next interval. A DNS blip never empties
 *   a cluster.
 * - A resolution that SUCCEEDS with no records (NXDOMAIN, or NODATA: the name exists without
 *   records of the asked type) is an authoritative "no endpoints": the cluster is emptied, as
 *   Envoy removes hosts on a successful empty answer.
 *
 * Caveat measured on Deno 2.9.6: `Deno.resolveDns` throws the same `Deno.errors.NotFound`
 * ("no records found") for SERVFAIL and REFUSED as for NXDOMAIN, so with the default resolver a
 * SERVFAIL from the name server also counts as an empty answer. `emptyConfirmations: 2` (or
 * more) guards against that: the cluster is emptied only after that many consecutive empty
 * answers, one interval apart. The default (1) is Envoy's behaviour.
 *
 * Deno.resolveDns returns no TTLs, so the interval alone drives re-resolution.
 *
 * @example
 * ```ts
 * import { DnsDiscovery } from "./dns.ts";
 * const discovery = new DnsDiscovery({ name: "api.internal", type: "A", port: 8080 });
 * await discovery.start((endpoints) => {
 *   // [{ url: "http://10.0.0.7:8080", weight: 1 }, ...]: rebuild the balancer here
 * });
 * // ...
 * discovery.stop();
 * ```
 */
import type { EndpointDescriptor } from "./endpoints.ts";

export type { EndpointDescriptor } from "./endpoints.ts";

/** Which records name the endpoints: addresses (one or both families) or SRV (RFC 2782). */
export type DnsDiscoveryType = "A" | "AAAA" | "A+AAAA" | "SRV";
/** The address families an SRV target is resolved to. */
export type AddressType = "A" | "AAAA" | "A+AAAA";

export interface NameServer {
  readonly ipAddr: string;
  /** Default 53. */
  readonly port?: number;
}

export interface DnsDiscoveryConfig {
  /** The host name to resolve (for SRV the full service name, e.g. `_http._tcp.api.internal`). */
  readonly name: string;
  /** Default `"A"`. */
  readonly type?: DnsDiscoveryType;
  /** The endpoints' port; required for A / AAAA / A+AAAA, ignored for SRV (the record's). */
  readonly port?: number;
  /** Default `"http"`. */
  readonly scheme?: "http" | "https";
  /** Milliseconds between re-resolutions (from the end of one to the start of the next). */
  readonly interval?: number;
  /** Milliseconds one whole resolution (SRV and its target look-ups included) may take. */
  readonly timeout?: number;
  /** Ask this server instead of the system's resolvers. */
  readonly nameServer?: NameServer;
  /** Families SRV targets resolve to; default `"A"`. */
  readonly srvTargetType?: AddressType;
  /** Consecutive empty answers before a non-empty cluster is emptied; default 1 (Envoy). */
  readonly emptyConfirmations?: number;
}

/** The config with every default applied (see `DnsDiscoveryConfig` for each field). */
export interface ResolvedDnsDiscoveryConfig {
  readonly name: string;
  readonly type: DnsDiscoveryType;
  readonly port: number | undefined;
  readonly scheme: "http" | "https";
  readonly interval: number;
  readonly timeout: number;
  readonly nameServer: NameServer | undefined;
  readonly srvTargetType: AddressType;
  readonly emptyConfirmations: number;
}

export const DNS_DISCOVERY_DEFAULTS = Object.freeze({
  type: "A" as DnsDiscoveryType,
  scheme: "http" as const,
  interval: 5_000,
  timeout: 2_000,
  srvTargetType: "A" as AddressType,
  emptyConfirmations: 1,
});

/** One SRV answer (RFC 2782), the shape `Deno.resolveDns(..., "SRV")` returns. */
export interface SrvAnswer {
  readonly priority: number;
  readonly weight: number;
  readonly port: number;
  readonly target: string;
}

export interface ResolveOptions {
  readonly nameServer?: NameServer;
  /** Aborted at the discovery's deadline or on `stop()`; a resolver should honour it. */
  readonly signal: AbortSignal;
}

/**
 * Looks up one record type. "No such records" (NXDOMAIN / NODATA) is reported either by
 * resolving to an empty list or by throwing `Deno.errors.NotFound` (what `Deno.resolveDns`
 * does); anything else thrown is a failure. A resolver that ignores `signal` is still cut off
 * at the deadline.
 */
export interface DnsResolver {
  (query: string, type: "A" | "AAAA", options: ResolveOptions): Promise<readonly string[]>;
  (query: string, type: "SRV", options: ResolveOptions): Promise<readonly SrvAnswer[]>;
}

/** `Deno.resolveDns`, always with a signal (its own timeout is about 15 s). */
export const denoResolver: DnsResolver = ((
  query: string,
  type: "A" | "AAAA" | "SRV",
  options: ResolveOptions,
) => {
  const opts: Deno.ResolveDnsOptions = {
    signal: options.signal,
    ...(options.nameServer ? { nameServer: { ...options.nameServer } } : {}),
  };
  return type === "SRV" ? Deno.resolveDns(query, "SRV", opts) : Deno.resolveDns(query, type, opts);
}) as DnsResolver;

/** Log lines from discovery; wire to a `Logger` as `(lvl, msg, f) => logger[lvl](msg, f)`. */
export type DiscoveryLog = (
  level: "debug" | "info" | "warn",
  msg: string,
  fields: Record<string, unknown>,
) => void;

export interface DnsDiscoveryOptions {
  /** Default `denoResolver`. */
  readonly resolver?: DnsResolver;
  /** Default: no logging. */
  readonly log?: DiscoveryLog;
}

/** A resolution that did not finish within `timeout`. */
export class DnsTimeoutError extends Error {
  override readonly name = "DnsTimeoutError";
  constructor(readonly query: string, readonly timeoutMs: number) {
    super(`DNS resolution of ${query} timed out after ${timeoutMs} ms`);
  }
}

/** What discovery knows right now, for the admin API and health reporting. */
export interface DnsDiscoveryStatus {
  /** The endpoints in force (last successful answer), or undefined before the first one. */
  readonly endpoints: readonly EndpointDescriptor[] | undefined;
  readonly consecutiveFailures: number;
  readonly lastError: string | undefined;
  /** `Date.now()` of the last successful resolution (empty answers included). */
  readonly lastSuccessAt: number | undefined;
  readonly running: boolean;
}

const TYPES: readonly DnsDiscoveryType[] = ["A", "AAAA", "A+AAAA", "SRV"];
const ADDRESS_TYPES: readonly AddressType[] = ["A", "AAAA", "A+AAAA"];

function positiveInt(field: string, v: unknown, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
    throw new RangeError(`${field} must be an integer in 1..${max}, got ${String(v)}`);
  }
  return v;
}

/** Validates `config` eagerly (each error names the field and value) and applies defaults. */
export function resolveDnsDiscoveryConfig(config: DnsDiscoveryConfig): ResolvedDnsDiscoveryConfig {
  const d = DNS_DISCOVERY_DEFAULTS;
  if (typeof config.name !== "string" || config.name.trim() === "") {
    throw new RangeError(`name must be a non-empty host name, got ${JSON.stringify(config.name)}`);
  }
  const type = config.type ?? d.type;
  if (!TYPES.includes(type)) throw new RangeError(`type must be one of ${TYPES}, got ${type}`);
  const srvTargetType = config.srvTargetType ?? d.srvTargetType;
  if (!ADDRESS_TYPES.includes(srvTargetType)) {
    throw new RangeError(`srvTargetType must be one of ${ADDRESS_TYPES}, got ${srvTargetType}`);
  }
  const scheme = config.scheme ?? d.scheme;
  if (scheme !== "http" && scheme !== "https") {
    throw new RangeError(`scheme must be http or https, got ${String(scheme)}`);
  }
  let port: number | undefined;
  if (type !== "SRV") port = positiveInt("port", config.port, 65535);
  else if (config.port !== undefined) port = positiveInt("port", config.port, 65535);
  const ns = config.nameServer;
  if (ns !== undefined) {
    if (typeof ns.ipAddr !== "string" || ns.ipAddr === "") {
      throw new RangeError(`nameServer.ipAddr must be an IP address, got ${String(ns.ipAddr)}`);
    }
    if (ns.port !== undefined) positiveInt("nameServer.port", ns.port, 65535);
  }
  return Object.freeze({
    name: config.name.trim(),
    type,
    port,
    scheme,
    interval: positiveInt("interval", config.interval ?? d.interval),
    timeout: positiveInt("timeout", config.timeout ?? d.timeout),
    nameServer: ns === undefined ? undefined : Object.freeze({ ...ns }),
    srvTargetType,
    emptyConfirmations: positiveInt(
      "emptyConfirmations",
      config.emptyConfirmations ?? d.emptyConfirmations,
    ),
  });
}

function isNotFound(err: unknown): boolean {
  return err instanceof Deno.errors.NotFound;
}

function describe(err: unknown): string {
  return err instanceof Error ? `${err.name}: ${err.message}` : String(err);
}

/** `scheme://host:port` with IPv6 bracketed and normalised (the form cluster origins use). */
function endpointUrl(scheme: string, ip: string, port: number): string {
  const host = ip.includes(":") ? `[${ip}]` : ip;
  const u = new URL(`${scheme}://${host}:${port}`);
  return `${u.protocol}//${u.hostname}:${port}`;
}

const IPV4 = /^\d{1,3}(\.\d{1,3}){3}$/;

/**
 * Sorted by url, one entry per url. Duplicates only arise from SRV records naming the same
 * target and port more than once; their weights add up (each record is a share).
 */
function normalise(list: readonly EndpointDescriptor[]): EndpointDescriptor[] {
  const byUrl = new Map<string, number>();
  for (const e of list) byUrl.set(e.url, (byUrl.get(e.url) ?? 0) + e.weight);
  return [...byUrl.keys()].sort().map((url) => Object.freeze({ url, weight: byUrl.get(url)! }));
}

function sameSet(a: readonly EndpointDescriptor[], b: readonly EndpointDescriptor[]): boolean {
  return a.length === b.length &&
    a.every((e, i) => e.url === b[i]!.url && e.weight === b[i]!.weight);
}

/**
 * SRV weights for one priority group (RFC 2782): weight 0 means "a very small chance" when
 * others in the group have a weight, and an equal share when all are 0. Balancers need weights
 * above 0, so a 0 becomes 1/100 of the group's smallest positive weight, or 1 when all are 0.
 */
function srvWeights(group: readonly SrvAnswer[]): number[] {
  const positive = group.map((r) => r.weight).filter((w) => w > 0);
  if (positive.length === 0) return group.map(() => 1);
  const tiny = Math.min(...positive) / 100;
  return group.map((r) => (r.weight > 0 ? r.weight : tiny));
}

/**
 * Discovers one cluster's endpoints through DNS. `resolve()` is a single look-up; `start()`
 * keeps the set current and applies the failure policy described at the top of this file.
 */
export class DnsDiscovery {
  readonly config: ResolvedDnsDiscoveryConfig;
  readonly #resolver: DnsResolver;
  readonly #log: DiscoveryLog;
  #endpoints: readonly EndpointDescriptor[] | undefined;
  #consecutiveFailures = 0;
  #consecutiveEmpty = 0;
  #lastError: string | undefined;
  #lastSuccessAt: number | undefined;
  #stop: AbortController | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor(config: DnsDiscoveryConfig, options: DnsDiscoveryOptions = {}) {
    this.config = resolveDnsDiscoveryConfig(config);
    this.#resolver = options.resolver ?? denoResolver;
    this.#log = options.log ?? (() => {});
  }

  /** The endpoints in force: the last successful answer, or undefined before one. */
  get endpoints(): readonly EndpointDescriptor[] | undefined {
    return this.#endpoints;
  }

  get status(): DnsDiscoveryStatus {
    return {
      endpoints: this.#endpoints,
      consecutiveFailures: this.#consecutiveFailures,
      lastError: this.#lastError,
      lastSuccessAt: this.#lastSuccessAt,
      running: this.#stop !== undefined,
    };
  }

  /**
   * One resolution: the endpoints the name points at now, sorted by url and deduplicated; `[]`
   * for an empty answer (NXDOMAIN / NODATA). Rejects with `DnsTimeoutError` when it takes longer
   * than `timeout`, with the resolver's error on failure, and with `signal.reason` when `signal`
   * aborts first. Does not touch the state `start()` keeps.
   */
  async resolve(signal?: AbortSignal): Promise<EndpointDescriptor[]> {
    const { timeout, name } = this.config;
    const deadline = new AbortController();
    const timer = setTimeout(
      () => deadline.abort(new DnsTimeoutError(name, timeout)),
      timeout,
    );
    const onAbort = () => deadline.abort(signal!.reason);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return normalise(await this.#resolveAll(deadline.signal));
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Resolves now and then every `interval` until `stop()`. `onChange(endpoints)` is called after
   * the first successful resolution of this run (even if empty or unchanged since an earlier
   * run) and afterwards only when the set (urls and weights) changed.
   * Resolves once the first attempt has finished, whether it succeeded or not (on failure the
   * cluster has no endpoints yet and the next interval retries). Calling it twice throws.
   */
  start(onChange: (endpoints: readonly EndpointDescriptor[]) => void): Promise<void> {
    if (this.#stop) throw new Error(`DNS discovery of ${this.config.name} is already running`);
    const stop = new AbortController();
    this.#stop = stop;
    const run = { reported: false };
    const tick = async (): Promise<void> => {
      await this.#refresh(stop.signal, run, onChange);
      if (stop.signal.aborted) return;
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        void tick();
      }, this.config.interval);
    };
    return tick();
  }

  /** Stops re-resolving and aborts a resolution in flight; `onChange` is not called again. */
  stop(): void {
    this.#stop?.abort(new DOMException("DNS discovery stopped", "AbortError"));
    this.#stop = undefined;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async #refresh(
    signal: AbortSignal,
    run: { reported: boolean },
    onChange: (endpoints: readonly EndpointDescriptor[]) => void,
  ): Promise<void> {
    const fields = { cluster_dns_name: this.config.name, type: this.config.type };
    let next: EndpointDescriptor[];
    try {
      next = await this.resolve(signal);
    } catch (err) {
      if (signal.aborted) return;
      this.#consecutiveFailures++;
      this.#lastError = describe(err);
      this.#log("warn", "DNS resolution failed; keeping the last known endpoints", {
        ...fields,
        error: this.#lastError,
        consecutive_failures: this.#consecutiveFailures,
        kept: this.#endpoints?.length ?? 0,
      });
      return;
    }
    if (signal.aborted) return;
    this.#consecutiveFailures = 0;
    this.#lastError = undefined;
    this.#lastSuccessAt = Date.now();
    const previous = this.#endpoints;
    if (next.length === 0 && previous !== undefined && previous.length > 0) {
      this.#consecutiveEmpty++;
      if (this.#consecutiveEmpty < this.config.emptyConfirmations) {
        this.#log("warn", "DNS answered with no records; waiting for confirmation", {
          ...fields,
          empty_answers: this.#consecutiveEmpty,
          needed: this.config.emptyConfirmations,
          kept: previous.length,
        });
        return;
      }
    } else {
      this.#consecutiveEmpty = 0;
    }
    if (run.reported && previous !== undefined && sameSet(previous, next)) return;
    run.reported = true;
    this.#endpoints = Object.freeze(next);
    const before = new Set(previous?.map((e) => e.url));
    const after = new Set(next.map((e) => e.url));
    this.#log("info", "DNS endpoints changed", {
      ...fields,
      endpoints: next.length,
      added: next.filter((e) => !before.has(e.url)).map((e) => e.url),
      removed: [...before].filter((u) => !after.has(u)),
    });
    onChange(this.#endpoints);
  }

  async #resolveAll(signal: AbortSignal): Promise<EndpointDescriptor[]> {
    const { type, name, scheme, port } = this.config;
    if (type !== "SRV") {
      const ips = await this.#addresses(name, type, signal);
      return ips.map((ip) => ({ url: endpointUrl(scheme, ip, port!), weight: 1 }));
    }
    const records = await this.#query(name, "SRV", signal);
    // RFC 2782: use the lowest-numbered priority whose targets exist; "." means no service.
    const priorities = [...new Set(records.map((r) => r.priority))].sort((a, b) => a - b);
    for (const priority of priorities) {
      const group = records.filter((r) => r.priority === priority && r.target !== ".");
      const weights = srvWeights(group);
      const resolved = await Promise.all(
        group.map((r) => this.#addresses(r.target, this.config.srvTargetType, signal)),
      );
      const out = resolved.flatMap((ips, i) =>
        ips.map((ip) => ({ url: endpointUrl(scheme, ip, group[i]!.port), weight: weights[i]! }))
      );
      if (out.length > 0) return out;
    }
    return [];
  }

  /** Addresses of `host` for one or both families; `[]` when it has none. */
  async #addresses(host: string, type: AddressType, signal: AbortSignal): Promise<string[]> {
    const bare = host.replace(/\.$/, "");
    if (IPV4.test(bare) || bare.includes(":")) return [bare]; // an SRV target given as an IP
    const families: ("A" | "AAAA")[] = type === "A+AAAA" ? ["A", "AAAA"] : [type];
    // Any failure of either family fails the whole resolution (the last set is kept): a
    // half-answered A+AAAA must not shrink the cluster to one family.
    const lists = await Promise.all(families.map((f) => this.#query(bare, f, signal)));
    return [...new Set(lists.flat())]; // a repeated address is one endpoint, not double weight
  }

  #query(query: string, type: "A" | "AAAA", signal: AbortSignal): Promise<string[]>;
  #query(query: string, type: "SRV", signal: AbortSignal): Promise<SrvAnswer[]>;
  async #query(
    query: string,
    type: "A" | "AAAA" | "SRV",
    signal: AbortSignal,
  ): Promise<string[] | SrvAnswer[]> {
    signal.throwIfAborted();
    const options: ResolveOptions = {
      signal,
      ...(this.config.nameServer ? { nameServer: this.config.nameServer } : {}),
    };
    const call = type === "SRV"
      ? this.#resolver(query, "SRV", options)
      : this.#resolver(query, type, options);
    // Cut off at the deadline even if the resolver ignores the signal.
    let onAbort!: () => void;
    const aborted = new Promise<never>((_, reject) => {
      onAbort = () => reject(signal.reason);
      signal.addEventListener("abort", onAbort, { once: true });
    });
    call.catch(() => {}); // a late rejection after the deadline is not unhandled
    try {
      const answer = await Promise.race([call, aborted]);
      return [...answer] as string[] | SrvAnswer[];
    } catch (err) {
      if (!signal.aborted && isNotFound(err)) return [];
      throw signal.aborted ? signal.reason : err;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  }
}
