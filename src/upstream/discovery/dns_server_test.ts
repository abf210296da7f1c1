/**
 * The test DNS server itself, checked on the raw wire: TCP framing (RFC 1035 4.2.2) and a
 * compressed question name, neither of which `Deno.resolveDns` exercises by itself.
 */
import assert from "node:assert/strict";
import { startDnsServer, TYPE_A } from "../../../tests/fixtures/dns_server.ts";

/** A query for `api.test` whose question ends in a compression pointer to the "test" label. */
function compressedQuery(id: number): Uint8Array {
  const header = [id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
  const tail = [0, TYPE_A, 0, 1]; // QTYPE A, QCLASS IN
  const api = [3, ..."api"].map((c) => typeof c === "string" ? c.charCodeAt(0) : c);
  const pointerAt = 12 + api.length + 2 + tail.length; // where the "test" label is put
  const test = [4, ..."test"].map((c) => typeof c === "string" ? c.charCodeAt(0) : c);
  return new Uint8Array([
    ...header,
    ...api,
    0xc0 | (pointerAt >> 8),
    pointerAt & 0xff,
    ...tail,
    ...test,
    0,
  ]);
}

async function readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(out.subarray(got));
    if (r === null) throw new Error("connection closed early");
    got += r;
  }
  return out;
}

Deno.test("the test DNS server answers over TCP and follows a compressed question", async () => {
  const dns = await startDnsServer();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: dns.port });
  try {
    dns.setA("api.test", ["10.0.0.7"]);
    const q = compressedQuery(0x1234);
    await conn.write(new Uint8Array([q.length >> 8, q.length & 0xff, ...q]));
    const lenBytes = await readExactly(conn, 2);
    const reply = await readExactly(conn, (lenBytes[0]! << 8) | lenBytes[1]!);
    const view = new DataView(reply.buffer);
    assert.equal(view.getUint16(0), 0x1234, "id echoed");
    assert.equal(reply[2]! & 0x80, 0x80, "QR set");
    assert.equal(reply[3]! & 0x0f, 0, "NOERROR");
    assert.equal(view.getUint16(6), 1, "one answer");
    assert.deepEqual([...reply.subarray(reply.length - 4)], [10, 0, 0, 7]);
    assert.deepEqual(dns.queries.at(-1), { name: "api.test", type: TYPE_A, transport: "tcp" });

    dns.remove("api.test");
    const q2 = compressedQuery(0x0001);
    await conn.write(new Uint8Array([q2.length >> 8, q2.length & 0xff, ...q2]));
    const len2 = await readExactly(conn, 2);
    const nx = await readExactly(conn, (len2[0]! << 8) | len2[1]!);
    assert.equal(nx[3]! & 0x0f, 3, "NXDOMAIN");
  } finally {
    conn.close();
    await dns.close();
  }
});
