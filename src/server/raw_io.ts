/**
 * Reads and writes on a Deno socket without `Deno.Conn`'s wrappers, for the connection guard's
 * byte pumps (four of these per proxied HTTP/1.1 request). `Deno.Conn.read` is an async function
 * around the runtime's `read` op that also records every pending read in a set; calling the op
 * directly on the socket's resource id skips that, and measured about 1.5 us less CPU per
 * proxied request (docs/connections.md, "The choice, by measurement").
 *
 * The op and the resource id are Deno internals (2.9.6: `Deno[Deno.internal].core` and the
 * `Deno.internal.rid` symbol on connections). Where either is missing (another Deno, or a
 * connection that is not a Deno resource, such as node:tls's) the public methods are used.
 */

/** Reads into `buf`; resolves to the byte count, 0 at end of stream. */
export type RawRead = (buf: Uint8Array) => Promise<number>;
/** Writes some of `bytes`; resolves to how many were taken. */
export type RawWrite = (bytes: Uint8Array) => Promise<number>;

interface CoreIo {
  read(rid: number, buf: Uint8Array): Promise<number>;
  write(rid: number, bytes: Uint8Array): Promise<number>;
}

const core = findCore();

function findCore(): CoreIo | undefined {
  const denoInternal = (Deno as unknown as { internal?: symbol }).internal;
  if (typeof denoInternal !== "symbol") return undefined;
  const internals = (Deno as unknown as Record<symbol, { core?: Partial<CoreIo> } | undefined>)[
    denoInternal
  ];
  const c = internals?.core;
  return typeof c?.read === "function" && typeof c.write === "function" ? c as CoreIo : undefined;
}

/** The runtime's resource id of a Deno connection, if it has one. */
function resourceId(conn: Deno.Conn): number | undefined {
  for (const s of Object.getOwnPropertySymbols(conn)) {
    if (s.description === "Deno.internal.rid") {
      const rid = (conn as unknown as Record<symbol, unknown>)[s];
      return typeof rid === "number" ? rid : undefined;
    }
  }
  return undefined;
}

/** Whether the direct ops are in use (for tests and the docs' measurements). */
export const directOps = core !== undefined;

export function rawReader(conn: Deno.Conn): RawRead {
  const rid = core && resourceId(conn);
  if (core && rid !== undefined) return (buf) => core.read(rid, buf);
  return async (buf) => (await conn.read(buf)) ?? 0;
}

export function rawWriter(conn: Deno.Conn): RawWrite {
  const rid = core && resourceId(conn);
  if (core && rid !== undefined) return (bytes) => core.write(rid, bytes);
  return (bytes) => conn.write(bytes);
}
