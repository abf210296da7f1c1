/**
 * The dashboard in a real headless Chromium (Debian `chromium`, driven by playwright-core): it
 * asks for the admin token, then shows routes with live rates, latency and 4xx / 429 / 5xx shares,
 * 15 minutes of per-route history as SVG sparklines, endpoints with their health state, rate,
 * latency and errors, and proxy-made errors grouped by route, flag and reason; it loads nothing
 * but its own origin and logs nothing to the console. The test saves a screenshot
 * (FERRY_SCREENSHOT_DIR=docs refreshes docs/dashboard.png).
 */
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { requirePeer, startFerry, startUpstream } from "./helpers.ts";

const TOKEN = "dashboard-test-token-0123456789";

/** Polls `read` until `ok` holds (the page's CSP forbids eval, so no waitForFunction). */
async function until<T>(what: string, read: () => Promise<T>, ok: (v: T) => boolean, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (ok(v)) return v;
    assert.ok(Date.now() < deadline, `${what} within ${ms / 1000} s (last: ${JSON.stringify(v)})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

Deno.test({
  name:
    "the dashboard shows live stats, 15-minute history, endpoint health states and grouped errors",
  // Chromium's own helper processes and pipes outlive the page by design.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const chromiumPath = await requirePeer("chromium");
    const good = startUpstream(() => new Response("ok"));
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const dead = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
    l.close();
    // "dead" has no health check: every request to it fails, and it must not be shown healthy.
    const px = startFerry(
      `listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0", token: "${TOKEN}" }
rate_limits: [{ name: tiny, scope: global, rate: 1, burst: 1 }]
routes:
  - { name: shop, match: { path: { prefix: /shop } }, cluster: good }
  - { name: legacy, match: { path: { prefix: /legacy } }, cluster: dead }
  - { name: limited, match: { path: { prefix: /limited } }, cluster: good, rate_limit: [tiny] }
clusters:
  - { name: good, endpoints: ["{{GOOD}}"] }
  - name: dead
    endpoints: ["{{DEAD}}"]
    circuit_breaker: { failures: 2, open_timeout: 60s }
`,
      { GOOD: good.url, DEAD: dead },
    );
    const get = async (path: string) => await (await fetch(`${px.url}${path}`)).body?.cancel();
    const traffic = async (n: number) => {
      for (let i = 0; i < n; i++) await get("/shop/item");
    };
    const browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ["--no-sandbox", "--disable-gpu"],
    });
    try {
      await traffic(20);
      for (let i = 0; i < 3; i++) await get("/legacy");
      for (let i = 0; i < 5; i++) await get("/limited");
      const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
      const origins = new Set<string>();
      const problems: string[] = [];
      page.on("request", (r) => origins.add(new URL(r.url()).origin));
      page.on("console", (m) => {
        if (m.type() === "error" || m.type() === "warning") problems.push(`console: ${m.text()}`);
      });
      page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
      page.on("response", (r) => {
        if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`);
      });

      await page.goto(`${px.adminUrl}/dashboard`);
      await page.waitForSelector("#auth", { state: "visible", timeout: 20_000 });
      await page.fill("#token", TOKEN);
      await page.click("#auth button");

      const routeRow = page.locator("#routes tbody tr", { hasText: "shop" });
      await routeRow.waitFor({ timeout: 20_000 });
      // Live: traffic between two polls shows up on a later refresh.
      const firstUpdate = await page.getAttribute("#status", "data-updated");
      await traffic(30);
      for (let i = 0; i < 2; i++) await get("/legacy");
      await until(
        "the page refreshed",
        () => page.getAttribute("#status", "data-updated"),
        (v) => v !== firstUpdate,
      );
      const cells = await routeRow.locator("td").allTextContents();
      assert.equal(cells[0], "shop");
      assert.equal(cells[1], "public");
      assert.match(cells[3]!, /ms$/, "p50 shown");
      assert.match(cells[4]!, /ms$/, "p99 shown");
      assert.ok(Number(cells[8]) >= 50, `total requests: ${cells[8]}`);

      const legacy = await page.locator("#routes tbody tr", { hasText: "legacy" }).locator("td")
        .allTextContents();
      assert.equal(legacy[7], "100.0 %", "the failing route's 5xx share over the last interval");

      // The history: with traffic going on, after two server-side samples (every 5 s) the shop
      // route's requests/s line has at least three points, and not all on the zero line.
      let busy = true;
      const background = (async () => {
        for (let i = 0; busy; i++) {
          await get("/shop/item");
          if (i % 4 === 0) await get("/limited");
          if (i % 10 === 0) await get("/nowhere");
          await new Promise((r) => setTimeout(r, 40));
        }
      })();
      const rps = page.locator('#history .card[data-route="shop"] polyline[data-series="rps"]');
      const points = await until(
        "three history points for shop",
        async () => (await rps.count()) ? (await rps.getAttribute("points")) ?? "" : "",
        (p) => p.trim().split(" ").length >= 3,
        45_000,
      ).finally(async () => {
        busy = false;
        await background;
      });
      const ys = points.trim().split(" ").map((xy) => Number(xy.split(",")[1]));
      assert.ok(Math.min(...ys) < 50, `a non-zero request rate drawn: ${points}`);
      const limitedErrors = page.locator(
        '#history .card[data-route="limited"] polyline[data-series="r429"]',
      );
      assert.ok((await limitedErrors.getAttribute("points"))!.trim().length > 0, "429 share drawn");

      const limited = await page.locator("#routes tbody tr", { hasText: "limited" }).locator("td")
        .allTextContents();
      assert.equal(limited[0], "limited");

      // The dead endpoint has no health check and fails every request: "not checked", never
      // "healthy", with its failures counted.
      const deadRow = page.locator("#endpoints tbody tr", { hasText: dead });
      const deadCells = await deadRow.locator("td").allTextContents();
      assert.deepEqual(deadCells.slice(0, 4), ["dead", dead, "not checked", "open"]);
      assert.ok(Number(deadCells[8]) >= 2, `failed attempts counted: ${deadCells[8]}`);
      const goodCells = await page.locator("#endpoints tbody tr", { hasText: good.url })
        .locator("td").allTextContents();
      assert.equal(goodCells[2], "not checked");
      assert.equal(goodCells[8], "0");

      // Errors grouped: one row per (route, flag, reason), with its count.
      const groups = await page.locator("#errors tbody tr").evaluateAll((rows) =>
        rows.map((r) => [...r.querySelectorAll("td")].map((td) => td.textContent ?? ""))
      ).catch(async () =>
        // CSP may block evaluate: read the rows one by one instead.
        await Promise.all(
          (await page.locator("#errors tbody tr").all()).map((r) =>
            r.locator("td").allTextContents()
          ),
        )
      );
      const uf = groups.filter((g) => g[0] === "legacy" && g[1] === "UF");
      assert.equal(uf.length, 1, `one UF group for legacy: ${JSON.stringify(groups)}`);
      assert.ok(Number(uf[0]![4]) >= 1);
      const uo = groups.filter((g) => g[0] === "legacy" && g[1] === "UO");
      assert.equal(uo.length, 1, `one UO group for legacy: ${JSON.stringify(groups)}`);
      assert.ok(Number(uo[0]![4]) >= 3, `UO count: ${uo[0]![4]}`);
      assert.ok(groups.some((g) => g[0] === "limited" && g[2] === "429"), "429s grouped");

      assert.deepEqual([...origins], [new URL(px.adminUrl!).origin], "no CDN, nothing external");
      assert.deepEqual(problems, [], "no console errors, no failed requests (favicon included)");
      const dir = Deno.env.get("FERRY_SCREENSHOT_DIR") ?? await Deno.makeTempDir();
      const shot = `${dir}/dashboard.png`;
      await page.screenshot({ path: shot, fullPage: true });
      const png = await Deno.readFile(shot);
      assert.deepEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], "a PNG was written");
      console.log(`dashboard screenshot: ${shot}`);
    } finally {
      await browser.close();
      await px.close();
      await good.close();
    }
  },
});

Deno.test("/stats tells not checked, healthy, failing checks and ejected endpoints apart", async () => {
  const good = startUpstream(() => new Response("ok"));
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dead = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
  l.close();
  const px = startFerry(
    `listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
routes:
  - { name: plain, match: { path: { prefix: /plain } }, cluster: plain }
  - { name: checked, match: { path: { prefix: /checked } }, cluster: checked }
  - { name: outlier, match: { path: { prefix: /outlier } }, cluster: outlier }
clusters:
  - { name: plain, endpoints: ["{{DEAD}}"] }
  - name: checked
    endpoints: ["{{GOOD}}", "{{DEAD}}"]
    health_check: { path: /, interval: 100ms, healthy_threshold: 1, unhealthy_threshold: 1 }
  - name: outlier
    endpoints: ["{{DEAD}}", "{{GOOD}}"]
    lb: round_robin
    outlier_detection: { consecutive_gateway_failure: 1, max_ejection_percent: 100 }
`,
    { GOOD: good.url, DEAD: dead },
  );
  try {
    for (let i = 0; i < 3; i++) {
      for (const p of ["/plain", "/outlier"]) await (await fetch(`${px.url}${p}`)).body?.cancel();
    }
    const health = async () => {
      const stats = await (await fetch(`${px.adminUrl}/stats`)).json();
      const out: Record<string, string> = {};
      for (const c of stats.clusters) {
        for (const e of c.endpoints) {
          out[`${c.name} ${e.origin === dead ? "dead" : "good"}`] = e.health;
        }
      }
      return out;
    };
    const want = {
      "plain dead": "not checked",
      "checked good": "healthy",
      "checked dead": "failing checks",
      "outlier dead": "ejected (outlier)",
      "outlier good": "not checked",
    };
    const seen = await until(
      "every health state",
      health,
      (h) => JSON.stringify(h) === JSON.stringify({ ...h, ...want }),
      20_000,
    );
    assert.deepEqual(seen, want);
    const stats = await (await fetch(`${px.adminUrl}/stats`)).json();
    const plainDead = stats.clusters.find((c: { name: string }) => c.name === "plain").endpoints[0];
    assert.ok(plainDead.errors >= 3, "its failures are counted next to 'not checked'");
  } finally {
    await px.close();
    await good.close();
  }
});
