/**
 * Extension middleware (docs/extending.md): factories named in the config, by module path or by
 * a name registered in code, are loaded and called before a config is accepted, so a module that
 * does not load, has no factory or rejects its options is a config error at its line, and a
 * reload that hits one keeps the old config. At request time each extension runs inside a guard:
 * whatever it throws (or a non-Response it returns) becomes the error table's `middleware_failed`
 * (500, flag MF), counted, and never reaches the process.
 */
import * as client from "../observability/prom.ts";
import type { FerryConfig, MiddlewareRefConfig } from "../config/schema.ts";
import { MAX_NAMED_FILE_BYTES, resolveConfigPath } from "../config/files.ts";
import type { PathSegment } from "../config/config_path.ts";
import type {
  Handler,
  Middleware,
  MiddlewareFactory,
  MiddlewareUse,
  RequestContext,
} from "../pipeline/types.ts";
export type { MiddlewareFactory, MiddlewareUse };
import type { FerryMetrics } from "../observability/metrics.ts";
import { ProxyError } from "../pipeline/errors.ts";
import { carryOver } from "../pipeline/downstream.ts";

/** A problem with one `middleware:` entry, placed at its config path like a compile problem. */
export interface ExtensionProblem {
  readonly path: readonly PathSegment[];
  readonly value: unknown;
  readonly message: string;
}

/** Each route's extension middleware as one layer, given the snapshot's metrics. */
export interface RouteExtensions {
  forRoute(index: number, metrics: FerryMetrics): Middleware | undefined;
}

export interface ExtensionLoadOptions {
  /** The config file: relative module paths resolve against its folder (else the cwd). */
  readonly configFile: string | undefined;
  /** Factories registered in code, for entries with `name:`. */
  readonly factories?: ReadonlyMap<string, MiddlewareFactory>;
  /** How long a module import or a factory call may take. */
  readonly timeoutMs?: number;
}

/** The longest a module import or factory call may take before the config is refused. */
const LOAD_TIMEOUT_MS = 10_000;

/** The file: URL a `module:` entry names, resolved like the config's other file paths. */
export function moduleUrl(spec: string, configFile: string | undefined): URL {
  if (spec.startsWith("file:")) return new URL(spec);
  const path = configFile ? resolveConfigPath(configFile, spec) : spec;
  const url = new URL("file:///");
  url.pathname = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  return url;
}

/** One loaded entry: what to call it in errors and logs, and its middleware. */
interface LoadedEntry {
  readonly label: string;
  readonly middleware: Middleware;
}

/**
 * Imports every module the config names and calls every factory. Resolves to the routes' layers,
 * or to every problem found (all entries are tried, so one run shows them all).
 */
export async function loadExtensions(
  cfg: FerryConfig,
  opts: ExtensionLoadOptions,
): Promise<
  { ok: true; extensions: RouteExtensions } | { ok: false; problems: ExtensionProblem[] }
> {
  const timeoutMs = opts.timeoutMs ?? LOAD_TIMEOUT_MS;
  const problems: ExtensionProblem[] = [];
  const modules = new Map<string, Promise<{ factory: MiddlewareFactory } | { problem: string }>>();
  const factoryOf = (spec: string) => {
    const url = moduleUrl(spec, opts.configFile);
    let loading = modules.get(url.href);
    if (!loading) modules.set(url.href, loading = importFactory(url, timeoutMs));
    return loading;
  };
  const load = async (
    ref: MiddlewareRefConfig,
    at: PathSegment[],
    use: MiddlewareUse,
  ): Promise<LoadedEntry | undefined> => {
    let factory: MiddlewareFactory;
    let label: string;
    if (ref.module !== undefined) {
      label = ref.module;
      const found = await factoryOf(ref.module);
      if ("problem" in found) {
        problems.push({ path: [...at, "module"], value: ref.module, message: found.problem });
        return undefined;
      }
      factory = found.factory;
    } else {
      label = ref.name!;
      const registered = opts.factories?.get(label);
      if (!registered) {
        const names = [...(opts.factories?.keys() ?? [])];
        problems.push({
          path: [...at, "name"],
          value: label,
          message: `unknown middleware '${label}'; ` +
            (names.length > 0
              ? `registered in code: ${names.join(", ")}`
              : "none are registered (name: refers to factories passed to start() in mod.ts)"),
        });
        return undefined;
      }
      factory = registered;
    }
    let middleware: unknown;
    try {
      middleware = await withTimeout(
        Promise.resolve().then(() => factory(Object.freeze({ ...ref.options }), use)),
        timeoutMs,
        "the factory",
      );
    } catch (err) {
      problems.push({
        path: [...at, "options"],
        value: ref.options,
        message: `${label} refused its options: ${oneLine(err)}`,
      });
      return undefined;
    }
    if (typeof middleware !== "function") {
      problems.push({
        path: at,
        value: label,
        message: `expected the factory to return a middleware, (next) => handler; ` +
          `it returned ${describe(middleware)}`,
      });
      return undefined;
    }
    return { label, middleware: middleware as Middleware };
  };

  const listenerLists = new Map<string, Promise<(LoadedEntry | undefined)[]>>();
  for (const [i, l] of cfg.listeners.entries()) {
    if (!l.middleware) continue;
    listenerLists.set(
      l.name,
      Promise.all(
        l.middleware.map((ref, j) =>
          load(ref, ["listeners", i, "middleware", j], { route: undefined, listener: l.name })
        ),
      ),
    );
  }
  const routeLists = cfg.routes.map((r, i) =>
    r.middleware
      ? Promise.all(
        r.middleware.map((ref, j) =>
          load(ref, ["routes", i, "middleware", j], { route: r.name, listener: undefined })
        ),
      )
      : undefined
  );
  const listenerDone = new Map<string, LoadedEntry[]>();
  for (const [name, list] of listenerLists) listenerDone.set(name, (await list).filter(isLoaded));
  const routeDone = await Promise.all(routeLists.map((l) => l?.then((e) => e.filter(isLoaded))));
  if (problems.length > 0) return { ok: false, problems };

  const httpListeners = cfg.listeners.filter((l) => l.protocol === "http").map((l) => l.name);
  return {
    ok: true,
    extensions: {
      forRoute(index, metrics) {
        const route = cfg.routes[index];
        if (!route) return undefined;
        // Called only while building a chain: routes without extensions register nothing.
        const count = (label: string) => failureRecorder(metrics, route.name)(label);
        const own = routeDone[index];
        if (own) return own.length > 0 ? guardedChain(own, count) : undefined;
        // No list of its own: each listener's default list, picked by the request's listener.
        const byListener = new Map<string, Middleware>();
        for (const name of route.listeners ?? httpListeners) {
          const list = listenerDone.get(name);
          if (list && list.length > 0) byListener.set(name, guardedChain(list, count));
        }
        if (byListener.size === 0) return undefined;
        return (next) => {
          const handlers = new Map([...byListener].map(([l, mw]) => [l, mw(next)]));
          return (req, ctx) => (handlers.get(ctx.listener) ?? next)(req, ctx);
        };
      },
    },
  };
}

function isLoaded(e: LoadedEntry | undefined): e is LoadedEntry {
  return e !== undefined;
}

/**
 * Imports a module and finds its factory. The URL carries a hash of the file's bytes, so a reload
 * after the file changed imports the new code, and an unchanged file reuses the loaded module.
 */
async function importFactory(
  url: URL,
  timeoutMs: number,
): Promise<{ factory: MiddlewareFactory } | { problem: string }> {
  let bytes: Uint8Array;
  try {
    // Checked before reading: a FIFO never ends its read (and the reload waiting on it held up
    // every later one), a device such as /dev/zero never ends at all.
    const info = await Deno.stat(url);
    if (!info.isFile) return { problem: `cannot read module ${url.pathname}: not a regular file` };
    if (info.size > MAX_NAMED_FILE_BYTES) {
      return {
        problem: `cannot read module ${url.pathname}: ${info.size} bytes, more than the ` +
          `limit of ${MAX_NAMED_FILE_BYTES}`,
      };
    }
    bytes = await Deno.readFile(url);
  } catch (err) {
    const why = err instanceof Deno.errors.NotFound
      ? "no such file"
      : err instanceof Deno.errors.PermissionDenied || err instanceof Deno.errors.NotCapable
      ? "permission denied (Ferry needs --allow-read for it)"
      : oneLine(err);
    return { problem: `cannot read module ${url.pathname}: ${why}` };
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as BufferSource));
  const versioned = new URL(url);
  versioned.search = `?v=${
    [...digest.slice(0, 8)].map((b) => b.toString(16).padStart(2, "0")).join("")
  }`;
  let mod: Record<string, unknown>;
  try {
    mod = await withTimeout(import(versioned.href), timeoutMs, "the import");
  } catch (err) {
    return { problem: `cannot load module ${url.pathname}: ${oneLine(err)}` };
  }
  if (typeof mod.default !== "function") {
    return {
      problem: `expected module ${url.pathname} to export default a middleware factory, ` +
        `(options) => middleware; its default export is ${describe(mod.default)}`,
    };
  }
  return { factory: mod.default as MiddlewareFactory };
}

const MAX_REASON_CHARS = 300;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/**
 * An error as one line for a config message: its message up to a code frame or stack (a zod error's
 * JSON is folded onto the line), with the module's position if Deno gave one.
 */
function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  const kept: string[] = [];
  for (const line of text.split("\n")) {
    if (/^\s*(\d+\s*)?\|/.test(line) || /^\s*at /.test(line)) break;
    kept.push(line.trim());
  }
  let first = kept.join(" ").replace(/\s+/g, " ").trim();
  if (first.length > MAX_REASON_CHARS) first = `${first.slice(0, MAX_REASON_CHARS - 3)}...`;
  const at = /\bat (file:\/\/\S+?)(?:\?v=[0-9a-f]+)?(:\d+:\d+)/.exec(text);
  return at && !first.includes(at[1]!) ? `${first} (${at[1]}${at[2]})` : first;
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (v === undefined) return "undefined";
  return typeof v === "object" ? `an ${Array.isArray(v) ? "array" : "object"}` : `a ${typeof v}`;
}

/** The guarded layers of one list, outermost first, as one middleware. */
function guardedChain(
  entries: readonly LoadedEntry[],
  recorder: (label: string) => () => void,
): Middleware {
  const layers = entries.map((e) => guarded(e, recorder(e.label)));
  return (next) => layers.reduceRight<Handler>((inner, mw) => mw(inner), next);
}

/**
 * The request each extension was given, by the request's context: an extension that passes on a
 * copy (`new Request(req, { headers })`) hands `next` a Request Ferry has never seen, and what the
 * original carries (the guard's ticket, the upgradable request) must follow it.
 */
const givenByContext = new WeakMap<RequestContext, Request>();

/**
 * One extension inside a guard. What its `next` throws (Ferry's own errors, such as an upstream
 * timeout) passes through unchanged, even when the extension rethrows it; anything else it throws,
 * synchronously or not, is its own failure.
 */
function guarded(entry: LoadedEntry, onFailure: () => void): Middleware {
  return (next) => {
    const fromNext = new WeakSet<object>();
    const tracked: Handler = async (req, ctx) => {
      const given = givenByContext.get(ctx);
      if (given) carryOver(req, given);
      try {
        return await next(req, ctx);
      } catch (err) {
        if (typeof err === "object" && err !== null) fromNext.add(err);
        throw err;
      }
    };
    const fail = (reason: string, cause?: unknown): never => {
      onFailure();
      throw new ProxyError("middleware_failed", `middleware ${entry.label} ${reason}`, { cause });
    };
    let inner: Handler | undefined;
    try {
      const built: unknown = entry.middleware(tracked);
      if (typeof built === "function") inner = built as Handler;
    } catch (err) {
      // Building the handler threw: every request through it fails, each counted.
      return () => Promise.resolve().then(() => fail("failed to build its handler", err));
    }
    if (!inner) return () => Promise.resolve().then(() => fail("built no handler"));
    const handler = inner;
    return async function extension(req, ctx) {
      givenByContext.set(ctx, req);
      let res: unknown;
      try {
        res = await handler(req, ctx);
      } catch (err) {
        const passThrough = err instanceof ProxyError ||
          (typeof err === "object" && err !== null && fromNext.has(err));
        if (passThrough) throw err;
        return fail("failed", err);
      }
      if (!(res instanceof Response)) return fail(`returned ${describe(res)}, not a Response`);
      return res;
    };
  };
}

const FAILURES = new WeakMap<client.Registry, client.Counter<"route" | "middleware">>();

/**
 * Registers the extension metrics in `metrics` (once; later calls return the same counter). Done
 * when a route first has extensions, so a config without them exposes none.
 */
export function registerMiddlewareMetrics(
  metrics: FerryMetrics,
): client.Counter<"route" | "middleware"> {
  let counter = FAILURES.get(metrics.registry);
  if (!counter) {
    counter = new client.Counter({
      name: "ferry_middleware_failures_total",
      help: "Requests an extension middleware failed (threw or returned no Response); flag MF.",
      labelNames: ["route", "middleware"] as const,
      registers: [metrics.registry],
    });
    FAILURES.set(metrics.registry, counter);
  }
  return counter;
}

/**
 * `ferry_middleware_failures_total{route, middleware}`, registered once per metrics registry when
 * a route first has extensions; each (route, middleware) series exists at 0 from compile time on.
 */
function failureRecorder(metrics: FerryMetrics, route: string): (label: string) => () => void {
  const c = registerMiddlewareMetrics(metrics);
  return (label) => {
    const child = c.labels(route, label);
    return () => child.inc();
  };
}
