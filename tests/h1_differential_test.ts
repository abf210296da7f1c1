/**
 * Differential test of Ferry's HTTP/1.1 response parser against node:http's as the oracle: each
 * raw response (hand-written valid, edge and hostile cases, then fast-check generated ones) is
 * served by a raw socket upstream, fetched once with node:http `http.get` and once with Ferry's
 * H1Transport. Both must make the same framing decision (same status and body bytes, or both
 * refuse), except where Ferry is stricter for a reason listed in STRICTER.
 */
import assert from "node:assert/strict";
import * as http from "node:http";
import fc from "fast-check";
import { H1Transport } from "../src/h1/transport.ts";
import { latin1Bytes, startRawUpstream } from "./h1_upstream.ts";

/** Where Ferry refuses what node:http accepts, and why (docs/design.md "Upstream transports"). */
const STRICTER = {
  duplicateLength:
    "two Content-Length lines, even equal: one framing or none (RFC 9112 6.3 allows either)",
  transferCoding:
    "a Transfer-Encoding other than plain chunked: the coding would reach the client undone",
  obsFold: "obs-fold: RFC 9112 5.2 lets a proxy refuse it instead of rewriting it",
  bareLf: "bare LF line ends: RFC 9112 2.2 allows them as a leniency, not a duty",
  headerCount: "more than 128 header lines (Deno.serve's own downstream limit)",
  status: "status codes outside 100-599 (Response cannot carry them)",
  headerName: "whitespace or other non-token bytes in a header name",
  http10Chunked: "Transfer-Encoding in an HTTP/1.0 response (RFC 9112 6.1: framing is faulty)",
  upgrade: "a 101 to a request that asked for no upgrade",
  reasonPhrase: "control characters in the reason phrase",
  chunkExtension: "a chunk size followed by anything but BWS and ';' extensions",
  version: "HTTP versions other than 1.0 and 1.1 on a status line",
} as const;
type Strictness = keyof typeof STRICTER;

interface Outcome {
  readonly ok: boolean;
  readonly status?: number;
  readonly body?: string;
  readonly error?: string;
}

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

function viaNode(port: number): Promise<Outcome> {
  return new Promise((resolve) => {
    let settled = false;
    const done = (o: Outcome) => {
      if (!settled) {
        settled = true;
        resolve(o);
      }
    };
    const req = http.get(
      { host: "127.0.0.1", port, path: "/", agent: false, headers: { host: "t" } },
      (res) => {
        const chunks: Uint8Array[] = [];
        res.on("data", (c: Uint8Array) => chunks.push(new Uint8Array(c)));
        res.on("end", () => {
          // node ends a truncated body quietly but flags it: complete is false.
          if (!res.complete) return done({ ok: false, error: "incomplete body" });
          const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
          let o = 0;
          for (const c of chunks) {
            all.set(c, o);
            o += c.length;
          }
          done({ ok: true, status: res.statusCode!, body: hex(all) });
        });
        res.on("error", (e: Error) => done({ ok: false, error: e.message }));
        res.on("aborted", () => done({ ok: false, error: "aborted" }));
      },
    );
    req.on("upgrade", (_res, socket) => {
      socket.destroy();
      done({ ok: false, error: "upgrade" });
    });
    req.on("error", (e: Error) => done({ ok: false, error: e.message }));
    req.setTimeout(5_000, () => req.destroy(new Error("timeout")));
  });
}

async function viaFerry(t: H1Transport, url: string): Promise<Outcome> {
  try {
    const res = await t.send({
      url: `${url}/`,
      method: "GET",
      headers: [["host", "t"]],
      body: null,
      signal: AbortSignal.timeout(5_000),
    });
    const body = new Uint8Array(await res.arrayBuffer());
    return { ok: true, status: res.status, body: hex(body) };
  } catch (e) {
    return { ok: false, error: (e as Error).message };
  }
}

const OPTS = {
  maxIdlePerEndpoint: 0,
  maxConnectionsPerEndpoint: 8,
  idleTimeoutMs: 1_000,
  maxRequestsPerConnection: 0,
  connectTimeoutMs: 5_000,
};

/** Serves `raw` (then closes) and returns both readings. */
async function both(raw: string): Promise<{ node: Outcome; ferry: Outcome }> {
  const up = startRawUpstream(() => ({ bytes: latin1Bytes(raw), close: true }));
  const t = new H1Transport(OPTS);
  try {
    const node = await viaNode(up.port);
    const ferry = await viaFerry(t, up.url);
    return { node, ferry };
  } finally {
    t.close();
    await up.close();
  }
}

/** How the cases came out, so a test that compares nothing cannot pass unnoticed. */
const tally = { same: 0, excess: 0, stricter: 0, bothRefused: 0 };

/**
 * `excess`: bytes follow a complete bodiless response (204, 304). Both parsers frame it the same
 * (no body); node then fails on the excess as if it were the next response, Ferry answers the
 * complete response and closes the connection without reading the excess as anything.
 */
function judge(
  name: string,
  raw: string,
  r: { node: Outcome; ferry: Outcome },
  why?: Strictness,
  excess = false,
) {
  tally[r.ferry.ok ? (r.node.ok ? "same" : "excess") : r.node.ok ? "stricter" : "bothRefused"]++;
  const show = `${name}: ${JSON.stringify(raw.slice(0, 300))}\n node: ${JSON.stringify(r.node)}\n` +
    ` ferry: ${JSON.stringify(r.ferry)}`;
  if (r.ferry.ok && excess && !r.node.ok) {
    assert.equal(r.ferry.body, "", show);
    return;
  }
  if (r.ferry.ok) {
    assert.ok(r.node.ok, `Ferry accepted what node refused\n${show}`);
    assert.equal(r.ferry.status, r.node.status, show);
    assert.equal(r.ferry.body, r.node.body, show);
    return;
  }
  if (r.node.ok) {
    assert.ok(
      why !== undefined,
      `Ferry refused what node accepted, with no stated reason\n${show}`,
    );
  }
}

const CASES: [name: string, raw: string, stricter?: Strictness][] = [
  ["content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"],
  ["content-length 0", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"],
  [
    "chunked",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
  ],
  [
    "chunked with trailers",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nX-T: 1\r\n\r\n",
  ],
  [
    "chunked with extensions and upper-case hex",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA;n=v\r\n0123456789\r\n0\r\n\r\n",
  ],
  ["close-delimited", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"],
  ["HTTP/1.0 close-delimited", "HTTP/1.0 200 OK\r\n\r\nold"],
  ["204 ignores a length", "HTTP/1.1 204 No Content\r\n\r\n"],
  ["304 with a length and no body", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"],
  ["204 followed by bytes", "HTTP/1.1 204 No Content\r\n\r\nextra"],
  ["100 then 200", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
  [
    "103 then 200",
    "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nk",
  ],
  ["no reason phrase", "HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx"],
  ["no space after the code", "HTTP/1.1 404\r\nContent-Length: 1\r\n\r\nx"],
  ["obs-text in a value", "HTTP/1.1 200 OK\r\nX-A: caf\xe9\r\nContent-Length: 1\r\n\r\nx"],
  ["100 headers", `HTTP/1.1 200 OK\r\n${"X-H: v\r\n".repeat(100)}Content-Length: 1\r\n\r\nx`],
  ["599", "HTTP/1.1 599 Custom\r\nContent-Length: 1\r\n\r\nx"],
  ["binary body", "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\x00\xff\r\n"],
  // Hostile.
  [
    "CL and TE",
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
  ],
  ["two different lengths", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"],
  [
    "two equal lengths",
    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "duplicateLength",
  ],
  ["a length list", "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc", "duplicateLength"],
  ["signed length", "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\nabc"],
  ["hex length", "HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\nabc"],
  ["truncated length body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
  ["truncated chunked body", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"],
  [
    "chunk data longer than its size",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
  ],
  [
    "chunk size overflow",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nab\r\n0\r\n\r\n",
  ],
  [
    "chunk size not hex",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
  ],
  [
    "chunk size with junk",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 x\r\nab\r\n0\r\n\r\n",
    "chunkExtension",
  ],
  [
    "gzip transfer coding",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    "transferCoding",
  ],
  [
    "gzip, chunked",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    "transferCoding",
  ],
  [
    "chunked, gzip",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
    "transferCoding",
  ],
  ["obs-fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n  2\r\nContent-Length: 1\r\n\r\nx", "obsFold"],
  ["bare LF everywhere", "HTTP/1.1 200 OK\nContent-Length: 1\n\nx", "bareLf"],
  ["bare LF in one header", "HTTP/1.1 200 OK\r\nX-A: 1\nContent-Length: 1\r\n\r\nx", "bareLf"],
  ["bare CR in a value", "HTTP/1.1 200 OK\r\nX-A: 1\r2\r\nContent-Length: 1\r\n\r\nx"],
  ["NUL in a value", "HTTP/1.1 200 OK\r\nX-A: 1\x002\r\nContent-Length: 1\r\n\r\nx"],
  ["space before the colon", "HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\nx", "headerName"],
  ["status 600", "HTTP/1.1 600 Odd\r\nContent-Length: 1\r\n\r\nx", "status"],
  ["status 999", "HTTP/1.1 999 Odd\r\nContent-Length: 1\r\n\r\nx", "status"],
  ["status 099", "HTTP/1.1 099 Odd\r\nContent-Length: 1\r\n\r\nx", "status"],
  ["four-digit status", "HTTP/1.1 2000 OK\r\nContent-Length: 1\r\n\r\nx"],
  ["HTTP/2.0 status line", "HTTP/2.0 200 OK\r\nContent-Length: 1\r\n\r\nx", "version"],
  ["not HTTP at all", "SSH-2.0-OpenSSH_9.6\r\n"],
  ["101 to a plain GET", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "upgrade"],
  [
    "200 header lines",
    `HTTP/1.1 200 OK\r\n${"X-H: v\r\n".repeat(200)}Content-Length: 1\r\n\r\nx`,
    "headerCount",
  ],
  [
    "70 KiB header",
    `HTTP/1.1 200 OK\r\nX-Big: ${"b".repeat(70_000)}\r\nContent-Length: 1\r\n\r\nx`,
  ],
  [
    "HTTP/1.0 chunked",
    "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
    "http10Chunked",
  ],
  ["control char in reason", "HTTP/1.1 200 O\x01K\r\nContent-Length: 1\r\n\r\nx", "reasonPhrase"],
  ["empty response", ""],
];

Deno.test("differential: hand-written valid, edge and hostile responses", async () => {
  for (const k of Object.keys(tally) as (keyof typeof tally)[]) tally[k] = 0;
  for (const [name, raw, why] of CASES) {
    judge(name, raw, await both(raw), why, /^HTTP\/1\.1 204 .*\r\n\r\n./s.test(raw));
  }
  console.log("hand-written:", tally);
  assert.ok(
    tally.same >= 15 && tally.bothRefused >= 10 && tally.stricter >= 5,
    JSON.stringify(tally),
  );
});

/** One generated response, with the strictness rules its shape touches. */
interface Shape {
  readonly raw: string;
  readonly why: Strictness | undefined;
  readonly excess: boolean;
}

const token = fc.stringMatching(/^[A-Za-z][A-Za-z0-9-]{0,11}$/).filter((n) =>
  !/^(content-length|transfer-encoding|connection|upgrade)$/i.test(n)
);
const value = fc.stringMatching(/^[ -~]{0,20}$/);

const shape: fc.Arbitrary<Shape> = fc.record({
  version: fc.constantFrom("HTTP/1.1", "HTTP/1.1", "HTTP/1.0"),
  status: fc.constantFrom(200, 200, 200, 201, 204, 304, 404, 500, 599, 600, 99),
  headers: fc.array(fc.tuple(token, value), { maxLength: 6 }),
  body: fc.stringMatching(/^[a-z0-9]{0,40}$/),
  framing: fc.constantFrom(
    "length",
    "length",
    "length",
    "chunked",
    "chunked",
    "chunked",
    "close",
    "close",
    "both",
    "dupLength",
    "shortLength",
  ),
  chunks: fc.array(fc.integer({ min: 1, max: 8 }), { minLength: 1, maxLength: 5 }),
  mutation: fc.constantFrom(
    ...Array<string>(8).fill("none"),
    "bareLf",
    "obsFold",
    "nul",
    "bareCr",
  ),
}).map((g) => {
  let why: Strictness | undefined;
  const lines = [`${g.version} ${g.status} Reason`];
  for (const [n, v] of g.headers) lines.push(`${n}: ${v}`);
  let body = g.body;
  switch (g.framing) {
    case "length":
      lines.push(`Content-Length: ${body.length}`);
      break;
    case "shortLength":
      lines.push(`Content-Length: ${body.length + 3}`);
      break;
    case "dupLength":
      lines.push(`Content-Length: ${body.length}`, `Content-Length: ${body.length}`);
      why = "duplicateLength";
      break;
    case "both":
    case "chunked": {
      if (g.framing === "both") lines.push(`Content-Length: ${body.length}`);
      lines.push("Transfer-Encoding: chunked");
      if (g.version === "HTTP/1.0") why ??= "http10Chunked";
      let out = "";
      let rest = body;
      for (const n of g.chunks) {
        if (!rest) break;
        const part = rest.slice(0, n);
        rest = rest.slice(n);
        out += `${part.length.toString(16)}\r\n${part}\r\n`;
      }
      if (rest) out += `${rest.length.toString(16)}\r\n${rest}\r\n`;
      body = `${out}0\r\n\r\n`;
      break;
    }
  }
  if (g.status < 100 || g.status > 599) why ??= "status";
  let head = lines.join("\r\n") + "\r\n\r\n";
  if (g.mutation === "bareLf") {
    head = head.replace("\r\n", "\n");
    why ??= "bareLf";
  } else if (g.mutation === "obsFold" && g.headers.length > 0) {
    head = head.replace(/\r\n(?=[A-Za-z])/, "\r\n folded\r\n");
    why ??= "obsFold";
  } else if (g.mutation === "nul" && g.headers.length > 0) {
    head = head.replace(/: /, ": \x00");
  } else if (g.mutation === "bareCr" && g.headers.length > 0) {
    head = head.replace(/: /, ": \r");
  }
  const bodiless = g.status === 204 || g.status === 304 || g.status < 200;
  return { raw: head + body, why, excess: bodiless && body.length > 0 };
});

Deno.test("differential: fast-check generated responses", async () => {
  for (const k of Object.keys(tally) as (keyof typeof tally)[]) tally[k] = 0;
  await fc.assert(
    fc.asyncProperty(shape, async (s) => {
      judge("generated", s.raw, await both(s.raw), s.why, s.excess);
    }),
    { numRuns: 150, seed: 1703 },
  );
  console.log("generated:", tally);
  assert.ok(tally.same > 40 && tally.bothRefused > 10, JSON.stringify(tally));
});
