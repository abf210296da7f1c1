/**
 * A listener's TLS material as compiled from the config: the default certificate, the ones chosen
 * by server name (SNI), the client CA and the handshake settings. Every pair is checked when the
 * config is compiled (start, reload, and the reload a changed TLS file triggers), so a pair that
 * cannot serve (unreadable, key not matching, expired) fails the compile and the material in use
 * is kept.
 */
import { createPrivateKey, X509Certificate } from "node:crypto";
import * as client from "../observability/prom.ts";
import type { FerryConfig } from "../config/schema.ts";
import { type ConfigProblem, ConfigProblemsError, type Materials } from "../config/materials.ts";

/** One certificate chain and its key, as checked. */
export interface CertificatePair {
  readonly cert: string;
  readonly key: string;
  /** Lower-case names (exact, or `*.example.com`); empty for the default pair. */
  readonly serverNames: readonly string[];
  /** The first certificate's expiry, ms since the epoch. */
  readonly notAfter: number;
  /** SHA-256 fingerprint of the first certificate (colon-separated hex, as openssl prints). */
  readonly fingerprint256: string;
  readonly serial: string;
}

/** What a TLS listener serves with. */
export interface ListenerTls {
  /** The default pair: for clients without SNI or with a name no other pair has. */
  readonly cert: string;
  readonly key: string;
  readonly defaultPair: CertificatePair;
  /** Pairs chosen by server name, in config order. */
  readonly sni: readonly CertificatePair[];
  /** Downstream mTLS: the CA bundle client certificates must chain to. */
  readonly clientCa?: string | undefined;
  readonly clientAuth?: "require" | "optional" | undefined;
  readonly minVersion: "TLSv1.2" | "TLSv1.3";
  /** A handshake not finished within this closes the connection. */
  readonly handshakeTimeoutMs: number;
}

/** A certificate's expiry, for the metric and /config. */
export interface CertificateExpiry {
  readonly kind: "listener" | "cluster";
  /** The listener's or cluster's name. */
  readonly name: string;
  /** SNI names the certificate is chosen for (listeners; empty: the default certificate). */
  readonly serverNames?: readonly string[];
  readonly notAfter: number;
  readonly fingerprint256?: string;
}

/** Default handshake timeout; lowered to the header timeout when that is shorter. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * Checks a certificate chain and key: both parse, the key belongs to the first certificate, and
 * that certificate is valid now. Returns the pair, or why it cannot be used.
 */
export function checkPair(
  cert: string,
  key: string,
  serverNames: readonly string[],
  now = Date.now(),
): CertificatePair | string {
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (err) {
    return `the certificate does not parse as PEM X.509: ${errorText(err)}`;
  }
  let matches: boolean;
  try {
    matches = x509.checkPrivateKey(createPrivateKey(key));
  } catch (err) {
    return `the key does not parse as a PEM private key: ${errorText(err)}`;
  }
  if (!matches) return "the key does not match the certificate";
  const notAfter = x509.validToDate.getTime();
  if (notAfter <= now) return `the certificate expired on ${x509.validToDate.toISOString()}`;
  if (x509.validFromDate.getTime() > now) {
    return `the certificate is not valid before ${x509.validFromDate.toISOString()}`;
  }
  return {
    cert,
    key,
    serverNames,
    notAfter,
    fingerprint256: x509.fingerprint256,
    serial: x509.serialNumber,
  };
}

/** Checks that a CA bundle holds at least one certificate that parses. */
export function checkCaBundle(pem: string): string | undefined {
  try {
    new X509Certificate(pem);
    return undefined;
  } catch (err) {
    return `the CA bundle does not parse as PEM X.509: ${errorText(err)}`;
  }
}

/**
 * The pair for a client's server name: an exact name first, then a wildcard covering exactly one
 * leftmost label (`*.example.com` matches `a.example.com`, not `example.com` or `a.b.example.com`),
 * then the default. Names compare case-insensitively.
 */
export function pairForServerName<T extends { readonly serverNames: readonly string[] }>(
  pairs: readonly T[],
  fallback: T,
  serverName: string | undefined,
): T {
  if (!serverName) return fallback;
  const name = serverName.toLowerCase().replace(/\.$/, "");
  for (const p of pairs) if (p.serverNames.includes(name)) return p;
  const dot = name.indexOf(".");
  if (dot > 0) {
    const wildcard = `*${name.slice(dot)}`;
    for (const p of pairs) if (p.serverNames.includes(wildcard)) return p;
  }
  return fallback;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Each registry's gauge reads the certificates of whoever registered last (the running Ferry). */
const expirySources = new WeakMap<client.Registry, () => readonly CertificateExpiry[]>();

/**
 * `ferry_tls_certificate_expiry_timestamp_seconds{kind, name}`: the earliest expiry among the
 * certificates a listener serves (all its SNI pairs included) or a cluster presents, read from
 * `current()` at scrape time.
 */
export function registerCertificateExpiry(
  registry: client.Registry,
  current: () => readonly CertificateExpiry[],
): void {
  const known = expirySources.has(registry);
  expirySources.set(registry, current);
  if (known) return;
  new client.Gauge({
    name: "ferry_tls_certificate_expiry_timestamp_seconds",
    help: "Expiry (Unix seconds) of the soonest-expiring certificate a listener serves (SNI " +
      "certificates included) or a cluster presents as its client certificate.",
    labelNames: ["kind", "name"],
    registers: [registry],
    collect() {
      this.reset();
      const soonest = new Map<string, { kind: string; name: string; at: number }>();
      for (const c of expirySources.get(registry)?.() ?? []) {
        const key = `${c.kind}\n${c.name}`;
        const seen = soonest.get(key);
        if (!seen || c.notAfter < seen.at) {
          soonest.set(key, { kind: c.kind, name: c.name, at: c.notAfter });
        }
      }
      for (const s of soonest.values()) this.set({ kind: s.kind, name: s.name }, s.at / 1000);
    },
  });
}

/** Every listener's checked TLS material, and the expiry of every certificate in use. */
export interface CheckedTls {
  readonly listeners: ReadonlyMap<string, ListenerTls>;
  readonly certificates: readonly CertificateExpiry[];
}

/**
 * Checks every pair and CA bundle the config's TLS files hold (listeners and cluster client
 * certificates): a pair that cannot serve is a config problem at its path, so a start fails and a
 * reload (the one a rotated file triggers too) keeps the material in use. Reads no file: the
 * contents come from config/materials.ts.
 */
export function checkTlsMaterials(cfg: FerryConfig, materials: Materials): CheckedTls {
  const problems: ConfigProblem[] = [];
  const certificates: CertificateExpiry[] = [];
  const listeners = new Map<string, ListenerTls>();
  const checked = (
    cert: string,
    key: string,
    names: readonly string[],
    path: string,
    file: string,
  ) => {
    const pair = checkPair(cert, key, names);
    if (typeof pair !== "string") return pair;
    problems.push({ path, value: file, message: pair });
    return undefined;
  };
  for (const [i, l] of cfg.listeners.entries()) {
    const files = materials.listenerTls.get(l.name);
    if (!l.tls || !files) continue;
    const at = `listeners[${i}].tls`;
    const defaultPair = checked(files.cert, files.key, [], at, l.tls.cert);
    const sni = files.sni.map((p, j) =>
      checked(
        p.cert,
        p.key,
        p.serverNames,
        `${at}.certificates[${j}]`,
        l.tls!.certificates![j]!.cert,
      )
    );
    if (files.clientCa !== undefined) {
      const bad = checkCaBundle(files.clientCa);
      if (bad) problems.push({ path: `${at}.client_ca`, value: l.tls.client_ca!, message: bad });
    }
    if (!defaultPair || sni.some((p) => p === undefined)) continue;
    for (const p of [defaultPair, ...sni as CertificatePair[]]) {
      certificates.push({
        kind: "listener",
        name: l.name,
        serverNames: p.serverNames,
        notAfter: p.notAfter,
        fingerprint256: p.fingerprint256,
      });
    }
    const headerTimeoutMs = cfg.server.header_timeout;
    listeners.set(l.name, {
      cert: defaultPair.cert,
      key: defaultPair.key,
      defaultPair,
      sni: sni as CertificatePair[],
      ...(files.clientCa !== undefined
        ? { clientCa: files.clientCa, clientAuth: l.tls.client_auth ?? "require" }
        : {}),
      minVersion: l.tls.min_version === "1.3" ? "TLSv1.3" : "TLSv1.2",
      // A slow handshake is cut before a slow head would be, unless set otherwise.
      handshakeTimeoutMs: l.tls.handshake_timeout ??
        (headerTimeoutMs > 0
          ? Math.min(DEFAULT_HANDSHAKE_TIMEOUT_MS, headerTimeoutMs)
          : DEFAULT_HANDSHAKE_TIMEOUT_MS),
    });
  }
  for (const [i, c] of cfg.clusters.entries()) {
    const files = materials.clusterTls.get(c.name);
    if (!c.tls || !files) continue;
    const caProblem = files.ca === undefined ? undefined : checkCaBundle(files.ca);
    if (caProblem) {
      problems.push({
        path: `clusters[${i}].tls.ca_file`,
        value: c.tls.ca_file ?? "",
        message: caProblem,
      });
    }
    if (files.cert !== undefined && files.key !== undefined) {
      const pair = checked(
        files.cert,
        files.key,
        [],
        `clusters[${i}].tls.cert_file`,
        c.tls.cert_file ?? "",
      );
      if (pair) certificates.push({ kind: "cluster", name: c.name, notAfter: pair.notAfter });
    }
  }
  if (problems.length > 0) throw new ConfigProblemsError(problems);
  return { listeners, certificates };
}
