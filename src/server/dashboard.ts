/**
 * The dashboard served at /dashboard on the admin listener: one self-contained page (inline CSS,
 * script and SVG; no build step, no CDN, works offline) polling /stats every second.
 *
 * - Live tables: rates and quantiles from the difference between two polls of cumulative
 *   counts, the way PromQL's rate() and histogram_quantile() work, so nothing is recorded for it.
 * - History: every 5th poll asks `/stats?history=1` for the last 15 minutes per route (sampled
 *   server-side every 5 s, see admin_stats.ts) and draws requests/s, p50/p99 and the 4xx, 429
 *   and 5xx shares as inline SVG sparklines.
 *
 * `dashboardHtml(tokenRequired)` tells the page whether to ask for the admin token before its
 * first request, so an expected 401 never reaches the browser console.
 */
export function dashboardHtml(tokenRequired: boolean): string {
  return DASHBOARD_HTML.replace("{{TOKEN_REQUIRED}}", tokenRequired ? "true" : "false");
}

const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ferry dashboard</title>
<link rel="icon" href="data:,">
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f6f7f9; }
  body { margin: 0 auto; max-width: 1280px; padding: 16px 24px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 24px 0 8px; text-transform: uppercase; letter-spacing: .04em; color: #556; }
  #status { color: #667; font-size: 13px; }
  table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e3e6eb; }
  th { background: #eef0f4; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .ok { color: #17803d; } .bad { color: #c0262d; font-weight: 600; } .warn { color: #b26b00; }
  .muted { color: #778; }
  .flag { font-family: ui-monospace, monospace; background: #fde8e8; padding: 1px 5px; border-radius: 3px; }
  #auth { display: none; background: #fff3cd; padding: 10px; margin: 12px 0; }
  .empty { color: #889; font-style: italic; }
  #history { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 10px; }
  .card { background: #fff; border: 1px solid #e3e6eb; padding: 8px 10px; }
  .card h3 { font-size: 13px; margin: 0 0 6px; }
  .charts { display: flex; gap: 10px; }
  .chart-box { flex: 1; font-size: 11px; color: #667; }
  .chart-box svg { display: block; width: 100%; height: 56px; background: #fafbfc; border: 1px solid #eef0f4; }
  .key { display: inline-block; width: 10px; height: 3px; vertical-align: middle; margin: 0 3px 0 6px; }
</style>
</head>
<body data-token-required="{{TOKEN_REQUIRED}}">
<h1>Ferry</h1>
<div id="status">connecting…</div>
<form id="auth">
  This admin listener needs a bearer token:
  <input id="token" type="password" autocomplete="off" size="40">
  <button type="submit">Use token</button>
</form>

<h2>Routes (live)</h2>
<table id="routes">
  <thead><tr><th>Route</th><th>Listeners</th><th>Req/s</th><th>p50</th><th>p99</th>
  <th>4xx</th><th>429</th><th>5xx</th><th>Requests</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Routes, last 15 minutes <span id="span" class="muted"></span></h2>
<div id="history"><div class="empty">no requests yet</div></div>

<h2>Endpoints</h2>
<table id="endpoints">
  <thead><tr><th>Cluster</th><th>Endpoint</th><th>Health</th><th>Breaker</th><th>Req/s</th>
  <th>p50</th><th>p99</th><th>Errors</th><th>Failed</th><th>In flight</th><th>Weight</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Proxy-made errors by route, flag and reason</h2>
<table id="errors">
  <thead><tr><th>Route</th><th>Flag</th><th>Status</th><th>Reason</th><th>Count</th>
  <th>Last seen</th><th>Last request id</th></tr></thead>
  <tbody></tbody>
</table>

<script>
"use strict";
const POLL_MS = 1000;
const HISTORY_EVERY = 5;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = { rps: "#2f6fd6", p50: "#2f6fd6", p99: "#8a3ffc", r4xx: "#b26b00", r429: "#d4a106", r5xx: "#c0262d" };
let previous = null;
let polls = 0;
let token = sessionStorage.getItem("ferry-admin-token") || "";
const tokenRequired = document.body.dataset.tokenRequired === "true";

document.getElementById("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("ferry-admin-token", token);
  document.getElementById("auth").style.display = "none";
  polls = 0;
  poll();
});

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function fill(tableId, rows, empty) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = document.querySelectorAll("#" + tableId + " th").length;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const cells of rows) {
    const tr = document.createElement("tr");
    tr.append(...cells);
    body.append(tr);
  }
}

/** Linear interpolation inside the bucket holding rank q, as histogram_quantile() does. */
function quantile(q, buckets) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const [le, count] of buckets) {
    if (count >= rank) {
      if (le === null) return prevLe;
      const inBucket = count - prevCount;
      return inBucket > 0 ? prevLe + (le - prevLe) * (rank - prevCount) / inBucket : le;
    }
    prevLe = le === null ? prevLe : le;
    prevCount = count;
  }
  return prevLe;
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const v = seconds * 1000;
  return (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms";
}

function pct(share) {
  return share === null ? "–" : (share * 100).toFixed(1) + " %";
}

/** Counts and buckets between two polls (everything since start on the first one). */
function delta(now, before, fields) {
  const out = {};
  for (const f of fields) out[f] = before ? now[f] - before[f] : now[f];
  out.buckets = now.buckets.map(([le, n], i) =>
    [le, before && before.buckets[i] ? n - before.buckets[i][1] : n]);
  return out;
}

function routeRows(now, before) {
  const old = new Map((before ? before.routes : []).map((r) => [r.route, r]));
  const dt = before ? (now.at - before.at) / 1000 : 0;
  return now.routes.map((r) => {
    const d = delta(r, old.get(r.route), ["requests", "c4xx", "c429", "c5xx"]);
    const share = (n) => d.requests > 0 ? n / d.requests : null;
    const s4 = share(d.c4xx), s429 = share(d.c429), s5 = share(d.c5xx);
    return [
      cell(r.route),
      cell(r.listeners.join(", ")),
      cell((dt > 0 ? d.requests / dt : 0).toFixed(1), "num"),
      cell(ms(quantile(0.5, d.buckets)), "num"),
      cell(ms(quantile(0.99, d.buckets)), "num"),
      cell(pct(s4), "num " + (s4 > 0 ? "warn" : "ok")),
      cell(pct(s429), "num " + (s429 > 0 ? "warn" : "ok")),
      cell(pct(s5), "num " + (s5 > 0 ? "bad" : "ok")),
      cell(String(r.requests), "num"),
    ];
  });
}

const HEALTH_CLASS = {
  "healthy": "ok",
  "not checked": "muted",
  "failing checks": "bad",
  "ejected (outlier)": "bad",
  "slow start": "warn",
};

function endpointRows(now, before) {
  const old = new Map();
  for (const c of before ? before.clusters : []) {
    for (const e of c.endpoints) old.set(c.name + " " + e.origin, e);
  }
  const dt = before ? (now.at - before.at) / 1000 : 0;
  const rows = [];
  for (const c of now.clusters) {
    for (const e of c.endpoints) {
      const d = delta(e, old.get(c.name + " " + e.origin), ["requests", "errors"]);
      const errShare = d.requests > 0 ? d.errors / d.requests : null;
      rows.push([
        cell(c.name),
        cell(e.origin),
        cell(e.health, HEALTH_CLASS[e.health] || ""),
        cell(e.breaker === null ? "–" : e.breaker,
          e.breaker === "open" ? "bad" : e.breaker === "half_open" ? "warn" : "ok"),
        cell((dt > 0 ? d.requests / dt : 0).toFixed(1), "num"),
        cell(ms(quantile(0.5, d.buckets)), "num"),
        cell(ms(quantile(0.99, d.buckets)), "num"),
        cell(pct(errShare), "num " + (errShare > 0 ? "bad" : "ok")),
        cell(String(e.errors), "num " + (e.errors > 0 ? "bad" : "")),
        cell(String(e.in_flight), "num"),
        cell(e.effective_weight === e.weight ? String(e.weight)
          : e.effective_weight.toFixed(1) + " / " + e.weight, "num"),
      ]);
    }
  }
  return rows;
}

function errorRows(stats) {
  return stats.error_groups.map((g) => {
    const flag = document.createElement("td");
    const span = document.createElement("span");
    span.className = "flag";
    span.textContent = g.flag;
    flag.append(span);
    return [
      cell(g.route === null ? "–" : g.route),
      flag,
      cell(String(g.status), "num"),
      cell(g.reason),
      cell(String(g.count), "num"),
      cell(new Date(g.last_at).toLocaleTimeString()),
      cell(g.last_request_id, "muted"),
    ];
  });
}

function svgEl(name, attrs) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/**
 * One sparkline box: a line per series from \`start\` to \`end\` (the last 15 minutes, or since
 * Ferry started if that is shorter); a point with no neighbour is drawn as a dot.
 */
function chart(title, series, at, start, end, format) {
  const W = 300, H = 56;
  const box = document.createElement("div");
  box.className = "chart-box";
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none" });
  for (const s of series) {
    const pts = [];
    s.values.forEach((v, i) => {
      if (v === null) return;
      const x = end > start ? W * (at[i] - start) / (end - start) : W;
      const y = H - 2 - (H - 4) * (max > 0 ? v / max : 0);
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
      const alone = (s.values[i - 1] ?? null) === null && (s.values[i + 1] ?? null) === null;
      if (alone) {
        svg.append(svgEl("circle", { cx: x.toFixed(1), cy: y.toFixed(1), r: 2, fill: COLORS[s.name] }));
      }
    });
    svg.append(svgEl("polyline", {
      points: pts.join(" "),
      fill: "none",
      stroke: COLORS[s.name],
      "stroke-width": 1.5,
      "vector-effect": "non-scaling-stroke",
      "data-series": s.name,
    }));
  }
  const legend = document.createElement("div");
  legend.append(title + " ");
  for (const s of series) {
    const key = document.createElement("span");
    key.className = "key";
    key.style.background = COLORS[s.name];
    legend.append(key, s.label);
  }
  legend.append(" · max " + format(max));
  box.append(legend, svg);
  return box;
}

function drawHistory(h) {
  const root = document.getElementById("history");
  root.replaceChildren();
  if (!h.routes.length) {
    const empty = document.createElement("div");
    empty.className = "empty";
    empty.textContent = "no requests yet";
    root.append(empty);
    return;
  }
  const end = h.at.length ? h.at[h.at.length - 1] : Date.now();
  const start = Math.max(end - h.window_ms, h.at.length ? h.at[0] - h.step_ms : end);
  for (const r of h.routes) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.route = r.route;
    const title = document.createElement("h3");
    title.textContent = r.route;
    const charts = document.createElement("div");
    charts.className = "charts";
    charts.append(
      chart("requests/s", [{ name: "rps", label: "req/s", values: r.rps }], h.at, start, end,
        (v) => v.toFixed(1)),
      chart("latency", [
        { name: "p50", label: "p50", values: r.p50 },
        { name: "p99", label: "p99", values: r.p99 },
      ], h.at, start, end, ms),
      chart("errors", [
        { name: "r4xx", label: "4xx", values: r.r4xx },
        { name: "r429", label: "429", values: r.r429 },
        { name: "r5xx", label: "5xx", values: r.r5xx },
      ], h.at, start, end, pct),
    );
    card.append(title, charts);
    root.append(card);
  }
  root.dataset.points = String(h.at.length);
  const minutes = Math.round((end - start) / 60000);
  document.getElementById("span").textContent = minutes < 15
    ? "(since start: " + (minutes < 1 ? Math.round((end - start) / 1000) + " s" : minutes + " min") + ")"
    : "";
}

function askForToken(text) {
  document.getElementById("status").textContent = text;
  document.getElementById("auth").style.display = "block";
}

async function poll() {
  const status = document.getElementById("status");
  const withHistory = polls % HISTORY_EVERY === 0;
  try {
    const res = await fetch(withHistory ? "stats?history=1" : "stats", {
      headers: token ? { authorization: "Bearer " + token } : {},
      cache: "no-store",
    });
    if (res.status === 401) {
      askForToken("unauthorized: the token was not accepted");
      return;
    }
    const stats = await res.json();
    polls++;
    fill("routes", routeRows(stats, previous), "no requests yet");
    fill("endpoints", endpointRows(stats, previous), "no clusters");
    fill("errors", errorRows(stats), "no proxy-made errors");
    if (stats.history) drawHistory(stats.history);
    previous = stats;
    status.textContent = "config version " + stats.config_version + " · updated " +
      new Date(stats.at).toLocaleTimeString() + " · " + stats.errors_total + " proxy-made errors since start";
    status.dataset.updated = String(stats.at);
  } catch (err) {
    status.textContent = "admin API unreachable: " + err;
  }
  setTimeout(poll, POLL_MS);
}

if (tokenRequired && !token) askForToken("this admin listener needs a token");
else poll();
</script>
</body>
</html>
`;
