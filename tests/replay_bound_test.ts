/**
 * The process-wide bound on retry replay buffers (src/policy/retry.ts `replayBytes`): bodies kept
 * to be sent again count against it across every call in flight; a call that would pass it is
 * sent once, not retried, rather than buffering more.
 */
import assert from "node:assert/strict";
import { catchAllConfig, startFerry, startUpstream } from "./helpers.ts";
import { replayBytes } from "../src/policy/retry.ts";

Deno.test("replay bound: over the process-wide bound a request is not retried; under it, it is", async () => {
  const seen = new Map<string, number>();
  let releaseSlow!: () => void;
  const slowHeld = new Promise<void>((r) => (releaseSlow = r));
  const up = startUpstream(async (req) => {
    const path = new URL(req.url).pathname;
    await req.arrayBuffer();
    const n = (seen.get(path) ?? 0) + 1;
    seen.set(path, n);
    if (path === "/slow") {
      await slowHeld;
      return new Response("slow done");
    }
    // Every other path fails its first attempt with a retriable 503.
    return n === 1 ? new Response("busy", { status: 503 }) : new Response(`ok after ${n}`);
  });
  const ferry = startFerry(
    catchAllConfig().replace(
      "    cluster: up\n",
      "    cluster: up\n    retry: { retries: 2, retry_on: [gateway-error], non_idempotent: true, " +
        "backoff: { base: 1ms, max: 1ms } }\n",
    ),
    { UP: up.url },
  );
  const before = replayBytes.limit;
  replayBytes.limit = 1500;
  const body = new Uint8Array(1000).fill(0x61);
  try {
    // The slow request keeps its 1000 bytes for as long as it is in flight.
    const slow = fetch(`${ferry.url}/slow`, { method: "POST", body });
    for (let i = 0; i < 200 && !seen.has("/slow"); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(replayBytes.held, 1000);
    // 1000 more would pass 1500: sent once, its 503 is the answer.
    const over = await fetch(`${ferry.url}/over`, { method: "POST", body });
    assert.equal(over.status, 503, await over.text());
    assert.equal(seen.get("/over"), 1);
    releaseSlow();
    assert.equal(await (await slow).text(), "slow done");
    assert.equal(replayBytes.held, 0, "every byte given back");
    // With room again, the same request is retried.
    const under = await fetch(`${ferry.url}/under`, { method: "POST", body });
    assert.equal(await under.text(), "ok after 2");
    assert.equal(replayBytes.held, 0);
  } finally {
    replayBytes.limit = before;
    releaseSlow();
    await ferry.close();
    await up.close();
  }
});
