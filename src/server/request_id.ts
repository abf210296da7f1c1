/**
 * The request id every listener (HTTP and gRPC) gives a request: the client's `x-request-id`
 * where `server.request_id` allows it and it is a sane token, else a fresh UUID. One picker, so
 * the two listeners cannot drift apart.
 */

/** Printable ASCII without spaces, at most 128 characters: safe in logs and headers. */
const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

/** `server.request_id`: keep the client's id always, from trusted proxies only, or never. */
export type RequestIdPolicy = "always" | "trusted" | "never";

export function pickRequestId(
  incoming: string | null | undefined,
  policy: RequestIdPolicy,
  peerTrusted: boolean,
): string {
  if (incoming != null && REQUEST_ID.test(incoming)) {
    if (policy === "always" || (policy === "trusted" && peerTrusted)) return incoming;
  }
  return crypto.randomUUID();
}
