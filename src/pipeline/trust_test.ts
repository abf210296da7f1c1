import assert from "node:assert/strict";
import { parseCidr, parseIp, TrustedProxies } from "./trust.ts";

Deno.test("clientIp takes the rightmost untrusted hop of a trusted peer's X-Forwarded-For, never the leftmost", () => {
  const t = new TrustedProxies(["10.0.0.0/8"]);
  // The client may write anything on the left; only hops added by trusted proxies count.
  assert.equal(t.clientIp("10.0.0.1", "6.6.6.6, 203.0.113.7, 10.0.0.2"), "203.0.113.7");
  assert.equal(t.clientIp("10.0.0.1", "6.6.6.6, 203.0.113.7"), "203.0.113.7");
  assert.equal(t.clientIp("10.0.0.1", " 203.0.113.7 ,10.1.1.1 , 10.2.2.2"), "203.0.113.7");
  assert.equal(t.clientIp("10.0.0.1", "203.0.113.7,,10.1.1.1"), "203.0.113.7", "empty hops");
});

Deno.test("clientIp ignores X-Forwarded-For from an untrusted peer or with no trusted proxies", () => {
  const t = new TrustedProxies(["10.0.0.0/8"]);
  assert.equal(t.clientIp("198.51.100.9", "6.6.6.6"), "198.51.100.9");
  assert.equal(t.clientIp("10.0.0.1", null), "10.0.0.1");
  const none = new TrustedProxies([]);
  assert.ok(none.empty);
  assert.equal(none.clientIp("10.0.0.1", "6.6.6.6"), "10.0.0.1");
});

Deno.test("clientIp: a hop that is not an address stops the walk at the peer; all-trusted chains give the leftmost", () => {
  const t = new TrustedProxies(["10.0.0.0/8"]);
  assert.equal(t.clientIp("10.0.0.1", "203.0.113.7, unknown"), "10.0.0.1");
  assert.equal(t.clientIp("10.0.0.1", "10.9.9.9, 10.8.8.8"), "10.9.9.9");
});

Deno.test("TrustedProxies.has matches IPv4 and IPv6 CIDRs, folds IPv4-mapped IPv6, refuses bad CIDRs", () => {
  const t = new TrustedProxies(["192.168.0.0/16", "2001:db8::/32", "127.0.0.1"]);
  assert.ok(t.has("192.168.255.1"));
  assert.ok(!t.has("192.169.0.1"));
  assert.ok(t.has("::ffff:192.168.1.1"), "IPv4-mapped IPv6 is the IPv4 address");
  assert.ok(t.has("2001:db8:ffff::1"));
  assert.ok(t.has("[2001:db8::1]"));
  assert.ok(!t.has("2001:db9::1"));
  assert.ok(t.has("127.0.0.1"));
  assert.ok(!t.has("127.0.0.2"), "a bare address is a /32");
  assert.ok(!t.has("not-an-ip"));
  assert.ok(!t.has("192.168.0.256"));
  for (const bad of ["10.0.0.0/33", "10.0.0.0/8/1", "10.0.0/8", "::1/129", "10.0.0.0/x", "a/8"]) {
    assert.equal(parseCidr(bad), undefined, bad);
    assert.throws(() => new TrustedProxies([bad]), RangeError, bad);
  }
  assert.deepEqual(parseCidr("10.1.2.3/8"), { v6: false, base: 0x0a000000n, mask: 0xff000000n });
});

Deno.test("parseIp reads IPv4, compressed IPv6 with an embedded IPv4, and refuses malformed input", () => {
  assert.deepEqual(parseIp("1.2.3.4"), { v6: false, value: 0x01020304n });
  assert.deepEqual(parseIp("::1"), { v6: true, value: 1n });
  assert.deepEqual(parseIp("2001:db8::"), { v6: true, value: 0x20010db8n << 96n });
  assert.deepEqual(parseIp("64:ff9b::1.2.3.4"), {
    v6: true,
    value: (0x0064ff9bn << 96n) | 0x01020304n,
  });
  for (const bad of ["1.2.3", "1.2.3.4.5", "01234.1.1.1", "1::2::3", "1:2:3:4:5:6:7:8:9", "g::1"]) {
    assert.equal(parseIp(bad), undefined, bad);
  }
});
