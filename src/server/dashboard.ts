/**
 * The live dashboard served at /dashboard on the admin listener: one self-contained page (inline
 * CSS and script, no build step, no CDN, works offline) polling /stats every second. Rates and
 * quantiles come from the difference between two polls of cumulative counts, the way PromQL's
 * rate() and histogram_quantile() work, so the page needs nothing recorded just for it.
 */
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ferry dashboard</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f6f7f9; }
  body { margin: 0 auto; max-width: 1200px; padding: 16px 24px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  h2 { font-size: 15px; margin: 24px 0 8px; text-transform: uppercase; letter-spacing: .04em; color: #556; }
  #status { color: #667; font-size: 13px; }
  table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
  th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #e3e6eb; }
  th { background: #eef0f4; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .ok { color: #17803d; } .bad { color: #c0262d; font-weight: 600; } .warn { color: #b26b00; }
  .flag { font-family: ui-monospace, monospace; background: #fde8e8; padding: 1px 5px; border-radius: 3px; }
  #auth { display: none; background: #fff3cd; padding: 10px; margin: 12px 0; }
  .empty { color: #889; font-style: italic; }
</style>
</head>
<body>
<h1>Ferry</h1>
<div id="status">connecting…</div>
<form id="auth">
  This admin listener needs a bearer token:
  <input id="token" type="password" autocomplete="off" size="40">
  <button type="submit">Use token</button>
</form>

<h2>Routes</h2>
<table id="routes">
  <thead><tr><th>Listener</th><th>Route</th><th>Req/s</th><th>p50</th><th>p99</th>
  <th>5xx rate</th><th>Requests</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Endpoints</h2>
<table id="endpoints">
  <thead><tr><th>Cluster</th><th>Endpoint</th><th>Health</th><th>Outlier</th><th>Breaker</th>
  <th>In flight</th></tr></thead>
  <tbody></tbody>
</table>

<h2>Recent proxy-made errors</h2>
<table id="errors">
  <thead><tr><th>Time</th><th>Status</th><th>Flag</th><th>Route</th><th>Reason</th>
  <th>Request id</th></tr></thead>
  <tbody></tbody>
</table>

<script>
"use strict";
const POLL_MS = 1000;
let previous = null;
let token = sessionStorage.getItem("ferry-admin-token") || "";

document.getElementById("auth").addEventListener("submit", (e) => {
  e.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("ferry-admin-token", token);
  document.getElementById("auth").style.display = "none";
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
  if (seconds === null) return "–";
  const v = seconds * 1000;
  return (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms";
}

function routeRows(now, before) {
  const old = new Map((before ? before.routes : []).map((r) => [r.listener + "/" + r.route, r]));
  const dt = before ? (now.at - before.at) / 1000 : 0;
  return now.routes.map((r) => {
    const p = old.get(r.listener + "/" + r.route);
    // Between two polls: deltas. On the first poll: everything since start.
    const reqs = p ? r.requests - p.requests : r.requests;
    const errs = p ? r.errors - p.errors : r.errors;
    const buckets = r.buckets.map(([le, n], i) => [le, p && p.buckets[i] ? n - p.buckets[i][1] : n]);
    const rate = dt > 0 ? reqs / dt : 0;
    const errRate = reqs > 0 ? errs / reqs : 0;
    return [
      cell(r.listener),
      cell(r.route),
      cell(rate.toFixed(1), "num"),
      cell(ms(quantile(0.5, buckets)), "num"),
      cell(ms(quantile(0.99, buckets)), "num"),
      cell((errRate * 100).toFixed(1) + " %", "num " + (errRate > 0 ? "bad" : "ok")),
      cell(String(r.requests), "num"),
    ];
  });
}

function endpointRows(stats) {
  const rows = [];
  for (const c of stats.clusters) {
    for (const e of c.endpoints) {
      rows.push([
        cell(c.name),
        cell(e.origin),
        cell(e.healthy ? "healthy" : "unhealthy", e.healthy ? "ok" : "bad"),
        cell(e.ejected ? "ejected" : "in rotation", e.ejected ? "bad" : "ok"),
        cell(e.breaker === null ? "–" : e.breaker,
          e.breaker === "open" ? "bad" : e.breaker === "half_open" ? "warn" : "ok"),
        cell(String(e.in_flight), "num"),
      ]);
    }
  }
  return rows;
}

function errorRows(stats) {
  return stats.recent_errors.map((e) => {
    const flag = cell(e.flag);
    flag.firstChild.remove();
    const span = document.createElement("span");
    span.className = "flag";
    span.textContent = e.flag;
    flag.append(span);
    return [
      cell(new Date(e.at).toLocaleTimeString()),
      cell(String(e.status), "num"),
      flag,
      cell(e.route === null ? "–" : e.route),
      cell(e.reason),
      cell(e.request_id),
    ];
  });
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const res = await fetch("stats", {
      headers: token ? { authorization: "Bearer " + token } : {},
      cache: "no-store",
    });
    if (res.status === 401) {
      status.textContent = "unauthorized";
      document.getElementById("auth").style.display = "block";
      return;
    }
    const stats = await res.json();
    fill("routes", routeRows(stats, previous), "no requests yet");
    fill("endpoints", endpointRows(stats), "no clusters");
    fill("errors", errorRows(stats), "no proxy-made errors");
    previous = stats;
    status.textContent = "config version " + stats.config_version + " · updated " +
      new Date(stats.at).toLocaleTimeString() + " · " + stats.errors_total + " proxy-made errors since start";
    status.dataset.updated = String(stats.at);
  } catch (err) {
    status.textContent = "admin API unreachable: " + err;
  }
  setTimeout(poll, POLL_MS);
}
poll();
</script>
</body>
</html>
`;
