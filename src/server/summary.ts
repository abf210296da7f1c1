/** The human summary printed by `--check`, and the warnings it finds (shadowed routes). */
import type { Snapshot } from "./compile.ts";

export function describeSnapshot(s: Snapshot): { text: string; warnings: string[] } {
  const cfg = s.config;
  const lines: string[] = [`config ${s.source}: OK`];
  lines.push(`listeners (${cfg.listeners.length}):`);
  for (const l of cfg.listeners) {
    const ext = l.middleware?.length
      ? `  middleware ${l.middleware.map((x) => x.module ?? x.name).join(", ")}`
      : "";
    lines.push(
      `  ${l.name}  ${l.address}  ${l.tls ? "https (h2, http/1.1)" : "http (http/1.1, h2c)"}${ext}`,
    );
  }
  if (cfg.admin) lines.push(`admin: ${cfg.admin.address}`);
  lines.push(`routes (${cfg.routes.length}):`);
  for (const r of cfg.routes) {
    const m = r.match;
    const path = "exact" in m.path
      ? `= ${m.path.exact}`
      : "prefix" in m.path
      ? `${m.path.prefix}*`
      : `~ ${m.path.regex}`;
    const target = r.cluster
      ? `-> cluster ${r.cluster}`
      : r.direct_response
      ? `-> ${r.direct_response.status} direct`
      : `-> redirect ${r.redirect!.status}`;
    const extra = [
      m.methods ? `methods ${m.methods.join(",")}` : "",
      m.headers ? `headers ${Object.keys(m.headers).join(",")}` : "",
      m.query ? `query ${Object.keys(m.query).join(",")}` : "",
    ].filter(Boolean).join("; ");
    const ext = r.middleware?.length
      ? `  middleware ${r.middleware.map((x) => x.module ?? x.name).join(", ")}`
      : "";
    lines.push(
      `  ${r.name}  ${m.host ?? "*"} ${path} ${extra ? `(${extra}) ` : ""}${target}${ext}`,
    );
  }
  lines.push(`clusters (${cfg.clusters.length}):`);
  for (const c of cfg.clusters) {
    const dns = c.discovery?.dns;
    const eps = dns
      ? `dns ${dns.type} ${dns.name}${dns.port ? ` port ${dns.port}` : ""} every ${dns.interval} ms`
      : (c.endpoints ?? []).map((e) => typeof e === "string" ? e : `${e.url} w=${e.weight}`)
        .join(", ");
    lines.push(`  ${c.name}  ${c.lb}  ${c.protocol}  [${eps}]`);
  }
  const warnings: string[] = [];
  for (const plan of s.listeners.values()) {
    for (const sh of plan.router.shadowed()) {
      warnings.push(
        `warning: listener ${plan.name}: route ${sh.route} can never match: ${sh.reason} (shadowed by ${sh.by})`,
      );
    }
  }
  // An unused cluster is the loader's warning (with its file:line), printed once by main.ts.
  if (warnings.length) lines.push(...warnings);
  return { text: lines.join("\n"), warnings };
}
