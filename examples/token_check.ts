/**
 * Example extension middleware: refuses requests without a known token in a header (401), and
 * strips the header before the request goes upstream. docs/extending.md walks through it.
 *
 * Options:
 *   header: the header carrying the token (default x-api-token)
 *   tokens: the accepted tokens, a list of strings of at least 16 characters; or
 *   tokens_env: the name of an environment variable holding them, comma-separated
 *     (needs --allow-env, which `deno task start` has)
 */
import type { MiddlewareFactory } from "../mod.ts";

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

const tokenCheck: MiddlewareFactory = async (options) => {
  const header = options.header ?? "x-api-token";
  if (typeof header !== "string" || !HEADER_NAME.test(header)) {
    throw new Error(`header: expected a header name, got ${JSON.stringify(header)}`);
  }
  let tokens = options.tokens;
  if (tokens === undefined && typeof options.tokens_env === "string") {
    tokens = (Deno.env.get(options.tokens_env) ?? "").split(",").filter((t) => t !== "");
  }
  if (!Array.isArray(tokens) || tokens.length === 0) {
    throw new Error(
      "tokens: expected a non-empty list of tokens (or tokens_env naming a variable)",
    );
  }
  for (const t of tokens) {
    if (typeof t !== "string" || t.length < 16) {
      throw new Error("tokens: expected each token to be a string of at least 16 characters");
    }
  }
  // Compared as SHA-256 digests: a lookup by digest tells a timing observer nothing about a token.
  const accepted = new Set(await Promise.all(tokens.map(digest)));

  return (next) => async (req, ctx) => {
    const given = req.headers.get(header);
    if (given === null || !accepted.has(await digest(given))) {
      return Response.json(
        {
          error: "unauthorized",
          reason: `missing or unknown ${header}`,
          request_id: ctx.requestId,
        },
        { status: 401, headers: { "www-authenticate": `Token header="${header}"` } },
      );
    }
    // The token is for Ferry; the upstream does not need to see it.
    const headers = new Headers(req.headers);
    headers.delete(header);
    return await next(new Request(req, { headers }), ctx);
  };
};

async function digest(text: string): Promise<string> {
  const bytes = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, "0")).join("");
}

export default tokenCheck;
