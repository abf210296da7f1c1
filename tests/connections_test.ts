/**
 * Connection-level protection with real clients: slowloris connections are closed by the header
 * timeout, idle keep-alive connections by the idle timeout, connection caps refuse with 503, and
 * normal clients are served throughout. Timing assertions are generous (loaded 2-core machine).
 */
import assert from "node:assert/strict";
import * as net from "node:net";
import { catchAllConfig, rawRequest, startFerry, startUpstream } from "./helpers.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Reads until the peer closes (null) or `ms` pass ("open"); collects what arrived. */
async function readUntilClosed(
  conn: Deno.Conn,
  ms: number,
): Promise<{ closed: boolean; text: string }> {
  const buf = new Uint8Array(8192);
  let text = "";
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const n = await Promise.race([
      conn.read(buf).catch(() => null),
      new Promise<"t">((r) => timer = setTimeout(() => r("t"), Math.max(1, deadline - Date.now()))),
    ]);
    clearTimeout(timer);
    if (n === "t") return { closed: false, text };
    if (n === null) return { closed: true, text };
    text += dec.decode(buf.subarray(0, n));
  }
  return { closed: false, text };
}

/** One keep-alive request on an open connection; resolves with the response head and body. */
async function requestOn(conn: Deno.Conn, path = "/"): Promise<string> {
  await conn.write(enc.encode(`GET ${path} HTTP/1.1\r\nHost: a\r\n\r\n`));
  const buf = new Uint8Array(8192);
  let text = "";
  while (true) {
    const n = await conn.read(buf);
    if (n === null) throw new Error(`closed after ${JSON.stringify(text)}`);
    text += dec.decode(buf.subarray(0, n));
    const end = text.indexOf("\r\n\r\n");
    const cl = /content-length: (\d+)/i.exec(text);
    if (end >= 0 && cl && text.length >= end + 4 + Number(cl[1])) return text;
  }
}

function closeQuietly(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* already closed */ }
}

Deno.test("slowloris: 50 connections dripping a header byte a second are closed by the header timeout while a normal client is served", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    catchAllConfig(`server: { header_timeout: 2s, idle_timeout: 30s }\n`),
    { UP: up.url },
  );
  const conns: Deno.Conn[] = [];
  try {
    const opened = Date.now();
    for (let i = 0; i < 50; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
      await c.write(enc.encode("GET / HTTP/1.1\r\nHost: a\r\n"));
      conns.push(c);
    }
    const closedAt: (number | undefined)[] = conns.map(() => undefined);
    const replies: string[] = conns.map(() => "");
    // Each connection drips one byte a second (at most 10 bytes) while a reader watches for the
    // close.
    const drips = conns.map(async (c, i) => {
      const reading = readUntilClosed(c, 12_000).then((r) => {
        replies[i] = r.text;
        if (r.closed) closedAt[i] = Date.now() - opened;
      });
      const header = "X-Slow: 1234567";
      for (let b = 0; b < 10 && closedAt[i] === undefined; b++) {
        try {
          await c.write(enc.encode(header[b]!));
        } catch { /* closed under us */ }
        await Promise.race([reading, sleep(1000)]);
      }
      await reading;
    });
    // Meanwhile a normal client keeps getting answers.
    let served = 0;
    const normal = (async () => {
      while (Date.now() - opened < 5000) {
        const res = await fetch(`${px.url}/normal`);
        assert.equal(res.status, 200);
        assert.equal(await res.text(), "ok");
        served++;
        await sleep(200);
      }
    })();
    await Promise.all([...drips, normal]);
    const closed = closedAt.filter((t) => t !== undefined) as number[];
    console.log(
      `slowloris: ${closed.length}/50 closed, between ${Math.min(...closed)} and ${
        Math.max(...closed)
      } ms after opening; ${served} normal requests served meanwhile`,
    );
    assert.equal(closed.length, 50, "every slowloris connection was closed");
    assert.ok(Math.min(...closed) >= 1500, "none closed well before the 2 s header timeout");
    assert.ok(Math.max(...closed) <= 8000, "all closed within a generous bound of the timeout");
    const without408 = replies.filter((r) => !r.startsWith("HTTP/1.1 408"));
    assert.equal(without408.length, 0, `a 408 before each close: ${without408.slice(0, 3)}`);
    assert.ok(served >= 5, "the normal client was served throughout");
    // Only the normal client's pooled keep-alive connection may remain.
    assert.ok((px.ferry.openConnections().public ?? 0) <= 1, "slowloris connections are gone");
  } finally {
    conns.forEach(closeQuietly);
    await px.close();
    await up.close();
  }
});

Deno.test("a silent connection gets nothing forwarded and is closed by the header timeout", async () => {
  let hits = 0;
  const up = startUpstream(() => {
    hits++;
    return new Response("ok");
  });
  const px = startFerry(catchAllConfig(`server: { header_timeout: 1s }\n`), { UP: up.url });
  const c = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
  try {
    const r = await readUntilClosed(c, 6000);
    assert.ok(r.closed, "closed by the header timeout");
    assert.match(r.text, /^HTTP\/1\.1 408 /);
    assert.match(r.text, /"flag":"DT"/);
    assert.equal(hits, 0);
  } finally {
    closeQuietly(c);
    await px.close();
    await up.close();
  }
});

Deno.test("max_connections: the connection over the cap gets 503 and a freed slot is reused", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(catchAllConfig(`server: { max_connections: 3 }\n`), { UP: up.url });
  const held: Deno.Conn[] = [];
  try {
    for (let i = 0; i < 3; i++) {
      const c = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
      assert.match(await requestOn(c), /^HTTP\/1\.1 200/);
      held.push(c);
    }
    assert.equal(px.ferry.openConnections().public, 3);
    const over = await rawRequest(px.port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 3000);
    assert.match(over, /^HTTP\/1\.1 503 /);
    assert.match(over, /too many connections/);
    assert.match(over, /x-ferry-flag: DO/i);
    closeQuietly(held.pop()!);
    // The freed slot is counted back once the guard sees the close.
    let served = "";
    for (let i = 0; i < 50 && !served.startsWith("HTTP/1.1 200"); i++) {
      await sleep(50);
      served = await rawRequest(px.port, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    }
    assert.match(served, /^HTTP\/1\.1 200/);
  } finally {
    held.forEach(closeQuietly);
    await px.close();
    await up.close();
  }
});

/** A node:net connection from a chosen loopback source address (Deno.connect cannot bind one). */
function connectFrom(localAddress: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: "127.0.0.1", port, localAddress });
    s.once("connect", () => resolve(s));
    s.once("error", reject);
  });
}

function exchange(s: net.Socket, request: string, ms = 3000): Promise<string> {
  return new Promise((resolve) => {
    let text = "";
    const done = () => {
      clearTimeout(timer);
      s.removeAllListeners("data");
      resolve(text);
    };
    const timer = setTimeout(done, ms);
    s.on("data", (d: Uint8Array) => {
      text += dec.decode(d);
      const end = text.indexOf("\r\n\r\n");
      const cl = /content-length: (\d+)/i.exec(text);
      if (end >= 0 && cl && text.length >= end + 4 + Number(cl[1])) done();
    });
    s.once("close", done);
    s.write(request);
  });
}

Deno.test("max_connections_per_ip: a third connection from one address is refused, another address is served", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(catchAllConfig(`server: { max_connections_per_ip: 2 }\n`), {
    UP: up.url,
  });
  const sockets: net.Socket[] = [];
  const get = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
  try {
    for (let i = 0; i < 2; i++) {
      const s = await connectFrom("127.0.0.1", px.port);
      sockets.push(s);
      assert.match(await exchange(s, get), /^HTTP\/1\.1 200/);
    }
    const third = await connectFrom("127.0.0.1", px.port);
    sockets.push(third);
    const refused = await exchange(third, get);
    assert.match(refused, /^HTTP\/1\.1 503 /);
    assert.match(refused, /too many connections from you/);
    const other = await connectFrom("127.0.0.2", px.port);
    sockets.push(other);
    assert.match(await exchange(other, get), /^HTTP\/1\.1 200/, "127.0.0.2 has its own allowance");
  } finally {
    sockets.forEach((s) => s.destroy());
    await px.close();
    await up.close();
  }
});

Deno.test("the upstream sees the real client address, not the guard's loopback hop", async () => {
  let seen = "";
  const up = startUpstream((req) => {
    seen = req.headers.get("x-forwarded-for") ?? "";
    return new Response("ok");
  });
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    const s = await connectFrom("127.0.0.3", px.port);
    assert.match(await exchange(s, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"), /^HTTP\/1\.1 200/);
    s.destroy();
    assert.equal(seen, "127.0.0.3");
  } finally {
    await px.close();
    await up.close();
  }
});

/** RSS of a process in KiB, from /proc. */
async function rssKiB(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
}

Deno.test({
  name:
    "2,500 idle keep-alive connections are closed by the idle timeout, memory stays bounded, normal clients are served",
  sanitizeResources: false,
  fn: async () => {
    // The test process holds one socket per idle connection: stay under its descriptor limit.
    const limit = Number(
      dec.decode((await new Deno.Command("sh", { args: ["-c", "ulimit -n"] }).output()).stdout),
    );
    const count = Math.max(200, Math.min(2500, (Number.isFinite(limit) ? limit : 1024) - 300));
    const up = startUpstream(() => new Response("ok"));
    const dir = await Deno.makeTempDir();
    const config = `${dir}/ferry.yaml`;
    await Deno.writeTextFile(
      config,
      catchAllConfig(`server: { idle_timeout: 3s, header_timeout: 10s }\nlog: { level: info }\n`)
        .replace("{{UP}}", up.url),
    );
    // Ferry in its own process (its RSS is what we measure) with room for 4 fds a connection.
    const child = new Deno.Command("bash", {
      args: [
        "-c",
        `ulimit -n 16384 2>/dev/null || true; exec "${Deno.execPath()}" run -A --unstable-no-legacy-abort main.ts --config ${config}`,
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const conns: Deno.Conn[] = [];
    try {
      const port = await listenPortFromLog(child);
      const url = `http://127.0.0.1:${port}`;
      for (let i = 0; i < 20; i++) await (await fetch(url)).text();
      const before = await rssKiB(child.pid);
      // Open the connections in batches; each does one request, then sits idle.
      for (let i = 0; i < count; i += 250) {
        const batch = await Promise.all(
          Array.from(
            { length: Math.min(250, count - i) },
            () => Deno.connect({ hostname: "127.0.0.1", port }),
          ),
        );
        conns.push(...batch);
        const replies = await Promise.all(batch.map((c) => requestOn(c)));
        assert.ok(replies.every((r) => r.startsWith("HTTP/1.1 200")));
      }
      const lastRequestAt = Date.now();
      const peak = await rssKiB(child.pid);
      // A normal client is still served with every idle connection open.
      const res = await fetch(`${url}/during`);
      assert.equal(res.status, 200);
      await res.text();
      // All are closed by the idle timeout (3 s) within a generous bound.
      const results = await Promise.all(conns.map((c) => readUntilClosed(c, 20_000)));
      const allClosedAfter = Date.now() - lastRequestAt;
      const after = await rssKiB(child.pid);
      const closed = results.filter((r) => r.closed).length;
      const perConnKiB = (peak - before) / count;
      console.log(
        `idle: ${closed}/${count} closed within ${allClosedAfter} ms of the last request; ` +
          `Ferry RSS ${before} KiB before, ${peak} KiB with all open ` +
          `(${perConnKiB.toFixed(1)} KiB per connection), ${after} KiB after`,
      );
      assert.equal(closed, count, "every idle connection was closed");
      assert.ok(allClosedAfter >= 2500, "not closed before the idle timeout");
      assert.ok(perConnKiB < 128, `memory per idle connection bounded (${perConnKiB} KiB)`);
      const res2 = await fetch(`${url}/after`);
      assert.equal(res2.status, 200);
      await res2.text();
    } finally {
      conns.forEach(closeQuietly);
      child.kill("SIGTERM");
      await child.status;
      await up.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** Reads Ferry's log (stderr) until the "listening" line; the rest of the log is drained. */
async function listenPortFromLog(child: Deno.ChildProcess): Promise<number> {
  const reader = child.stderr.getReader();
  const deadline = Date.now() + 30_000;
  let seen = "";
  while (Date.now() < deadline) {
    const chunk = await reader.read();
    if (chunk.done) break;
    seen += dec.decode(chunk.value);
    const m = /"msg":"listening"[^\n]*?"address":"127\.0\.0\.1:(\d+)"/.exec(seen);
    if (m) {
      reader.releaseLock();
      void child.stderr.pipeTo(new WritableStream()).catch(() => {});
      return Number(m[1]);
    }
  }
  throw new Error(`Ferry did not report listening: ${seen}`);
}
