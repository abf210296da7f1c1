/**
 * Ferry's HTTP/1.1 transport against real sockets: pool reuse and its limits, the keep-alive
 * race, exact request framing, and through a running Ferry: GET bodies, no added headers, and
 * ambiguous upstream framing answered 502 with a reason.
 */
import assert from "node:assert/strict";
import { H1Transport } from "../src/h1/transport.ts";
import type { H1PoolOptions } from "../src/h1/pool.ts";
import { ProxyError } from "../src/pipeline/errors.ts";
import {
  catchAllConfig,
  metricValue,
  rawRequest,
  startEchoUpstream,
  startFerry,
} from "./helpers.ts";
import { ok, startRawUpstream } from "./h1_upstream.ts";

const OPTS: H1PoolOptions = {
  maxIdlePerEndpoint: 8,
  maxConnectionsPerEndpoint: 64,
  idleTimeoutMs: 30_000,
  maxRequestsPerConnection: 0,
  connectTimeoutMs: 5_000,
};

const enc = new TextEncoder();

function get(
  t: H1Transport,
  url: string,
  init: { method?: string; headers?: [string, string][]; body?: ReadableStream<Uint8Array> } = {},
): Promise<Response> {
  return t.send({
    url,
    method: init.method ?? "GET",
    headers: init.headers ?? [["host", "up"]],
    body: init.body ?? null,
    signal: AbortSignal.timeout(10_000),
  });
}

function streamOf(...parts: string[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream({
    pull(ctl) {
      if (i < parts.length) ctl.enqueue(enc.encode(parts[i++]!));
      else ctl.close();
    },
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("h1 pool: sequential requests reuse one connection", async () => {
  const up = startRawUpstream(() => ({ bytes: ok("hi") }));
  const t = new H1Transport(OPTS);
  try {
    for (let i = 0; i < 5; i++) {
      const res = await get(t, `${up.url}/n${i}`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "hi");
    }
    assert.equal(up.connections(), 1);
    assert.deepEqual(t.stats()[0], {
      origin: up.url,
      open: 1,
      idle: 1,
      waiting: 0,
      opened: 1,
      reused: 4,
      tunnels: 0,
    });
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1 pool: no reuse after a response body that was not read to its end", async () => {
  const big = "x".repeat(200_000);
  const up = startRawUpstream(() => ({ bytes: ok(big) }));
  const t = new H1Transport(OPTS);
  try {
    const first = await get(t, `${up.url}/a`);
    const reader = first.body!.getReader();
    await reader.read();
    await reader.cancel();
    const second = await get(t, `${up.url}/b`);
    assert.equal((await second.text()).length, big.length);
    assert.equal(up.connections(), 2, "the half-read connection was closed, not reused");
    const third = await get(t, `${up.url}/c`);
    await third.text();
    assert.equal(up.connections(), 2, "a fully read one is reused");
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1 pool: 'Connection: close' and a close-delimited body end the connection", async () => {
  let n = 0;
  const up = startRawUpstream(() =>
    n++ === 0
      ? { bytes: ok("a", "connection: close\r\n"), close: true }
      : { bytes: "HTTP/1.1 200 OK\r\n\r\nuntil close", close: true }
  );
  const t = new H1Transport(OPTS);
  try {
    assert.equal(await (await get(t, `${up.url}/`)).text(), "a");
    assert.equal(await (await get(t, `${up.url}/`)).text(), "until close");
    assert.equal(await (await get(t, `${up.url}/`)).text(), "until close");
    assert.equal(up.connections(), 3);
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1 keep-alive race: a reused connection closed before any response byte is retried once", async () => {
  // The second request on every connection meets a close without an answer: exactly what a
  // client sees when the upstream's idle timer fires as its request leaves.
  const up = startRawUpstream((req) => req.index === 1 ? { bytes: null } : { bytes: ok("fresh") });
  const t = new H1Transport(OPTS);
  try {
    assert.equal(await (await get(t, `${up.url}/1`)).text(), "fresh");
    const res = await get(t, `${up.url}/2`);
    assert.equal(await res.text(), "fresh");
    assert.equal(t.staleRetries, 1);
    // A small PUT body (idempotent) is kept and sent again whole.
    const post = await get(t, `${up.url}/3`, {
      method: "PUT",
      headers: [["host", "up"], ["content-length", "11"]],
      body: streamOf("hello", " world"),
    });
    assert.equal(await post.text(), "fresh");
    assert.equal(t.staleRetries, 2);
    const bodies = up.requests.filter((r) => r.head.startsWith("PUT")).map((r) =>
      new TextDecoder().decode(r.body)
    );
    assert.deepEqual(bodies, ["hello world", "hello world"]);
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1 keep-alive race: no retry once a response byte arrived or the body cannot be replayed", async () => {
  const up = startRawUpstream((req) => {
    if (req.index === 0) return { bytes: ok("first") };
    return { bytes: "HTTP/1.1 200 OK\r\ncontent-le", close: true };
  });
  const t = new H1Transport(OPTS);
  try {
    await (await get(t, `${up.url}/1`)).text();
    await assert.rejects(get(t, `${up.url}/2`), (e: unknown) => {
      assert.ok(e instanceof ProxyError);
      assert.equal(e.kind, "upstream_reset");
      assert.match(e.reason, /middle of the response head/);
      return true;
    });
    assert.equal(t.staleRetries, 0);
  } finally {
    t.close();
    await up.close();
  }
  const silent = startRawUpstream((req) => req.index === 1 ? { bytes: null } : { bytes: ok("a") });
  const t2 = new H1Transport(OPTS);
  try {
    await (await get(t2, `${silent.url}/1`)).text();
    const big = "b".repeat(100_000); // over the 64 KiB kept for replay
    await assert.rejects(
      get(t2, `${silent.url}/2`, {
        method: "POST",
        headers: [["host", "up"], ["content-length", String(big.length)]],
        body: streamOf(big.slice(0, 70_000), big.slice(70_000)),
      }),
      (e: unknown) => e instanceof ProxyError && e.kind === "upstream_reset",
    );
    assert.equal(t2.staleRetries, 0);
  } finally {
    t2.close();
    await silent.close();
  }
});

Deno.test("h1 keep-alive race: an upstream closing idle connections after 1 s, a request every 1 s", async () => {
  // The upstream closes a connection 1 s after its last answer; requests come every 1 s, so
  // some meet a connection that is closing. Every one must succeed.
  const closers = new Map<Deno.Conn, ReturnType<typeof setTimeout>>();
  const up = startRawUpstream((_req, conn) => {
    clearTimeout(closers.get(conn));
    closers.set(
      conn,
      setTimeout(() => {
        try {
          conn.close();
        } catch { /* closed */ }
      }, 1_000),
    );
    return { bytes: ok("tick") };
  });
  const t = new H1Transport(OPTS);
  try {
    for (let i = 0; i < 5; i++) {
      const res = await get(t, `${up.url}/${i}`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), "tick");
      await sleep(1_000);
    }
  } finally {
    t.close();
    for (const timer of closers.values()) clearTimeout(timer);
    await up.close();
  }
});

Deno.test("h1 pool: max connections per endpoint holds under load; waiters are served in turn", async () => {
  const up = startRawUpstream(async () => {
    await sleep(50);
    return { bytes: ok("slow") };
  });
  const t = new H1Transport({ ...OPTS, maxConnectionsPerEndpoint: 3 });
  try {
    const all = await Promise.all(
      Array.from({ length: 24 }, (_, i) => get(t, `${up.url}/${i}`).then((r) => r.text())),
    );
    assert.deepEqual(all, Array(24).fill("slow"));
    assert.equal(up.maxOpen(), 3);
    assert.equal(up.connections(), 3);
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1 pool: max requests per connection retires the connection", async () => {
  const up = startRawUpstream(() => ({ bytes: ok("r") }));
  const t = new H1Transport({ ...OPTS, maxRequestsPerConnection: 2 });
  try {
    for (let i = 0; i < 5; i++) await (await get(t, `${up.url}/`)).text();
    assert.equal(up.connections(), 3);
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1 framing: Content-Length, chunked and no body go out exactly as given", async () => {
  const up = startRawUpstream(() => ({ bytes: ok("k") }));
  const t = new H1Transport(OPTS);
  try {
    await (await get(t, `${up.url}/cl`, {
      method: "GET",
      headers: [["host", "up"], ["content-length", "5"]],
      body: streamOf("he", "llo"),
    })).text();
    await (await get(t, `${up.url}/chunked`, {
      method: "POST",
      headers: [["host", "up"], ["transfer-encoding", "gzip"]],
      body: streamOf("ab", "", "cde"),
    })).text();
    await (await get(t, `${up.url}/none`, { method: "DELETE" })).text();
    const [cl, chunked, none] = up.requests;
    assert.match(cl!.head, /^GET \/cl HTTP\/1\.1\r\nhost: up\r\ncontent-length: 5$/);
    assert.equal(new TextDecoder().decode(cl!.body), "hello");
    assert.match(
      chunked!.head,
      /^POST \/chunked HTTP\/1\.1\r\nhost: up\r\ntransfer-encoding: chunked$/,
    );
    assert.equal(new TextDecoder().decode(chunked!.body), "abcde");
    assert.equal(none!.head, "DELETE /none HTTP/1.1\r\nhost: up");
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1 framing: a body shorter or longer than its Content-Length never leaves as if whole", async () => {
  const up = startRawUpstream(() => ({ bytes: ok("k") }));
  const t = new H1Transport(OPTS);
  try {
    for (const parts of [["abc"], ["abcdefg"]]) {
      await assert.rejects(
        get(t, `${up.url}/`, {
          method: "POST",
          headers: [["host", "up"], ["content-length", "5"]],
          body: streamOf(...parts),
        }),
      );
    }
    assert.equal(up.requests.length, 0, "the upstream never saw a complete request");
  } finally {
    t.close();
    await up.close();
  }
});

Deno.test("h1: cancelling the response body or aborting the request closes the connection", async () => {
  let answered = 0;
  const up = startRawUpstream(async (req) => {
    if (req.head.includes("/hang")) {
      await sleep(1_500);
      return { bytes: null };
    }
    answered++;
    return { bytes: "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n" };
  });
  const t = new H1Transport(OPTS);
  try {
    const res = await get(t, `${up.url}/stream`);
    const reader = res.body!.getReader();
    assert.equal(new TextDecoder().decode((await reader.read()).value), "abc");
    await reader.cancel();
    const ctl = new AbortController();
    const pending = t.send({
      url: `${up.url}/hang`,
      method: "GET",
      headers: [["host", "up"]],
      body: null,
      signal: ctl.signal,
    });
    await sleep(100);
    ctl.abort(new Error("gone"));
    await assert.rejects(pending, (e: unknown) => e instanceof ProxyError);
    const pool = t.stats()[0]!;
    assert.equal(pool.open, 0, "both connections were closed");
    assert.equal(pool.idle, 0);
    assert.equal(answered, 1);
  } finally {
    t.close();
    await up.close();
  }
});

// Through a running Ferry.

Deno.test("through Ferry: a GET with a body is refused with 400, never sent without its bytes", async () => {
  // Deno.serve hands a GET handler no body (req.body is null) even when the client sent one,
  // so forwarding its Content-Length would make the next request on the connection its body.
  const up = startEchoUpstream();
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    const text = await rawRequest(
      px.port,
      "GET /g HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert.match(text, /^HTTP\/1\.1 400/);
    assert.match(text, /a GET request with a body is not forwarded/);
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("through Ferry: nothing is added to the request that the client did not send", async () => {
  const up = startEchoUpstream();
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    const text = await rawRequest(
      px.port,
      "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert.match(text, /^HTTP\/1\.1 200/);
    const echoed = JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4));
    assert.equal(echoed.body, "hello");
    for (const added of ["accept-language", "user-agent", "accept-encoding", "accept"]) {
      assert.equal(echoed.headers[added], undefined, `${added} was added`);
    }
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("through Ferry: ambiguous upstream framing is a 502 with the reason, never a guess", async () => {
  const cases: [string, string, RegExp][] = [
    [
      "/clte",
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
      /both Content-Length and Transfer-Encoding/,
    ],
    [
      "/dup",
      "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
      /more than one/,
    ],
    ["/600", "HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n", /status 600 outside 100-599/],
    ["/fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n", /obs-fold/],
    ["/101", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", /101/],
  ];
  const byPath = new Map(cases.map(([p, bytes]) => [p, bytes]));
  const up = startRawUpstream((req) => ({
    bytes: byPath.get(req.head.split(" ")[1]!) ?? ok("?"),
    close: true,
  }));
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    for (const [path, , reason] of cases) {
      const res = await fetch(`${px.url}${path}`);
      const body = await res.json();
      assert.equal(res.status, 502, path);
      assert.equal(body.flag, "UPE", path);
      assert.match(body.reason, reason, path);
    }
    const fine = await fetch(`${px.url}/fine`);
    assert.equal(await fine.text(), "?");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("through Ferry: /clusters and /metrics show the h1 pool per endpoint", async () => {
  const up = startEchoUpstream();
  const px = startFerry(catchAllConfig(`admin: { address: "127.0.0.1:0" }\n`), { UP: up.url });
  try {
    for (let i = 0; i < 3; i++) await (await fetch(`${px.url}/x`)).text();
    const view = await (await fetch(`${px.adminUrl}/clusters`)).json();
    const cluster = view.clusters.find((c: { name: string }) => c.name === "up");
    assert.equal(cluster.transport, "h1");
    assert.deepEqual(cluster.endpoints[0].connections, {
      open: 1,
      idle: 1,
      waiting: 0,
      opened: 1,
      reused: 2,
    });
    const text = await (await fetch(`${px.adminUrl}/metrics`)).text();
    const endpoint = cluster.endpoints[0].origin;
    assert.equal(
      metricValue(text, "ferry_upstream_connections", { cluster: "up", endpoint, state: "idle" }),
      1,
    );
    assert.equal(
      metricValue(text, "ferry_upstream_connections", { cluster: "up", state: "active" }),
      0,
    );
    assert.equal(
      metricValue(text, "ferry_upstream_connections_opened_total", { cluster: "up", endpoint }),
      1,
    );
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("h1: an upstream that answers before the request body ends gets no reuse of that connection", async () => {
  // The upstream answers 413 after the head and reads no body: the rest of the body must never
  // be read by it as a next request, so the connection is closed, not pooled.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  let accepted = 0;
  const served = (async () => {
    for await (const conn of listener) {
      accepted++;
      const buf = new Uint8Array(4096);
      await conn.read(buf);
      await conn.write(enc.encode(ok("too big").replace("200 OK", "413 Payload Too Large")));
      // Keep reading (and dropping) until the client closes.
      void (async () => {
        try {
          while (await conn.read(buf) !== null) { /* drop */ }
        } catch { /* reset */ }
        try {
          conn.close();
        } catch { /* closed */ }
      })();
    }
  })().catch(() => {});
  const t = new H1Transport(OPTS);
  try {
    let release!: () => void;
    const gate = new Promise<void>((r) => release = r);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      async pull(ctl) {
        if (sent === 1) await gate; // the rest only after the answer came
        if (sent === 3) return ctl.close();
        sent++;
        ctl.enqueue(new Uint8Array(1000));
      },
    });
    const res = await get(t, `http://127.0.0.1:${port}/up`, {
      method: "POST",
      headers: [["host", "up"], ["content-length", "3000"]],
      body,
    });
    assert.equal(res.status, 413);
    assert.equal(await res.text(), "too big");
    release();
    const pool = t.stats()[0]!;
    assert.equal(pool.idle, 0, "not pooled");
    assert.equal(pool.open, 0, "closed");
    assert.equal((await get(t, `http://127.0.0.1:${port}/next`)).status, 413);
    assert.equal(accepted, 2);
  } finally {
    t.close();
    listener.close();
    await served;
  }
});

Deno.test("through Ferry: a client that aborts its upload mid-body leaves Ferry serving", async () => {
  const up = startEchoUpstream();
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    for (const framing of ["Content-Length: 100000", "Transfer-Encoding: chunked"]) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: px.port });
      const part = framing.startsWith("Content") ? "x".repeat(1000) : "3e8\r\n" + "x".repeat(1000);
      // Accept-Encoding: gzip took the old node:http pass-through, where this crashed Ferry.
      await conn.write(
        enc.encode(
          `POST /u HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n${framing}\r\n\r\n${part}`,
        ),
      );
      await sleep(100);
      conn.close();
      await sleep(100);
      const after = await fetch(`${px.url}/after`, { method: "POST", body: "fine" });
      assert.equal(after.status, 200, framing);
      assert.equal((await after.json()).body, "fine");
    }
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("through Ferry: a chunked upload over max_body_bytes is a clean 413 (gzip accepted)", async () => {
  const up = startEchoUpstream();
  const px = startFerry(catchAllConfig("server: { max_body_bytes: 1000 }\n"), { UP: up.url });
  try {
    const text = await rawRequest(
      px.port,
      "POST /u HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n" +
        "Connection: close\r\n\r\n" + `7d0\r\n${"y".repeat(2000)}\r\n0\r\n\r\n`,
    );
    assert.match(text, /^HTTP\/1\.1 413/);
    assert.match(text, /larger than 1000 bytes/);
    const after = await fetch(`${px.url}/after`, { method: "POST", body: "fine" });
    assert.equal((await after.json()).body, "fine");
  } finally {
    await px.close();
    await up.close();
  }
});

Deno.test("h1 pool: connect_timeout bounds a TLS handshake that never answers", async () => {
  // Accepts TCP and then says nothing: the TLS ClientHello is never answered.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const c of listener) held.push(c);
  })().catch(() => {});
  const t = new H1Transport({ ...OPTS, connectTimeoutMs: 300 });
  try {
    const started = performance.now();
    await assert.rejects(get(t, `https://localhost:${port}/`), (e: unknown) => {
      assert.ok(e instanceof ProxyError, String(e));
      assert.equal(e.kind, "upstream_connect_failure");
      assert.match(e.reason, /within 300 ms/);
      return true;
    });
    assert.ok(performance.now() - started < 5_000, "gave up at the connect timeout");
    assert.equal(t.stats()[0]!.open, 0);
  } finally {
    t.close();
    listener.close();
    for (const c of held) c.close();
    await accepting;
  }
});

Deno.test("through Ferry: upstream header lines reach the client as they came (order, repeats)", async () => {
  const up = startRawUpstream(() => ({
    bytes: "HTTP/1.1 200 OK\r\nX-Zeta: 1\r\nCache-Control: no-cache\r\nX-Alpha: 2\r\n" +
      "Cache-Control: private\r\nConnection: keep-alive, x-hop\r\nX-Hop: gone\r\n" +
      "Content-Length: 2\r\n\r\nok",
  }));
  const px = startFerry(catchAllConfig(), { UP: up.url });
  try {
    const text = await rawRequest(
      px.port,
      "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert.match(text, /^HTTP\/1\.1 200/);
    const names = text.slice(0, text.indexOf("\r\n\r\n")).split("\r\n").slice(1)
      .map((line) => line.slice(0, line.indexOf(":")).toLowerCase());
    const lines = text.split("\r\n");
    // Two cache-control lines, not one joined by ", "; x-zeta before x-alpha, as sent.
    assert.deepEqual(lines.filter((l) => /^cache-control:/i.test(l)).map((l) => l.slice(15)), [
      "no-cache",
      "private",
    ]);
    assert.ok(names.indexOf("x-zeta") < names.indexOf("x-alpha"), names.join(" "));
    // Hop-by-hop: Connection itself and the names it lists are dropped.
    assert.equal(names.includes("x-hop"), false);
    assert.ok(text.endsWith("\r\n\r\nok"));
  } finally {
    await px.close();
    await up.close();
  }
});
