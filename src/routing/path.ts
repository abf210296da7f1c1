/**
 * Request path and host normalisation, run once per request before routing.
 *
 * Routing, rewriting and any path-based policy must all see the same canonical path, or a
 * request such as `/public/%2e%2e/admin` can be routed as "public" while the upstream serves
 * "/admin". This module is the single place where that canonical form is made.
 *
 * @module
 */

/** The outcome of {@linkcode normalizePath}: the canonical path, or why the input is refused. */
export type NormalizedPath = { ok: true; path: string } | { ok: false; reason: string };

const SLASH = 0x2f;
const DOT = 0x2e;
const PERCENT = 0x25;
const BACKSLASH = 0x5c;
const SEMICOLON = 0x3b;

/**
 * Normalises a request path as received (percent-encoded, without the query).
 *
 * - must start with "/";
 * - refuses bad percent-encoding (`%zz`, a truncated `%4`), an encoded NUL (`%00`), raw control
 *   characters, space, DEL, backslash and non-ASCII;
 * - decodes escapes of unreserved characters (`ALPHA DIGIT - . _ ~`), so `%2e` becomes `.`,
 *   and upper-cases the hex of every other escape; `%2F` stays encoded and is not a separator;
 * - merges repeated slashes (as nginx `merge_slashes on`);
 * - removes dot segments (RFC 3986 5.2.4) and refuses a path that climbs above the root;
 * - refuses a dot segment carrying a path parameter (`..;x`, `.;`, `%2e%2e;x`, `..%3Bx`):
 *   Tomcat and Spring strip `;params` and then read the segment as `..`, so passing it on
 *   unchanged would route `/api/..;/admin` as `/api/...` while the upstream serves `/admin`;
 * - keeps a trailing slash.
 *
 * A path that needs none of this is returned unchanged after one scan, without allocating.
 *
 * @example
 * ```ts
 * normalizePath("/public/%2e%2E/admin"); // { ok: true, path: "/admin" }
 * normalizePath("/../etc/passwd"); // { ok: false, reason: "path escapes the root" }
 * ```
 */
export function normalizePath(raw: string): NormalizedPath {
  const n = raw.length;
  if (n === 0 || raw.charCodeAt(0) !== SLASH) {
    return { ok: false, reason: "path must start with /" };
  }
  // Fast path: one scan that only looks for reasons to take the slow path.
  for (let i = 1; i < n; i++) {
    const c = raw.charCodeAt(i);
    if (c <= 0x20 || c >= 0x7f || c === BACKSLASH) return badChar(c);
    if (c === PERCENT) return slowPath(raw);
    if (c === SLASH) {
      // "//" or a "." / ".." segment after this slash.
      if (raw.charCodeAt(i - 1) === SLASH) return slowPath(raw);
    } else if (c === DOT && raw.charCodeAt(i - 1) === SLASH && isDotSegmentAt(raw, i)) {
      return slowPath(raw);
    }
  }
  return { ok: true, path: raw };
}

/**
 * Whether the segment starting at `i` (which holds a ".") is "." or "..", possibly followed by
 * a path parameter (";"), which the slow path refuses.
 */
function isDotSegmentAt(raw: string, i: number): boolean {
  const next = raw.charCodeAt(i + 1); // NaN at the end of the string
  if (Number.isNaN(next) || next === SLASH || next === SEMICOLON) return true;
  if (next !== DOT) return false;
  const after = raw.charCodeAt(i + 2);
  return Number.isNaN(after) || after === SLASH || after === SEMICOLON;
}

/** `..;x`, `.;`, `..%3Bx` (after unreserved escapes are decoded and hex upper-cased). */
function isDotSegmentWithParameter(seg: string): boolean {
  const semi = seg.indexOf(";");
  const encoded = seg.indexOf("%3B");
  const cut = semi < 0 ? encoded : encoded < 0 ? semi : Math.min(semi, encoded);
  if (cut < 0) return false;
  const base = seg.slice(0, cut);
  return base === "." || base === "..";
}

function badChar(c: number): NormalizedPath {
  if (c === BACKSLASH) {
    // Some upstreams treat "\" as "/", which would reopen dot-segment tricks behind our back.
    return { ok: false, reason: "backslash in path" };
  }
  const hex = c.toString(16).toUpperCase().padStart(2, "0");
  if (c > 0x7f) return { ok: false, reason: `non-ASCII character U+${hex} in path` };
  return { ok: false, reason: `control character or space (0x${hex}) in path` };
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const lower = c | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}

/** ALPHA / DIGIT / "-" / "." / "_" / "~" (RFC 3986 section 2.3). */
function isUnreserved(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) ||
    c === 0x2d || c === DOT || c === 0x5f || c === 0x7e;
}

const HEX = "0123456789ABCDEF";

/** Decodes, validates and removes dot segments in one pass, segment by segment. */
function slowPath(raw: string): NormalizedPath {
  const n = raw.length;
  const segments: string[] = [];
  let trailingSlash = false;
  let i = 1;
  while (i <= n) {
    // Read one segment: raw[i .. next "/" or end).
    let seg = "";
    let start = i;
    for (; i < n; i++) {
      const c = raw.charCodeAt(i);
      if (c === SLASH) break;
      if (c <= 0x20 || c >= 0x7f || c === BACKSLASH) return badChar(c);
      if (c !== PERCENT) continue;
      const h = hexValue(raw.charCodeAt(i + 1));
      const l = hexValue(raw.charCodeAt(i + 2));
      if (h < 0 || l < 0) {
        return { ok: false, reason: `invalid percent-encoding "${raw.slice(i, i + 3)}" in path` };
      }
      const byte = h * 16 + l;
      if (byte === 0) return { ok: false, reason: "encoded NUL (%00) in path" };
      seg += raw.slice(start, i);
      // Why: unreserved characters mean the same encoded or not, so one spelling is kept.
      seg += isUnreserved(byte) ? String.fromCharCode(byte) : "%" + HEX[h] + HEX[l];
      i += 2;
      start = i + 1;
    }
    seg += raw.slice(start, i);
    const last = i >= n;
    i++; // skip the "/"
    if (isDotSegmentWithParameter(seg)) {
      return { ok: false, reason: "path parameter on a dot segment (..;)" };
    }
    if (seg === "" || seg === ".") {
      trailingSlash = last; // "//" merges; "/./" vanishes; a final one leaves "/" behind
    } else if (seg === "..") {
      if (segments.pop() === undefined) return { ok: false, reason: "path escapes the root" };
      trailingSlash = last;
    } else {
      segments.push(seg);
      trailingSlash = false;
    }
  }
  if (segments.length === 0) return { ok: true, path: "/" };
  const path = "/" + segments.join("/") + (trailingSlash ? "/" : "");
  return { ok: true, path };
}

/**
 * Normalises the authority of a request (Host header or HTTP/2 `:authority`) to a routing key:
 * lower case, without the port, without one trailing dot (`example.com.` is `example.com`).
 *
 * Accepts a reg-name of letters, digits, `-`, `.`, `_`, `~` (no percent-escapes), an IPv4
 * address, or a bracketed IPv6 address (returned in canonical form, with brackets). Returns
 * `null` for anything else: empty, userinfo (`@`), spaces, commas, a bad or too large port.
 *
 * An already lower-case host without port is returned as is, without allocating.
 *
 * @example
 * ```ts
 * normalizeHost("API.Example.com:8443"); // "api.example.com"
 * normalizeHost("user@evil.com"); // null
 * ```
 */
export function normalizeHost(authority: string): string | null {
  const n = authority.length;
  if (n === 0) return null;
  if (authority.charCodeAt(0) === 0x5b /* [ */) return normalizeIpv6(authority);
  let upper = false;
  let end = n; // end of the host part (start of ":port")
  for (let i = 0; i < n; i++) {
    const c = authority.charCodeAt(i);
    if (c >= 0x61 && c <= 0x7a) continue; // a-z, the common case first
    if ((c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f || c === 0x7e) continue;
    if (c === DOT) {
      // Empty labels (".a", "a..b") are not host names anyone routes on.
      if (i === 0 || authority.charCodeAt(i - 1) === DOT) return null;
      continue;
    }
    if (c >= 0x41 && c <= 0x5a) {
      upper = true;
      continue;
    }
    if (c === 0x3a /* : */) {
      if (!validPort(authority, i + 1)) return null;
      end = i;
      break;
    }
    return null;
  }
  if (end === 0) return null;
  if (authority.charCodeAt(end - 1) === DOT) end--; // one trailing dot: the FQDN spelling
  if (end === 0) return null;
  if (!upper && end === n) return authority;
  const host = end === n ? authority : authority.slice(0, end);
  return upper ? host.toLowerCase() : host;
}

/** `*DIGIT` (RFC 3986 allows an empty port) with a value of at most 65535. */
function validPort(s: string, from: number): boolean {
  if (s.length - from > 5) return false;
  let value = 0;
  for (let i = from; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
    value = value * 10 + (c - 0x30);
  }
  return value <= 65535;
}

const IPV6_CHARS = /^[0-9A-Fa-f:.]+$/;

function normalizeIpv6(authority: string): string | null {
  const close = authority.indexOf("]");
  if (close < 0) return null;
  const inner = authority.slice(1, close);
  if (!IPV6_CHARS.test(inner)) return null; // also refuses zone ids ("%25eth0")
  const rest = authority.slice(close + 1);
  if (rest !== "" && (rest.charCodeAt(0) !== 0x3a || !validPort(rest, 1))) return null;
  try {
    // Why URL: it validates every IPv6 spelling and gives the canonical (compressed) form.
    return new URL(`http://[${inner}]/`).hostname;
  } catch {
    return null;
  }
}
