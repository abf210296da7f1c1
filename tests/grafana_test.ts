/**
 * The Grafana dashboard in dashboards/ queries only metrics Ferry defines, with label names
 * those metrics carry, and the docs' metrics table lists exactly the metrics Ferry defines.
 */
import assert from "node:assert/strict";
import { FerryMetrics } from "../src/observability/metrics.ts";
import { registerMiddlewareMetrics } from "../src/server/extensions.ts";
import { registerCertificateExpiry } from "../src/server/tls_material.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Every metric family Ferry exports, with its label names and the sample names it produces. */
function definedMetrics(): Map<string, Set<string>> {
  const m = new FerryMetrics({ processMetrics: true });
  const out = new Map<string, Set<string>>();
  for (const metric of m.registry.getMetricsAsArray()) {
    const { name, type, labelNames } = metric as unknown as {
      name: string;
      type: string;
      labelNames?: string[];
    };
    const labels = new Set(labelNames ?? []);
    if (type === "histogram") {
      out.set(`${name}_bucket`, new Set([...labels, "le"]));
      out.set(`${name}_sum`, labels);
      out.set(`${name}_count`, labels);
    } else out.set(name, labels);
  }
  return out;
}

interface Target {
  expr: string;
}
interface Panel {
  type: string;
  title: string;
  targets?: Target[];
  panels?: Panel[];
}

Deno.test("every metric and label the Grafana dashboard queries exists in Ferry's /metrics", async () => {
  const dash = JSON.parse(await Deno.readTextFile(`${ROOT}dashboards/ferry-grafana.json`));
  const defined = definedMetrics();
  const exprs: string[] = [];
  const walk = (ps: Panel[]) => {
    for (const p of ps) {
      if (p.type !== "row") {
        assert.ok((p.targets ?? []).length > 0, `panel "${p.title}" has a query`);
      }
      for (const t of p.targets ?? []) exprs.push(t.expr);
      walk(p.panels ?? []);
    }
  };
  walk(dash.panels);
  for (const v of dash.templating.list) if (v.type === "query") exprs.push(v.query);
  assert.ok(exprs.length >= 15);

  let checked = 0;
  for (const expr of exprs) {
    const used = [...expr.matchAll(/\b((?:ferry|process|nodejs)_[a-z0-9_]+)(\{[^}]*\})?/g)];
    assert.ok(used.length > 0, `query names a metric: ${expr}`);
    const labelsHere = new Set<string>();
    for (const [, name, matchers] of used) {
      const labels = defined.get(name!);
      assert.ok(labels, `${name} is a metric Ferry exports (in: ${expr})`);
      for (const l of labels) labelsHere.add(l);
      for (const [, label] of (matchers ?? "").matchAll(/([a-z_]+)\s*(?:=~|!~|!=|=)/g)) {
        assert.ok(labels.has(label!), `${name} has label ${label}`);
      }
      checked++;
    }
    for (const by of expr.matchAll(/\bby \(([^)]*)\)/g)) {
      for (const label of by[1]!.split(",").map((s) => s.trim())) {
        assert.ok(labelsHere.has(label), `"by (${label})" names a label of the metric: ${expr}`);
      }
    }
    for (const lv of expr.matchAll(/label_values\([a-z_]+, ([a-z_]+)\)/g)) {
      assert.ok(labelsHere.has(lv[1]!), `label_values uses a real label: ${expr}`);
    }
  }
  assert.ok(checked >= 20, `checked ${checked} metric references`);
});

Deno.test("docs/observability.md lists every Ferry metric, and no metric that does not exist", async () => {
  const doc = await Deno.readTextFile(`${ROOT}docs/observability.md`);
  const documented = new Set(
    [...doc.matchAll(/^\| `(ferry_[a-z0-9_]+)`\s+\|/gm)].map((m) => m[1]!),
  );
  const m = new FerryMetrics();
  // Metrics their owners register once they are in use (extension middleware).
  registerMiddlewareMetrics(m);
  // Metrics their owners register on the process's registry (not defined in metrics.ts).
  registerCertificateExpiry(m.registry, () => []);
  const defined = new Set(
    m.registry.getMetricsAsArray().map((x) => (x as unknown as { name: string }).name),
  );
  assert.deepEqual([...documented].sort(), [...defined].sort());
  // And each row's Labels column names the metric's labels.
  for (const row of doc.matchAll(/^\| `(ferry_[a-z0-9_]+)`\s+\|[^|]*\|([^|]*)\|/gm)) {
    const metric = m.registry.getSingleMetric(row[1]!) as unknown as { labelNames: string[] };
    const labels = [...row[2]!.matchAll(/`([a-z_]+)`/g)].map((x) => x[1]!);
    assert.deepEqual(labels, [...metric.labelNames], `labels of ${row[1]}`);
  }
});
