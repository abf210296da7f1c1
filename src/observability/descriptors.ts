/**
 * This process's file descriptors: the RLIMIT_NOFILE limit and how many are open. Deno 2.9.6 has
 * no API for either, and reading /proc/self/limits or /proc/self/fd needs --allow-all (measured:
 * "NotCapable: Requires all access", whatever the spelling of the path), so both are read
 * through libc with Deno.dlopen, which needs --allow-ffi (no unstable flag in 2.9.6). That is
 * why `deno task start` grants --allow-ffi (docs/connections.md, "Descriptors"). Without it, or
 * off Linux, both are unknown and the callers say so instead of guessing.
 */
import { libc } from "./libc.ts";

/** Linux's RLIMIT_NOFILE (x86_64 and aarch64 alike). */
const RLIMIT_NOFILE = 7;

export interface FdLimit {
  readonly soft: number;
  readonly hard: number;
}

export interface ProcessDescriptors {
  /** The current limit. */
  limit(): FdLimit;
  /** Raises the soft limit to the hard one (Deno already does this at start-up; kept in case). */
  raiseSoftLimit(): FdLimit;
  /** Descriptors open right now. */
  open(): number;
}

let cached: ProcessDescriptors | null | undefined;

/** The libc view of this process's descriptors, or undefined when it cannot be had. */
export function processDescriptors(): ProcessDescriptors | undefined {
  if (cached === undefined) cached = load();
  return cached ?? undefined;
}

function load(): ProcessDescriptors | null {
  const c = libc();
  if (!c) return null;
  const { getrlimit, setrlimit, opendir, readdir, closedir } = c;
  // struct rlimit { rlim_t rlim_cur, rlim_max } with a 64-bit rlim_t.
  const rlimit = new BigUint64Array(2);
  const rlimitBytes = new Uint8Array(rlimit.buffer);
  const fdDir = new TextEncoder().encode("/proc/self/fd\0");
  const asNumber = (v: bigint) => v > BigInt(Number.MAX_SAFE_INTEGER) ? Infinity : Number(v);
  const limit = (): FdLimit => {
    if (getrlimit(RLIMIT_NOFILE, rlimitBytes) !== 0) throw new Error("getrlimit failed");
    return { soft: asNumber(rlimit[0]!), hard: asNumber(rlimit[1]!) };
  };
  return {
    limit,
    raiseSoftLimit() {
      const now = limit();
      if (now.soft >= now.hard) return now;
      rlimit[0] = rlimit[1]!;
      setrlimit(RLIMIT_NOFILE, rlimitBytes);
      return limit();
    },
    open() {
      const dir = opendir(fdDir);
      if (dir === null) throw new Error("cannot open /proc/self/fd");
      let entries = 0;
      while (readdir(dir) !== null) entries++;
      closedir(dir);
      // Not counted: "." and "..", and the descriptor opendir itself held.
      return entries - 3;
    },
  };
}

/**
 * Descriptors one downstream connection may hold: through the connection guard three for HTTP/2
 * and WebSocket (the client's socket and both ends of the loopback hop; HTTP/1.1 is served without
 * the hop and holds one, but any connection may turn out HTTP/2); one otherwise.
 */
export function fdsPerConnection(protocol: "http" | "grpc", guarded: boolean): number {
  return protocol === "http" && guarded ? 3 : 1;
}

/**
 * Descriptors kept aside from the connection budget: the runtime's own (about 20 at start-up,
 * measured), listening sockets, upstream connections and log files.
 */
export const FD_HEADROOM = 128;

export interface FdBudget {
  /** Descriptors the configured caps can use at most, headroom included. */
  readonly needed: number;
  /** False when a listener has no cap (`max_connections: 0`). */
  readonly bounded: boolean;
}

/** What the connection caps need, for every listener at its cap at once. */
export function fdBudget(
  listeners: Iterable<{ readonly protocol: "http" | "grpc" }>,
  server: { readonly max_connections: number; readonly connection_guard: boolean },
  admin?: { readonly max_connections: number },
): FdBudget {
  let needed = FD_HEADROOM;
  let bounded = true;
  for (const l of listeners) {
    if (server.max_connections === 0) bounded = false;
    needed += server.max_connections * fdsPerConnection(l.protocol, server.connection_guard);
  }
  // The admin listener has its own cap and is always guarded (src/server/admin_listener.ts).
  if (admin) {
    if (admin.max_connections === 0) bounded = false;
    needed += admin.max_connections * fdsPerConnection("http", true);
  }
  return { needed, bounded };
}

/**
 * The start-up check: raises the soft limit to the hard one, then says (a warning line) when
 * the caps cannot fit in it, or when the limit cannot be read. Returns what it found, for logs.
 */
export function checkFdBudget(budget: FdBudget): { limit?: FdLimit; warning?: string } {
  const d = processDescriptors();
  if (!d) {
    return {
      warning: "cannot read the file descriptor limit (needs --allow-ffi on Linux, as " +
        "`deno task start` grants): max_connections is not checked against it",
    };
  }
  let limit: FdLimit;
  try {
    limit = d.raiseSoftLimit();
  } catch (err) {
    return { warning: `cannot read the file descriptor limit: ${err}` };
  }
  if (!budget.bounded) {
    return {
      limit,
      warning: "a connection cap (server.max_connections or admin.max_connections) is 0 (no " +
        `cap): connections are bounded only by the file descriptor limit ${limit.soft}`,
    };
  }
  if (budget.needed > limit.soft) {
    return {
      limit,
      warning: `max_connections cannot be reached: at the caps the listeners need about ` +
        `${budget.needed} file descriptors (see docs/connections.md, "Descriptors"), the ` +
        `limit is ${limit.soft}: raise it (ulimit -n, LimitNOFILE=) or lower ` +
        `server.max_connections; until then new connections wait once descriptors run out`,
    };
  }
  return { limit };
}
