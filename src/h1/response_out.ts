/**
 * What Ferry's HTTP/1.1 server (src/h1/server.ts) writes of a Response: its header lines as the
 * Response holds them (in order, repeats kept, as Deno.serve writes them; `Headers` iteration
 * would sort them and join repeats with ", ") and its body, as bytes when the Response holds them
 * whole (a string or bytes it was made from: no stream is built) or as its stream.
 *
 * Both come from Deno 2.9.6 internals, found by their symbols' descriptions on a sample Response
 * at load time (`response` -> the inner response: `headerList`, `body.streamOrStatic`), the way
 * Deno.serve reads them. Where the shape is not there (another Deno), the public API is used:
 * `Headers.forEach` (sorted) and `Response.body`.
 */

export interface ResponseOut {
  /** Header lines, names as set (case may vary), values as Latin-1 strings. */
  readonly headers: readonly (readonly [string, string])[];
  /** null: no body. */
  readonly body: Uint8Array | ReadableStream<Uint8Array> | null;
}

import { downstreamTicket } from "../pipeline/downstream.ts";

interface InnerBody {
  streamOrStatic: ReadableStream<Uint8Array> | { body: Uint8Array | string; consumed: boolean };
}
interface InnerResponse {
  headerList: [string, string][];
  body: InnerBody | null;
}

const responseSymbol = findResponseSymbol();

function findResponseSymbol(): symbol | undefined {
  const sample = new Response("x", { headers: { "x-a": "1" } });
  void sample.headers;
  const sym = Object.getOwnPropertySymbols(sample).find((s) => s.description === "response");
  if (!sym) return undefined;
  const inner = (sample as unknown as Record<symbol, Partial<InnerResponse> | undefined>)[sym];
  const body = inner?.body?.streamOrStatic as { body?: unknown; consumed?: unknown } | undefined;
  const ok = Array.isArray(inner?.headerList) && inner.headerList.length === 2 &&
    body !== undefined && body.body === "x" && body.consumed === false;
  return ok ? sym : undefined;
}

/** Whether the internals are in use (for tests and the docs' measurements). */
export const innerResponses = responseSymbol !== undefined;

const encoder = new TextEncoder();

/**
 * `new Response(body, init)` for an answer to `req`. When Ferry's own HTTP/1.1 server serves `req`
 * (its ticket carries the raw URL), the header lines are appended after construction instead:
 * given to the constructor with a whole body, they also make Deno.serve's native header map (an
 * op into Rust and a finalizer registration, then an op to drop it when this server reads the
 * lines), which only Deno.serve could use. The same Response either way: the lines are checked by
 * the same Headers rules, in the same order, with the same guard.
 */
export function responseFor(
  req: Request,
  body: BodyInit | null,
  init: { status: number; statusText: string; headers: [string, string][] },
): Response {
  if (downstreamTicket(req)?.url === undefined) return new Response(body, init);
  const res = new Response(body, { status: init.status, statusText: init.statusText });
  const headers = res.headers;
  for (const [name, value] of init.headers) headers.append(name, value);
  return res;
}

/** The lines and the body of `res`; the body is taken (the Response's body is used after this). */
export function responseOut(res: Response): ResponseOut {
  // Reading headers first turns a lazily kept string body and its content-type into real ones.
  const headers = res.headers;
  const inner = responseSymbol
    ? (res as unknown as Record<symbol, InnerResponse | undefined>)[responseSymbol]
    : undefined;
  if (!inner || !Array.isArray(inner.headerList)) {
    const lines: [string, string][] = [];
    headers.forEach((value, name) => lines.push([name, value]));
    return { headers: lines, body: res.body };
  }
  const body = inner.body;
  if (body === null) return { headers: inner.headerList, body: null };
  const source = body.streamOrStatic;
  if (!(source instanceof ReadableStream) && source && !source.consumed) {
    source.consumed = true;
    const bytes = typeof source.body === "string" ? encoder.encode(source.body) : source.body;
    return { headers: inner.headerList, body: bytes };
  }
  return { headers: inner.headerList, body: res.body };
}
