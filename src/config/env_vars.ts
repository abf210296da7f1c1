/**
 * Reading the PROXY_* variables of the environment quick start (env.ts), without the schema: the
 * serving isolate decides with this whether the environment is the config source.
 */

/** A variable's value, trimmed; undefined when unset or blank. */
export function envValue(
  env: Record<string, string | undefined>,
  name: string,
): string | undefined {
  const v = env[name]?.trim();
  return v === undefined || v === "" ? undefined : v;
}

/** Whether the environment is the config: `PROXY_LISTEN_ADDR` or `PROXY_UPSTREAM_ADDRS` is set. */
export function usesEnvConfig(env: Record<string, string | undefined>): boolean {
  return envValue(env, "PROXY_LISTEN_ADDR") !== undefined ||
    envValue(env, "PROXY_UPSTREAM_ADDRS") !== undefined;
}
