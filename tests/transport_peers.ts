/**
 * Peers for the transport robustness tests: a raw TCP upstream that writes exactly the bytes a
 * test gives it, a Ferry subprocess with an admin listener, and readers for the counters that
 * must not move (breaker, outlier detection, `ferry_internal_errors_total`).
 */
import assert from "node:assert/strict";
import { metricValue, spawnFerry, type Started, tempConfig } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();

export interface RawUpstream {
  readonly url: string;
  /** Request heads received, in order (everything up to the blank line). */
  readonly heads: string[];
  /** Every byte received, per connection, as text. */
  readonly received: string[];
  close(): void;
}

/**
 * A TCP upstream that answers each request head with `reply(head)`: bytes written as they are,
 * then the connection is closed (so no answer is ever read from a pooled connection by mistake).
 */
export function rawUpstream(reply: (head: string) => string): RawUpstream {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const heads: string[] = [];
  const received: string[] = [];
  const conns = new Set<Deno.Conn>();
  (async () => {
    for await (const conn of listener) {
      conns.add(conn);
      (async () => {
        const index = received.push("") - 1;
        const buf = new Uint8Array(64 * 1024);
        try {
          while (!received[index]!.includes("\r\n\r\n")) {
            const n = await conn.read(buf);
            if (n === null) return;
            received[index] += dec.decode(buf.subarray(0, n));
          }
          const head = received[index]!.slice(0, received[index]!.indexOf("\r\n\r\n"));
          heads.push(head);
          await conn.write(enc.encode(reply(head)));
          // Give the proxy a moment to read what it was sent, then close.
          await new Promise((r) => setTimeout(r, 50));
        } catch {
          /* the proxy went away */
        } finally {
          conns.delete(conn);
          try {
            conn.close();
          } catch { /* closed */ }
        }
      })();
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    heads,
    received,
    close() {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
    },
  };
}

/** Ferry as a user runs it (main.ts in a subprocess), with an admin listener. */
export interface FerryProcess {
  readonly started: Started;
  readonly url: string;
  readonly port: number;
  readonly admin: string;
  /** True while the process has not exited. */
  alive(): boolean;
  stop(): Promise<void>;
}

export async function startFerryProcess(yaml: string, listeners = 1): Promise<FerryProcess> {
  const file = await tempConfig(yaml);
  const started = await spawnFerry(["--config", file], {}, listeners);
  let exited = false;
  const status = started.child.status.then((s) => {
    exited = true;
    return s;
  });
  const url = [...started.listeners.values()][0]!;
  return {
    started,
    url,
    port: Number(new URL(url).port),
    admin: started.admin!,
    alive: () => !exited,
    async stop() {
      if (!exited) {
        try {
          started.child.kill("SIGKILL");
        } catch { /* gone */ }
      }
      await status;
      await Deno.remove(file.replace(/\/ferry\.yaml$/, ""), { recursive: true }).catch(() => {});
    },
  };
}

/** What must not change when clients misbehave: per endpoint breaker and outlier state. */
export interface EndpointMarks {
  readonly origin: string;
  readonly breakerState: string | null;
  readonly timesOpened: number;
  readonly ejections: number;
  readonly recentFailures: number;
}

export async function endpointMarks(admin: string, cluster: string): Promise<EndpointMarks[]> {
  const view = await (await fetch(`${admin}/clusters`)).json();
  const c = view.clusters.find((x: { name: string }) => x.name === cluster);
  assert.ok(c, `cluster ${cluster} in /clusters`);
  return c.endpoints.map((e: Record<string, unknown>) => {
    const b = e.breaker as Record<string, unknown> | null;
    return {
      origin: e.origin as string,
      breakerState: b ? b.state as string : null,
      timesOpened: b ? b.times_opened as number : 0,
      ejections: e.ejections as number,
      recentFailures: e.recent_failures as number,
    };
  });
}

/** `ferry_internal_errors_total` summed over kinds: any value above 0 is a bug. */
export async function internalErrors(admin: string): Promise<number> {
  const text = await (await fetch(`${admin}/metrics`)).text();
  const v = metricValue(text, "ferry_internal_errors_total");
  assert.notEqual(v, undefined, "ferry_internal_errors_total is exported");
  return v!;
}

/** Asserts the process lives and never reached its last line of defence. */
export async function assertUnharmed(f: FerryProcess, context: string): Promise<void> {
  assert.ok(f.alive(), `Ferry exited (${context}):\n${f.started.logs.slice(-20).join("\n")}`);
  const n = await internalErrors(f.admin);
  assert.equal(
    n,
    0,
    `${context}: ${n} error(s) escaped every handler:\n${
      f.started.logs.filter((l) => l.includes("escaped every handler")).join("\n")
    }`,
  );
}

/**
 * Sends raw bytes and reads until the peer closes or `ms` pass; `closeAfter` closes our side
 * right after writing (an abort).
 */
export async function rawExchange(
  port: number,
  bytes: string | Uint8Array,
  opts: { ms?: number; closeAfter?: boolean } = {},
): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let out = "";
  try {
    await conn.write(typeof bytes === "string" ? enc.encode(bytes) : bytes);
    if (opts.closeAfter) return "";
    const buf = new Uint8Array(64 * 1024);
    const timer = setTimeout(() => {
      try {
        conn.close();
      } catch { /* closed */ }
    }, opts.ms ?? 3_000);
    try {
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        out += dec.decode(buf.subarray(0, n));
        if (complete(out)) break;
      }
    } catch { /* closed by the timer or the peer */ }
    clearTimeout(timer);
    return out;
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

/** One whole response with a Content-Length body (or a final chunk) has arrived. */
function complete(text: string): boolean {
  const end = text.indexOf("\r\n\r\n");
  if (end < 0) return false;
  const cl = /\r\ncontent-length: *(\d+)/i.exec(text.slice(0, end));
  if (cl) return text.length >= end + 4 + Number(cl[1]);
  return /\r\n0\r\n\r\n$/.test(text);
}

/** Status code of a raw HTTP/1.1 response text (0 when none arrived). */
export function statusOf(raw: string): number {
  const m = /^HTTP\/1\.1 (\d{3})/.exec(raw);
  return m ? Number(m[1]) : 0;
}

/** Headers a client sends so that Ferry uses fetch (it would add these itself otherwise). */
export const FETCH_HEADERS =
  "Accept: */*\r\nAccept-Language: en\r\nUser-Agent: test\r\nAccept-Encoding: identity\r\n";
/** Headers that make Ferry use the byte-exact node:http transport. */
export const NODE_HEADERS = "Accept-Encoding: gzip\r\n";
export const TRANSPORTS = [
  ["fetch", FETCH_HEADERS],
  ["node:http", NODE_HEADERS],
] as const;
