import assert from "node:assert/strict";
import { loadExtensions, type MiddlewareFactory } from "./extensions.ts";
import { validateConfig } from "../config/load.ts";
import type { FerryConfig } from "../config/schema.ts";
import type { Handler, RequestContext } from "../pipeline/types.ts";
import { FerryMetrics } from "../observability/metrics.ts";
import { ProxyError } from "../pipeline/errors.ts";

function config(data: Record<string, unknown>): FerryConfig {
  const r = validateConfig(data, { file: "<test>" });
  if (!r.ok) throw new Error(JSON.stringify(r.errors));
  return r.config;
}

function ctx(listener = "a"): RequestContext {
  return {
    requestId: "r",
    peerIp: "127.0.0.1",
    clientIp: "127.0.0.1",
    peerTrusted: false,
    listener,
    scheme: "http",
    host: "h",
    authority: "h",
    path: "/",
    search: "",
    startedAt: 0,
    identity: undefined,
    clientCertHeader: "x-forwarded-client-cert",
    outcome: { attempts: 0 },
  };
}

/** The route's extension layer around `terminal`, from factories registered by name. */
async function chain(
  factories: Record<string, MiddlewareFactory>,
  route: Record<string, unknown>,
  terminal: Handler,
  listeners: Record<string, unknown>[] = [{ name: "a", address: "127.0.0.1:0" }],
): Promise<Handler> {
  const cfg = config({
    listeners,
    routes: [{ name: "r", direct_response: { status: 200 }, ...route }],
  });
  const loaded = await loadExtensions(cfg, {
    configFile: undefined,
    factories: new Map(Object.entries(factories)),
  });
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.problems));
  const layer = loaded.extensions.forRoute(0, new FerryMetrics());
  return layer ? layer(terminal) : terminal;
}

const ok: Handler = () => Promise.resolve(new Response("ok"));

Deno.test("an error from next passes through an extension unchanged, even caught and rethrown", async () => {
  const upstreamDown = new ProxyError("upstream_connect_failure", "refused");
  const rethrow: MiddlewareFactory = () => (next) => async (req, c) => {
    try {
      return await next(req, c);
    } catch (err) {
      throw err;
    }
  };
  const h = await chain(
    { rethrow },
    { middleware: [{ name: "rethrow" }] },
    () => Promise.reject(upstreamDown),
  );
  await assert.rejects(h(new Request("http://h/"), ctx()), (err) => err === upstreamDown);

  // A non-ProxyError from further in (a bug in Ferry) is not blamed on the extension either.
  const bug = new TypeError("inner bug");
  const h2 = await chain({ rethrow }, { middleware: [{ name: "rethrow" }] }, () => {
    throw bug;
  });
  await assert.rejects(h2(new Request("http://h/"), ctx()), (err) => err === bug);
});

Deno.test("an extension's own failure becomes middleware_failed, with its error as the cause", async () => {
  const wraps: MiddlewareFactory = () => (next) => async (req, c) => {
    try {
      return await next(req, c);
    } catch (err) {
      throw new Error("wrapped", { cause: err });
    }
  };
  const h = await chain(
    { wraps },
    { middleware: [{ name: "wraps" }] },
    () => Promise.reject(new ProxyError("upstream_reset", "reset")),
  );
  await assert.rejects(h(new Request("http://h/"), ctx()), (err) => {
    assert.ok(err instanceof ProxyError);
    assert.equal(err.kind, "middleware_failed");
    assert.equal(err.flag, "MF");
    assert.equal(err.status, 500);
    assert.equal((err.cause as Error).message, "wrapped");
    return true;
  });
  // Building the handler throws: every request fails the same way instead of the compile.
  const broken: MiddlewareFactory = () => () => {
    throw new Error("no handler");
  };
  const h2 = await chain({ broken }, { middleware: [{ name: "broken" }] }, ok);
  await assert.rejects(h2(new Request("http://h/"), ctx()), /middleware_failed/);
});

Deno.test("a route without a list takes each listener's default; [] takes none", async () => {
  const stamp: MiddlewareFactory = (o) => (next) => async (req, c) => {
    const res = await next(req, c);
    res.headers.set("x-stamp", String(o.v));
    return res;
  };
  const listeners = [
    { name: "a", address: "127.0.0.1:0", middleware: [{ name: "stamp", options: { v: "a" } }] },
    { name: "b", address: "127.0.0.1:0", middleware: [{ name: "stamp", options: { v: "b" } }] },
    { name: "c", address: "127.0.0.1:0" },
  ];
  const h = await chain({ stamp }, {}, ok, listeners);
  for (const [l, want] of [["a", "a"], ["b", "b"], ["c", null]] as const) {
    const res = await h(new Request("http://h/"), ctx(l));
    assert.equal(res.headers.get("x-stamp"), want, l);
  }
  const none = await chain({ stamp }, { middleware: [] }, ok, listeners);
  assert.equal((await none(new Request("http://h/"), ctx("a"))).headers.get("x-stamp"), null);
});

Deno.test("a factory that never settles is a config problem after the timeout, not a hang", async () => {
  const cfg = config({
    listeners: [{ name: "a", address: "127.0.0.1:0" }],
    routes: [{ name: "r", direct_response: { status: 200 }, middleware: [{ name: "slow" }] }],
  });
  const started = performance.now();
  const loaded = await loadExtensions(cfg, {
    configFile: undefined,
    factories: new Map([["slow", () => new Promise<never>(() => {})]]),
    timeoutMs: 50,
  });
  assert.ok(performance.now() - started < 5_000);
  assert.equal(loaded.ok, false);
  if (loaded.ok) return;
  assert.deepEqual(loaded.problems.map((p) => p.path), [["routes", 0, "middleware", 0, "options"]]);
  assert.match(loaded.problems[0]!.message, /did not finish within 50 ms/);
});
