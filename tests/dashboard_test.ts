/**
 * The live dashboard in a real headless Chromium (Debian `chromium`, driven by playwright-core):
 * it asks for the admin token, then shows routes with rates and latency, endpoints with health
 * and breaker state and recent proxy-made errors with their flags, refreshing from /stats, and
 * loads nothing but its own origin. The test saves a screenshot.
 */
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { requirePeer, startFerry, startUpstream } from "./helpers.ts";

const TOKEN = "dashboard-test-token-0123456789";

Deno.test({
  name: "the dashboard shows live route stats, endpoint state and recent errors in Chromium",
  // Chromium's own helper processes and pipes outlive the page by design.
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const chromiumPath = await requirePeer("chromium");
    const good = startUpstream(() => new Response("ok"));
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const dead = `http://127.0.0.1:${(l.addr as Deno.NetAddr).port}`;
    l.close();
    const px = startFerry(
      `listeners: [{ name: public, address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0", token: "${TOKEN}" }
routes:
  - { name: shop, match: { path: { prefix: /shop } }, cluster: good }
  - { name: legacy, match: { path: { prefix: /legacy } }, cluster: dead }
clusters:
  - { name: good, endpoints: ["{{GOOD}}"] }
  - name: dead
    endpoints: ["{{DEAD}}"]
    circuit_breaker: { failures: 2, open_timeout: 60s }
`,
      { GOOD: good.url, DEAD: dead },
    );
    const traffic = async (n: number) => {
      for (let i = 0; i < n; i++) await (await fetch(`${px.url}/shop/item`)).body?.cancel();
    };
    const browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ["--no-sandbox", "--disable-gpu"],
    });
    try {
      await traffic(20);
      for (let i = 0; i < 3; i++) await (await fetch(`${px.url}/legacy`)).body?.cancel();
      const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
      const origins = new Set<string>();
      page.on("request", (r) => origins.add(new URL(r.url()).origin));

      await page.goto(`${px.adminUrl}/dashboard`);
      await page.waitForSelector("#auth", { state: "visible", timeout: 20_000 });
      await page.fill("#token", TOKEN);
      await page.click("#auth button");

      const routeRow = page.locator("#routes tbody tr", { hasText: "shop" });
      await routeRow.waitFor({ timeout: 20_000 });
      // Live: traffic between two polls shows up as a non-zero rate on a later refresh.
      const firstUpdate = await page.getAttribute("#status", "data-updated");
      await traffic(30);
      for (let i = 0; i < 2; i++) await (await fetch(`${px.url}/legacy`)).body?.cancel();
      // (The page's CSP forbids eval, so poll the attribute from here rather than waitForFunction.)
      const deadline = Date.now() + 20_000;
      while (await page.getAttribute("#status", "data-updated") === firstUpdate) {
        assert.ok(Date.now() < deadline, "the page refreshed within 20 s");
        await new Promise((r) => setTimeout(r, 100));
      }
      const cells = await routeRow.locator("td").allTextContents();
      assert.equal(cells[0], "public");
      assert.equal(cells[1], "shop");
      assert.ok(Number(cells[6]) >= 50, `total requests: ${cells[6]}`);
      assert.match(cells[3]!, /ms$/, "p50 shown");
      assert.match(cells[4]!, /ms$/, "p99 shown");

      const legacy = await page.locator("#routes tbody tr", { hasText: "legacy" }).locator("td")
        .allTextContents();
      assert.equal(legacy[5], "100.0 %", "the failing route's 5xx rate over the last interval");

      const deadRow = page.locator("#endpoints tbody tr", { hasText: dead });
      assert.deepEqual((await deadRow.locator("td").allTextContents()).slice(0, 5), [
        "dead",
        dead,
        "healthy",
        "in rotation",
        "open",
      ]);
      const errors = await page.locator("#errors tbody tr").allTextContents();
      assert.ok(errors.some((t) => t.includes("UF") && t.includes("legacy")), "502 UF listed");
      assert.ok(errors.some((t) => t.includes("UO") && t.includes("breaker")), "503 UO listed");

      assert.deepEqual([...origins], [new URL(px.adminUrl!).origin], "no CDN, nothing external");
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
