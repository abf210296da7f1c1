/**
 * Hot reload: load, validate and compile the config into a new snapshot, then let the running
 * Ferry apply it in one step. Any error keeps the old config serving; the outcome is logged,
 * counted and shown in the admin /config view.
 *
 * Reloads run one at a time. Triggers that arrive while one runs are coalesced into a single
 * follow-up reload, so a burst of file events or SIGHUPs costs at most two compiles.
 */
import { type ConfigSource, textSource } from "../config/source.ts";
import { buildSnapshot } from "./build.ts";
import type { Logger } from "../observability/log.ts";
import type { Ferry } from "./ferry.ts";

/** `admin` is POST /reload; `api` is a config sent with PUT /config. */
/** `tls`: a certificate, key or CA file the config names changed (src/server/tls_watch.ts). */
export type ReloadTrigger = "file" | "signal" | "admin" | "api" | "tls";

/** The config serving now: its version and who applied it. */
export interface AppliedConfig {
  readonly version: number;
  readonly trigger: ReloadTrigger | "startup";
  /** PUT /config's x-ferry-author; the trigger's name for other reloads. */
  readonly author: string;
  readonly at: string;
}

/** How PUT /config and POST /config/validate hand a config to the reloader. */
export interface SubmitOptions {
  readonly author: string;
  /** Validate and compile only; nothing is swapped, counted or written. */
  readonly dryRun: boolean;
}

export interface SubmitOutcome extends ReloadOutcome {
  readonly dry_run: boolean;
  readonly author: string;
  /** Written back to the config file; false when kept in memory only. */
  readonly persisted: boolean;
  readonly persist_error?: string;
}

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
  readonly author?: string;
}

export interface ReloadStatus {
  readonly succeeded: number;
  readonly failed: number;
  readonly last: ReloadOutcome | undefined;
  readonly current: AppliedConfig;
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
  #current: AppliedConfig;
  /** The text last written back to the config file, so its own file event reloads nothing. */
  #written: string | undefined;
  readonly #listeners: ((o: ReloadOutcome) => void)[] = [];

  constructor(ferry: Ferry, source: ConfigSource, log: Logger) {
    this.#ferry = ferry;
    this.#source = source;
    this.#log = log;
    this.#current = {
      version: ferry.snapshot.version,
      trigger: "startup",
      author: "startup",
      at: ferry.snapshot.loadedAt.toISOString(),
    };
  }

  get status(): ReloadStatus {
    return {
      succeeded: this.#succeeded,
      failed: this.#failed,
      last: this.#last,
      current: this.#current,
    };
  }

  /**
   * PUT /config and POST /config/validate: the text goes through the same load, validate,
   * compile and swap as a file reload (same rollback), after any reload already running.
   */
  async submit(text: string, opts: SubmitOptions): Promise<SubmitOutcome> {
    while (this.#running) await this.#running.catch(() => {});
    const run = this.#submit(text, opts);
    // Reloads triggered meanwhile queue behind this one, as behind any reload.
    this.#running = run.finally(() => (this.#running = undefined));
    return await run;
  }

  async #submit(text: string, opts: SubmitOptions): Promise<SubmitOutcome> {
    const source = textSource(text, this.#source);
    const base = { dry_run: opts.dryRun, author: opts.author, persisted: false };
    if (!opts.dryRun) {
      const outcome = await this.#attempt("api", source, opts.author);
      // The applied config says whether it is written back (admin.persist_config).
      const persist = this.#ferry.snapshot.config.admin?.persist_config === "file";
      if (!outcome.ok || !persist) return { ...outcome, ...base };
      const error = await this.#persist(text);
      return {
        ...outcome,
        ...base,
        persisted: error === undefined,
        ...(error ? { persist_error: error } : {}),
      };
    }
    const current = this.#ferry.snapshot;
    const at = new Date().toISOString();
    const built = await buildSnapshot(source, {
      version: current.version + 1,
      log: this.#log,
      previous: current,
    });
    if (!built.ok) {
      return {
        ok: false,
        trigger: "api",
        at,
        version: current.version,
        error: built.message,
        ...base,
      };
    }
    // Compiled only to prove it would apply: close what it built, keep what it shares.
    built.snapshot.discard(current);
    return {
      ok: true,
      trigger: "api",
      at,
      version: current.version,
      ...(built.warnings ? { warnings: built.warnings } : {}),
      ...base,
    };
  }

  /** Atomic write + rename next to the config file, so a crash never leaves half a file. */
  async #persist(text: string): Promise<string | undefined> {
    const file = this.#source.file;
    if (file === undefined) return "no config file: the config came from the environment";
    const tmp = `${file}.${Deno.pid}.tmp`;
    try {
      this.#written = text;
      await Deno.writeTextFile(tmp, text);
      await Deno.rename(tmp, file);
      return undefined;
    } catch (err) {
      this.#written = undefined;
      await Deno.remove(tmp).catch(() => {});
      const message = err instanceof Error ? err.message : String(err);
      this.#log.error("config applied but not written back to the file", { file, error: message });
      return message;
    }
  }

  /** Called after every reload attempt (metrics hook). */
  onOutcome(listener: (o: ReloadOutcome) => void): void {
    this.#listeners.push(listener);
  }

  /** Reloads now, or once the running reload ends; concurrent callers share that follow-up. */
  reload(trigger: ReloadTrigger): Promise<ReloadOutcome> {
    if (!this.#running) {
      this.#running = this.#fromSource(trigger).finally(() => (this.#running = undefined));
      return this.#running;
    }
    this.#queued ??= this.#running.then(() => {
      this.#queued = undefined;
      return this.reload(trigger);
    });
    return this.#queued;
  }

  async #fromSource(trigger: ReloadTrigger): Promise<ReloadOutcome> {
    // The file event of our own write-back: the text serving already is the file's.
    if (trigger === "file" && this.#written !== undefined && this.#source.file) {
      const text = await Deno.readTextFile(this.#source.file).catch(() => undefined);
      if (text === this.#written) {
        return {
          ok: true,
          trigger,
          at: new Date().toISOString(),
          version: this.#ferry.snapshot.version,
        };
      }
    }
    this.#written = undefined;
    return await this.#attempt(trigger, this.#source, trigger);
  }

  async #attempt(
    trigger: ReloadTrigger,
    source: ConfigSource,
    author: string,
  ): Promise<ReloadOutcome> {
    const current = this.#ferry.snapshot;
    const at = new Date().toISOString();
    let outcome: ReloadOutcome;
    if (this.#ferry.state !== "ready") {
      outcome = { ok: false, trigger, at, version: current.version, error: "shutting down" };
    } else {
      const built = await buildSnapshot(source, {
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
            author,
            ...(built.warnings ? { warnings: built.warnings } : {}),
          };
          this.#current = { version: built.snapshot.version, trigger, author, at };
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
    metrics.recordConfigReload(o.ok ? "success" : "failure", o.trigger);
    metrics.setConfigVersion(this.#current.version, this.#current.author);
    if (o.ok) {
      this.#succeeded++;
      this.#log.info("config reloaded", {
        trigger: o.trigger,
        config_version: o.version,
        author: this.#current.author,
      });
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
