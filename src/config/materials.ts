/**
 * The last step of validation: reads the contents of the files a validated config names (TLS
 * certificates, keys and CAs, JWKS files, shared rate-limit stores' password and CA files, the
 * admin token file) and checks the environment variables it names.
 * This is the only place between loading and serving that reads them, so the compiler and the
 * registry work from these contents and never touch the file system. A file that vanished since
 * the loader checked it, or an admin token that is unset or too short, is a config problem here.
 */
import type { FerryConfig } from "./schema.ts";

/** A problem with what the config names, at its config path (placed in the file by the caller). */
export interface ConfigProblem {
  readonly path: string;
  readonly value: string;
  readonly message: string;
}

export class ConfigProblemsError extends Error {
  constructor(readonly problems: readonly ConfigProblem[]) {
    super(
      problems.map((p) => `${p.path}: ${p.message} (got ${JSON.stringify(p.value)})`).join("\n"),
    );
    this.name = "ConfigProblemsError";
  }
}

export interface ListenerTlsFiles {
  readonly cert: string;
  readonly key: string;
  readonly clientCa?: string;
  /** `tls.certificates[]`: the pairs chosen by server name (SNI), in config order. */
  readonly sni: readonly { readonly serverNames: readonly string[]; cert: string; key: string }[];
}

export interface ClusterTlsFiles {
  readonly ca?: string;
  readonly cert?: string;
  readonly key?: string;
}

/** The contents of what the config names, by listener, cluster or provider name. */
export interface Materials {
  readonly listenerTls: ReadonlyMap<string, ListenerTlsFiles>;
  readonly clusterTls: ReadonlyMap<string, ClusterTlsFiles>;
  /** JWKS file text, for providers with `jwks_file`. */
  readonly jwks: ReadonlyMap<string, string>;
  /** The admin listener's bearer token (admin.token, token_file or token_env), if any. */
  readonly adminToken: string | undefined;
  /** Shared rate-limit stores' password and CA files, by the path as the config writes it. */
  readonly storeFiles: ReadonlyMap<string, string>;
}

export interface MaterialOptions {
  /** Reads a file named in the config, resolved against the config's folder. */
  readonly readTextFile: (path: string) => string;
  /** Reads an environment variable (admin.token_env); default Deno.env.get. */
  readonly env?: ((name: string) => string | undefined) | undefined;
}

/** Reads everything at once; throws `ConfigProblemsError` listing every problem. */
export function readMaterials(cfg: FerryConfig, opts: MaterialOptions): Materials {
  const problems: ConfigProblem[] = [];
  const read = (path: string, file: string, what = "cannot read"): string | undefined => {
    try {
      return opts.readTextFile(file);
    } catch (err) {
      problems.push({ path, value: file, message: `${what}: ${err}` });
      return undefined;
    }
  };
  const listenerTls = new Map<string, ListenerTlsFiles>();
  for (const [i, l] of cfg.listeners.entries()) {
    if (!l.tls) continue;
    const at = `listeners[${i}].tls`;
    const cert = read(at, l.tls.cert, "cannot read TLS files");
    const key = read(at, l.tls.key, "cannot read TLS files");
    const clientCa = l.tls.client_ca === undefined
      ? undefined
      : read(at, l.tls.client_ca, "cannot read TLS files");
    const sni = (l.tls.certificates ?? []).map((c, j) => ({
      serverNames: c.server_names,
      cert: read(`${at}.certificates[${j}]`, c.cert, "cannot read TLS files"),
      key: read(`${at}.certificates[${j}]`, c.key, "cannot read TLS files"),
    }));
    if (cert === undefined || key === undefined) continue;
    listenerTls.set(l.name, {
      cert,
      key,
      ...(clientCa !== undefined ? { clientCa } : {}),
      sni: sni.flatMap((p) =>
        p.cert !== undefined && p.key !== undefined
          ? [{ serverNames: p.serverNames, cert: p.cert, key: p.key }]
          : []
      ),
    });
  }
  const clusterTls = new Map<string, ClusterTlsFiles>();
  for (const [i, c] of cfg.clusters.entries()) {
    if (!c.tls) continue;
    const field = (name: "ca_file" | "cert_file" | "key_file") => {
      const file = c.tls?.[name];
      return file === undefined ? undefined : read(`clusters[${i}].tls.${name}`, file);
    };
    const ca = field("ca_file"), cert = field("cert_file"), key = field("key_file");
    clusterTls.set(c.name, {
      ...(ca !== undefined ? { ca } : {}),
      ...(cert !== undefined ? { cert } : {}),
      ...(key !== undefined ? { key } : {}),
    });
  }
  const jwks = new Map<string, string>();
  for (const [i, p] of cfg.jwt_providers.entries()) {
    if (p.jwks_file === undefined) continue;
    const text = read(`jwt_providers[${i}].jwks_file`, p.jwks_file);
    if (text !== undefined) jwks.set(p.name, text);
  }
  const storeFiles = new Map<string, string>();
  const env = opts.env ?? ((n: string) => Deno.env.get(n));
  for (const [i, l] of cfg.rate_limits.entries()) {
    const store = l.redis;
    if (!store) continue;
    const at = `rate_limits[${i}].redis`;
    const files: [string, string | undefined][] = [
      ["password_file", store.password_file],
      ["tls.ca_file", typeof store.tls === "object" ? store.tls.ca_file : undefined],
    ];
    for (const [field, file] of files) {
      if (file === undefined) continue;
      const text = read(`${at}.${field}`, file);
      if (text !== undefined) storeFiles.set(file, text);
    }
    if (store.password_file === undefined && store.password_env !== undefined) {
      if (env(store.password_env) === undefined) {
        problems.push({
          path: `${at}.password_env`,
          value: store.password_env,
          message: `environment variable ${store.password_env} is not set`,
        });
      }
    }
  }
  const adminToken = resolveAdminToken(cfg, opts, problems);
  if (problems.length > 0) throw new ConfigProblemsError(problems);
  return { listenerTls, clusterTls, jwks, adminToken, storeFiles };
}

/** admin.token, or the first line of admin.token_file, or the variable named by token_env. */
function resolveAdminToken(
  cfg: FerryConfig,
  opts: MaterialOptions,
  problems: ConfigProblem[],
): string | undefined {
  const a = cfg.admin;
  if (!a) return undefined;
  let token: string | undefined = a.token;
  if (a.token_file !== undefined) {
    try {
      token = opts.readTextFile(a.token_file).split(/\r?\n/)[0]!.trim();
    } catch (err) {
      problems.push({
        path: "admin.token_file",
        value: a.token_file,
        message: `cannot read: ${err}`,
      });
      return undefined;
    }
  } else if (a.token_env !== undefined) {
    token = (opts.env ?? ((n) => Deno.env.get(n)))(a.token_env)?.trim();
  }
  if (token === undefined) {
    if (a.token_env !== undefined) {
      problems.push({
        path: "admin.token_env",
        value: a.token_env,
        message: "variable is not set",
      });
    }
    return undefined;
  }
  if (token.length < 16) {
    problems.push({
      path: a.token_file !== undefined
        ? "admin.token_file"
        : a.token_env !== undefined
        ? "admin.token_env"
        : "admin.token",
      value: "<redacted>",
      message: "an admin token must be at least 16 characters",
    });
    return undefined;
  }
  return token;
}
