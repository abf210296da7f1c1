/**
 * W3C trace context end to end: Ferry in a subprocess with Deno's built-in OpenTelemetry
 * exporting OTLP/HTTP JSON to a small receiver on loopback; a client sends a traceparent; the
 * upstream must see exactly one traceparent continuing that trace, whose parent is a span Ferry
 * exported, descending from the client's span. With OTel off, traceparent passes unchanged.
 */
import assert from "node:assert/strict";
import { spawnFerry, startFerry, startUpstream, tempConfig } from "./helpers.ts";

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: { key: string; value: { stringValue?: string } }[];
}

/** OTLP/HTTP JSON receiver: keeps every span posted to /v1/traces. */
function startOtlpReceiver() {
  const spans: OtlpSpan[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const body = await req.text();
    if (new URL(req.url).pathname === "/v1/traces") {
      const doc = JSON.parse(body);
      for (const rs of doc.resourceSpans ?? []) {
        for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
      }
    }
    return Response.json({});
  });
  return { url: `http://127.0.0.1:${server.addr.port}`, spans, close: () => server.shutdown() };
}

const attr = (s: OtlpSpan, key: string) =>
  s.attributes?.find((a) => a.key === key)?.value.stringValue;

const hex = (bytes: number) =>
  Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => b.toString(16).padStart(2, "0"))
    .join("");

Deno.test("with OTel on, the upstream sees one traceparent whose parent is Ferry's span, child of the client's", async () => {
  const otlp = startOtlpReceiver();
  const seen: (string | null)[] = [];
  const up = startUpstream((req) => {
    seen.push(req.headers.get("traceparent"));
    return new Response("ok");
  });
  const file = await tempConfig(`listeners: [{ name: public, address: "127.0.0.1:0" }]
routes:
  - { name: fetched, match: { path: { prefix: /f/ } }, cluster: viafetch }
  - { name: traced, cluster: backend }
clusters:
  - { name: backend, endpoints: ["${up.url}"] }
  - { name: viafetch, endpoints: ["${up.url}"], transport: fetch }
`);
  const ferry = await spawnFerry(["--config", file], {
    OTEL_DENO: "true",
    OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
    OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
    OTEL_SERVICE_NAME: "ferry-test",
    OTEL_BSP_SCHEDULE_DELAY: "200",
  });
  try {
    const base = ferry.listeners.get("public")!;
    // Ferry's own HTTP/1.1 transport (Ferry injects), then fetch (Deno injects).
    const cases = [
      { ae: "gzip", path: "/x", route: "traced", cluster: "backend" },
      { ae: "identity", path: "/f/x", route: "fetched", cluster: "viafetch" },
    ].map((c) => ({
      ...c,
      traceId: hex(16),
      clientSpan: hex(8),
    }));
    for (const c of cases) {
      const res = await fetch(`${base}${c.path}`, {
        headers: {
          traceparent: `00-${c.traceId}-${c.clientSpan}-01`,
          "accept-encoding": c.ae,
        },
      });
      assert.equal(res.status, 200);
      await res.body?.cancel();
    }
    assert.equal(seen.length, 2);
    for (const [i, c] of cases.entries()) {
      const tp = seen[i]!;
      assert.match(tp, /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/, `one valid traceparent: ${tp}`);
      const [, traceId, parentId] = tp.split("-");
      assert.equal(traceId, c.traceId, "the trace continues from the client");

      // Wait (bounded) until the spans of this trace are exported, up to the client's span.
      const deadline = Date.now() + 20_000;
      let chain: OtlpSpan[] = [];
      while (Date.now() < deadline) {
        chain = ancestry(otlp.spans, parentId!);
        if (chain.at(-1)?.parentSpanId === c.clientSpan) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.ok(chain.length > 0, `Ferry exported the span ${parentId} the upstream names`);
      assert.equal(chain[0]!.kind, 3, "the upstream's parent is a client span");
      const server = chain.at(-1)!;
      assert.equal(server.parentSpanId, c.clientSpan, "Ferry's server span is the client's child");
      assert.equal(server.kind, 2, "server span");
      assert.equal(attr(server, "ferry.route"), c.route);
      assert.equal(attr(server, "ferry.cluster"), c.cluster);
      assert.equal(attr(server, "ferry.endpoint"), up.url);
    }
  } finally {
    ferry.child.kill("SIGTERM");
    await ferry.child.status;
    await up.close();
    await otlp.close();
  }
});

/** The span with `spanId` and its exported ancestors, nearest first (within one process). */
function ancestry(spans: OtlpSpan[], spanId: string): OtlpSpan[] {
  const byId = new Map(spans.map((s) => [s.spanId, s]));
  const out: OtlpSpan[] = [];
  for (let s = byId.get(spanId); s && out.length < 10; s = byId.get(s.parentSpanId ?? "")) {
    out.push(s);
  }
  return out;
}

Deno.test("with OTel off (the default), traceparent and tracestate pass through unchanged", async () => {
  const seen: [string | null, string | null][] = [];
  const up = startUpstream((req) => {
    seen.push([req.headers.get("traceparent"), req.headers.get("tracestate")]);
    return new Response("ok");
  });
  const px = startFerry(
    `listeners: [{ name: p, address: "127.0.0.1:0" }]
routes: [{ name: r, cluster: c }]
clusters: [{ name: c, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  try {
    const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    for (const ae of ["identity", "gzip"]) {
      const res = await fetch(`${px.url}/x`, {
        headers: { traceparent: tp, tracestate: "vendor=1", "accept-encoding": ae },
      });
      await res.body?.cancel();
    }
    assert.deepEqual(seen, [[tp, "vendor=1"], [tp, "vendor=1"]]);
  } finally {
    await px.close();
    await up.close();
  }
});
