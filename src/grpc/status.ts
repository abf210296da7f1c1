/**
 * gRPC on the wire (the PROTOCOL-HTTP2 spec of grpc/grpc): status codes, the `grpc-timeout`
 * header, percent-encoded `grpc-message`, and trailers-only responses for answers Ferry makes
 * itself. Which ProxyError kind becomes which status is in `src/server/errors.ts` (one table).
 */
import type { HeaderField } from "../h2/hpack.ts";

export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

/** Names as used in retry_on (Envoy's spelling); the policy owns them (src/policy/retry.ts). */
export { RETRIABLE_GRPC } from "../policy/retry.ts";

const UNIT_MS: Readonly<Record<string, number>> = {
  H: 3_600_000,
  M: 60_000,
  S: 1000,
  m: 1,
  u: 0.001,
  n: 0.000001,
};

/** `grpc-timeout` (1-8 digits and a unit) in ms; undefined when absent or malformed. */
export function parseGrpcTimeout(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const m = /^(\d{1,8})([HMSmun])$/.exec(value);
  if (!m) return undefined;
  return Number(m[1]) * UNIT_MS[m[2]!]!;
}

/** Formats ms as `grpc-timeout`, rounding up to whole ms and keeping to 8 digits. */
export function formatGrpcTimeout(ms: number): string {
  const whole = Math.max(1, Math.ceil(ms));
  if (whole < 1e8) return `${whole}m`;
  const s = Math.ceil(whole / 1000);
  return s < 1e8 ? `${s}S` : `${Math.min(99_999_999, Math.ceil(s / 3600))}H`;
}

/** Percent-encodes a status message as the spec asks (bytes outside 0x20-0x7E, and '%'). */
export function encodeGrpcMessage(message: string): string {
  let out = "";
  for (const b of new TextEncoder().encode(message)) {
    out += b >= 0x20 && b <= 0x7e && b !== 0x25
      ? String.fromCharCode(b)
      : "%" + b.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

/** A trailers-only response: HTTP 200, content-type, grpc-status and grpc-message at once. */
export function trailersOnly(
  status: number,
  message: string,
  extra: readonly HeaderField[] = [],
): HeaderField[] {
  return [
    [":status", "200"],
    ["content-type", "application/grpc"],
    ["grpc-status", String(status)],
    ["grpc-message", encodeGrpcMessage(message)],
    ...extra,
  ];
}

/** Moved next to the HTTP one (src/upstream/health/outlier.ts); kept here for callers. */
export { outcomeOfGrpcStatus } from "../upstream/health/outlier.ts";

/** gRPC status for an upstream HTTP status that is not 200 (the spec's HTTP-to-gRPC table). */
export function grpcStatusOfHttp(status: number): number {
  switch (status) {
    case 400:
      return GrpcStatus.INTERNAL;
    case 401:
      return GrpcStatus.UNAUTHENTICATED;
    case 403:
      return GrpcStatus.PERMISSION_DENIED;
    case 404:
      return GrpcStatus.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return GrpcStatus.UNAVAILABLE;
    default:
      return GrpcStatus.UNKNOWN;
  }
}
