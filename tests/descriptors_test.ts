/**
 * File descriptors (docs/connections.md, "Descriptors"): Ferry in its own process under a low
 * descriptor limit (`prlimit --nofile=256:256`), flooded with idle connections until accepts fail
 * with EMFILE, on an HTTP listener (through the connection guard) and on a gRPC listener. The
 * process must live, and serve again once the flood is gone. Also: the start-up check of the
 * caps against the limit, the gRPC listener's connection caps, and the process metrics under
 * `deno task start`'s own permissions.
 */
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import {
  catchAllConfig,
  DENO,
  metricValue,
  ROOT,
  spawnFerry,
  type Started,
  startFerry,
  startUpstream,
  tempConfig,
} from "./helpers.ts";
import { echoClient, grpcEchoConfig, startEchoServer, unary } from "./grpc/peers.ts";

const LOW_LIMIT = ["prlimit", "--nofile=256:256"];
/** Comfortably more idle connections than 256 descriptors can hold, at one or three each. */
const FLOOD = 400;

/** Opens `n` idle TCP connections (each just connects and sends nothing). */
async function flood(port: number, n: number): Promise<Deno.Conn[]> {
  const conns: Deno.Conn[] = [];
  for (let i = 0; i < n; i++) {
    try {
      conns.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    } catch {
      break; // the backlog is full: enough
    }
  }
  return conns;
}

function closeAll(conns: Deno.Conn[]): void {
  for (const c of conns) {
    try {
      c.close();
    } catch { /* closed by Ferry */ }
  }
}

/** Tracks whether the child process has exited. */
function watchExit(child: Deno.ChildProcess): { exited: boolean; code?: number } {
  const state: { exited: boolean; code?: number } = { exited: false };
  child.status.then((s) => {
    state.exited = true;
    state.code = s.code;
  });
  return state;
}

/** Retries `attempt` until it returns true, at most `ms`; returns whether it did. */
async function eventually(attempt: () => Promise<boolean>, ms: number): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    try {
      if (await attempt()) return true;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

async function stop(started: Started | undefined): Promise<void> {
  if (!started) return;
  try {
    started.child.kill("SIGKILL");
  } catch { /* gone */ }
  await started.child.status;
}

async function scrape(admin: string): Promise<string> {
  const res = await fetch(`${admin}/metrics`);
  return await res.text();
}

const ADMIN = `admin: { address: "127.0.0.1:0" }\nlog: { level: info }\n`;

Deno.test({
  name: "HTTP listener under a 256-descriptor limit: a flood of idle connections does not end " +
    "Ferry, and requests succeed once the flood closes",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const up = startUpstream(() => new Response("ok"));
    const config = await tempConfig(catchAllConfig(ADMIN).replace("{{UP}}", up.url));
    let ferry: Started | undefined;
    let conns: Deno.Conn[] = [];
    try {
      ferry = await spawnFerry(["--config", config], {}, 1, LOW_LIMIT);
      const exit = watchExit(ferry.child);
      const url = ferry.listeners.get("public")!;
      assert.equal(await (await fetch(url)).text(), "ok");
      const port = Number(new URL(url).port);
      conns = await flood(port, FLOOD);
      // Give Ferry time to accept what it can and run out of descriptors.
      await new Promise((r) => setTimeout(r, 3_000));
      assert.equal(exit.exited, false, `Ferry exited (code ${exit.code}):\n${tail(ferry)}`);
      closeAll(conns);
      conns = [];
      const served = await eventually(async () => {
        const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
        return (await res.text()) === "ok" && res.status === 200;
      }, 15_000);
      assert.ok(served, `no request succeeded after the flood:\n${tail(ferry)}`);
      assert.equal(exit.exited, false, "Ferry is still running");
      // The flood did exhaust descriptors (else this test would prove nothing), and was counted.
      const text = await scrape(ferry.admin!);
      const emfile = (metricValue(text, "ferry_accept_errors_total", {
        listener: "public",
        socket: "listener",
        reason: "emfile",
      }) ?? 0) + (metricValue(text, "ferry_accept_errors_total", {
        listener: "public",
        socket: "inner",
        reason: "emfile",
      }) ?? 0);
      assert.ok(emfile > 0, "accepts failed with EMFILE during the flood");
      assert.ok(
        ferry.logs.filter((l) => l.includes("accept failing")).length <= 2,
        "one warning per burst, not one per failed accept",
      );
    } finally {
      closeAll(conns);
      await stop(ferry);
      await up.close();
    }
  },
});

Deno.test({
  name: "connection_guard off, under a 256-descriptor limit: the listener is bound again and " +
    "the admin listener accepts again after a flood, and both serve",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const up = startUpstream(() => new Response("ok"));
    const config = await tempConfig(
      catchAllConfig(ADMIN + "server: { connection_guard: false }\n").replace("{{UP}}", up.url),
    );
    let ferry: Started | undefined;
    let conns: Deno.Conn[] = [];
    try {
      ferry = await spawnFerry(["--config", config], {}, 1, LOW_LIMIT);
      const exit = watchExit(ferry.child);
      const port = Number(new URL(ferry.listeners.get("public")!).port);
      conns = await flood(port, FLOOD);
      await new Promise((r) => setTimeout(r, 3_000));
      // Then the admin listener (guarded whatever connection_guard says: its accept loop waits
      // out EMFILE, and its inner Deno.serve is bound again if its own accept dies): 400 more.
      conns.push(...await flood(Number(new URL(ferry.admin!).port), FLOOD));
      await new Promise((r) => setTimeout(r, 2_000));
      assert.equal(exit.exited, false, `Ferry exited (code ${exit.code}):\n${tail(ferry)}`);
      closeAll(conns);
      conns = [];
      // Both were bound again; with port 0 in the config the new ports are in the log.
      const latest = (msg: string) => {
        const line = ferry!.logs.findLast((l) => l.includes(`"msg":"${msg}"`));
        return `http://${JSON.parse(line!).address}`;
      };
      const served = await eventually(async () => {
        const res = await fetch(latest("listening"), { signal: AbortSignal.timeout(2_000) });
        return (await res.text()) === "ok";
      }, 15_000);
      assert.ok(served, `no request succeeded after the flood:\n${tail(ferry)}`);
      let text = "";
      assert.ok(
        await eventually(async () => {
          text = await scrape(latest("admin listening"));
          return text.includes("ferry_accept_errors_total");
        }, 15_000),
        `admin not reachable after the flood:\n${tail(ferry)}`,
      );
      for (const listener of ["public", "admin"]) {
        assert.ok(
          (metricValue(text, "ferry_accept_errors_total", {
            listener,
            socket: "listener",
            reason: "emfile",
          }) ?? 0) > 0,
          `${listener}: accepts failed with EMFILE during the flood`,
        );
      }
    } finally {
      closeAll(conns);
      await stop(ferry);
      await up.close();
    }
  },
});

Deno.test({
  name: "gRPC listener under a 256-descriptor limit: after a flood of idle connections the " +
    "accept loop serves calls again",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const server = await startEchoServer();
    const config = await tempConfig(
      grpcEchoConfig().replace("{{PORT}}", String(server.port)) + ADMIN,
    );
    let ferry: Started | undefined;
    let conns: Deno.Conn[] = [];
    const clients: ReturnType<typeof echoClient>[] = [];
    try {
      ferry = await spawnFerry(["--config", config], {}, 1, LOW_LIMIT);
      const exit = watchExit(ferry.child);
      const port = Number(new URL(ferry.listeners.get("grpc")!).port);
      const before = echoClient(port);
      clients.push(before);
      assert.equal((await unary(before, Buffer.from("before"))).value?.toString(), "before");
      conns = await flood(port, FLOOD);
      await new Promise((r) => setTimeout(r, 3_000));
      assert.equal(exit.exited, false, `Ferry exited (code ${exit.code}):\n${tail(ferry)}`);
      closeAll(conns);
      conns = [];
      // A new client on a new connection (its own subchannel pool: grpc-js would otherwise
      // reuse the first client's connection), so a new accept, is served.
      const served = await eventually(async () => {
        const client = echoClient(port, undefined, { "grpc.use_local_subchannel_pool": 1 });
        clients.push(client);
        const r = await unary(client, Buffer.from("after"), { deadlineMs: 2_000 });
        return r.value?.toString() === "after";
      }, 15_000);
      assert.ok(served, `no gRPC call succeeded after the flood:\n${tail(ferry)}`);
      const text = await scrape(ferry.admin!);
      assert.ok(
        (metricValue(text, "ferry_accept_errors_total", {
          listener: "grpc",
          socket: "listener",
          reason: "emfile",
        }) ?? 0) > 0,
        "accepts failed with EMFILE during the flood",
      );
    } finally {
      for (const c of clients) c.close();
      closeAll(conns);
      await stop(ferry);
      await server.stop();
    }
  },
});

Deno.test({
  name: "start-up check: a warning when max_connections x descriptors per connection cannot fit " +
    "in the limit, none when it fits",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const up = startUpstream(() => new Response("ok"));
    const limit = ["prlimit", "--nofile=512:512"];
    const warning = (s: Started) => s.logs.find((l) => l.includes("max_connections cannot"));
    let ferry: Started | undefined;
    try {
      // The default cap (10,000 connections x 3 descriptors through the guard) cannot fit. One
      // worker: with more, the budget is per worker (main.ts multiplies it).
      const tooMany = await tempConfig(
        catchAllConfig("server: { workers: 1 }\n").replace("{{UP}}", up.url),
      );
      ferry = await spawnFerry(["--config", tooMany], {}, 1, limit);
      const line = warning(ferry);
      assert.ok(line, `no warning:\n${tail(ferry)}`);
      assert.equal(JSON.parse(line).level, "warn");
      assert.match(line, /30128 file descriptors.*limit is 512/);
      await stop(ferry);
      // 100 x 3 + 128 headroom fits in 512.
      const fits = await tempConfig(
        catchAllConfig("server: { max_connections: 100, workers: 1 }\n").replace("{{UP}}", up.url),
      );
      ferry = await spawnFerry(["--config", fits], {}, 1, limit);
      assert.equal(warning(ferry), undefined);
      assert.ok(ferry.logs.some((l) => l.includes('"fd_limit":512')), tail(ferry));
    } finally {
      await stop(ferry);
      await up.close();
    }
  },
});

for (const cap of ["max_connections", "max_connections_per_ip"] as const) {
  Deno.test({
    name: `gRPC listener: ${cap} 3 closes the fourth connection at once; the gauge counts 3`,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      const server = await startEchoServer();
      const px = startFerry(
        grpcEchoConfig() + `server: { ${cap}: 3 }\n`,
        { PORT: String(server.port) },
      );
      const conns: Deno.Conn[] = [];
      try {
        for (let i = 0; i < 3; i++) conns.push(await h2Handshake(px.port));
        const fourth = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
        conns.push(fourth);
        await fourth.write(H2_PREFACE).catch(() => {});
        const got = await readOrTimeout(fourth, 3_000);
        assert.equal(got, "closed", "the connection over the cap is closed without HTTP/2");
        const text = await px.ferry.snapshot.metrics.expose();
        assert.equal(
          metricValue(text, "ferry_downstream_connections_open", { listener: "grpc" }),
          3,
        );
        // A freed slot is used again.
        closeAll(conns.splice(0, 1));
        const again = await eventually(async () => {
          const c = await h2Handshake(px.port);
          conns.push(c);
          return true;
        }, 5_000);
        assert.ok(again, "a connection is admitted once one closed");
      } finally {
        closeAll(conns);
        await px.close();
        await server.stop();
      }
    },
  });
}

Deno.test({
  name: "process metrics are real under `deno task start`'s own permissions",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const up = startUpstream(() => new Response("ok"));
    const config = await tempConfig(catchAllConfig(ADMIN).replace("{{UP}}", up.url));
    // Exactly as an operator starts it: the task from deno.json, its own permissions.
    const child = new Deno.Command(DENO, {
      args: ["task", "start", "--config", config],
      cwd: ROOT,
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const conns: Deno.Conn[] = [];
    try {
      const { admin, listener } = await addressesFromLog(child);
      const fds = async () => metricValue(await scrape(admin), "process_open_fds") ?? 0;
      const text = await scrape(admin);
      const rss = metricValue(text, "process_resident_memory_bytes") ?? 0;
      assert.ok(rss > 10 * 1024 * 1024, `process_resident_memory_bytes ${rss}`);
      assert.ok((metricValue(text, "process_max_fds") ?? 0) > 0, "process_max_fds");
      const idle = await fds();
      assert.ok(idle > 5, `process_open_fds ${idle}`);
      // 50 HTTP/1.1 connections through the guard hold 50 more descriptors in Ferry (its own
      // HTTP/1.1 server: no loopback hop; HTTP/2 connections would hold 3 each).
      const port = Number(new URL(listener).port);
      for (let i = 0; i < 50; i++) {
        const c = await Deno.connect({ hostname: "127.0.0.1", port });
        conns.push(c);
        await c.write(new TextEncoder().encode("GET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        await c.read(new Uint8Array(1024));
      }
      const busy = await fds();
      assert.ok(busy - idle >= 45 && busy - idle <= 70, `open fds ${idle} -> ${busy}`);
    } finally {
      closeAll(conns);
      try {
        child.kill("SIGTERM");
      } catch { /* gone */ }
      await child.status;
      await up.close();
    }
  },
});

const H2_PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
const EMPTY_SETTINGS = new Uint8Array([0, 0, 0, 4, 0, 0, 0, 0, 0]);

/** A raw HTTP/2 connection that got the server's SETTINGS (so it was admitted). */
async function h2Handshake(port: number): Promise<Deno.Conn> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  await c.write(H2_PREFACE);
  await c.write(EMPTY_SETTINGS);
  const got = await readOrTimeout(c, 3_000);
  if (got !== "data") {
    c.close();
    throw new Error(`no SETTINGS from Ferry (${got})`);
  }
  return c;
}

async function readOrTimeout(c: Deno.Conn, ms: number): Promise<"data" | "closed" | "timeout"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const read = c.read(new Uint8Array(1024)).then(
    (n) => (n === null ? "closed" as const : "data" as const),
    () => "closed" as const,
  );
  const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), ms));
  const got = await Promise.race([read, timeout]);
  clearTimeout(timer);
  return got;
}

/** The last log lines of a spawned Ferry, for failure messages. */
function tail(s: Started): string {
  return s.logs.slice(-15).join("\n");
}

/** Reads `deno task start`'s log until the listener and the admin listener say where they are. */
async function addressesFromLog(
  child: Deno.ChildProcess,
): Promise<{ admin: string; listener: string }> {
  const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let admin: string | undefined, listener: string | undefined;
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && !(admin && listener)) {
    const { value, done } = await lines.read();
    if (done) break;
    buf += value;
    for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        const j = JSON.parse(line);
        if (j.msg === "listening") listener = `http://${j.address}`;
        if (j.msg === "admin listening") admin = `http://${j.address}`;
      } catch { /* not JSON: the task line */ }
    }
  }
  // Keep draining so the child never blocks on a full pipe.
  (async () => {
    try {
      while (!(await lines.read()).done) { /* drain */ }
    } catch { /* closed */ }
  })();
  if (!admin || !listener) throw new Error("ferry did not start");
  return { admin, listener };
}
