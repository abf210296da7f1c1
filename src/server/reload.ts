/**
 * Hot reload: load, validate and compile the config into a new snapshot, then let the running
 * Ferry apply it in one step. Any error keeps the old config serving; the outcome is logged,
 * counted and shown in the admin /config view.
 *
 * Reloads run one at a time. Triggers that arrive while one runs are coalesced into a single
 * follow-up reload, so a burst of file events or SIGHUPs costs at most two compiles.
 */
import { buildSnapshot, type ConfigSource } from "../config/source.ts";
import type { Logger } from "../observability/log.ts";
import type { Ferry } from "./ferry.ts";

export type ReloadTrigger = "file" | "signal" | "admin";

export interface ReloadOutcome {
  readonly ok: boolean;
  readonly trigger: ReloadTrigger;
  readonly at: string;
  /** The config version serving after this reload. */
  readonly version: number;
  /** Why the reload was refused (file:line:field lines), when `ok` is false. */
  readonly error?: string;
  /** Non-fatal findings of a successful reload. */
  readonly warnings?: string;
}

export interface ReloadStatus {
  readonly succeeded: number;
  readonly failed: number;
  readonly last: ReloadOutcome | undefined;
}

export class Reloader {
  readonly #ferry: Ferry;
  readonly #source: ConfigSource;
  readonly #log: Logger;
  #running: Promise<ReloadOutcome> | undefined;
  #queued: Promise<ReloadOutcome> | undefined;
  #succeeded = 0;
  #failed = 0;
  #last: ReloadOutcome | undefined;
  readonly #listeners: ((o: ReloadOutcome) => void)[] = [];

  constructor(ferry: Ferry, source: ConfigSource, log: Logger) {
    this.#ferry = ferry;
    this.#source = source;
    this.#log = log;
  }

  get status(): ReloadStatus {
    return { succeeded: this.#succeeded, failed: this.#failed, last: this.#last };
  }

  /** Called after every reload attempt (metrics hook). */
  onOutcome(listener: (o: ReloadOutcome) => void): void {
    this.#listeners.push(listener);
  }

  /** Reloads now, or once the running reload ends; concurrent callers share that follow-up. */
  reload(trigger: ReloadTrigger): Promise<ReloadOutcome> {
    if (!this.#running) {
      this.#running = this.#attempt(trigger).finally(() => (this.#running = undefined));
      return this.#running;
    }
    this.#queued ??= this.#running.then(() => {
      this.#queued = undefined;
      return this.reload(trigger);
    });
    return this.#queued;
  }

  async #attempt(trigger: ReloadTrigger): Promise<ReloadOutcome> {
    const current = this.#ferry.snapshot;
    const at = new Date().toISOString();
    let outcome: ReloadOutcome;
    if (this.#ferry.state !== "ready") {
      outcome = { ok: false, trigger, at, version: current.version, error: "shutting down" };
    } else {
      const built = await buildSnapshot(this.#source, {
        version: current.version + 1,
        log: this.#log,
        previous: current,
      });
      if (!built.ok) {
        outcome = { ok: false, trigger, at, version: current.version, error: built.message };
      } else {
        try {
          await this.#ferry.apply(built.snapshot);
          this.#log.setLevel(built.config.log.level);
          outcome = {
            ok: true,
            trigger,
            at,
            version: built.snapshot.version,
            ...(built.warnings ? { warnings: built.warnings } : {}),
          };
        } catch (err) {
          outcome = {
            ok: false,
            trigger,
            at,
            version: this.#ferry.snapshot.version,
            error: err instanceof Error ? err.message : String(err),
          };
        }
      }
    }
    this.#record(outcome);
    return outcome;
  }

  #record(o: ReloadOutcome): void {
    this.#last = o;
    const metrics = this.#ferry.snapshot.metrics;
    metrics.recordConfigReload(o.ok ? "success" : "failure");
    metrics.setConfigVersion(o.version);
    if (o.ok) {
      this.#succeeded++;
      this.#log.info("config reloaded", { trigger: o.trigger, config_version: o.version });
      if (o.warnings) this.#log.warn("config warnings", { warnings: o.warnings });
    } else {
      this.#failed++;
      this.#log.error("config reload failed; the previous config keeps serving", {
        trigger: o.trigger,
        config_version: o.version,
        error: o.error,
      });
    }
    for (const l of this.#listeners) {
      try {
        l(o);
      } catch { /* a hook must not break reloads */ }
    }
  }
}

/**
 * Watches the config file and reloads after writes settle (`debounceMs`). Watches the folder,
 * not the file, so editors and tools that replace the file by rename are seen too.
 */
export function watchConfigFile(
  file: string,
  onChange: () => void,
  debounceMs = 300,
): { close(): void } {
  const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/")) || "/" : ".";
  const base = file.slice(file.lastIndexOf("/") + 1);
  const watcher = Deno.watchFs(dir, { recursive: false });
  let timer: ReturnType<typeof setTimeout> | undefined;
  (async () => {
    try {
      for await (const event of watcher) {
        if (event.kind === "access") continue;
        if (!event.paths.some((p) => p.slice(p.lastIndexOf("/") + 1) === base)) continue;
        clearTimeout(timer);
        timer = setTimeout(onChange, debounceMs);
      }
    } catch { /* closed */ }
  })();
  return {
    close() {
      clearTimeout(timer);
      try {
        watcher.close();
      } catch { /* already closed */ }
    },
  };
}
