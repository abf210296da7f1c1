/**
 * The admin listener survives hostile clients as the proxy listeners do (connection guard and
 * Ferry's own HTTP/1.1 server, src/server/admin_listener.ts): a slowloris head gets 408, an idle
 * keep-alive connection is closed, connections over admin.max_connections get 503 while scrapes
 * under the cap work, an oversized head gets 431, malformed heads get the error table's JSON,
 * and a client that stops reading /metrics answers is dropped after send_timeout. Each is
 * counted in ferry_downstream_refused_total{listener="admin"}. Real sockets throughout; timeouts
 * are short via config and the assertions on time generous (loaded machine).
 */
import assert from "node:assert/strict";
import { concat, metricValue, readFor, run, startFerry, startUpstream } from "./helpers.ts";
import { CLIENT_PREFACE, Flag, frame, FrameType, settingsFrame } from "../src/h2/frames.ts";

const enc = new TextEncoder();
const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function config(server: string, admin = ""): string {
  return `listeners:
  - { name: public, address: "127.0.0.1:0" }
admin: { address: "127.0.0.1:0"${admin} }
server: { watch_config: false, ${server} }
routes:
  - { name: all, match: { path: { prefix: / } }, cluster: up }
clusters:
  - { name: up, endpoints: ["{{UP}}"] }
`;
}

/** Reads until the peer ends the connection or `ms` pass. */
async function readAll(conn: Deno.Conn, ms: number): Promise<{ ended: boolean; text: string }> {
  let text = "";
  const ended = await readFor(conn, ms, (chunk) => text += dec.decode(chunk));
  return { ended, text };
}

function closeQuietly(c: Deno.Conn): void {
  try {
    c.close();
  } catch { /* closed */ }
}

/** One raw request with `Connection: close`; the whole answer. */
async function ask(port: number, head: string): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(enc.encode(head));
    return (await readAll(conn, 10_000)).text;
  } finally {
    closeQuietly(conn);
  }
}

async function refusals(adminUrl: string, reason: string): Promise<number> {
  const text = await ask(
    Number(new URL(adminUrl).port),
    "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
  );
  return metricValue(text, "ferry_downstream_refused_total", { listener: "admin", reason }) ?? 0;
}

Deno.test("admin listener: a slowloris head gets 408 within header_timeout while /healthz is served", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(config("header_timeout: 1s, idle_timeout: 30s"), { UP: up.url });
  const port = px.ferry.addresses().admin!.port;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    const started = performance.now();
    const head = enc.encode("GET /metrics HTTP/1.1\r\nHost: localhost\r\n");
    // One reader for the whole test (a read left pending cannot be raced by a second one).
    let text = "";
    let ended = false;
    const reading = readFor(conn, 8_000, (chunk) => text += dec.decode(chunk)).then((e) =>
      ended = e
    );
    // One byte every 200 ms (the whole head would take 8 s).
    for (let i = 0; i < head.length && !ended; i++) {
      try {
        await conn.write(head.subarray(i, i + 1));
      } catch {
        break; // closed by Ferry
      }
      await sleep(200);
      if (i === 2) {
        // Meanwhile a probe on another connection is answered.
        const probe = await ask(
          port,
          "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        assert.match(probe, /^HTTP\/1\.1 200 /);
      }
    }
    await reading;
    const ms = performance.now() - started;
    assert.match(text, /^HTTP\/1\.1 408 /, `got ${JSON.stringify(text)}`);
    assert.match(text, /"request_id"|x-request-id/i);
    assert.ok(ended, "closed after the 408");
    assert.ok(ms < 4_000, `closed after ${Math.round(ms)} ms (header_timeout 1 s)`);
    assert.equal(await refusals(px.adminUrl!, "request_timeout"), 1);
  } finally {
    closeQuietly(conn);
    await px.close();
    await up.close();
  }
});

Deno.test("admin listener: an idle keep-alive connection is closed after idle_timeout", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(config("header_timeout: 30s, idle_timeout: 1s"), { UP: up.url });
  const port = px.ferry.addresses().admin!.port;
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await conn.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    const started = performance.now();
    const { ended, text } = await readAll(conn, 6_000);
    const ms = performance.now() - started;
    assert.match(text, /^HTTP\/1\.1 200 /);
    assert.ok(ended, "the idle connection was closed (it stayed open on Deno.serve)");
    assert.ok(ms > 800 && ms < 4_000, `closed ${Math.round(ms)} ms after the answer`);
    assert.equal(await refusals(px.adminUrl!, "idle_timeout"), 1);
  } finally {
    closeQuietly(conn);
    await px.close();
    await up.close();
  }
});

Deno.test("admin listener: admin.max_connections refuses the excess with 503; under the cap /metrics works", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    config("header_timeout: 30s, idle_timeout: 30s", ", max_connections: 4"),
    { UP: up.url },
  );
  const port = px.ferry.addresses().admin!.port;
  const held: Deno.Conn[] = [];
  try {
    // The proxy listener's cap (server.max_connections, 10,000) is not the admin's.
    for (let i = 0; i < 3; i++) held.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    const scrape = await ask(
      port,
      "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert.match(scrape, /^HTTP\/1\.1 200 /, "the fourth connection is under the cap");
    assert.match(scrape, /ferry_downstream_refused_total|# HELP/);
    // Its connection is released once Ferry has seen the close.
    await sleep(300);
    held.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    await sleep(200); // accepted and counted
    const over = await ask(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert.match(over, /^HTTP\/1\.1 503 /, `the fifth: ${over.slice(0, 200)}`);
    assert.match(over, /too many connections/);
    // The gauge counts them (with the scrape's own connection).
    const gauge = await ask(
      port,
      "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert.match(gauge, /^HTTP\/1\.1 503 /, "still full");
    for (const c of held.splice(3)) closeQuietly(c);
    await sleep(300);
    const text = await ask(
      port,
      "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert.equal(
      metricValue(text, "ferry_downstream_connections_open", { listener: "admin" }),
      4,
      "three held and the scrape",
    );
    // The held connections were all admitted (each is answered).
    for (const c of held) {
      await c.write(enc.encode("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
      assert.match((await readAll(c, 5_000)).text, /^HTTP\/1\.1 200 /);
    }
    for (const c of held.splice(0)) closeQuietly(c);
    await sleep(300);
    assert.equal(await refusals(px.adminUrl!, "too_many_connections"), 2);
    // The proxy listener is unaffected by the admin's cap.
    assert.equal(await (await fetch(px.url)).text(), "ok");
  } finally {
    for (const c of held) closeQuietly(c);
    await px.close();
    await up.close();
  }
});

Deno.test("admin listener: a 100 KiB head gets 431 and malformed heads get the error table's 400/501/505", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(config("header_timeout: 10s"), { UP: up.url });
  const port = px.ferry.addresses().admin!.port;
  try {
    const big = await ask(
      port,
      `GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Big: ${"a".repeat(100 * 1024)}\r\n\r\n`,
    );
    assert.match(big, /^HTTP\/1\.1 431 /, big.slice(0, 200));
    assert.match(big, /"request_id"/);
    const cases: [string, RegExp, string][] = [
      [
        "GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        /^HTTP\/1\.1 400 /,
        "bad_request",
      ],
      ["GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", /^HTTP\/1\.1 400 /, "bad_request"],
      ["GET /metrics HTTP/1.1\r\nHost : a\r\n\r\n", /^HTTP\/1\.1 400 /, "bad_request"],
      [
        "POST /reload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        /^HTTP\/1\.1 501 /,
        "not_implemented",
      ],
      ["GET /metrics HTTP/1.2\r\nHost: a\r\n\r\n", /^HTTP\/1\.1 505 /, "version_not_supported"],
    ];
    for (const [head, status] of cases) {
      const answer = await ask(port, head);
      assert.match(answer, status, `${JSON.stringify(head)}: ${answer.slice(0, 200)}`);
      // The error table's JSON with the rule (Deno.serve answered a bare, empty 400).
      assert.match(answer, /"reason":"[^"]+"/, answer);
      assert.match(answer, /connection: close/i);
    }
    assert.equal(await refusals(px.adminUrl!, "headers_too_large"), 1);
    assert.equal(await refusals(px.adminUrl!, "bad_request"), 3);
    assert.equal(await refusals(px.adminUrl!, "not_implemented"), 1);
    assert.equal(await refusals(px.adminUrl!, "version_not_supported"), 1);
    // Still serving.
    assert.equal((await fetch(`${px.adminUrl}/healthz`)).status, 200);
  } finally {
    await px.close();
    await up.close();
  }
});

/**
 * A client with a 4 KiB receive buffer that pipelines /metrics requests and reads nothing; after
 * `waitS` it reads what it can and prints whether the connection had ended (EOF or reset) and
 * how many bytes it got.
 */
const STALLED_CLIENT = `
import socket, sys, time
port, wait_s = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", port))
s.setblocking(False)
req = b"GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n"
sent = 0
until = time.time() + 3
while time.time() < until and sent < 2000:
    try:
        s.send(req)
        sent += 1
    except BlockingIOError:
        time.sleep(0.05)
time.sleep(wait_s)
s.setblocking(True)
s.settimeout(5)
got, ended = 0, False
try:
    while True:
        b = s.recv(65536)
        if not b:
            ended = True
            break
        got += len(b)
except (ConnectionResetError, BrokenPipeError):
    ended = True
except socket.timeout:
    pass
print(sent, got, "ended" if ended else "open")
`;

Deno.test("admin listener: a client that stops reading /metrics answers is dropped after send_timeout", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(
    config("header_timeout: 30s, idle_timeout: 60s, send_timeout: 1s"),
    { UP: up.url },
  );
  const port = px.ferry.addresses().admin!.port;
  try {
    const script = await Deno.makeTempFile({ suffix: ".py" });
    await Deno.writeTextFile(script, STALLED_CLIENT);
    const out = await run("python3", [script, String(port), "4"]);
    await Deno.remove(script);
    const [sent, got, state] = out.stdout.trim().split(" ");
    assert.equal(state, "ended", `python: ${out.stdout} ${out.stderr}`);
    assert.equal(await refusals(px.adminUrl!, "send_timeout"), 1, `sent ${sent}, got ${got}`);
    assert.equal((await fetch(`${px.adminUrl}/healthz`)).status, 200);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("admin listener: h2c (prior knowledge) takes the guard's hop and is served; no :authority is still a missing Host", async () => {
  const up = startUpstream(() => new Response("ok"));
  const px = startFerry(config("header_timeout: 5s"), { UP: up.url });
  try {
    const out = await run("curl", [
      "-s",
      "--http2-prior-knowledge",
      "-o",
      "/dev/null",
      "-w",
      "%{http_code} %{http_version}",
      `${px.adminUrl}/metrics`,
    ]);
    assert.equal(out.stdout, "200 2");
    // Without :authority the inner Deno.serve fills in localhost:<its port>: still "missing
    // Host" (the admin handler is told which port that is), as on the bare Deno.serve.
    const path = enc.encode("/config");
    const block = [0x82, 0x86, 0x04, path.length, ...path]; // GET, http, :path (no :authority)
    const conn = await Deno.connect({
      hostname: "127.0.0.1",
      port: px.ferry.addresses().admin!.port,
    });
    try {
      await conn.write(concat([
        CLIENT_PREFACE,
        settingsFrame([]),
        frame(FrameType.HEADERS, Flag.END_STREAM | Flag.END_HEADERS, 1, new Uint8Array(block)),
      ]));
      let bytes = "";
      await readFor(conn, 1_500, (chunk) => {
        bytes += dec.decode(chunk);
        if (bytes.includes("request_id")) conn.close();
      });
      assert.match(bytes, /"reason":"missing Host header"/);
    } finally {
      closeQuietly(conn);
    }
  } finally {
    await px.close();
    await up.close();
  }
});
