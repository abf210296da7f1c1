/**
 * Example extension middleware: sets headers on every response that comes back through it
 * (security headers, a served-by stamp). docs/extending.md walks through it.
 *
 * Options:
 *   headers: a mapping of header name to value, at least one
 */
import type { MiddlewareFactory } from "../mod.ts";

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

const responseHeaders: MiddlewareFactory = (options) => {
  const headers = options.headers;
  if (typeof headers !== "object" || headers === null || Array.isArray(headers)) {
    throw new Error("headers: expected a mapping of header name to value");
  }
  const entries = Object.entries(headers);
  if (entries.length === 0) throw new Error("headers: expected at least one header");
  for (const [name, value] of entries) {
    if (!HEADER_NAME.test(name)) throw new Error(`headers: invalid header name ${name}`);
    if (typeof value !== "string" || /[\r\n\0]/.test(value)) {
      throw new Error(`headers.${name}: expected a string without line breaks`);
    }
  }
  const set = entries as [string, string][];

  return (next) => async (req, ctx) => {
    const res = await next(req, ctx);
    // A WebSocket handshake answer is the runtime's own: leave it as it is.
    if (res.status === 101) return res;
    // Ferry builds every response it returns, so its headers can be changed in place.
    for (const [name, value] of set) res.headers.set(name, value);
    return res;
  };
};

export default responseHeaders;
