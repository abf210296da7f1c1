/**
 * Which peers may speak for the client (X-Forwarded-For, X-Request-Id): addresses in the
 * configured `server.trusted_proxies` CIDRs. Parsed once per snapshot.
 */

interface Cidr {
  readonly v6: boolean;
  readonly base: bigint;
  readonly mask: bigint;
}

function parseIPv4(text: string): bigint | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let n = 0n;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255) return undefined;
    n = (n << 8n) | BigInt(Number(p));
  }
  return n;
}

function parseIPv6(text: string): bigint | undefined {
  let s = text.replace(/^\[|\]$/g, "");
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  // A trailing dotted quad (::ffff:1.2.3.4) stands for the last two groups.
  const lastColon = s.lastIndexOf(":");
  const tail = s.slice(lastColon + 1);
  if (tail.includes(".")) {
    const v4 = parseIPv4(tail);
    if (v4 === undefined) return undefined;
    s = s.slice(0, lastColon + 1) + ((v4 >> 16n).toString(16)) + ":" +
      ((v4 & 0xffffn).toString(16));
  }
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const head = halves[0] ? halves[0].split(":") : [];
  const rest = halves.length === 2 && halves[1] ? halves[1].split(":") : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return undefined;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill("0"), ...rest];
  let n = 0n;
  for (const g of groups) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
    n = (n << 16n) | BigInt(parseInt(g, 16));
  }
  return n;
}

/** Parses an address to its family and value; IPv4-mapped IPv6 is folded to IPv4. */
export function parseIp(text: string): { v6: boolean; value: bigint } | undefined {
  const v4 = parseIPv4(text);
  if (v4 !== undefined) return { v6: false, value: v4 };
  const v6 = parseIPv6(text);
  if (v6 === undefined) return undefined;
  if (v6 >> 32n === 0xffffn) return { v6: false, value: v6 & 0xffffffffn };
  return { v6: true, value: v6 };
}

export function parseCidr(text: string): Cidr | undefined {
  const [addr, bits, extra] = text.split("/");
  if (addr === undefined || extra !== undefined) return undefined;
  const ip = parseIp(addr);
  if (!ip) return undefined;
  const width = ip.v6 ? 128 : 32;
  const prefix = bits === undefined ? width : Number(bits);
  if (
    !Number.isInteger(prefix) || prefix < 0 || prefix > width ||
    (bits !== undefined && !/^\d+$/.test(bits))
  ) {
    return undefined;
  }
  const all = (1n << BigInt(width)) - 1n;
  const mask = all ^ ((1n << BigInt(width - prefix)) - 1n);
  return { v6: ip.v6, base: ip.value & mask, mask };
}

export class TrustedProxies {
  readonly #cidrs: readonly Cidr[];
  /** Memo of recent answers: the set of peer addresses a proxy sees is small. */
  readonly #memo = new Map<string, boolean>();

  constructor(cidrs: readonly string[]) {
    this.#cidrs = cidrs.map((c) => {
      const parsed = parseCidr(c);
      if (!parsed) throw new RangeError(`not an IP address or CIDR: ${c}`);
      return parsed;
    });
  }

  get empty(): boolean {
    return this.#cidrs.length === 0;
  }

  has(ip: string): boolean {
    if (this.#cidrs.length === 0) return false;
    const known = this.#memo.get(ip);
    if (known !== undefined) return known;
    const parsed = parseIp(ip);
    const result = parsed !== undefined &&
      this.#cidrs.some((c) => c.v6 === parsed.v6 && (parsed.value & c.mask) === c.base);
    if (this.#memo.size > 4096) this.#memo.clear();
    this.#memo.set(ip, result);
    return result;
  }

  /**
   * The client address: walk X-Forwarded-For from the right, skipping trusted proxies; the first
   * untrusted hop is the client (as nginx's real_ip_recursive does).
   */
  clientIp(peer: string, xff: string | null): string {
    if (xff === null || !this.has(peer)) return peer;
    const hops = xff.split(",");
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = hops[i]!.trim();
      if (!hop) continue;
      if (!parseIp(hop)) return peer;
      if (!this.has(hop)) return hop;
    }
    return hops[0]?.trim() || peer;
  }
}

/** The X-Forwarded-* values sent upstream (HTTP and gRPC alike). */
export interface Forwarded {
  readonly for: string;
  readonly proto: string;
  readonly host: string;
}

/**
 * X-Forwarded-For/-Proto/-Host for the upstream request. A trusted proxy's values are kept (and
 * our peer appended to For); an untrusted peer's are replaced, so a client cannot forge them.
 */
export function forwardedHeaders(
  peerTrusted: boolean,
  peerIp: string,
  scheme: string,
  authority: string,
  incoming: { for: string | null; proto: string | null; host: string | null },
): Forwarded {
  if (!peerTrusted) return { for: peerIp, proto: scheme, host: authority };
  return {
    for: incoming.for ? `${incoming.for}, ${peerIp}` : peerIp,
    proto: incoming.proto ?? scheme,
    host: incoming.host ?? authority,
  };
}
