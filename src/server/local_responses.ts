/** Responses a route makes without an upstream: fixed bodies and redirects. */
import type { RouteConfig } from "../config/schema.ts";
import type { Handler } from "../pipeline/types.ts";

type Direct = NonNullable<RouteConfig["direct_response"]>;
type Redirect = NonNullable<RouteConfig["redirect"]>;

export function directResponse(d: Direct): Handler {
  const body = new TextEncoder().encode(d.body);
  return function direct(req, ctx) {
    const bodyless = req.method === "HEAD" || d.status === 204 || d.status === 304;
    return Promise.resolve(
      new Response(bodyless ? null : body, {
        status: d.status,
        headers: { "content-type": d.content_type, "x-request-id": ctx.requestId },
      }),
    );
  };
}

type PathMatch = RouteConfig["match"]["path"];

/** `prefix` replaces the part of the path the route's prefix (or exact) match covered. */
export function redirectResponse(r: Redirect, match: PathMatch): Handler {
  const matched = "prefix" in match ? match.prefix : undefined;
  return function redirect(_req, ctx) {
    const scheme = r.scheme ?? ctx.scheme;
    let authority = ctx.authority;
    if (r.host !== undefined || r.port !== undefined) {
      const host = r.host ?? ctx.host;
      authority = r.port !== undefined ? `${host}:${r.port}` : host;
    } else if (r.scheme !== undefined && r.scheme !== ctx.scheme) {
      authority = ctx.host; // a scheme change drops the old scheme's port
    }
    let path = ctx.path;
    if (r.path !== undefined) path = r.path;
    else if (r.prefix !== undefined) {
      path = matched !== undefined && path.startsWith(matched)
        ? r.prefix + path.slice(matched.length)
        : r.prefix;
    }
    const query = r.strip_query ? "" : ctx.search;
    return Promise.resolve(
      new Response(null, {
        status: r.status,
        headers: {
          location: `${scheme}://${authority}${path}${query}`,
          "x-request-id": ctx.requestId,
        },
      }),
    );
  };
}
