/**
 * Graceful shutdown as an operator sees it: SIGTERM to a Ferry process with slow requests in
 * flight. Readiness turns to draining at once, new connections are refused, in-flight requests
 * complete, the configured drain deadline bounds everything, the process exits 0.
 */
import assert from "node:assert/strict";
import { spawnFerry, startUpstream, tempConfig } from "./helpers.ts";

function config(upstream: string, drain: string): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { drain_timeout: ${drain}, watch_config: false }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: up
    timeout: 60s
clusters:
  - name: up
    endpoints: ["${upstream}"]
`;
}

/** An upstream that answers after `?ms=` milliseconds. */
function slowUpstream() {
  return startUpstream(async (req) => {
    const ms = Number(new URL(req.url).searchParams.get("ms") ?? "0");
    // Stops sleeping when Ferry goes away, so closing this upstream does not wait for it.
    await new Promise((r) => {
      const t = setTimeout(r, ms);
      req.signal.addEventListener("abort", () => (clearTimeout(t), r(undefined)));
    });
    return new Response(`slept ${ms}`);
  });
}

Deno.test("SIGTERM: draining at once, new connections refused, slow requests in flight complete, exit 0", async () => {
  const up = slowUpstream();
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url, "10s"))]);
  const url = ferry.listeners.get("public")!;
  try {
    const inFlight = Array.from(
      { length: 5 },
      () =>
        fetch(`${url}/?ms=1500`).then(async (r) => ({ status: r.status, body: await r.text() })),
    );
    await new Promise((r) => setTimeout(r, 300)); // let them reach the upstream
    const signalledAt = Date.now();
    ferry.child.kill("SIGTERM");
    // Readiness flips first; the admin listener stays up while draining.
    let ready: Response | undefined;
    for (let i = 0; i < 40; i++) {
      ready = await fetch(`${ferry.admin}/ready`);
      if (ready.status === 503) break;
      await ready.body?.cancel();
      await new Promise((r) => setTimeout(r, 25));
    }
    assert.equal(ready?.status, 503);
    assert.equal((await ready!.json()).status, "draining");
    // New connections are refused while the old ones finish.
    let refused = false;
    for (let i = 0; i < 40 && !refused; i++) {
      try {
        const c = await Deno.connect({ hostname: "127.0.0.1", port: Number(new URL(url).port) });
        c.close();
        await new Promise((r) => setTimeout(r, 25));
      } catch {
        refused = true;
      }
    }
    assert.ok(refused, "the listener stopped accepting");
    const results = await Promise.all(inFlight);
    assert.deepEqual(results, Array(5).fill({ status: 200, body: "slept 1500" }));
    const status = await ferry.child.status;
    assert.equal(status.code, 0);
    assert.ok(Date.now() - signalledAt < 8_000, "exited once drained, not at the deadline");
    assert.ok(ferry.logs.some((l) => l.includes('"msg":"stopped"') && l.includes('"clean":true')));
  } finally {
    try {
      ferry.child.kill("SIGKILL");
    } catch { /* exited */ }
    await up.close();
  }
});

Deno.test("SIGTERM: the drain deadline cuts a request that would outlive it", async () => {
  const up = slowUpstream();
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url, "1s"))]);
  const url = ferry.listeners.get("public")!;
  try {
    const slow = fetch(`${url}/?ms=20000`).then((r) => r.text()).then(
      () => "completed",
      () => "cut",
    );
    await new Promise((r) => setTimeout(r, 300));
    const signalledAt = Date.now();
    ferry.child.kill("SIGTERM");
    const status = await ferry.child.status;
    const took = Date.now() - signalledAt;
    assert.equal(status.code, 0, ferry.logs.slice(-5).join("\n"));
    assert.ok(took >= 900, `waited for the deadline (${took} ms)`);
    assert.ok(took < 10_000, `but not for the request (${took} ms)`);
    assert.equal(await slow, "cut");
    assert.ok(ferry.logs.some((l) => l.includes("drain deadline reached")));
  } finally {
    try {
      ferry.child.kill("SIGKILL");
    } catch { /* exited */ }
    await up.close();
  }
});

Deno.test("SIGTERM: a WebSocket keeps working through the drain window and gets 1001 at its end", async () => {
  const up = startUpstream((req) => {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.onmessage = (e) => socket.send(`echo:${e.data}`);
    return response;
  });
  const ferry = await spawnFerry(["--config", await tempConfig(config(up.url, "3s"))]);
  const url = ferry.listeners.get("public")!.replace("http:", "ws:");
  try {
    const ws = new WebSocket(`${url}/ws`);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = reject;
    });
    const messages: string[] = [];
    ws.onmessage = (e) => messages.push(String(e.data));
    const closed = new Promise<{ code: number; at: number }>((resolve) => {
      ws.onclose = (e) => resolve({ code: e.code, at: Date.now() });
    });
    const signalledAt = Date.now();
    ferry.child.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 1_000));
    ws.send("during the drain");
    const deadline = Date.now() + 1_500;
    while (Date.now() < deadline && !messages.includes("echo:during the drain")) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(messages.includes("echo:during the drain"), "still echoing while draining");
    const { code, at } = await closed;
    assert.equal(code, 1001, "going away");
    assert.ok(
      at - signalledAt >= 2_000,
      `closed at the end of the window (${at - signalledAt} ms)`,
    );
    const status = await ferry.child.status;
    assert.equal(status.code, 0);
  } finally {
    try {
      ferry.child.kill("SIGKILL");
    } catch { /* exited */ }
    await up.close();
  }
});
