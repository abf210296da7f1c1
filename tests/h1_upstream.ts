/**
 * A raw HTTP/1.1 upstream for codec tests: it reads each request (head and a Content-Length or
 * chunked body) off a real socket and lets the test answer with any bytes, valid or not.
 */

export interface RawRequest {
  readonly head: string;
  readonly body: Uint8Array;
  /** Which connection (0, 1, ...) and which request on it (0, 1, ...). */
  readonly conn: number;
  readonly index: number;
}

export interface RawUpstream {
  readonly url: string;
  readonly port: number;
  readonly requests: RawRequest[];
  /** Connections accepted so far. */
  connections(): number;
  /** Connections open right now, and the most ever open at once. */
  open(): number;
  maxOpen(): number;
  close(): Promise<void>;
}

/**
 * `answer` returns the bytes to write (or null to close without answering) and whether to close
 * the connection after them.
 */
export type Answer = (
  req: RawRequest,
  conn: Deno.Conn,
) =>
  | Promise<{ bytes: Uint8Array | string | null; close?: boolean }>
  | { bytes: Uint8Array | string | null; close?: boolean };

const enc = new TextEncoder();
const dec = new TextDecoder();

/** Latin-1: one byte per char. */
export function latin1Bytes(text: string): Uint8Array {
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

export function startRawUpstream(answer: Answer): RawUpstream {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const requests: RawRequest[] = [];
  const conns = new Set<Deno.Conn>();
  const tasks = new Set<Promise<void>>();
  let accepted = 0;
  let maxOpen = 0;

  async function serve(conn: Deno.Conn, id: number) {
    let buf = new Uint8Array(0);
    const more = async (): Promise<boolean> => {
      const chunk = new Uint8Array(64 * 1024);
      const n = await conn.read(chunk).catch(() => null);
      if (n === null) return false;
      const next = new Uint8Array(buf.length + n);
      next.set(buf);
      next.set(chunk.subarray(0, n), buf.length);
      buf = next;
      return true;
    };
    try {
      for (let index = 0;; index++) {
        let end: number;
        while ((end = dec.decode(buf).indexOf("\r\n\r\n")) === -1) if (!await more()) return;
        const head = dec.decode(buf.subarray(0, end));
        buf = buf.subarray(end + 4);
        let body = new Uint8Array(0);
        const cl = /\r\ncontent-length: *(\d+)/i.exec(head);
        if (cl) {
          const n = Number(cl[1]);
          while (buf.length < n) if (!await more()) return;
          body = buf.slice(0, n);
          buf = buf.subarray(n);
        } else if (/\r\ntransfer-encoding: *chunked/i.test(head)) {
          const parts: Uint8Array[] = [];
          for (;;) {
            let eol: number;
            while ((eol = dec.decode(buf).indexOf("\r\n")) === -1) if (!await more()) return;
            const size = parseInt(dec.decode(buf.subarray(0, eol)), 16);
            buf = buf.subarray(eol + 2);
            while (buf.length < size + 2) if (!await more()) return;
            if (size === 0) {
              buf = buf.subarray(2);
              break;
            }
            parts.push(buf.slice(0, size));
            buf = buf.subarray(size + 2);
          }
          body = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
          let o = 0;
          for (const p of parts) {
            body.set(p, o);
            o += p.length;
          }
        }
        const req = { head, body, conn: id, index };
        requests.push(req);
        const a = await answer(req, conn);
        if (a.bytes === null) return;
        const out = typeof a.bytes === "string" ? latin1Bytes(a.bytes) : a.bytes;
        let off = 0;
        while (off < out.length) off += await conn.write(out.subarray(off));
        if (a.close) return;
      }
    } catch {
      // the client went away
    } finally {
      conns.delete(conn);
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }

  const acceptLoop = (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      maxOpen = Math.max(maxOpen, conns.size);
      const t = serve(conn, accepted++);
      tasks.add(t);
      t.finally(() => tasks.delete(t));
    }
  })().catch(() => {});

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    connections: () => accepted,
    open: () => conns.size,
    maxOpen: () => maxOpen,
    async close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await acceptLoop;
      await Promise.all([...tasks]);
    },
  };
}

/** A complete Content-Length response. */
export function ok(body: string, extra = ""): string {
  return `HTTP/1.1 200 OK\r\ncontent-length: ${enc.encode(body).length}\r\n${extra}\r\n${body}`;
}
