/**
 * A real Prometheus server (Debian's `prometheus`) scrapes Ferry's admin listener every second
 * and answers a PromQL query over Ferry's metrics through its HTTP API.
 */
import assert from "node:assert/strict";
import { requirePeer, startFerry, startUpstream } from "./helpers.ts";

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

Deno.test("Prometheus scrapes /metrics and answers a query about Ferry's traffic", async () => {
  const prometheus = await requirePeer("prometheus");
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    `listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
routes: [{ name: scraped, cluster: c }]
clusters: [{ name: c, endpoints: ["{{U}}"] }]
`,
    { U: up.url },
  );
  const dir = await Deno.makeTempDir();
  const admin = new URL(px.adminUrl!);
  await Deno.writeTextFile(
    `${dir}/prometheus.yml`,
    `global: { scrape_interval: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: ferry
    static_configs: [{ targets: ["${admin.host}"] }]
`,
  );
  const port = freePort();
  const prom = new Deno.Command(prometheus, {
    args: [
      `--config.file=${dir}/prometheus.yml`,
      `--storage.tsdb.path=${dir}/data`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(prom.stderr).text();
  try {
    for (let i = 0; i < 7; i++) await (await fetch(`${px.url}/x`)).body?.cancel();
    const query = encodeURIComponent(
      'sum(ferry_downstream_requests_total{route="scraped",status_class="2xx"})',
    );
    let value: string | undefined;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && value !== "7") {
      await new Promise((r) => setTimeout(r, 500));
      try {
        const res = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${query}`);
        const body = await res.json();
        value = body?.data?.result?.[0]?.value?.[1];
      } catch { /* not up yet */ }
    }
    assert.equal(value, "7", "Prometheus sees the 7 requests Ferry answered");
    const targets = await (await fetch(`http://127.0.0.1:${port}/api/v1/targets`)).json();
    assert.equal(targets.data.activeTargets[0].health, "up");
  } finally {
    prom.kill("SIGTERM");
    await prom.status;
    await stderr;
    await px.close();
    await up.close();
    await Deno.remove(dir, { recursive: true });
  }
});
