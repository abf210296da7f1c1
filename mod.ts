/**
 * Ferry as a library: the request pipeline's types, for writing middleware, and `start`, to run
 * Ferry with your own middleware from code. See docs/extending.md; the CLI is main.ts.
 *
 * @example
 * ```ts
 * import { type MiddlewareFactory, start } from "./mod.ts";
 *
 * const stamp: MiddlewareFactory = (options) => (next) => async (req, ctx) => {
 *   const res = await next(req, ctx);
 *   res.headers.set("x-served-by", String(options.name ?? "ferry"));
 *   return res;
 * };
 * const ferry = await start({ config: "ferry.yaml", middleware: { stamp } });
 * console.log(ferry.listeners);
 * await ferry.close();
 * ```
 *
 * @module
 */
export type {
  ClientIdentity,
  Handler,
  Middleware,
  RequestContext,
  RequestOutcome,
} from "./src/pipeline/types.ts";
export type { MiddlewareFactory, MiddlewareUse } from "./src/server/extensions.ts";
export { ConfigError, type FerryHandle, start, type StartOptions } from "./src/extend/run.ts";
export type { BoundAddress } from "./src/server/ferry.ts";
export type { ReloadOutcome } from "./src/server/reload.ts";
export { VERSION } from "./src/version.ts";
