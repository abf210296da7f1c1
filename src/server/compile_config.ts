/**
 * A validated config -> a snapshot. Its own module, apart from loading and validating (build.ts):
 * worker isolates compile the config the main isolate validated, and so load neither the YAML
 * parser nor the schema (zod), a few MiB of heap each.
 */
import type { FerryConfig } from "../config/schema.ts";
import type { Logger } from "../observability/log.ts";
import { FerryMetrics } from "../observability/metrics.ts";
import { compileSnapshot, type Snapshot } from "./compile.ts";
import { readMaterials } from "../config/materials.ts";
import { prepareParts } from "./registry.ts";
import type { SharedMemory } from "../policy/shared_memory.ts";
import { checkTlsMaterials } from "./tls_material.ts";
import type { RouteExtensions } from "./extensions.ts";

export interface BuildOptions {
  readonly version: number;
  readonly log?: Logger;
  /** The running snapshot on a reload: unchanged parts (and its metrics) are taken over. */
  readonly previous?: Snapshot;
  /** The process's metrics, at start-up; a reload takes the previous snapshot's. */
  readonly metrics?: FerryMetrics;
  /** Reads an environment variable (admin.token_env); default Deno.env.get. */
  readonly env?: (name: string) => string | undefined;
  /** With `server.workers > 1`: where buckets and breakers keep process-wide state. */
  readonly sharedMemory?: SharedMemory;
  /** A worker's snapshot: clusters probe and resolve nothing, they follow the main isolate. */
  readonly followHealth?: boolean;
}

export interface CompileConfigOptions extends BuildOptions {
  /** Where the config came from, for /config and logs. */
  readonly source: string;
  /** /config's text for each duration (issues.ts `withDurationTexts`); none in workers. */
  readonly durations?: ReadonlyMap<string, string>;
  /** Reads a file named in the config, resolved against the config's folder. */
  readonly readTextFile: (path: string) => string;
  /** Extension middleware loaded for this config (src/server/extensions.ts). */
  readonly extensions?: RouteExtensions;
}

/**
 * A validated config -> a snapshot: the files it names read, its parts prepared (inert), its
 * routes compiled. Throws `ConfigProblemsError` for what the config names that cannot be used;
 * whatever this attempt built is closed then, what it took over from `previous` stays.
 */
export function compileConfig(cfg: FerryConfig, opts: CompileConfigOptions): Snapshot {
  const metrics = opts.metrics ?? opts.previous?.metrics ?? new FerryMetrics();
  const materials = readMaterials(cfg, { readTextFile: opts.readTextFile, env: opts.env });
  const tls = checkTlsMaterials(cfg, materials);
  const parts = prepareParts(cfg, {
    materials,
    env: opts.env,
    log: opts.log,
    metrics,
    previous: opts.previous?.parts,
    sharedMemory: opts.sharedMemory,
    followHealth: opts.followHealth,
  });
  try {
    return compileSnapshot(cfg, {
      version: opts.version,
      source: opts.source,
      ...(opts.durations ? { durations: opts.durations } : {}),
      parts,
      materials,
      tls,
      metrics,
      ...(opts.extensions ? { extensions: opts.extensions } : {}),
      ...(opts.log ? { log: opts.log } : {}),
    });
  } catch (err) {
    if (opts.previous) parts.discard(opts.previous.parts);
    else parts.close();
    throw err;
  }
}
