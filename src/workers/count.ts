/**
 * How many workers serve: `server.workers`; `auto`, the default, is the CPUs this process may use.
 * Every cap an operator sets holds for the process (src/policy/shared_memory.ts), and on a 2-core
 * machine with a free core two workers served 1.49x the requests/s of one at the same CPU per
 * request (docs/PERFORMANCE.md, "Workers"); `workers: 1` keeps the single-isolate shape.
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
  const wanted = setting === undefined || setting === "auto" ? Math.max(1, cpus || 1) : setting;
  // TLS listeners accepted by node:tls (every TLS listener behind the guard, and every gRPC one:
  // SNI, rotation, client certificates) cannot share a port with SO_REUSEPORT.
  const nodeTls = nodeTlsListeners(snapshot);
  if (nodeTls.length > 0 && wanted > 1) {
    const names = nodeTls.join(", ");
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
 * The listeners whose TLS node:tls accepts (every TLS listener behind the guard, and every TLS
 * gRPC one: SNI, rotation, client certificates): they cannot share a port between workers.
 */
export function nodeTlsListeners(snapshot: Snapshot): string[] {
  const guarded = snapshot.config.server.connection_guard;
  return [...snapshot.listeners.values()]
    .filter((l) => l.tls !== undefined && (guarded || l.protocol === "grpc"))
    .map((l) => l.name);
}

/**
 * Whether `reusePort` may be used here: Deno 2.9.6 allows it only with --unstable-net, and
 * without the flag a `reusePort` listen ends the process instead of throwing. The flag's other
 * APIs (Deno.listenDatagram) are present exactly when it is given.
 */
export function reusePortAvailable(): boolean {
  return typeof (Deno as { listenDatagram?: unknown }).listenDatagram === "function";
}
