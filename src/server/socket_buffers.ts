/**
 * Kernel socket buffer sizes (SO_SNDBUF / SO_RCVBUF) for the connection guard's loopback hop.
 * Deno 2.9.6 has no API for them and does not expose a TCP socket's descriptor, so they are set
 * through libc with Deno.dlopen (the --allow-ffi that `deno task start` already grants for the
 * descriptor limit, src/server/descriptors.ts): the listening socket of the inner Deno.serve is
 * found among this process's descriptors by its address, once per bind, and sockets it accepts
 * inherit its sizes (Linux copies them, and their lock against autotuning, to accepted sockets).
 *
 * Why: a client that stops reading fills every buffer between it and the upstream. On the hop
 * the kernel autotunes Deno.serve's send buffer up to `net.ipv4.tcp_wmem` max (4 MiB), for
 * nothing: on loopback a small buffer costs no throughput (measured, docs/connections.md,
 * "Clients that stop reading"). Without FFI, or off Linux/glibc, nothing is set and the hop
 * holds what the kernel gives it.
 */

const SOL_SOCKET = 1;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const SO_ACCEPTCONN = 30;
const AF_INET = 2;
/** Offset of d_name in glibc's struct dirent on 64-bit Linux. */
const DIRENT_NAME = 19;

interface Libc {
  setsockopt(fd: number, level: number, name: number, value: Uint8Array, len: number): number;
  getsockopt(fd: number, level: number, name: number, value: Uint8Array, len: Uint8Array): number;
  getsockname(fd: number, addr: Uint8Array, len: Uint8Array): number;
  opendir(path: Uint8Array): Deno.PointerValue;
  readdir(dir: Deno.PointerValue): Deno.PointerValue;
  closedir(dir: Deno.PointerValue): number;
}

let cached: Libc | null | undefined;

function libc(): Libc | undefined {
  if (cached === undefined) cached = load();
  return cached ?? undefined;
}

function load(): Libc | null {
  if (Deno.build.os !== "linux") return null;
  // Query first: calling dlopen without the permission would prompt on a terminal.
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
  try {
    return Deno.dlopen("libc.so.6", {
      setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
      getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
      getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
      opendir: { parameters: ["buffer"], result: "pointer" },
      readdir: { parameters: ["pointer"], result: "pointer" },
      closedir: { parameters: ["pointer"], result: "i32" },
    }).symbols as unknown as Libc;
  } catch {
    return null; // not glibc
  }
}

/** This process's open descriptors (from /proc/self/fd). */
function openDescriptors(c: Libc): number[] {
  const dir = c.opendir(new TextEncoder().encode("/proc/self/fd\0"));
  if (dir === null) return [];
  const fds: number[] = [];
  try {
    for (let entry = c.readdir(dir); entry !== null; entry = c.readdir(dir)) {
      const name = new Deno.UnsafePointerView(entry).getCString(DIRENT_NAME);
      if (/^\d+$/.test(name)) fds.push(Number(name));
    }
  } finally {
    c.closedir(dir);
  }
  return fds;
}

/**
 * Sets the send and receive buffer of every listening IPv4 socket of this process bound to
 * `127.0.0.1:port` (the kernel doubles each value). Returns how many sockets were set; 0 when
 * FFI is not available.
 */
export function setLoopbackListenerBuffers(port: number, bytes: number): number {
  let set = 0;
  forLoopbackSockets(port, (c, fd, listening) => {
    if (!listening) return; // an accepted connection: it has its size already
    const int = new Uint8Array(4);
    new DataView(int.buffer).setInt32(0, bytes, true);
    if (
      c.setsockopt(fd, SOL_SOCKET, SO_SNDBUF, int, 4) === 0 &&
      c.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, int, 4) === 0
    ) set++;
  });
  return set;
}

/** SO_SNDBUF of every socket of this process bound to `127.0.0.1:port` (for tests). */
export function loopbackSendBuffers(port: number): { listening: boolean; sendBuffer: number }[] {
  const out: { listening: boolean; sendBuffer: number }[] = [];
  forLoopbackSockets(port, (c, fd, listening) => {
    const int = new Uint8Array(4);
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, 4, true);
    if (c.getsockopt(fd, SOL_SOCKET, SO_SNDBUF, int, len) !== 0) return;
    out.push({ listening, sendBuffer: new DataView(int.buffer).getInt32(0, true) });
  });
  return out;
}

function forLoopbackSockets(
  port: number,
  each: (c: Libc, fd: number, listening: boolean) => void,
): void {
  const c = libc();
  if (!c) return;
  const addr = new Uint8Array(16);
  const view = new DataView(addr.buffer);
  const len = new Uint8Array(4);
  const lenView = new DataView(len.buffer);
  const int = new Uint8Array(4);
  for (const fd of openDescriptors(c)) {
    lenView.setUint32(0, addr.length, true);
    if (c.getsockname(fd, addr, len) !== 0) continue; // not a socket (or gone)
    if (view.getUint16(0, true) !== AF_INET || view.getUint16(2, false) !== port) continue;
    if (addr[4] !== 127 || addr[5] !== 0 || addr[6] !== 0 || addr[7] !== 1) continue;
    lenView.setUint32(0, 4, true);
    if (c.getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, int, len) !== 0) continue;
    each(c, fd, new DataView(int.buffer).getInt32(0, true) !== 0);
  }
}
