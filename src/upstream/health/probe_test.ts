import assert from "node:assert/strict";
import { compileStatuses, HttpProber } from "./probe.ts";

Deno.test("compileStatuses: numbers, strings and pairs, inclusive", () => {
  const ok = compileStatuses([204, "300-302", [500, 501]]);
  assert.deepEqual(
    [200, 204, 299, 300, 302, 303, 500, 501, 502].map(ok),
    [false, true, false, true, true, false, true, true, false],
  );
  const dflt = compileStatuses(["200-399"]);
  assert.deepEqual([199, 200, 399, 400].map(dflt), [false, true, true, false]);
});

Deno.test("compileStatuses: rejects bad entries naming the index", () => {
  assert.throws(() => compileStatuses([]), /non-empty/);
  assert.throws(() => compileStatuses([200, "2xx"]), /expectedStatuses\[1\].*"2xx"/);
  assert.throws(() => compileStatuses([[400, 300]]), /expectedStatuses\[0\]/);
  assert.throws(() => compileStatuses([700], "health.expected"), /health\.expected\[0\]/);
});

function serve(handler: (req: Request) => Response | Promise<Response>) {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, handler);
  return { server, origin: `http://127.0.0.1:${server.addr.port}` };
}

Deno.test("HttpProber: judges the status and sends path and Host", async () => {
  let status = 200;
  const seen: string[] = [];
  const { server, origin } = serve((req) => {
    seen.push(`${new URL(req.url).pathname} ${req.headers.get("host")}`);
    return new Response("x".repeat(100_000), { status });
  });
  const prober = new HttpProber({ path: "/healthz", host: "svc.internal" });
  try {
    const target = { index: 0, origin };
    assert.deepEqual(await prober.probe(target, new AbortController().signal), {
      ok: true,
      reason: "status 200",
    });
    status = 503;
    assert.deepEqual(await prober.probe(target, new AbortController().signal), {
      ok: false,
      reason: "status 503",
    });
    assert.deepEqual(seen, ["/healthz svc.internal", "/healthz svc.internal"]);
  } finally {
    prober.close();
    await server.shutdown();
  }
});

Deno.test("HttpProber: refused connections and aborted probes fail with a reason", async () => {
  // The handler ends when the client goes away (or the test ends).
  const { server, origin } = serve((req) =>
    new Promise((resolve) =>
      req.signal.addEventListener("abort", () => resolve(new Response()), {
        once: true,
      })
    )
  );
  const prober = new HttpProber();
  try {
    const abort = new AbortController();
    const pending = prober.probe({ index: 0, origin }, abort.signal);
    setTimeout(() => abort.abort(new DOMException("timeout after 50 ms", "TimeoutError")), 50);
    assert.deepEqual(await pending, { ok: false, reason: "timeout after 50 ms" });
  } finally {
    await server.shutdown();
  }
  try {
    const r = await prober.probe({ index: 0, origin }, new AbortController().signal);
    assert.deepEqual(r, { ok: false, reason: "connection refused" });
  } finally {
    prober.close();
  }
});
