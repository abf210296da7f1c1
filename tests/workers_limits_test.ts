/**
 * `server.workers: 2`: the caps an operator sets for the process hold for the process, not per
 * worker (src/policy/shared_memory.ts): `max_connections`, `max_connections_per_ip`, a cluster's
 * `max_requests` and `max_requests_per_endpoint`; a killed worker's connections stop counting
 * once it is replaced; a worker that crashes at every start is restarted with a growing pause.
 * Real Ferry processes, raw sockets; FERRY_WORKER_HEADER=1 tags each response with its worker.
 */
import assert from "node:assert/strict";
import { metricValue, spawnFerry, type Started, startUpstream, tempConfig } from "./helpers.ts";

const ENV = { FERRY_WORKER_HEADER: "1", FERRY_TEST_HOOKS: "1" };

function config(server: string, extra = ""): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0" }
server: { workers: 2, watch_config: false, drain_timeout: 5s, ${server} }
routes:
  - name: version
    match: { path: { exact: /version } }
    direct_response: { status: 200, body: "v" }
${extra}`;
}

/** A keep-alive connection that sent one request: its status and the worker that answered. */
interface Asked {
  readonly conn: Deno.TcpConn;
  readonly status: number;
  readonly worker: string;
}

/** Opens a connection, sends `GET path` (keep-alive) and reads the response head and body. */
async function ask(port: number, path = "/version"): Promise<Asked> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nhost: t\r\n\r\n`));
  const text = await readResponse(conn, 10_000);
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
  const worker = /\r\nx-ferry-worker: (\d+)/i.exec(text)?.[1] ?? "";
  return { conn, status, worker };
}

/** Reads one response with a Content-Length body, or until the server closes, within `ms`. */
async function readResponse(conn: Deno.Conn, ms: number): Promise<string> {
  let text = "";
  const buf = new Uint8Array(16 * 1024);
  const deadline = Date.now() + ms;
  const decoder = new TextDecoder();
  while (Date.now() < deadline) {
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"t">((r) => setTimeout(() => r("t"), Math.max(1, deadline - Date.now()))),
    ]);
    if (n === "t" || n === null) break;
    text += decoder.decode(buf.subarray(0, n));
    const head = text.indexOf("\r\n\r\n");
    const cl = /content-length: (\d+)/i.exec(text);
    if (head >= 0 && cl && text.length >= head + 4 + Number(cl[1])) break;
  }
  return text;
}

function closeAll(held: Asked[]): void {
  for (const h of held) {
    try {
      h.conn.close();
    } catch { /* closed */ }
  }
}

async function stop(ferry: Started): Promise<void> {
  try {
    ferry.child.kill("SIGKILL");
  } catch { /* gone */ }
  await ferry.child.status;
}

/**
 * Opens connections one at a time until `want` are admitted (200) or `tries` were made; the
 * admitted stay open. Refusals on the way are returned too.
 */
async function admitUpTo(port: number, want: number, tries: number) {
  const admitted: Asked[] = [];
  const refused: Asked[] = [];
  for (let i = 0; i < tries && admitted.length < want; i++) {
    const a = await ask(port);
    (a.status === 200 ? admitted : refused).push(a);
  }
  return { admitted, refused };
}

Deno.test("workers: 2 — max_connections holds for the process: N served over both workers, the rest refused", async () => {
  const ferry = await spawnFerry(["--config", await tempConfig(config("max_connections: 4"))], ENV);
  const port = Number(new URL(ferry.listeners.get("public")!).port);
  const held: Asked[] = [];
  try {
    for (let i = 0; i < 4; i++) {
      const a = await ask(port);
      held.push(a);
      assert.equal(a.status, 200, `connection ${i + 1} of 4`);
    }
    // Ten more, each landing on either worker (the kernel picks): all refused, whichever it is.
    for (let i = 0; i < 10; i++) {
      const extra = await ask(port);
      held.push(extra);
      assert.equal(extra.status, 503, `connection ${5 + i} (over the cap of 4)`);
    }
    // Closing one admitted connection makes room for exactly one.
    const gone = held.shift()!;
    gone.conn.close();
    let next: Asked | undefined;
    for (let i = 0; i < 50; i++) {
      next = await ask(port);
      held.push(next);
      if (next.status === 200) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(next?.status, 200, "a freed connection slot is taken again");
    const after = await ask(port);
    held.push(after);
    assert.equal(after.status, 503);
  } finally {
    closeAll(held);
    await stop(ferry);
  }
});

Deno.test("workers: 2 — max_connections_per_ip holds for the process", async () => {
  const ferry = await spawnFerry(
    ["--config", await tempConfig(config("max_connections_per_ip: 3"))],
    ENV,
  );
  const port = Number(new URL(ferry.listeners.get("public")!).port);
  const held: Asked[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const a = await ask(port);
      held.push(a);
      assert.equal(a.status, 200, `connection ${i + 1} of 3`);
    }
    for (let i = 0; i < 10; i++) {
      const extra = await ask(port);
      held.push(extra);
      assert.equal(extra.status, 503, `connection ${4 + i} from the same address`);
    }
  } finally {
    closeAll(held);
    await stop(ferry);
  }
});

/** Answers after `?ms=`, counting the requests that reached it. */
function slowUpstream() {
  let hits = 0;
  const up = startUpstream(async (req) => {
    hits++;
    const ms = Number(new URL(req.url).searchParams.get("ms") ?? "0");
    await new Promise((r) => {
      const t = setTimeout(r, ms);
      req.signal.addEventListener("abort", () => (clearTimeout(t), r(undefined)));
    });
    return new Response(`slept ${ms}`);
  });
  return { ...up, hits: () => hits };
}

/** Keep-alive connections until one is served by `worker` (the others are closed). */
async function onWorker(port: number, worker: string): Promise<Deno.TcpConn> {
  for (let i = 0; i < 60; i++) {
    const a = await ask(port);
    if (a.status === 200 && a.worker === worker) return a.conn;
    a.conn.close();
  }
  throw new Error(`no connection landed on worker ${worker} in 60 tries`);
}

Deno.test("workers: 2 — a cluster's max_requests and max_requests_per_endpoint hold across workers", async () => {
  const up = slowUpstream();
  const yaml = config(
    "max_connections: 100",
    `  - { name: wide, match: { path: { prefix: /wide } }, cluster: capped, timeout: 30s }
  - { name: narrow, match: { path: { prefix: /narrow } }, cluster: per-endpoint, timeout: 30s }
clusters:
  - name: capped
    endpoints: ["${up.url}"]
    limits: { max_requests: 2 }
  - name: per-endpoint
    endpoints: ["${up.url}"]
    limits: { max_requests_per_endpoint: 1 }
`,
  );
  const ferry = await spawnFerry(["--config", await tempConfig(yaml)], ENV);
  const port = Number(new URL(ferry.listeners.get("public")!).port);
  const zero = await onWorker(port, "0");
  const one = await onWorker(port, "1");
  const send = (conn: Deno.Conn, path: string) =>
    conn.write(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nhost: t\r\n\r\n`));
  try {
    // max_requests: 2, one slow request in flight through each worker: the process is full.
    await send(zero, "/wide?ms=3000");
    await send(one, "/wide?ms=3000");
    for (let i = 0; i < 50 && up.hits() < 2; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(up.hits(), 2);
    for (let i = 0; i < 6; i++) {
      const third = await ask(port, "/wide?ms=0");
      third.conn.close();
      assert.equal(
        third.status,
        503,
        `request ${i + 1} over max_requests (worker ${third.worker})`,
      );
    }
    assert.equal(up.hits(), 2, "no request over the cap reached the upstream");
    const done = await Promise.all([readResponse(zero, 10_000), readResponse(one, 10_000)]);
    for (const text of done) assert.match(text, /^HTTP\/1\.1 200/);

    // max_requests_per_endpoint: 1, one slow request through worker 0: worker 1 has no room.
    await send(zero, "/narrow?ms=2000");
    for (let i = 0; i < 50 && up.hits() < 3; i++) await new Promise((r) => setTimeout(r, 50));
    await send(one, "/narrow?ms=0");
    assert.match(await readResponse(one, 10_000), /^HTTP\/1\.1 503/);
    assert.match(await readResponse(zero, 10_000), /^HTTP\/1\.1 200/);
    assert.equal(up.hits(), 3);
    const metrics = await (await fetch(`${ferry.admin}/metrics`)).text();
    assert.ok((metricValue(metrics, "ferry_upstream_overflow_total") ?? 0) >= 7, metrics);
  } finally {
    zero.close();
    one.close();
    await stop(ferry);
    await up.close();
  }
});

Deno.test("workers: 2 — a killed worker's connections stop counting against max_connections once it is replaced", async () => {
  const ferry = await spawnFerry(["--config", await tempConfig(config("max_connections: 4"))], ENV);
  const port = Number(new URL(ferry.listeners.get("public")!).port);
  let held: Asked[] = [];
  try {
    // Fill the cap with at least one connection on each worker (retry until the kernel's
    // spread gives that; a full cap refuses the rest meanwhile).
    for (let round = 0; round < 10; round++) {
      const { admitted } = await admitUpTo(port, 4, 8);
      held = admitted;
      assert.equal(held.length, 4);
      if (new Set(held.map((h) => h.worker)).size === 2) break;
      closeAll(held);
      held = [];
      await new Promise((r) => setTimeout(r, 300));
    }
    const onOne = held.filter((h) => h.worker === "1").length;
    assert.ok(onOne > 0 && onOne < 4, "both workers hold connections");
    assert.equal((await ask(port)).status, 503, "the cap is full");

    const killed = await fetch(`${ferry.admin}/debug/kill-worker?index=1`, { method: "POST" });
    assert.deepEqual(await killed.json(), { killed: true });
    let replaced = false;
    for (let i = 0; i < 100 && !replaced; i++) {
      replaced = ferry.logs.some((l) => l.includes('"worker replaced"'));
      if (!replaced) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(replaced, "worker 1 was replaced");
    // Worker 1's connections are gone, and so are their counts: exactly onOne fit again.
    const { admitted, refused } = await admitUpTo(port, onOne, 40);
    held.push(...admitted, ...refused);
    assert.equal(admitted.length, onOne, `refused ${refused.length} on the way`);
    const over = await ask(port);
    held.push(over);
    assert.equal(over.status, 503, "and not one more");
  } finally {
    closeAll(held);
    await stop(ferry);
  }
});

Deno.test("workers: 2 — a worker that crashes at every start is restarted with a doubling pause, logged and counted", async () => {
  const ferry = await spawnFerry(
    ["--config", await tempConfig(config("max_connections: 100"))],
    { ...ENV, FERRY_TEST_FAIL_WORKER_STARTS: "3" },
  );
  const base = ferry.listeners.get("public")!;
  try {
    const killed = await fetch(`${ferry.admin}/debug/kill-worker?index=1`, { method: "POST" });
    assert.deepEqual(await killed.json(), { killed: true });
    // The kill, then three crashed starts: pauses of 200, 400, 800 and 1600 ms, then it stays.
    let replaced = false;
    for (let i = 0; i < 150 && !replaced; i++) {
      replaced = ferry.logs.some((l) => l.includes('"worker replaced"'));
      if (!replaced) {
        // Meanwhile worker 0 serves. A connection the kernel had queued on worker 1's socket
        // as it died is reset (SO_REUSEPORT without net.ipv4.tcp_migrate_req): asked again, it
        // lands on a live socket.
        const res = await fetch(`${base}/version`).catch(() => fetch(`${base}/version`));
        assert.equal(res.status, 200);
        await res.body?.cancel();
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    assert.ok(replaced, "worker 1 came back after its crashes");
    const deaths = ferry.logs.filter((l) => l.includes('"worker died; starting a new one"'))
      .map((l) => JSON.parse(l) as { restart_in_ms: number; reason: string });
    assert.deepEqual(deaths.map((d) => d.restart_in_ms), [200, 400, 800, 1600]);
    assert.match(deaths[1]!.reason, /crashes at start/);
    const metrics = await (await fetch(`${ferry.admin}/metrics`)).text();
    assert.equal(metricValue(metrics, "ferry_worker_restarts_total", { worker: "1" }), 4);
  } finally {
    await stop(ferry);
  }
});

Deno.test("workers: 2 — a killed worker's requests in flight stop counting against max_requests once it is replaced", async () => {
  const up = slowUpstream();
  const yaml = config(
    "max_connections: 100",
    `  - { name: wide, match: { path: { prefix: /wide } }, cluster: capped, timeout: 30s }
clusters:
  - name: capped
    endpoints: ["${up.url}"]
    limits: { max_requests: 1 }
`,
  );
  const ferry = await spawnFerry(["--config", await tempConfig(yaml)], ENV);
  const port = Number(new URL(ferry.listeners.get("public")!).port);
  const one = await onWorker(port, "1");
  try {
    // Worker 1 holds the cluster's only request slot with a request that will not finish.
    await one.write(new TextEncoder().encode("GET /wide?ms=60000 HTTP/1.1\r\nhost: t\r\n\r\n"));
    for (let i = 0; i < 50 && up.hits() < 1; i++) await new Promise((r) => setTimeout(r, 50));
    const full = await ask(port, "/wide?ms=0");
    full.conn.close();
    assert.equal(full.status, 503, "the slot is taken");
    const killed = await fetch(`${ferry.admin}/debug/kill-worker?index=1`, { method: "POST" });
    assert.deepEqual(await killed.json(), { killed: true });
    let replaced = false;
    for (let i = 0; i < 100 && !replaced; i++) {
      replaced = ferry.logs.some((l) => l.includes('"worker replaced"'));
      if (!replaced) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(replaced, "worker 1 was replaced");
    // Its request died with it; so did its count: a request goes through again, on either worker.
    for (let i = 0; i < 4; i++) {
      const again = await ask(port, "/wide?ms=0");
      again.conn.close();
      assert.equal(
        again.status,
        200,
        `request ${i + 1} after the replacement (worker ${again.worker})`,
      );
    }
  } finally {
    one.close();
    await stop(ferry);
    await up.close();
  }
});

/** Opens a connection to a gRPC listener and sends the HTTP/2 preface: true if it is served. */
async function h2Served(port: number): Promise<{ conn: Deno.TcpConn; served: boolean }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const preface = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
  // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
  const settings = new Uint8Array([0, 0, 0, 4, 0, 0, 0, 0, 0]);
  try {
    await conn.write(new Uint8Array([...preface, ...settings]));
  } catch {
    return { conn, served: false };
  }
  const buf = new Uint8Array(1024);
  const n = await Promise.race([
    conn.read(buf).catch(() => null),
    new Promise<null>((r) => setTimeout(() => r(null), 5_000)),
  ]);
  // Served: the listener's own SETTINGS comes back; refused: the connection is closed at once.
  return { conn, served: n !== null && n >= 9 && buf[3] === 4 };
}

Deno.test("workers: 2 — max_connections holds for the process on a gRPC listener too", async () => {
  const yaml = `listeners:
  - { name: rpc, address: "127.0.0.1:0", protocol: grpc }
admin: { address: "127.0.0.1:0" }
server: { workers: 2, watch_config: false, max_connections: 3 }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - { name: up, endpoints: ["http://127.0.0.1:1"], protocol: h2c }
`;
  const ferry = await spawnFerry(["--config", await tempConfig(yaml)], ENV);
  const port = Number(new URL(ferry.listeners.get("rpc")!).port);
  const held: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const c = await h2Served(port);
      held.push(c.conn);
      assert.equal(c.served, true, `connection ${i + 1} of 3`);
    }
    for (let i = 0; i < 8; i++) {
      const c = await h2Served(port);
      held.push(c.conn);
      assert.equal(c.served, false, `connection ${4 + i} (over the cap of 3)`);
    }
  } finally {
    for (const c of held) {
      try {
        c.close();
      } catch { /* closed */ }
    }
    await stop(ferry);
  }
});
