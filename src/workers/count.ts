/**
 * How many workers serve: `server.workers`, 1 by default; `auto` is the CPUs this process may use.
 * The default is one isolate because caps that guard against one client (max_connections, the
 * per-IP caps, cluster limits, retry budgets) are per worker, and because on the 2-core machine
 * where this was measured two workers gave no more requests/s than one (docs/PERFORMANCE.md).
 */
import type { Snapshot } from "../server/compile.ts";

export type WorkerCount =
  | { readonly ok: true; readonly count: number; readonly note?: string }
  | { readonly ok: false; readonly message: string };

export function workerCount(
  snapshot: Snapshot,
  cpus: number,
  reusePort: () => boolean = reusePortAvailable,
): WorkerCount {
  const setting = snapshot.config.server.workers;
  // An explicit count that cannot be served is a config error; `auto` falls back to one.
  const asked = typeof setting === "number" ? setting : undefined;
  const wanted = setting === "auto" ? Math.max(1, cpus || 1) : setting ?? 1;
  // TLS listeners accepted by node:tls (every TLS listener behind the guard, and every gRPC one:
  // SNI, rotation, client certificates) cannot share a port with SO_REUSEPORT.
  const guarded = snapshot.config.server.connection_guard;
  const nodeTls = [...snapshot.listeners.values()].filter((l) =>
    l.tls !== undefined && (guarded || l.protocol === "grpc")
  );
  if (nodeTls.length > 0 && wanted > 1) {
    const names = nodeTls.map((l) => l.name).join(", ");
    if (asked !== undefined && asked > 1) {
      return {
        ok: false,
        message: `server.workers: ${asked} cannot serve TLS listeners (${names}): ` +
          "their TLS (node:tls) cannot share a port between workers; set server.workers: 1",
      };
    }
    return {
      ok: true,
      count: 1,
      note: `one worker: TLS listeners (${names}) cannot share a port`,
    };
  }
  const count = wanted;
  if (count > 1 && !reusePort()) {
    const why = "sharing a port between workers needs Deno's --unstable-net flag";
    if (asked !== undefined) {
      return { ok: false, message: `server.workers: ${asked}: ${why}` };
    }
    return { ok: true, count: 1, note: `one worker: ${why}` };
  }
  return { ok: true, count };
}

/**
 * Whether `reusePort` may be used here: Deno 2.9.6 allows it only with --unstable-net, and
 * without the flag a `reusePort` listen ends the process instead of throwing. The flag's other
 * APIs (Deno.listenDatagram) are present exactly when it is given.
 */
export function reusePortAvailable(): boolean {
  return typeof (Deno as { listenDatagram?: unknown }).listenDatagram === "function";
}
