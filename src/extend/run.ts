/**
 * Ferry started from code (mod.ts): a config (file or data) plus middleware factories registered
 * by name, and a handle with the bound ports, reload and a graceful close. The same load →
 * extensions → compile → serve path as main.ts, without the CLI, signals or exit codes: the
 * program that imports Ferry owns those.
 */
import { type ConfigSource, configSource, dataSource } from "../config/source.ts";
import { buildSnapshot } from "../server/build.ts";
import { createLogger } from "../observability/log.ts";
import { FerryMetrics } from "../observability/metrics.ts";
import { type BoundAddress, Ferry, installLastLineOfDefence } from "../server/ferry.ts";
import { Reloader, type ReloadOutcome, watchConfigFile } from "../server/reload.ts";
import { VERSION } from "../version.ts";
import type { MiddlewareFactory } from "../server/extensions.ts";

/** What `start` runs: a config and the middleware factories it may name. */
export interface StartOptions {
  /**
   * A YAML file (module paths in it resolve against its folder; it can be reloaded), or the
   * config as data in the shape of the YAML (relative paths resolve against the working folder).
   */
  readonly config: string | Readonly<Record<string, unknown>>;
  /** Factories that config entries `middleware: [{ name: ... }]` refer to. */
  readonly middleware?: Readonly<Record<string, MiddlewareFactory>>;
  /** Reload when the config file changes; default `server.watch_config` (file configs only). */
  readonly watch?: boolean;
}

/** A running Ferry started by `start`. */
export interface FerryHandle {
  /** Bound addresses by listener name (port 0 in the config: the port the OS chose). */
  readonly listeners: Readonly<Record<string, BoundAddress>>;
  /** The admin listener's bound address, when the config has one. */
  readonly admin: BoundAddress | undefined;
  /** The config version serving now (1 at start, +1 per applied reload). */
  readonly version: number;
  /** Loads the config again (the file; or the same data, with its modules) and applies it. */
  reload(): Promise<ReloadOutcome>;
  /** Graceful stop: stop accepting, let requests finish, at most `deadlineMs` (default 30s). */
  close(deadlineMs?: number): Promise<{ clean: boolean }>;
}

/** The config was refused: `message` lists every problem as file:line:col: field: reason. */
export class ConfigError extends Error {
  /** `message`: `invalid config <source>` and one line per problem. */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/**
 * Loads and checks the config, imports the modules it names, calls every factory, binds every
 * listener and serves. Rejects with `ConfigError` for a bad config (nothing is bound then).
 */
export async function start(opts: StartOptions): Promise<FerryHandle> {
  const factories = new Map(Object.entries(opts.middleware ?? {}));
  for (const [name, f] of factories) {
    if (typeof f !== "function") {
      throw new TypeError(`middleware factory ${name} is not a function`);
    }
  }
  const source: ConfigSource = typeof opts.config === "string"
    ? { ...configSource(opts.config, {}), factories }
    : dataSource(opts.config, factories);
  const log = createLogger("info");
  const metrics = new FerryMetrics({ processMetrics: true });
  const built = await buildSnapshot(source, { version: 1, log, metrics });
  if (!built.ok) throw new ConfigError(built.message);
  if (built.warnings) log.warn("config warnings", { warnings: built.warnings });
  log.setLevel(built.config.log.level);
  // Errors that escape every handler are logged and counted instead of ending the process; the
  // embedding program gets its own handlers back on close.
  const uninstall = installLastLineOfDefence(log, metrics);
  let ferry: Ferry;
  try {
    ferry = Ferry.start(built.snapshot, log);
  } catch (err) {
    uninstall();
    built.snapshot.close();
    throw err;
  }
  const reloader = new Reloader(ferry, source, log);
  ferry.setAdminExtras({
    reload: () => reloader.reload("admin"),
    reloadStatus: () => reloader.status,
    submitConfig: (text, o) => reloader.submit(text, o),
  });
  const watch = opts.watch ?? built.config.server.watch_config;
  const watcher = source.file && watch
    ? watchConfigFile(source.file, () => void reloader.reload("file"))
    : undefined;
  log.info("ferry started", {
    version: VERSION,
    config: source.label,
    config_version: built.snapshot.version,
    embedded: true,
  });
  let closing: Promise<{ clean: boolean }> | undefined;
  return {
    get listeners() {
      return ferry.addresses().listeners;
    },
    get admin() {
      return ferry.addresses().admin;
    },
    get version() {
      return ferry.snapshot.version;
    },
    reload: () => reloader.reload("admin"),
    close(deadlineMs = 30_000) {
      closing ??= (async () => {
        watcher?.close();
        const result = await ferry.shutdown(deadlineMs);
        uninstall();
        return result;
      })();
      return closing;
    },
  };
}
