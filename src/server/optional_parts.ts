/**
 * The parts of Ferry a config may not use, and which of them it does: each is imported (once per
 * isolate) while a config that needs it is built, so a plain HTTP config never pays for node:tls,
 * the gRPC listener, jose or the Redis client, and a reload that starts using one loads it then.
 * Each part's `OptionalModule` lives beside the code that uses it, but the gRPC listener's is here:
 * ferry.ts starts it, and in ferry.ts it would close a cycle (ferry.ts imports the admin API, which
 * reads this module).
 */
import type { FerryConfig } from "../config/schema.ts";
import { OptionalModule } from "../pipeline/optional_module.ts";
import { nodeTlsPart } from "../upstream/upstream_tls.ts";
import { redisPart } from "../policy/middleware.ts";
import { jwtPart } from "./registry.ts";

/**
 * The gRPC listener (Ferry's HTTP/2 server side and the gRPC call), for `protocol: grpc`
 * listeners; ferry.ts starts it.
 */
export const grpcListenerPart = new OptionalModule("grpc", () => import("../grpc/listener.ts"));

interface OptionalPart {
  readonly module: OptionalModule<unknown>;
  /** Whether `cfg` uses the part. */
  readonly neededBy: (cfg: FerryConfig) => boolean;
}

const PARTS: readonly OptionalPart[] = [
  {
    // TLS listeners (HTTP through the guard, and gRPC) accept with node:tls; upstream clusters
    // whose server name or identity is checked connect with it (upstream_tls.ts).
    module: nodeTlsPart,
    neededBy: (cfg) =>
      cfg.listeners.some((l) => l.tls !== undefined) ||
      cfg.clusters.some((c) =>
        c.tls?.server_name !== undefined || c.tls?.expected_identities !== undefined
      ),
  },
  { module: grpcListenerPart, neededBy: (cfg) => cfg.listeners.some((l) => l.protocol === "grpc") },
  { module: jwtPart, neededBy: (cfg) => cfg.jwt_providers.length > 0 },
  { module: redisPart, neededBy: (cfg) => cfg.rate_limits.some((r) => r.redis !== undefined) },
];

/** Imports what `cfg` uses and is not loaded yet; resolves to the names it loaded now. */
export async function loadOptionalParts(cfg: FerryConfig): Promise<string[]> {
  const now = PARTS.filter((p) => !p.module.loaded && p.neededBy(cfg));
  await Promise.all(now.map((p) => p.module.load()));
  return now.map((p) => p.module.name);
}

/** Every optional part, loaded or not (tests and tools that build configs synchronously). */
export async function loadAllOptionalParts(): Promise<void> {
  await Promise.all(PARTS.map((p) => p.module.load()));
}

/** The names of the parts this isolate has loaded (the admin API's /config shows them). */
export function loadedOptionalParts(): string[] {
  return PARTS.filter((p) => p.module.loaded).map((p) => p.module.name);
}
