/**
 * Ferry started from code with two middleware registered by name (docs/extending.md):
 *
 *   UPSTREAM=http://127.0.0.1:9001 API_TOKENS=0123456789abcdef0123 \
 *     deno run --allow-net --allow-read --allow-env --allow-ffi --unstable-no-legacy-abort \
 *     --v8-flags=--max-semi-space-size=4,--heap-growing-percent=100,--single-threaded-gc,--no-allocation-site-pretenuring examples/embed.ts
 *
 * (the flags `deno task start` runs main.ts with).
 *
 * LISTEN sets the listener address (default 127.0.0.1:8080; port 0 picks a free port).
 * SIGTERM or SIGINT drains and exits.
 */
import { ConfigError, start } from "../mod.ts";
import tokenCheck from "./token_check.ts";
import responseHeaders from "./response_headers.ts";

const env = (name: string, fallback: string) => Deno.env.get(name) ?? fallback;

try {
  const ferry = await start({
    config: {
      listeners: [{
        name: "public",
        address: env("LISTEN", "127.0.0.1:8080"),
        // A default for every route on this listener that lists no middleware of its own.
        middleware: [{ name: "stamp", options: { headers: { "x-served-by": "ferry-embed" } } }],
      }],
      routes: [
        { name: "health", match: { path: { exact: "/healthz" } }, cluster: "app" },
        {
          name: "api",
          match: { path: { prefix: "/" } },
          cluster: "app",
          // Its own list replaces the listener's: list the stamp again to keep it.
          middleware: [
            { name: "stamp", options: { headers: { "x-served-by": "ferry-embed" } } },
            { name: "token_check", options: { tokens_env: "API_TOKENS" } },
          ],
        },
      ],
      clusters: [{ name: "app", endpoints: [env("UPSTREAM", "http://127.0.0.1:9001")] }],
    },
    middleware: { token_check: tokenCheck, stamp: responseHeaders },
  });
  const { hostname, port } = ferry.listeners.public!;
  console.error(JSON.stringify({ msg: "embed example serving", address: `${hostname}:${port}` }));
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    Deno.addSignalListener(signal, async () => {
      const { clean } = await ferry.close(10_000);
      Deno.exit(clean ? 0 : 1);
    });
  }
} catch (err) {
  if (!(err instanceof ConfigError)) throw err;
  console.error(`ferry: ${err.message}`);
  Deno.exit(1);
}
