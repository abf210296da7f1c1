import assert from "node:assert/strict";
import { type DnsServer, startDnsServer } from "../../../tests/fixtures/dns_server.ts";
import {
  type DiscoveryLog,
  DnsDiscovery,
  type DnsDiscoveryConfig,
  type DnsResolver,
  DnsTimeoutError,
  type EndpointDescriptor,
} from "./dns.ts";

/** A real wire-protocol DNS server on loopback for the duration of `fn`. */
async function withDns(fn: (dns: DnsServer) => Promise<void>): Promise<void> {
  const dns = await startDnsServer();
  try {
    await fn(dns);
  } finally {
    await dns.close();
  }
}

function discovery(
  dns: DnsServer,
  config: Omit<DnsDiscoveryConfig, "nameServer">,
  log?: DiscoveryLog,
): DnsDiscovery {
  return new DnsDiscovery(
    { timeout: 1000, ...config, nameServer: { ipAddr: "127.0.0.1", port: dns.port } },
    log ? { log } : {},
  );
}

/** Polls `check` until it holds or `ms` pass (then fails with `what`). */
async function waitFor(what: string, check: () => boolean, ms = 2000): Promise<number> {
  const t0 = performance.now();
  while (!check()) {
    if (performance.now() - t0 > ms) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
  return performance.now() - t0;
}

const urls = (list: readonly EndpointDescriptor[] | undefined) => list?.map((e) => e.url);

Deno.test("A records resolve to sorted, deduplicated http://ip:port endpoints", async () => {
  await withDns(async (dns) => {
    dns.setA("api.test", ["10.0.0.2", "10.0.0.1", "10.0.0.2"]);
    const d = discovery(dns, { name: "api.test", type: "A", port: 8080 });
    assert.deepEqual(await d.resolve(), [
      { url: "http://10.0.0.1:8080", weight: 1 },
      { url: "http://10.0.0.2:8080", weight: 1 },
    ]);
    assert.equal(d.endpoints, undefined, "resolve() alone keeps no state");
  });
});

Deno.test("AAAA records resolve to bracketed IPv6 endpoints with the https scheme", async () => {
  await withDns(async (dns) => {
    dns.setAaaa("v6.test", ["fd00:0:0::2", "::1"]);
    const d = discovery(dns, { name: "v6.test", type: "AAAA", port: 8443, scheme: "https" });
    assert.deepEqual(urls(await d.resolve()), ["https://[::1]:8443", "https://[fd00::2]:8443"]);
  });
});

Deno.test("A+AAAA merges both families, and a name with only one family still works", async () => {
  await withDns(async (dns) => {
    dns.setA("dual.test", ["10.0.0.1"]);
    dns.setAaaa("dual.test", ["fd00::1"]);
    dns.setA("v4only.test", ["10.0.0.9"]);
    const dual = discovery(dns, { name: "dual.test", type: "A+AAAA", port: 80 });
    assert.deepEqual(urls(await dual.resolve()), ["http://10.0.0.1:80", "http://[fd00::1]:80"]);
    const v4 = discovery(dns, { name: "v4only.test", type: "A+AAAA", port: 80 });
    assert.deepEqual(urls(await v4.resolve()), ["http://10.0.0.9:80"]);
  });
});

Deno.test("SRV gives ports and weights from the records, lowest priority group only", async () => {
  await withDns(async (dns) => {
    dns.setSrv("_http._tcp.svc.test", [
      { priority: 10, weight: 3, port: 9001, target: "a.svc.test" },
      { priority: 10, weight: 1, port: 9002, target: "b.svc.test." },
      { priority: 20, weight: 5, port: 9003, target: "backup.svc.test" },
    ]);
    dns.setA("a.svc.test", ["10.1.0.1", "10.1.0.2"]);
    dns.setA("b.svc.test", ["10.1.0.3"]);
    dns.setA("backup.svc.test", ["10.9.0.1"]);
    const d = discovery(dns, { name: "_http._tcp.svc.test", type: "SRV" });
    assert.deepEqual(await d.resolve(), [
      { url: "http://10.1.0.1:9001", weight: 3 },
      { url: "http://10.1.0.2:9001", weight: 3 },
      { url: "http://10.1.0.3:9002", weight: 1 },
    ]);
    // The targets were looked up on the same server, over the real protocol.
    assert.ok(dns.queries.some((q) => q.name === "b.svc.test" && q.type === 1));
  });
});

Deno.test("SRV falls to the next priority when the lowest group has no address", async () => {
  await withDns(async (dns) => {
    dns.setSrv("_h._tcp.fb.test", [
      { priority: 1, weight: 1, port: 80, target: "gone.fb.test" },
      { priority: 1, weight: 1, port: 80, target: "." },
      { priority: 2, weight: 0, port: 81, target: "b1.fb.test" },
      { priority: 2, weight: 0, port: 82, target: "b2.fb.test" },
    ]);
    dns.setA("b1.fb.test", ["10.2.0.1"]);
    dns.setAaaa("b2.fb.test", ["fd00::b2"]);
    const d = discovery(dns, {
      name: "_h._tcp.fb.test",
      type: "SRV",
      srvTargetType: "A+AAAA",
      scheme: "https",
    });
    // Weight 0 everywhere in a group means equal shares (RFC 2782).
    assert.deepEqual(await d.resolve(), [
      { url: "https://10.2.0.1:81", weight: 1 },
      { url: "https://[fd00::b2]:82", weight: 1 },
    ]);
  });
});

Deno.test("SRV weight 0 beside positive weights gets a very small share", async () => {
  await withDns(async (dns) => {
    dns.setSrv("_h._tcp.w.test", [
      { priority: 0, weight: 50, port: 80, target: "x.w.test" },
      { priority: 0, weight: 0, port: 80, target: "y.w.test" },
    ]);
    dns.setA("x.w.test", ["10.3.0.1"]);
    dns.setA("y.w.test", ["10.3.0.2"]);
    const d = discovery(dns, { name: "_h._tcp.w.test", type: "SRV" });
    assert.deepEqual(await d.resolve(), [
      { url: "http://10.3.0.1:80", weight: 50 },
      { url: "http://10.3.0.2:80", weight: 0.5 },
    ]);
  });
});

Deno.test("start() notices an added and a removed address within about one interval", async () => {
  await withDns(async (dns) => {
    dns.setA("live.test", ["10.0.0.1"]);
    const d = discovery(dns, { name: "live.test", port: 80, interval: 100 });
    const changes: string[][] = [];
    try {
      await d.start((eps) => changes.push(urls(eps)!));
      assert.deepEqual(changes, [["http://10.0.0.1:80"]], "first answer is reported at once");

      dns.setA("live.test", ["10.0.0.1", "10.0.0.2"]);
      const addMs = await waitFor("the added address", () => changes.length === 2);
      assert.deepEqual(changes[1], ["http://10.0.0.1:80", "http://10.0.0.2:80"]);

      dns.setA("live.test", ["10.0.0.2"]);
      const removeMs = await waitFor("the removed address", () => changes.length === 3);
      assert.deepEqual(changes[2], ["http://10.0.0.2:80"]);
      assert.ok(addMs < 600 && removeMs < 600, `took ${addMs} / ${removeMs} ms`);

      // Re-resolutions with the same answer (in any order) do not call onChange.
      dns.setA("live.test", ["10.0.0.2", "10.0.0.2"]);
      const before = dns.queries.length;
      await waitFor("three more re-resolutions", () => dns.queries.length >= before + 3);
      assert.equal(changes.length, 3);
      assert.deepEqual(urls(d.endpoints), ["http://10.0.0.2:80"]);
    } finally {
      d.stop();
    }
  });
});

Deno.test("a silent server: resolve() times out within the timeout", async () => {
  await withDns(async (dns) => {
    dns.setA("slow.test", ["10.0.0.1"]);
    dns.setSilent(true);
    const d = discovery(dns, { name: "slow.test", port: 80, timeout: 300 });
    const t0 = performance.now();
    await assert.rejects(d.resolve(), (err: unknown) => {
      assert.ok(err instanceof DnsTimeoutError, String(err));
      assert.equal(err.timeoutMs, 300);
      return true;
    });
    const ms = performance.now() - t0;
    assert.ok(ms >= 250 && ms < 2000, `took ${ms} ms`);
    assert.ok(dns.queries.length >= 1, "the query did reach the server");
  });
});

Deno.test("a silent server: start() keeps the last endpoints, logs, and recovers", async () => {
  await withDns(async (dns) => {
    dns.setA("flaky.test", ["10.0.0.1", "10.0.0.2"]);
    const logs: { level: string; msg: string; fields: Record<string, unknown> }[] = [];
    const d = discovery(
      dns,
      { name: "flaky.test", port: 80, interval: 100, timeout: 300 },
      (level, msg, fields) => logs.push({ level, msg, fields }),
    );
    const changes: string[][] = [];
    try {
      await d.start((eps) => changes.push(urls(eps)!));
      dns.setSilent(true);
      const t0 = performance.now();
      await waitFor("two failed resolutions", () => d.status.consecutiveFailures >= 2, 3000);
      assert.ok(performance.now() - t0 < 2000);
      assert.deepEqual(urls(d.endpoints), ["http://10.0.0.1:80", "http://10.0.0.2:80"]);
      assert.equal(changes.length, 1, "no onChange while failing");
      assert.match(d.status.lastError ?? "", /timed out after 300 ms/);
      const warn = logs.find((l) => l.level === "warn");
      assert.ok(warn, "the failure was logged");
      assert.equal(warn.fields["kept"], 2);

      dns.setA("flaky.test", ["10.0.0.3"]);
      dns.setSilent(false);
      await waitFor("recovery", () => changes.length === 2, 3000);
      assert.deepEqual(changes[1], ["http://10.0.0.3:80"]);
      assert.equal(d.status.consecutiveFailures, 0);
    } finally {
      d.stop();
    }
  });
});

Deno.test("NXDOMAIN: resolve() gives [] and start() empties the cluster (Envoy)", async () => {
  await withDns(async (dns) => {
    const none = discovery(dns, { name: "nowhere.test", port: 80 });
    assert.deepEqual(await none.resolve(), []);

    dns.setA("going.test", ["10.0.0.1"]);
    const d = discovery(dns, { name: "going.test", port: 80, interval: 100 });
    const changes: string[][] = [];
    try {
      await d.start((eps) => changes.push(urls(eps)!));
      dns.remove("going.test");
      await waitFor("the empty answer", () => changes.length === 2);
      assert.deepEqual(changes[1], []);
      assert.deepEqual(d.endpoints, []);
      assert.equal(d.status.consecutiveFailures, 0, "an empty answer is not a failure");
    } finally {
      d.stop();
    }
  });
});

Deno.test("NODATA (name exists, no records of the type) counts as an empty answer", async () => {
  await withDns(async (dns) => {
    dns.setAaaa("v6only.test", ["fd00::1"]);
    const d = discovery(dns, { name: "v6only.test", type: "A", port: 80 });
    assert.deepEqual(await d.resolve(), []);
  });
});

Deno.test("emptyConfirmations: 2 keeps the endpoints through one empty answer", async () => {
  await withDns(async (dns) => {
    dns.setA("blip.test", ["10.0.0.1"]);
    const d = discovery(dns, {
      name: "blip.test",
      port: 80,
      interval: 100,
      emptyConfirmations: 2,
    });
    const changes: string[][] = [];
    try {
      await d.start((eps) => changes.push(urls(eps)!));
      // Deno.resolveDns reports SERVFAIL as NotFound, like NXDOMAIN (measured on 2.9.6).
      dns.setFailure("SERVFAIL");
      const n = dns.queries.length;
      await waitFor("one answered query", () => dns.queries.length === n + 1);
      dns.setFailure(undefined);
      const m = dns.queries.length;
      await waitFor("two more re-resolutions", () => dns.queries.length >= m + 2);
      assert.equal(changes.length, 1, "a single empty answer did not empty the cluster");

      dns.remove("blip.test");
      await waitFor("the confirmed empty answer", () => changes.length === 2);
      assert.deepEqual(changes[1], []);
    } finally {
      d.stop();
    }
  });
});

Deno.test("Deno.resolveDns reports SERVFAIL as an empty answer (recheck on upgrade)", async () => {
  await withDns(async (dns) => {
    dns.setA("sf.test", ["10.0.0.1"]);
    dns.setFailure("SERVFAIL");
    const d = discovery(dns, { name: "sf.test", port: 80 });
    // If this fails after a Deno upgrade, SERVFAIL became distinguishable: treat it as a
    // failure (keep endpoints) and revisit the emptyConfirmations caveat in dns.ts.
    assert.deepEqual(await d.resolve(), []);
  });
});

Deno.test("a resolver that ignores the signal is still cut off at the deadline", async () => {
  let pending: ((v: string[]) => void) | undefined;
  const resolver =
    ((_q: string, _t: string, _o: unknown) =>
      new Promise<string[]>((r) => pending = r)) as unknown as DnsResolver;
  const d = new DnsDiscovery({ name: "x.test", port: 80, timeout: 100 }, { resolver });
  const t0 = performance.now();
  await assert.rejects(d.resolve(), DnsTimeoutError);
  assert.ok(performance.now() - t0 < 1000);
  pending?.(["10.0.0.1"]); // settles late, harmlessly
});

Deno.test("an injected resolver gets nameServer and a signal; errors keep endpoints", async () => {
  const calls: { query: string; type: string; port: number | undefined; signal: boolean }[] = [];
  let fail = false;
  const resolver = ((query: string, type: string, o: { nameServer?: { port?: number } }) => {
    calls.push({ query, type, port: o.nameServer?.port, signal: "signal" in o });
    return fail ? Promise.reject(new Error("network down")) : Promise.resolve(["10.0.0.5"]);
  }) as unknown as DnsResolver;
  const logs: string[] = [];
  const d = new DnsDiscovery(
    { name: "inj.test", port: 81, nameServer: { ipAddr: "127.0.0.1", port: 5353 }, interval: 50 },
    { resolver, log: (_l, msg) => logs.push(msg) },
  );
  const changes: string[][] = [];
  try {
    await d.start((eps) => changes.push(urls(eps)!));
    fail = true;
    await waitFor("a failure", () => d.status.consecutiveFailures >= 1);
    assert.deepEqual(changes, [["http://10.0.0.5:81"]]);
    assert.deepEqual(urls(d.endpoints), ["http://10.0.0.5:81"]);
    assert.match(d.status.lastError ?? "", /network down/);
    assert.deepEqual(calls[0], { query: "inj.test", type: "A", port: 5353, signal: true });
    assert.ok(logs.some((m) => m.includes("keeping the last known endpoints")));
  } finally {
    d.stop();
  }
});

Deno.test("stop() aborts a resolution in flight and no onChange follows", async () => {
  await withDns(async (dns) => {
    dns.setA("stop.test", ["10.0.0.1"]);
    dns.setSilent(true);
    const d = discovery(dns, { name: "stop.test", port: 80, interval: 50, timeout: 1000 });
    let calls = 0;
    const started = d.start(() => calls++);
    await waitFor("the query", () => dns.queries.length >= 1);
    const t0 = performance.now();
    d.stop();
    await started;
    assert.ok(performance.now() - t0 < 200, "stop() cut the resolution short");
    dns.setSilent(false);
    await new Promise((r) => setTimeout(r, 150));
    assert.equal(calls, 0);
    assert.equal(d.status.consecutiveFailures, 0, "a stop is not a failure");
    assert.equal(d.status.running, false);
  });
});

Deno.test("config is validated eagerly with the field named", () => {
  const bad: [DnsDiscoveryConfig, RegExp][] = [
    [{ name: "" }, /^name must/],
    [{ name: "a.test" }, /^port must/],
    [{ name: "a.test", port: 70000 }, /^port must/],
    [{ name: "a.test", port: 80, interval: 0 }, /^interval must/],
    [{ name: "a.test", port: 80, timeout: 1.5 }, /^timeout must/],
    [{ name: "a.test", type: "MX" as "A", port: 80 }, /^type must/],
    [{ name: "a.test", type: "SRV", srvTargetType: "SRV" as "A" }, /^srvTargetType must/],
    [{ name: "a.test", port: 80, nameServer: { ipAddr: "" } }, /^nameServer.ipAddr must/],
    [{ name: "a.test", port: 80, emptyConfirmations: 0 }, /^emptyConfirmations must/],
  ];
  for (const [config, message] of bad) {
    assert.throws(() => new DnsDiscovery(config), (err: unknown) => {
      assert.ok(err instanceof RangeError);
      assert.match(err.message, message);
      return true;
    });
  }
  const d = new DnsDiscovery({ name: "_x._tcp.a.test", type: "SRV" });
  assert.equal(d.config.interval, 5000);
  assert.equal(d.config.timeout, 2000);
  assert.equal(d.config.scheme, "http");
  assert.equal(d.config.srvTargetType, "A");
});

Deno.test("start() twice throws; stop() then start() works again", async () => {
  await withDns(async (dns) => {
    dns.setA("again.test", ["10.0.0.1"]);
    const d = discovery(dns, { name: "again.test", port: 80, interval: 1000 });
    let calls = 0;
    await d.start(() => calls++);
    assert.throws(() => d.start(() => {}), /already running/);
    d.stop();
    await d.start(() => calls++);
    d.stop();
    assert.equal(calls, 2, "each run reports its first answer");
  });
});
