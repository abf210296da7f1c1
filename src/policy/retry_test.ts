import assert from "node:assert/strict";
import fc from "fast-check";
import { ProxyError } from "../pipeline/errors.ts";
import {
  backoffMs,
  errorRetriable,
  methodRetriable,
  parseRetryAfter,
  replay,
  replayableBody,
  RetryBudget,
  type RetryPolicy,
  statusRetriable,
} from "./retry.ts";

const policy = (over: Partial<RetryPolicy> = {}): RetryPolicy => ({
  retries: 2,
  retryOn: new Set(["connect-failure", "gateway-error"]),
  statuses: new Set([409]),
  grpcStatuses: new Set(),
  baseMs: 25,
  maxMs: 250,
  nonIdempotent: false,
  maxBodyBytes: 16,
  maxRetryAfterMs: 1000,
  ...over,
});

Deno.test("only idempotent methods are retried unless the route opts in", () => {
  assert.equal(methodRetriable(policy(), "GET"), true);
  assert.equal(methodRetriable(policy(), "PUT"), true);
  assert.equal(methodRetriable(policy(), "POST"), false);
  assert.equal(methodRetriable(policy({ nonIdempotent: true }), "POST"), true);
});

Deno.test("retry_on decides which failures and statuses are retried", () => {
  const p = policy();
  assert.equal(errorRetriable(p, new ProxyError("upstream_connect_failure", "x")), true);
  assert.equal(errorRetriable(p, new ProxyError("upstream_reset", "x")), true, "gateway-error");
  assert.equal(
    errorRetriable(
      policy({ retryOn: new Set(["connect-failure"]) }),
      new ProxyError("upstream_reset", "x"),
    ),
    false,
  );
  assert.equal(errorRetriable(p, new ProxyError("no_route", "x")), false);
  assert.equal(statusRetriable(p, 503), true);
  assert.equal(statusRetriable(p, 500), false, "500 is not a gateway error");
  assert.equal(statusRetriable(policy({ retryOn: new Set(["5xx"]) }), 500), true);
  assert.equal(
    statusRetriable(policy({ retryOn: new Set(["retriable-status-codes"]) }), 409),
    true,
  );
  assert.equal(statusRetriable(p, 409), false);
});

Deno.test("property: backoff with full jitter stays within [0, min(max, base * 2^n)]", () => {
  fc.assert(fc.property(fc.nat(10), fc.double({ min: 0, max: 0.9999999, noNaN: true }), (n, r) => {
    const p = policy();
    const wait = backoffMs(p, n, () => r);
    assert.ok(wait >= 0 && wait <= Math.min(p.maxMs, p.baseMs * 2 ** n));
  }));
});

Deno.test("Retry-After is read as seconds or an HTTP date", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:05 GMT", now), 5000);
});

Deno.test("a small body is buffered for replay; a large one streams through once, intact", async () => {
  const enc = new TextEncoder();
  const small = await replayableBody(new Blob([enc.encode("hello")]).stream(), 16);
  assert.ok(small.replayable);
  if (small.replayable) {
    assert.equal(await new Response(replay(small.chunks)).text(), "hello");
    assert.equal(await new Response(replay(small.chunks)).text(), "hello", "replays twice");
  }
  const text = "x".repeat(100) + "end";
  const chunks = [
    enc.encode(text.slice(0, 10)),
    enc.encode(text.slice(10, 50)),
    enc.encode(text.slice(50)),
  ];
  let i = 0;
  const src = new ReadableStream<Uint8Array>({
    pull: (c) => i < chunks.length ? c.enqueue(chunks[i++]!) : c.close(),
  });
  const big = await replayableBody(src, 16);
  assert.equal(big.replayable, false);
  if (!big.replayable) assert.equal(await new Response(big.stream).text(), text);
});

Deno.test("the retry budget allows a share of active requests, never below the floor", () => {
  const b = new RetryBudget(20, 2);
  b.active = 100;
  let granted = 0;
  for (let i = 0; i < 50; i++) if (b.tryAcquire()) granted++;
  assert.equal(granted, 20);
  b.release();
  assert.equal(b.tryAcquire(), true);
  const idle = new RetryBudget(20, 2);
  assert.equal(idle.tryAcquire(), true);
  assert.equal(idle.tryAcquire(), true);
  assert.equal(idle.tryAcquire(), false, "floor of 2 with no traffic");
});
