/**
 * Certificate rotation without a restart: the TLS files the config names (listener certificates,
 * keys and client CAs; cluster CAs, client certificates and keys) are watched, and a change
 * reloads the config. The reload reads and checks every pair again (src/server/tls_material.ts):
 * a good one is swapped into the running listeners for new handshakes (open connections keep
 * theirs) and into rebuilt cluster pools; a bad one fails the reload, which is logged with the
 * file and line of the config entry, and the material in use is kept.
 *
 * Deno.watchFs sees in-place writes and renames into the folder (how cert-manager, Vault agent
 * and `mv` rotate). Some mounts (network file systems, some container volumes) send no events,
 * so the files' metadata is also compared every `pollMs`.
 */
import type { FerryConfig } from "../config/schema.ts";

/** Every TLS file the config names, as written (relative to the config file or absolute). */
export function tlsFilesOf(cfg: FerryConfig): string[] {
  const files: string[] = [];
  for (const l of cfg.listeners) {
    if (!l.tls) continue;
    files.push(l.tls.cert, l.tls.key);
    for (const c of l.tls.certificates ?? []) files.push(c.cert, c.key);
    if (l.tls.client_ca !== undefined) files.push(l.tls.client_ca);
  }
  for (const c of cfg.clusters) {
    for (const f of [c.tls?.ca_file, c.tls?.cert_file, c.tls?.key_file]) {
      if (f !== undefined) files.push(f);
    }
  }
  return [...new Set(files)];
}

export interface TlsWatchOptions {
  /** Writes usually come in bursts (certificate, then key): one reload after they settle. */
  readonly debounceMs?: number;
  /** The metadata comparison for file systems that send no events. */
  readonly pollMs?: number;
}

/**
 * Calls `onChange` after any of `files()` (absolute paths, read again after every change and
 * poll, so a reload that names other files is followed) changed.
 */
export function watchTlsFiles(
  files: () => string[],
  onChange: () => void,
  opts: TlsWatchOptions = {},
): { close(): void } {
  const debounceMs = opts.debounceMs ?? 500;
  const pollMs = opts.pollMs ?? 30_000;
  let closed = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let watcher: Deno.FsWatcher | undefined;
  let watchedDirs = "";
  let signatures = new Map<string, string>();

  const signature = (file: string): string => {
    try {
      const s = Deno.statSync(file);
      return `${s.ino}:${s.size}:${s.mtime?.getTime()}`;
    } catch {
      return "missing";
    }
  };
  const snapshotSignatures = (): Map<string, string> =>
    new Map(files().map((f) => [f, signature(f)]));
  const changed = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      if (closed) return;
      signatures = snapshotSignatures();
      follow();
      onChange();
    }, debounceMs);
  };
  /** Watches the folders of the current files (again, when the set of folders changed). */
  const follow = (): void => {
    const dirs = [...new Set(files().map(dirOf))].sort();
    if (dirs.join("\n") === watchedDirs) return;
    watchedDirs = dirs.join("\n");
    try {
      watcher?.close();
    } catch { /* closed */ }
    watcher = undefined;
    if (dirs.length === 0) return;
    try {
      watcher = Deno.watchFs(dirs, { recursive: false });
    } catch {
      return; // a folder is missing: the poll still compares the files
    }
    const mine = watcher;
    (async () => {
      try {
        for await (const event of mine) {
          if (event.kind === "access") continue;
          const names = new Set(files().map(baseOf));
          // Kubernetes secret volumes swap a `..data` symlink: any entry may stand for a file.
          if (event.paths.some((p) => names.has(baseOf(p)) || baseOf(p).startsWith(".."))) {
            changed();
          }
        }
      } catch { /* closed */ }
    })();
  };
  signatures = snapshotSignatures();
  follow();
  const poll = setInterval(() => {
    const now = snapshotSignatures();
    const differs = now.size !== signatures.size ||
      [...now].some(([f, sig]) => signatures.get(f) !== sig);
    if (differs) changed();
    else follow();
  }, pollMs);
  return {
    close() {
      closed = true;
      clearTimeout(timer);
      clearInterval(poll);
      try {
        watcher?.close();
      } catch { /* closed */ }
    },
  };
}

function dirOf(file: string): string {
  const i = file.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : file.slice(0, i);
}

function baseOf(file: string): string {
  return file.slice(file.lastIndexOf("/") + 1);
}
