/**
 * One HTTP health probe: `GET origin + path` on a client of its own, so probes never wait behind
 * user traffic in the cluster's pool, judged by the expected statuses. The client follows the
 * cluster's transport: Ferry's HTTP/2 client for `transport: h2` (h2c and auto clusters, the
 * default where the upstream's identity is checked), else a `Deno.HttpClient`; an http1 or auto
 * cluster that checks its upstream's server name or identity without the h2 transport probes
 * over the HTTP/1.1 codec (node:tls underneath), because fetch cannot show the peer's certificate.
 */
import { H1Transport } from "../../h1/transport.ts";
import { ProxyError } from "../../pipeline/errors.ts";
import { H2Pool } from "../h2_pool.ts";
import { H2Transport } from "../h2_transport.ts";
import { checksPeer, denoTlsOptions, type UpstreamTls } from "../upstream_tls.ts";

/** What a probe needs to know of an endpoint (Ferry's `Endpoint` fits). */
export interface ProbeTarget {
  readonly index: number;
  /** `scheme://host:port`. */
  readonly origin: string;
}

export interface ProbeResult {
  readonly ok: boolean;
  /** Short and loggable: `"status 200"`, `"status 503"`, `"timeout after 1000 ms"`, ... */
  readonly reason: string;
}

/** Probes `target`; must settle soon after `signal` aborts (the checker's timeout or stop). */
export type Probe = (target: ProbeTarget, signal: AbortSignal) => Promise<ProbeResult>;

/** `200`, `"200-399"` or `[200, 399]` (inclusive). */
export type StatusSpec = number | string | readonly [number, number];

export const DEFAULT_EXPECTED_STATUSES: readonly StatusSpec[] = Object.freeze(["200-399"]);

/**
 * Compiles expected statuses into a lookup (a 600-entry table, so a check is one load).
 * Every bad entry throws a RangeError naming `field[i]` and its value.
 */
export function compileStatuses(
  specs: readonly StatusSpec[],
  field = "expectedStatuses",
): (status: number) => boolean {
  if (!Array.isArray(specs) || specs.length === 0) {
    throw new RangeError(`${field} must be a non-empty list, got ${JSON.stringify(specs)}`);
  }
  const table = new Uint8Array(600);
  specs.forEach((spec, i) => {
    const [lo, hi] = rangeOf(spec);
    const valid = Number.isInteger(lo) && Number.isInteger(hi) && lo >= 100 && hi <= 599 &&
      lo <= hi;
    if (!valid) {
      throw new RangeError(
        `${field}[${i}] must be a status or an inclusive range within 100-599 ` +
          `(200, "200-399" or [200, 399]), got ${JSON.stringify(spec)}`,
      );
    }
    table.fill(1, lo, hi + 1);
  });
  return (status) => table[status] === 1;
}

function rangeOf(spec: StatusSpec): [number, number] {
  if (typeof spec === "number") return [spec, spec];
  if (typeof spec === "string") {
    const m = /^\s*(\d{3})\s*(?:-\s*(\d{3})\s*)?$/.exec(spec);
    if (!m) return [NaN, NaN];
    return [Number(m[1]), Number(m[2] ?? m[1])];
  }
  if (Array.isArray(spec) && spec.length === 2) return [spec[0], spec[1]];
  return [NaN, NaN];
}

export interface HttpProbeOptions {
  /** Request path (with query, if any). Default `"/"`. */
  readonly path?: string;
  /** Statuses that count as healthy. Default `["200-399"]`. */
  readonly expectedStatuses?: readonly StatusSpec[];
  /** Host header to send; default the endpoint's own authority. */
  readonly host?: string;
  /** Like the cluster's `protocol`: `h2c` is HTTP/2 with prior knowledge. Default `"auto"`. */
  readonly protocol?: "http1" | "h2c" | "auto";
  /** The cluster's HTTP transport (`httpTransportOf`); `h2` probes over Ferry's HTTP/2 client. */
  readonly transport?: "h1" | "h2" | "fetch";
  /** Extra CA certificates (PEM) for `https` endpoints. */
  readonly caCerts?: string[];
  /**
   * Upstream mTLS: the client certificate is presented; a server name or expected identities are
   * checked on every probe connection (then probes speak HTTP/1.1 over the codec).
   */
  readonly tls?: UpstreamTls;
  /** Response bytes read before the connection is given back (the rest is dropped). */
  readonly maxBodyBytes?: number;
}

/** Probes over one dedicated client: one connection per endpoint, reused. */
export class HttpProber {
  readonly #client: Deno.HttpClient | undefined;
  /** Set when the upstream's certificate must be checked (see the module comment). */
  readonly #codec: H1Transport | undefined;
  /** Ferry's HTTP/2 client, for clusters whose requests use it (`transport: h2`). */
  readonly #h2: H2Transport | undefined;
  readonly #path: string;
  readonly #host: string | undefined;
  readonly #expected: (status: number) => boolean;
  readonly #maxBodyBytes: number;

  constructor(opts: HttpProbeOptions = {}) {
    const path = opts.path ?? "/";
    if (typeof path !== "string" || !path.startsWith("/")) {
      throw new RangeError(`path must start with "/", got ${JSON.stringify(path)}`);
    }
    this.#path = path;
    this.#host = opts.host;
    this.#expected = compileStatuses(opts.expectedStatuses ?? DEFAULT_EXPECTED_STATUSES);
    this.#maxBodyBytes = opts.maxBodyBytes ?? 64 * 1024;
    const protocol = opts.protocol ?? "auto";
    const codec = () =>
      new H1Transport({
        // One probe at a time per endpoint, so one connection each is enough.
        maxIdlePerEndpoint: 1,
        maxConnectionsPerEndpoint: 1,
        idleTimeoutMs: 60_000,
        maxRequestsPerConnection: 0,
        // The probe's own timeout (its signal) is what bounds a probe; this only backs it up.
        connectTimeoutMs: 30_000,
        ...(opts.tls ? { tls: opts.tls } : {}),
      });
    if (opts.transport === "h2" && protocol !== "http1") {
      // As the cluster's own h2 transport: auto endpoints whose TLS picks HTTP/1.1 get the codec.
      const auto = protocol === "auto";
      this.#h2 = new H2Transport(
        new H2Pool({
          maxConnectionsPerEndpoint: 1,
          idleTimeoutMs: 60_000,
          ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
          ...(opts.tls ? { tls: opts.tls } : {}),
          ...(auto ? { alpn: ["h2", "http/1.1"] } : {}),
        }),
        auto ? codec() : undefined,
      );
      // It reaches every endpoint (h2c: prior knowledge; auto: the codec for HTTP/1.1).
      return;
    }
    // h2c endpoints are plain HTTP/2: no certificate to check, and the codec speaks HTTP/1.1.
    if (checksPeer(opts.tls) && protocol !== "h2c") {
      this.#codec = codec();
      return;
    }
    this.#client = Deno.createHttpClient({
      // One probe at a time per endpoint, so one idle connection each is enough.
      poolMaxIdlePerHost: 1,
      http1: protocol !== "h2c",
      http2: protocol !== "http1",
      // Without allowHost fetch silently replaces the Host header we set.
      allowHost: true,
      ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
      ...denoTlsOptions(opts.tls),
    });
  }

  readonly probe: Probe = async (target, signal) => {
    const headers: [string, string][] = [["user-agent", "ferry-health-check"]];
    if (this.#host !== undefined) headers.push(["host", this.#host]);
    let res: Response;
    try {
      const own = this.#h2 ?? this.#codec;
      if (own) {
        // The codec sends exactly the headers given: Host too.
        if (this.#host === undefined) headers.push(["host", new URL(target.origin).host]);
        res = await own.send({
          url: target.origin + this.#path,
          method: "GET",
          headers,
          body: null,
          signal,
        });
      } else {
        res = await fetch(target.origin + this.#path, {
          method: "GET",
          headers,
          client: this.#client!,
          redirect: "manual",
          signal,
        });
      }
    } catch (err) {
      if (err instanceof ProxyError && err.kind === "upstream_id_mismatch") {
        return { ok: false, reason: `upstream identity mismatch: ${err.reason}` };
      }
      return { ok: false, reason: failureReason(err, signal) };
    }
    try {
      await drain(res, this.#maxBodyBytes);
    } catch (err) {
      if (signal.aborted) return { ok: false, reason: failureReason(err, signal) };
      // The status line arrived; a body cut short does not change the verdict.
    }
    const ok = this.#expected(res.status);
    return { ok, reason: `status ${res.status}` };
  };

  close(): void {
    this.#client?.close();
    this.#codec?.close();
    this.#h2?.pool.close();
    this.#h2?.close();
  }
}

/** Reads and drops up to `limit` body bytes, then cancels the rest. */
async function drain(res: Response, limit: number): Promise<void> {
  if (res.body === null) return;
  const reader = res.body.getReader();
  let seen = 0;
  try {
    while (seen <= limit) {
      const { done, value } = await reader.read();
      if (done) return;
      seen += value.byteLength;
    }
    await reader.cancel();
  } finally {
    reader.releaseLock();
  }
}

function failureReason(err: unknown, signal: AbortSignal): string {
  if (signal.aborted) {
    const r = signal.reason;
    return r instanceof Error ? r.message : String(r);
  }
  const parts: string[] = [];
  let e: unknown = err;
  for (let depth = 0; e instanceof Error && depth < 4; depth++) {
    parts.push(e.message);
    e = e.cause;
  }
  const text = parts.join(": ");
  if (/refused/i.test(text)) return "connection refused";
  if (/reset|closed|broken pipe|incomplete/i.test(text)) return "connection reset";
  return text.length > 200 ? `${text.slice(0, 200)}...` : text || "probe failed";
}
