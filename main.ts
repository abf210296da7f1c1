/**
 * Ferry's entry point: CLI and environment -> load and validate config -> compile a snapshot ->
 * serve; SIGHUP, POST /reload or a config file change -> hot reload; SIGTERM/SIGINT -> graceful
 * drain.
 */
import { parseArgs, USAGE, UsageError } from "./src/cli.ts";
import { configSource, loadedOnce } from "./src/config/source.ts";
import { buildSnapshot } from "./src/server/build.ts";
import { Reloader, watchConfigFile } from "./src/server/reload.ts";
import { tlsFilesOf, watchTlsFiles } from "./src/server/tls_watch.ts";
import { resolveConfigPath } from "./src/config/files.ts";
import { createLogger } from "./src/observability/log.ts";
import { FerryMetrics } from "./src/observability/metrics.ts";
import { Ferry, installLastLineOfDefence } from "./src/server/ferry.ts";
import { VERSION } from "./src/version.ts";
import { describeSnapshot } from "./src/server/summary.ts";
import { checkFdBudget, FD_HEADROOM, fdBudget } from "./src/observability/descriptors.ts";
import { WorkerPool } from "./src/workers/supervisor.ts";
import { DEFAULT_ARENA_BYTES, SharedArena } from "./src/policy/shared_memory.ts";
import { shareReplayBound } from "./src/policy/retry.ts";
import { workerCount } from "./src/workers/count.ts";

const EXIT_CONFIG = 1, EXIT_USAGE = 2, EXIT_START = 3;

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

  const source = configSource(opts.config, Deno.env.toObject());
  const log = createLogger("info");
  // One metrics registry for the process: each reload hands it on, so counters survive.
  const metrics = new FerryMetrics({ processMetrics: true });
  installLastLineOfDefence(log, metrics);
  // One read and validation for start-up, whose snapshot may be built twice (workers below).
  const atStart = loadedOnce(source);
  const built = await buildSnapshot(atStart, { version: 1, log, metrics });
  if (!built.ok) {
    console.error(`ferry: ${built.message}`);
    return EXIT_CONFIG;
  }
  if (built.warnings) console.error(built.warnings.replace(/^/gm, "warning: "));
  log.setLevel(built.config.log.level);
  let snapshot = built.snapshot;

  if (opts.check) {
    const summary = describeSnapshot(snapshot);
    console.log(summary.text);
    snapshot.close();
    return 0;
  }

  const workers = workerCount(snapshot, navigator.hardwareConcurrency);
  if (!workers.ok) {
    console.error(`ferry: ${workers.message}`);
    snapshot.close();
    return EXIT_CONFIG;
  }
  if (workers.note) log.info(workers.note);

  // Before binding: raise the soft descriptor limit, then say whether the caps fit in it. The
  // connection caps are the process's whatever the workers (src/policy/shared_memory.ts); each
  // worker adds its own listening sockets, pools and runtime descriptors (one more headroom).
  const budget = fdBudget(
    snapshot.listeners.values(),
    snapshot.config.server,
    snapshot.config.admin,
  );
  const fds = checkFdBudget({
    ...budget,
    needed: budget.needed + FD_HEADROOM * (workers.count - 1),
  });
  if (fds.warning) log.warn(fds.warning);
  let pool: WorkerPool | undefined;
  // Debug: every response names the worker that served it (x-ferry-worker).
  const tagResponses = Deno.env.get("FERRY_WORKER_HEADER") === "1";
  if (workers.count > 1) {
    // Compiled again with the shared arena: buckets, breakers and caps count for the process.
    // This isolate is worker 0 (src/policy/shared_memory.ts).
    snapshot.close();
    const arena = new SharedArena(DEFAULT_ARENA_BYTES, { workers: workers.count, index: 0 });
    shareReplayBound(arena);
    const rebuilt = await buildSnapshot(atStart, { version: 1, log, metrics, sharedMemory: arena });
    if (!rebuilt.ok) {
      console.error(`ferry: ${rebuilt.message}`);
      return EXIT_CONFIG;
    }
    snapshot = rebuilt.snapshot;
    pool = new WorkerPool({
      count: workers.count,
      arena,
      file: source.file,
      log,
      metrics,
      tagResponses,
      ...(Deno.env.get("FERRY_TEST_HOOKS") === "1"
        ? { failReplacementStarts: Number(Deno.env.get("FERRY_TEST_FAIL_WORKER_STARTS") ?? 0) }
        : {}),
    });
  }

  // With workers, this isolate serves every listener too (SO_REUSEPORT), with the admin
  // listener, health checks and DNS discovery; the workers follow their verdicts.
  let ferry: Ferry;
  try {
    ferry = Ferry.start(
      snapshot,
      log,
      pool
        ? {
          reusePort: true,
          peers: pool,
          readMetric: pool.readMetric,
          ...(tagResponses ? { tag: "0" } : {}),
        }
        : {},
    );
  } catch (err) {
    log.error("could not start", { error: String(err) });
    snapshot.close();
    return EXIT_START;
  }
  if (pool) {
    try {
      await pool.start(snapshot, listenerPorts(ferry));
    } catch (err) {
      log.error("could not start", { error: String(err) });
      await ferry.shutdown(0);
      return EXIT_START;
    }
    pool.follow(() => ferry.snapshot);
    // The dashboard's list of proxy-made errors shows every worker's.
    pool.forwardErrorsTo(ferry.recentErrors);
  }
  log.info("ferry started", {
    version: VERSION,
    config: source.label,
    config_version: snapshot.version,
    workers: workers.count,
    ...(fds.limit ? { fd_limit: fds.limit.soft } : {}),
  });
  for (const w of describeSnapshot(snapshot).warnings) log.warn(w);

  // Hot reload: SIGHUP, POST /reload and PUT /config on the admin listener, and config file changes.
  const reloader = new Reloader(ferry, source, log);
  ferry.setAdminExtras({
    reload: () => reloader.reload("admin"),
    reloadStatus: () => reloader.status,
    submitConfig: (text, opts) => reloader.submit(text, opts),
    ...(pool ? { metrics: () => pool.scrape(), clusters: (own) => pool.clusters(own) } : {}),
    ...(pool && Deno.env.get("FERRY_TEST_HOOKS") === "1"
      ? { killWorker: (index: number) => pool.kill(index) }
      : {}),
  });
  const onHangup = () => void reloader.reload("signal");
  Deno.addSignalListener("SIGHUP", onHangup);
  const watcher = source.file && snapshot.config.server.watch_config
    ? watchConfigFile(source.file, () => void reloader.reload("file"))
    : undefined;
  // Certificate rotation: a changed TLS file reloads the config, which checks the new pair and
  // swaps it in for new handshakes, or keeps the old one (src/server/tls_watch.ts).
  const configFile = source.file;
  const tlsWatcher = watchTlsFiles(
    () =>
      tlsFilesOf(ferry.snapshot.config).map((p) =>
        configFile ? resolveConfigPath(configFile, p) : p
      ),
    () => void reloader.reload("tls"),
  );

  const stopped = Promise.withResolvers<number>();
  let stopping = false;
  const onSignal = (signal: Deno.Signal) => async () => {
    if (stopping) return;
    stopping = true;
    watcher?.close();
    tlsWatcher.close();
    Deno.removeSignalListener("SIGHUP", onHangup);
    const deadline = ferry.snapshot.config.server.drain_timeout;
    log.info("draining", { signal, deadline_ms: deadline });
    const { clean } = await ferry.shutdown(deadline);
    log.info("stopped", { clean });
    stopped.resolve(0);
  };
  for (const s of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(s, onSignal(s));
  return await stopped.promise;
}

/** The port each of `ferry`'s listeners is bound to: the workers bind the same (port 0 too). */
function listenerPorts(ferry: Ferry): Map<string, number> {
  return new Map(Object.entries(ferry.addresses().listeners).map(([name, a]) => [name, a.port]));
}

if (import.meta.main) Deno.exit(await main());
