/**
 * Hot reload under load, as the issue asks: a few hundred reloads, valid and invalid, while h2load
 * drives traffic through a Ferry process. Zero failed requests; a WebSocket opened before the
 * first reload still echoes after the last; a streaming response started before them completes.
 */
import assert from "node:assert/strict";
import { run, spawnFerry, startUpstream, tempConfig } from "./helpers.ts";

const RELOADS = 200;

function config(
  upstream: string,
  gen: number,
  variant: "valid" | "unknown_key" | "bad_ref",
): string {
  // Every other valid config rebuilds the cluster (its pool settings change), so retiring a
  // cluster with requests in flight is exercised too.
  const idle = gen % 4 === 0 ? "30s" : "45s";
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { watch_config: false }
routes:
  - name: all
    match: { path: { prefix: / } }
    cluster: ${variant === "bad_ref" ? "nowhere" : "up"}
    websocket: true
    response_headers: { add: { x-config-gen: "${gen}" } }
${variant === "unknown_key" ? "    not_a_field: true\n" : ""}clusters:
  - name: up
    endpoints: ["${upstream}"]
    pool: { idle_timeout: ${idle} }
`;
}

Deno.test({
  name:
    `${RELOADS} reloads (valid and invalid) under h2load: zero failed requests, a WebSocket and a stream survive`,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const upstream = startUpstream((req) => {
      const url = new URL(req.url);
      if (req.headers.get("upgrade")?.toLowerCase() === "websocket") {
        const { socket, response } = Deno.upgradeWebSocket(req);
        socket.onmessage = (e) => socket.send(`echo:${e.data}`);
        return response;
      }
      if (url.pathname === "/stream") {
        // 60 chunks, 100 ms apart: runs through most of the reloads.
        let i = 0;
        const body = new ReadableStream<Uint8Array>({
          async pull(c) {
            await new Promise((r) => setTimeout(r, 100));
            if (i++ >= 60) c.close();
            else c.enqueue(new TextEncoder().encode(`chunk ${i}\n`));
          },
        });
        return new Response(body);
      }
      return new Response("ok");
    });
    const file = await tempConfig(config(upstream.url, 0, "valid"));
    const ferry = await spawnFerry(["--config", file]);
    const url = ferry.listeners.get("public")!;
    try {
      const ws = new WebSocket(url.replace("http:", "ws:") + "/ws");
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = reject;
      });
      const messages: string[] = [];
      ws.onmessage = (e) => messages.push(String(e.data));
      let wsClosed = false;
      ws.onclose = () => (wsClosed = true);
      const stream = fetch(`${url}/stream`).then((r) => r.text());

      const load = run("h2load", ["--h1", "-c", "8", "-D", "8", url + "/"]);
      let ok = 0, refused = 0;
      const reloadsDone = (async () => {
        for (let gen = 1; gen <= RELOADS; gen++) {
          const variant = gen % 3 === 0 ? "unknown_key" : gen % 5 === 0 ? "bad_ref" : "valid";
          await Deno.writeTextFile(file, config(upstream.url, gen, variant));
          const r = await fetch(`${ferry.admin}/reload`, { method: "POST" });
          const body = await r.json();
          if (variant === "valid") {
            assert.equal(r.status, 200, JSON.stringify(body));
            ok++;
          } else {
            assert.equal(r.status, 400, JSON.stringify(body));
            assert.match(
              body.error,
              variant === "unknown_key" ? /:\d+:\d+: .*not_a_field/ : /nowhere/,
            );
            refused++;
          }
          if (gen % 20 === 0) {
            ws.send(`gen ${gen}`);
          }
          await new Promise((r) => setTimeout(r, 25));
        }
      })();
      const [h2load] = await Promise.all([load, reloadsDone]);

      const requests = h2load.stdout.match(
        /requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored/,
      );
      assert.ok(requests, h2load.stdout);
      const [total, , done, succeeded, failed, errored] = requests.slice(1).map(Number);
      const codes = h2load.stdout.match(/status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/);
      assert.ok(codes, h2load.stdout);
      console.log(
        `reloads: ${ok} applied, ${refused} refused; h2load: ${total} requests, ${succeeded} succeeded, ` +
          `${failed} failed, ${errored} errored; status ${
            codes.slice(1).join("/")
          } (2xx/3xx/4xx/5xx)`,
      );
      assert.ok(total! > 500, `enough load: ${total}`);
      assert.equal(failed, 0);
      assert.equal(errored, 0);
      assert.equal(done, succeeded);
      assert.equal(Number(codes[1]), succeeded, "every response a 2xx");

      const last = await (await fetch(`${url}/`)).headers.get("x-config-gen");
      assert.equal(last, String(RELOADS - 1), "the last valid config serves");
      ws.send("after the last reload");
      const deadline = Date.now() + 5_000;
      while (Date.now() < deadline && !messages.includes("echo:after the last reload")) {
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(!wsClosed, "the WebSocket stayed open");
      assert.ok(messages.includes("echo:after the last reload"), messages.join(","));
      assert.equal(messages.filter((m) => m.startsWith("echo:gen")).length, RELOADS / 20);
      ws.close();
      const streamed = await stream;
      assert.equal(streamed.split("\n").filter(Boolean).length, 60, "the stream was not cut");
      const status = await (await fetch(`${ferry.admin}/config`)).json();
      assert.equal(status.reloads.succeeded, ok);
      assert.equal(status.reloads.failed, refused);
    } finally {
      ferry.child.kill("SIGTERM");
      await ferry.child.status;
      await upstream.close();
    }
  },
});
