/**
 * Which HTTP client a cluster uses, from its config. Its own module, free of the schema's values:
 * worker isolates build clusters without loading zod.
 */
import type { ClusterConfig } from "./schema.ts";

/**
 * The client a cluster's HTTP requests use: `transport` when set; else `h1` for http1, `h2` for
 * h2c (cheaper per request than fetch, measured: docs/design.md "Choices made by measurement"),
 * and for auto `h2` when a server name or identities are to be checked (fetch cannot see the
 * peer's certificate), `fetch` otherwise (ALPN may pick HTTP/1.1, which the h2 client does not
 * fall back to).
 */
export function httpTransportOf(
  c: Pick<ClusterConfig, "protocol" | "transport" | "tls">,
): "h1" | "h2" | "fetch" {
  if (c.transport) return c.transport;
  if (c.protocol === "http1") return "h1";
  if (c.protocol === "h2c") return "h2";
  const t = c.tls;
  return t && (t.server_name !== undefined || t.expected_identities !== undefined) ? "h2" : "fetch";
}
