/**
 * `deno task demo` as a user runs it, on ports moved with --port-base: the lines it prints for
 * h2c, WebSocket, /explain and the dashboard are run as printed and work.
 */
import assert from "node:assert/strict";
import { DENO, requirePeer, ROOT } from "./helpers.ts";

/** A base with six free consecutive ports (ferry, admin, four upstreams). */
function freePortBase(): number {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 40_000);
    const held: Deno.Listener[] = [];
    try {
      for (let k = 0; k < 6; k++) held.push(Deno.listen({ hostname: "127.0.0.1", port: base + k }));
      return base;
    } catch {
      /* one is taken: try another base */
    } finally {
      for (const l of held) l.close();
    }
  }
  throw new Error("no six free consecutive ports");
}

async function sh(line: string) {
  const out = await new Deno.Command("sh", {
    args: ["-c", line],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(20_000),
  }).output();
  return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
}

Deno.test({
  name: "the demo runs on --port-base and its h2c, WebSocket, /explain and dashboard lines work",
  sanitizeResources: false,
  fn: async () => {
    await requirePeer("curl");
    const base = freePortBase();
    const child = new Deno.Command(DENO, {
      args: [
        "run",
        "--allow-net",
        "--allow-read",
        "--allow-env",
        "--allow-run",
        "--allow-write",
        "--unstable-no-legacy-abort",
        `${ROOT}scripts/demo.ts`,
        "--port-base",
        String(base),
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    try {
      const deadline = Date.now() + 30_000;
      while (!text.includes("Ctrl-C stops everything.") && Date.now() < deadline) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
      }
      const lines = text.split("\n");
      const after = (title: RegExp) => {
        const i = lines.findIndex((l) => title.test(l));
        assert.ok(i >= 0, `no line ${title} in:\n${text}`);
        return lines[i + 1]!.trim();
      };
      assert.match(
        text,
        new RegExp(`Ferry on http://127\\.0\\.0\\.1:${base}, admin on .*:${base + 1}`),
      );

      const h2c = await sh(after(/^HTTP\/2 without TLS/));
      assert.equal(h2c.stdout.trim(), "2 200");

      const ws = await sh(after(/^WebSocket through Ferry/).replace(/^deno /, `${DENO} `));
      assert.equal(ws.code, 0);
      assert.equal(ws.stdout.trim(), "echo from ws upstream (/ws/chat): hello");

      const explained = JSON.parse((await sh(after(/^Which route/))).stdout);
      assert.equal(
        explained.matched.name,
        "orders-v2",
        "x-explain-x-canary picks the canary route",
      );

      const dashboard = await fetch(after(/^Dashboard/));
      assert.equal(dashboard.status, 200);
      assert.match(await dashboard.text(), /<html/i);
    } finally {
      child.kill("SIGTERM");
      // Keep reading so Ferry's log lines never block the pipe while it drains.
      (async () => {
        try {
          while (!(await reader.read()).done) { /* discard */ }
        } catch { /* closed */ }
      })();
    }
    assert.equal((await child.status).code, 0);
  },
});
