/**
 * Access log: one line per request (JSON, combined or a template), written off the request path. Lines are queued and
 * flushed in batches by one async writer; when the sink cannot keep up and the queue passes its
 * bound, lines are dropped and counted rather than blocking requests or growing memory.
 */
import type { RequestContext } from "../pipeline/types.ts";
import {
  COMBINED_TEMPLATE,
  parseLogTemplate,
  renderLogTemplate,
  type TemplatePart,
} from "./log_template.ts";

export type Sink = (bytes: Uint8Array) => Promise<void>;

async function writeAll(w: { write(p: Uint8Array): Promise<number> }, bytes: Uint8Array) {
  let off = 0;
  while (off < bytes.length) off += await w.write(bytes.subarray(off));
}

export function openSink(path: string): { sink: Sink; close(): void } {
  if (path === "stdout") return { sink: (b) => writeAll(Deno.stdout, b), close() {} };
  if (path === "stderr") return { sink: (b) => writeAll(Deno.stderr, b), close() {} };
  const file = Deno.openSync(path, { append: true, create: true });
  return {
    sink: (b) => writeAll(file, b),
    close: () => {
      try {
        file.close();
      } catch { /* already closed */ }
    },
  };
}

export class LineWriter {
  #queue: string[] = [];
  #queuedBytes = 0;
  #writing = false;
  #dropped = 0;
  readonly #encoder = new TextEncoder();

  constructor(readonly sink: Sink, readonly maxQueuedBytes = 4 * 1024 * 1024) {}

  /** Lines dropped because the sink was slower than traffic. */
  get dropped(): number {
    return this.#dropped;
  }

  write(line: string): void {
    if (this.#queuedBytes + line.length > this.maxQueuedBytes) {
      this.#dropped++;
      return;
    }
    this.#queue.push(line);
    this.#queuedBytes += line.length + 1;
    if (!this.#writing) {
      this.#writing = true;
      // After the current request's work: batch whatever arrives in the meantime.
      setTimeout(() => this.#drain(), 0);
    }
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue;
        this.#queue = [];
        this.#queuedBytes = 0;
        await this.sink(this.#encoder.encode(batch.join("\n") + "\n"));
      }
    } catch {
      // A broken sink must never take requests down; what was queued is counted as dropped.
      this.#dropped += this.#queue.length;
      this.#queue = [];
      this.#queuedBytes = 0;
    } finally {
      this.#writing = false;
    }
  }

  /** Resolves once everything queued so far is written (for shutdown and tests). */
  async flush(): Promise<void> {
    while (this.#writing || this.#queue.length > 0) {
      if (!this.#writing) {
        this.#writing = true;
        await this.#drain();
      } else await new Promise((r) => setTimeout(r, 5));
    }
  }
}

export interface AccessLogEntry {
  readonly req: Request;
  /** The method as sent (Request.method stands in with GET for CONNECT, TRACE and the like). */
  readonly method?: string;
  readonly ctx: RequestContext | undefined;
  readonly requestId: string;
  readonly peerIp: string;
  readonly listener: string;
  readonly status: number;
  /** Flag of a proxy-made response, "-" for an upstream's. */
  readonly flag: string;
  readonly responseHeaders: Headers;
  readonly startedAt: number;
  readonly endedAt: number;
}

/** What the access log reads of the config's validated `access_log` section. */
export interface AccessLogConfig {
  /** "stdout", "stderr" or a file path. */
  readonly path: string;
  /** "json", "combined" or a `$field` template. */
  readonly format: string;
  /** Share of requests logged, 0..1. */
  readonly sample: number;
  /** Fields written in the JSON format; all when not set. */
  readonly fields?: readonly string[] | undefined;
}

/** Builds and writes log lines for one snapshot's access_log config. */
export class AccessLog {
  readonly #fields: ReadonlySet<string> | undefined;
  /** Undefined for the JSON format. */
  readonly #template: readonly TemplatePart[] | undefined;
  constructor(readonly config: AccessLogConfig, readonly writer: LineWriter) {
    this.#fields = config.fields ? new Set(config.fields) : undefined;
    if (config.format !== "json") {
      const parsed = parseLogTemplate(
        config.format === "combined" ? COMBINED_TEMPLATE : config.format,
      );
      // The schema has already refused a bad template; this cannot fail for a loaded config.
      if (!parsed.ok) throw new Error(parsed.error);
      this.#template = parsed.parts;
    }
  }

  /** Proxy-made errors are always logged; other requests by the sampling rate. */
  wants(flag: string): boolean {
    return flag !== "-" || this.config.sample >= 1 || Math.random() < this.config.sample;
  }

  write(e: AccessLogEntry): void {
    const ctx = e.ctx;
    const outcome = ctx?.outcome;
    const url = ctx ? undefined : safeUrl(e.req.url);
    // The outcome's flags may repeat the response's (a body that failed before its first byte
    // is both the 502's flag and the body's failure): each is written once.
    const extra = outcome?.flags;
    const flags = !extra || extra === e.flag
      ? e.flag
      : [e.flag, extra].filter((f) => f && f !== "-").join(",") || "-";
    const record: Record<string, unknown> = {
      time: new Date().toISOString(),
      request_id: e.requestId,
      client: ctx?.clientIp ?? e.peerIp,
      method: e.method ?? e.req.method,
      authority: ctx?.authority ?? url?.host ?? null,
      path: ctx ? ctx.path + ctx.search : url ? url.pathname + url.search : null,
      // Deno.serve does not say the HTTP version; HTTP/2 requests carry no Host header there.
      protocol: e.req.headers.has("host") ? "HTTP/1.1" : "HTTP/2.0",
      status: e.status,
      bytes_in: numberOrNull(e.req.headers.get("content-length")),
      bytes_out: numberOrNull(e.responseHeaders.get("content-length")),
      duration_ms: round(e.endedAt - e.startedAt),
      upstream_ms: outcome?.upstreamMs === undefined ? null : round(outcome.upstreamMs),
      route: outcome?.route ?? null,
      cluster: outcome?.cluster ?? null,
      endpoint: outcome?.endpoint ?? null,
      attempts: outcome?.attempts ?? 0,
      flags,
      listener: e.listener,
      user_agent: e.req.headers.get("user-agent"),
      referer: e.req.headers.get("referer"),
      // The client certificate's identity (downstream mTLS), null without one.
      identity: ctx?.identity?.id ?? null,
    };
    this.writeRecord(record);
  }

  /** Writes a prepared record (the gRPC listener builds its own, with `grpc_status`). */
  writeRecord(record: Record<string, unknown>): void {
    if (this.#template) {
      this.writer.write(renderLogTemplate(this.#template, record));
      return;
    }
    if (this.#fields) {
      for (const k of Object.keys(record)) if (!this.#fields.has(k)) delete record[k];
    }
    this.writer.write(JSON.stringify(record));
  }
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}

function numberOrNull(v: string | null): number | null {
  return v === null ? null : Number(v);
}

function safeUrl(u: string): URL | undefined {
  try {
    return new URL(u);
  } catch {
    return undefined;
  }
}
