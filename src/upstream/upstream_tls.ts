/**
 * A cluster's upstream TLS: extra CA, a client certificate (mTLS), the server name (SNI and the
 * name the certificate must carry) and the identities the upstream must present (a SPIFFE ID or
 * DNS name among its certificate's SANs).
 *
 * Deno's own TLS (fetch via `Deno.createHttpClient`, `Deno.connectTls`) takes the CA and the
 * client certificate but shows nothing of the peer's certificate (`handshake()` returns only the
 * ALPN protocol) and cannot set SNI apart from the host. So where a server name or expected
 * identities are configured, connections are made with `node:tls`, whose `checkServerIdentity`
 * sees the certificate during the handshake and can refuse it on the very connection used.
 */
import type { PeerCertificate } from "node:tls";
import { ProxyError } from "../pipeline/errors.ts";
import { OptionalModule } from "../pipeline/optional_module.ts";

/**
 * node:tls and Ferry's wrappers of it (src/server/node_tls.ts: the TLS listener, `NodeTlsConn`),
 * loaded only when the config has a TLS listener or an upstream whose identity is checked
 * (src/server/optional_parts.ts).
 */
export const nodeTlsPart = new OptionalModule("node-tls", () => import("../server/node_tls.ts"));

export interface UpstreamTls {
  /** Extra trusted CA certificates (PEM). */
  readonly caCerts?: string[];
  /** Client certificate chain and key (PEM), presented when the upstream asks for one. */
  readonly cert?: string;
  readonly key?: string;
  /** SNI and the name checked against the certificate; default the endpoint's host. */
  readonly serverName?: string;
  /** The upstream's certificate must carry one of these as a URI or DNS SAN. */
  readonly expectedIdentities?: readonly string[];
}

/**
 * Options for `Deno.createHttpClient` and `Deno.connectTls` (CA and client certificate). They
 * cannot check a server name or identity: see `checksPeer`.
 */
export function denoTlsOptions(t: UpstreamTls | undefined): {
  caCerts?: string[];
  cert?: string;
  key?: string;
} {
  if (!t) return {};
  return {
    ...(t.caCerts ? { caCerts: t.caCerts } : {}),
    ...(t.cert !== undefined && t.key !== undefined ? { cert: t.cert, key: t.key } : {}),
  };
}

/** Whether connections must be made with node:tls (a server name or identities to check). */
export function checksPeer(t: UpstreamTls | undefined): boolean {
  return t !== undefined && (t.serverName !== undefined || t.expectedIdentities !== undefined);
}

/** The URI and DNS names in node's `subjectaltname` text (`URI:a, DNS:b, IP Address:c`). */
export function sanNames(subjectaltname: string | undefined): string[] {
  if (!subjectaltname) return [];
  const out: string[] = [];
  for (const part of subjectaltname.split(/,\s*/)) {
    if (part.startsWith("URI:")) out.push(part.slice(4));
    else if (part.startsWith("DNS:")) out.push(part.slice(4));
  }
  return out;
}

/**
 * node:tls `checkServerIdentity` for these settings: the usual host name check (against
 * `serverName` when set), then the expected identities. A refusal is a ProxyError, so it reaches
 * the error table unchanged through node's error events.
 */
export function identityChecker(
  t: UpstreamTls,
  /** Names the upstream in messages; the connection's host name when not given (shared agents). */
  origin: string | undefined,
): (host: string, cert: PeerCertificate) => Error | undefined {
  const nodeTls = nodeTlsPart.get().nodeTls;
  return (host, cert) => {
    const who = origin ?? host;
    const expected = t.expectedIdentities;
    if (expected === undefined) {
      const nameError = nodeTls.checkServerIdentity(host, cert);
      if (nameError) {
        return new ProxyError(
          "upstream_connect_failure",
          `${who}: certificate does not name ${host}`,
          { cause: nameError },
        );
      }
      return undefined;
    }
    // With expected identities the SANs decide (a SPIFFE certificate names no host at all).
    const names = sanNames(cert.subjectaltname);
    if (names.some((n) => expected.includes(n))) return undefined;
    return new ProxyError(
      "upstream_id_mismatch",
      `${who} presented ${names.length ? names.join(", ") : "no URI or DNS SAN"}; ` +
        `expected ${expected.join(" or ")}`,
    );
  };
}

/** node:tls options (https.Agent, tls.connect) for these settings. */
export function nodeTlsOptions(t: UpstreamTls, origin?: string): {
  ca?: string[];
  cert?: string;
  key?: string;
  servername?: string;
  checkServerIdentity?: (host: string, cert: PeerCertificate) => Error | undefined;
} {
  return {
    ...(t.caCerts ? { ca: t.caCerts } : {}),
    ...(t.cert !== undefined && t.key !== undefined ? { cert: t.cert, key: t.key } : {}),
    ...(t.serverName !== undefined ? { servername: t.serverName } : {}),
    ...(checksPeer(t) ? { checkServerIdentity: identityChecker(t, origin) } : {}),
  };
}

/**
 * Opens a TLS connection for Ferry's HTTP/2 client: `Deno.connectTls` when nothing about the
 * peer needs checking beyond the chain and host, else node:tls with the identity check, wrapped
 * in the `read`/`write`/`close` part of `Deno.Conn` that the HTTP/2 client uses.
 */
export async function connectUpstreamTls(
  hostname: string,
  port: number,
  alpn: string[],
  t: UpstreamTls | undefined,
  origin: string,
): Promise<{ conn: Deno.Conn; alpnProtocol: string | null }> {
  if (!checksPeer(t)) {
    const tls = await Deno.connectTls({
      hostname,
      port,
      alpnProtocols: alpn,
      ...denoTlsOptions(t),
    });
    try {
      const hs = await tls.handshake();
      return { conn: tls, alpnProtocol: hs.alpnProtocol };
    } catch (err) {
      tls.close();
      throw err;
    }
  }
  const { nodeTls, NodeTlsConn } = nodeTlsPart.get();
  const socket = nodeTls.connect({
    host: hostname,
    port,
    ALPNProtocols: alpn,
    ...nodeTlsOptions(t!, origin),
  });
  await new Promise<void>((resolve, reject) => {
    socket.once("secureConnect", resolve);
    socket.once("error", reject);
  });
  socket.setNoDelay(true);
  const alpnProtocol = typeof socket.alpnProtocol === "string" ? socket.alpnProtocol : null;
  return { conn: new NodeTlsConn(socket) as unknown as Deno.Conn, alpnProtocol };
}
