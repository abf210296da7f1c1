/**
 * The Request Ferry's HTTP/1.1 server (src/h1/server.ts) hands the handler, built the way
 * Deno.serve builds its own: around an inner request holding the parsed header list as it is
 * (no Headers object until someone reads `req.headers`), a URL made only when `req.url` is read,
 * and the connection's own AbortSignal as `req.signal`.
 *
 * The public constructor (`new Request(url, init)`) costs per request: the init dictionary's
 * webidl conversion, every header name and value checked again (the strict parser of
 * src/h1/parse.ts has already refused anything Headers would refuse, and lower-cased the names),
 * the URL parsed although the handler reads the raw target (ticket.url), and a dependent
 * AbortSignal following the one given. Measured in docs/PERFORMANCE.md ("Ferry's own HTTP/1.1
 * server, per request").
 *
 * The shape is Deno 2.9.6's (ext/fetch/23_request.js): the Request's symbol-keyed slots, found by
 * their descriptions on a sample Request at load time, and `new Request(brand)`, the constructor's
 * branch that makes an empty Request (what Deno's own `fromInnerRequest` does). Where the shape is
 * not there (another Deno), the public constructor is used: the same Request, at the old cost.
 */

/** What `new Request(url, init)` would give: the one place both ways are chosen between. */
export function buildRequest(
  method: string,
  url: string,
  headers: [string, string][],
  body: ReadableStream<Uint8Array> | null,
  signal: AbortSignal,
): Request {
  if (slots) return fromParts(slots, method, url, headers, body, signal);
  const init = { method, headers, body, signal, duplex: "half" } as RequestInit;
  try {
    return new Request(url, init);
  } catch {
    return new Request(INVALID_URL, init);
  }
}

/** Whether the internals are in use (for tests and the docs' measurements). */
export function innerRequests(): boolean {
  return slots !== undefined;
}

/**
 * A target or Host the URL parser does not take gets this URL (the handler refuses the raw URL
 * itself, from ticket.url): Request.url is only ever a URL the parser made.
 */
const INVALID_URL = "http://invalid.invalid/";

function checkedUrl(url: string): string {
  try {
    return new URL(url).href;
  } catch {
    return INVALID_URL;
  }
}

interface Slots {
  brand: symbol;
  inner: symbol;
  guard: symbol;
  signal: symbol;
  /** Deno's InnerBody class: a request body stream wrapped as the constructor wraps it. */
  InnerBody: new (stream: ReadableStream<Uint8Array>) => unknown;
}

function findSlots(): Slots | undefined {
  try {
    const sample = new Request("http://a/", {
      method: "POST",
      body: new ReadableStream(),
      signal: new AbortController().signal,
      duplex: "half",
    } as RequestInit);
    const byName = new Map<string, symbol>();
    for (const s of Object.getOwnPropertySymbols(sample)) byName.set(s.description ?? "", s);
    const brand = byName.get("[[webidl.brand]]");
    const inner = byName.get("request");
    const guard = byName.get("headers guard");
    const signal = byName.get("signalCache");
    const cache = byName.get("headers cache");
    if (!brand || !inner || !guard || !signal || !cache) return undefined;
    const record = sample as unknown as Record<symbol, unknown>;
    const innerSample = record[inner] as
      | { body?: { constructor?: unknown; streamOrStatic?: unknown }; headerList?: unknown }
      | undefined;
    const InnerBody = innerSample?.body?.constructor;
    if (
      typeof InnerBody !== "function" || !(innerSample!.body!.streamOrStatic instanceof
        ReadableStream) ||
      !Array.isArray(innerSample!.headerList)
    ) return undefined;
    const found: Slots = {
      brand,
      inner,
      guard,
      signal,
      InnerBody: InnerBody as Slots["InnerBody"],
    };
    // The real test: a Request built this way reads back as the public one would.
    const ctl = new AbortController();
    const probe = fromParts(
      found,
      "POST",
      "http://h/p?q",
      [["x-a", "1"]],
      new ReadableStream(),
      ctl.signal,
    );
    ctl.abort();
    const ok = probe.method === "POST" && probe.url === "http://h/p?q" &&
      probe.headers.get("x-a") === "1" && probe.body instanceof ReadableStream &&
      probe.signal === ctl.signal && probe.signal.aborted && probe instanceof Request &&
      new Request(probe).headers.get("x-a") === "1";
    return ok ? found : undefined;
  } catch {
    return undefined;
  }
}

function fromParts(
  s: Slots,
  method: string,
  url: string,
  headerList: [string, string][],
  stream: ReadableStream<Uint8Array> | null,
  signal: AbortSignal,
): Request {
  // new Request(brand): the constructor's early return, an empty branded Request.
  const req = new Request(s.brand as unknown as string);
  const record = req as unknown as Record<symbol, unknown>;
  record[s.inner] = new InnerRequest(method, url, headerList, stream && new s.InnerBody(stream));
  record[s.guard] = "request";
  record[s.signal] = signal;
  return req;
}

/**
 * The fields of Deno's newInnerRequest, with the URL parsed only when first read. A class (as
 * Deno.serve's own inner request is): its accessors are not made again for every request.
 */
class InnerRequest {
  headerListInner: [string, string][];
  redirectMode = "follow";
  redirectCount = 0;
  urlList: (() => string)[];
  urlListProcessed: string[] = [];
  clientRid = null;
  blobUrlEntry = null;
  constructor(
    public methodInner: string,
    url: string,
    headerList: [string, string][],
    public body: unknown,
  ) {
    this.headerListInner = headerList;
    this.urlList = [() => checkedUrl(url)];
  }
  get method(): string {
    return this.methodInner;
  }
  set method(m: string) {
    this.methodInner = m;
  }
  get headerList(): [string, string][] {
    return this.headerListInner;
  }
  set headerList(list: [string, string][]) {
    this.headerListInner = list;
  }
  url(): string {
    return this.urlListProcessed[0] ??= this.urlList[0]!();
  }
  currentUrl(): string {
    const last = this.urlList.length - 1;
    return this.urlListProcessed[last] ??= this.urlList[last]!();
  }
}

// Last: the probe builds a Request with the class above.
const slots = findSlots();
