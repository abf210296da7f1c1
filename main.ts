/**
 * Ferry's entry point: CLI and environment -> load and validate config -> compile a snapshot ->
 * serve; SIGTERM/SIGINT -> graceful drain.
 */
import { parseArgs, USAGE, UsageError } from "./src/cli.ts";
import { compileSnapshot, type Snapshot, SnapshotCompileError } from "./src/config/compile.ts";
import { configFromEnv } from "./src/config/env.ts";
import {
  formatIssues,
  loadConfigFile,
  type LoadResult,
  resolveConfigPath,
} from "./src/config/load.ts";
import { createLogger } from "./src/observability/log.ts";
import { FerryMetrics } from "./src/observability/metrics.ts";
import { Ferry } from "./src/server/ferry.ts";
import { VERSION } from "./src/version.ts";
import { describeSnapshot } from "./src/config/summary.ts";

const EXIT_CONFIG = 1, EXIT_USAGE = 2, EXIT_START = 3;
const DEFAULT_CONFIG = "config/ferry.yaml";

async function main(): Promise<number> {
  let opts;
  try {
    opts = parseArgs(Deno.args);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    console.error(`ferry: ${err.message}\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  if (opts.help) {
    console.log(USAGE);
    return 0;
  }
  if (opts.version) {
    console.log(`ferry ${VERSION} (deno ${Deno.version.deno})`);
    return 0;
  }

  const env = Deno.env.toObject();
  let file = opts.config ?? env.PROXY_CONFIG;
  let loaded: LoadResult | undefined;
  if (file === undefined) loaded = configFromEnv(env);
  if (loaded === undefined) {
    file ??= DEFAULT_CONFIG;
    loaded = await loadConfigFile(file);
  }
  const source = file ?? "<env>";
  if (!loaded.ok) {
    console.error(`ferry: invalid config ${source}\n${formatIssues(loaded.errors)}`);
    return EXIT_CONFIG;
  }
  if (loaded.warnings.length > 0) {
    console.error(formatIssues(loaded.warnings).replace(/^/gm, "warning: "));
  }

  const log = createLogger(loaded.config.log.level);
  let snapshot: Snapshot;
  try {
    snapshot = compileSnapshot(loaded.config, {
      version: 1,
      source,
      readTextFile: (p) => Deno.readTextFileSync(file ? resolveConfigPath(file, p) : p),
      log,
      // One for the process: a reload passes the running snapshot's on, keeping counters.
      metrics: new FerryMetrics({ processMetrics: true }),
    });
  } catch (err) {
    if (!(err instanceof SnapshotCompileError)) throw err;
    console.error(`ferry: invalid config ${source}\n${err.message}`);
    return EXIT_CONFIG;
  }

  if (opts.check) {
    const summary = describeSnapshot(snapshot);
    console.log(summary.text);
    snapshot.close();
    return 0;
  }

  let ferry: Ferry;
  try {
    ferry = Ferry.start(snapshot, log);
  } catch (err) {
    log.error("could not start", { error: String(err) });
    snapshot.close();
    return EXIT_START;
  }
  log.info("ferry started", { version: VERSION, config: source, config_version: snapshot.version });
  for (const w of describeSnapshot(snapshot).warnings) log.warn(w);

  const stopped = Promise.withResolvers<number>();
  let stopping = false;
  const onSignal = (signal: Deno.Signal) => async () => {
    if (stopping) return;
    stopping = true;
    log.info("draining", { signal });
    const { clean } = await ferry.shutdown(30_000);
    log.info("stopped", { clean });
    stopped.resolve(0);
  };
  for (const s of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(s, onSignal(s));
  return await stopped.promise;
}

if (import.meta.main) Deno.exit(await main());
