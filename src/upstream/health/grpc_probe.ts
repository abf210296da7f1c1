/**
 * A gRPC health probe: the standard `grpc.health.v1.Health/Check` call over Ferry's own HTTP/2
 * client, on a probe pool of its own (one connection per endpoint, separate from user traffic).
 * Healthy only when the call ends with grpc-status 0 and the answer says SERVING. The two tiny
 * protobuf messages are encoded by hand:
 *
 *   message HealthCheckRequest  { string service = 1; }
 *   message HealthCheckResponse { enum ServingStatus { UNKNOWN = 0; SERVING = 1;
 *                                   NOT_SERVING = 2; SERVICE_UNKNOWN = 3; } ServingStatus status = 1; }
 */
import { ErrorCode } from "../../h2/frames.ts";
import { headerValue } from "../../h2/headers.ts";
import type { H2Stream } from "../../h2/stream.ts";
import { H2Pool } from "../h2_pool.ts";
import type { UpstreamTls } from "../upstream_tls.ts";
import type { Probe, ProbeResult } from "./probe.ts";

export const HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check";
const SERVING_STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];
/** A health answer is a few bytes; anything bigger is not one. */
const MAX_ANSWER_BYTES = 4096;

export interface GrpcProbeOptions {
  /** The service to ask about; `""` asks about the server as a whole. */
  readonly service?: string;
  /** `:authority` to send; default the endpoint's own host:port. */
  readonly authority?: string;
  /** Extra CA certificates (PEM) for `https` endpoints. */
  readonly caCerts?: string[];
  /** Upstream mTLS, as the cluster's own connections (identity checked). */
  readonly tls?: UpstreamTls;
}

/** One gRPC message (5-byte prefix, uncompressed) holding HealthCheckRequest{service}. */
export function encodeHealthCheckRequest(service: string): Uint8Array {
  const name = new TextEncoder().encode(service);
  const body: number[] = [];
  if (name.length > 0) {
    body.push(0x0a); // field 1, wire type 2 (length-delimited)
    for (let n = name.length;; n >>>= 7) {
      if (n < 0x80) {
        body.push(n);
        break;
      }
      body.push((n & 0x7f) | 0x80);
    }
  }
  const out = new Uint8Array(5 + body.length + name.length);
  new DataView(out.buffer).setUint32(1, body.length + name.length);
  out.set(body, 5);
  out.set(name, 5 + body.length);
  return out;
}

/**
 * The `status` of a HealthCheckResponse in one gRPC message; undefined when the bytes are not
 * one (compressed, truncated, wrong wire type). Unknown fields are skipped; absent status is 0.
 */
export function decodeHealthCheckResponse(framed: Uint8Array): number | undefined {
  if (framed.length < 5 || framed[0] !== 0) return undefined;
  const len = new DataView(framed.buffer, framed.byteOffset).getUint32(1);
  if (framed.length !== 5 + len) return undefined;
  let status = 0;
  let i = 5;
  const varint = (): number | undefined => {
    let v = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      if (i >= framed.length) return undefined;
      const b = framed[i++]!;
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return v;
    }
    return undefined;
  };
  while (i < framed.length) {
    const key = varint();
    if (key === undefined) return undefined;
    const field = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) {
      const v = varint();
      if (v === undefined) return undefined;
      if (field === 1) status = v;
    } else if (wire === 2) {
      const n = varint();
      if (n === undefined || i + n > framed.length) return undefined;
      i += n;
    } else if (wire === 1 || wire === 5) {
      i += wire === 1 ? 8 : 4;
      if (i > framed.length) return undefined;
    } else return undefined;
  }
  return status;
}

export class GrpcHealthProber {
  readonly #pool: H2Pool;
  readonly #request: Uint8Array;
  readonly #authority: string | undefined;

  constructor(opts: GrpcProbeOptions = {}) {
    this.#pool = new H2Pool({
      maxConnectionsPerEndpoint: 1,
      ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
      ...(opts.tls ? { tls: opts.tls } : {}),
    });
    this.#request = encodeHealthCheckRequest(opts.service ?? "");
    this.#authority = opts.authority;
  }

  /** Settles as soon as `signal` aborts, even while a connect is still in progress. */
  readonly probe: Probe = async (target, signal) => {
    if (signal.aborted) return aborted(signal);
    let stream: H2Stream | undefined;
    let onAbort!: () => void;
    const abort = new Promise<ProbeResult>((resolve) => {
      onAbort = () => {
        stream?.reset(ErrorCode.CANCEL);
        resolve(aborted(signal));
      };
      signal.addEventListener("abort", onAbort, { once: true });
    });
    try {
      return await Promise.race([
        abort,
        this.#check(target.origin, signal, (s) => (stream = s)),
      ]);
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  };

  async #check(
    origin: string,
    signal: AbortSignal,
    opened: (s: H2Stream) => void,
  ): Promise<ProbeResult> {
    const url = new URL(origin);
    let stream: H2Stream | undefined;
    try {
      const conn = await this.#pool.get({ origin, url });
      if (signal.aborted) return aborted(signal);
      stream = await conn.request([
        [":method", "POST"],
        [":scheme", url.protocol === "https:" ? "https" : "http"],
        [":path", HEALTH_CHECK_PATH],
        [":authority", this.#authority ?? url.host],
        ["content-type", "application/grpc"],
        ["te", "trailers"],
        ["user-agent", "ferry-health-check"],
      ], false);
      opened(stream);
      await stream.write(this.#request);
      await stream.end();
      const head = await stream.headers;
      const http = headerValue(head, ":status");
      if (http !== "200") {
        stream.reset(ErrorCode.CANCEL);
        return { ok: false, reason: `status ${http}` };
      }
      let trailers = head;
      const parts: Uint8Array[] = [];
      let size = 0;
      if (headerValue(head, "grpc-status") === undefined) {
        for await (const chunk of stream.body) {
          size += chunk.length;
          if (size > MAX_ANSWER_BYTES) {
            stream.reset(ErrorCode.CANCEL);
            return { ok: false, reason: "health answer too large" };
          }
          parts.push(chunk);
        }
        trailers = (await stream.trailers) ?? [];
      }
      const grpcStatus = headerValue(trailers, "grpc-status");
      if (grpcStatus !== "0") {
        return { ok: false, reason: `grpc-status ${grpcStatus ?? "missing"}` };
      }
      const answer = new Uint8Array(size);
      let at = 0;
      for (const p of parts) {
        answer.set(p, at);
        at += p.length;
      }
      const status = decodeHealthCheckResponse(answer);
      if (status === undefined) return { ok: false, reason: "malformed health answer" };
      const name = SERVING_STATUS[status] ?? `status ${status}`;
      return { ok: status === 1, reason: name };
    } catch (err) {
      if (signal.aborted) return aborted(signal);
      stream?.reset(ErrorCode.CANCEL);
      return { ok: false, reason: err instanceof Error ? err.message : String(err) };
    }
  }

  close(): void {
    this.#pool.close();
  }
}

function aborted(signal: AbortSignal): ProbeResult {
  const r = signal.reason;
  return { ok: false, reason: r instanceof Error ? r.message : String(r) };
}
