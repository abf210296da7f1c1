/**
 * Configs are read and validated in a short-lived isolate of their own (validator_worker.ts): the
 * YAML parser and the schema (zod) hold about 5 MiB of heap once loaded, which V8's
 * heap-growing factor doubles at peak, and no serving isolate needs them between reloads. The
 * result comes back as plain data (issues.ts); the isolate is gone when it has answered.
 */
import type { LoadResult } from "./issues.ts";

/** What to load: a file, text (PUT /config), the PROXY_* environment, or data given in code. */
export type ValidateRequest =
  | { readonly kind: "file"; readonly path: string }
  | {
    readonly kind: "text";
    readonly text: string;
    /** Named in issues (`<request>`). */
    readonly label: string;
    /** The running config file, against whose folder relative paths in the text resolve. */
    readonly file: string | undefined;
  }
  | { readonly kind: "env"; readonly env: Readonly<Record<string, string | undefined>> }
  | { readonly kind: "data"; readonly data: unknown; readonly label: string };

/** The validator's answer: the load's result, or what it threw (an unreadable file, a bug). */
export type ValidateReply =
  | { readonly result: LoadResult }
  | { readonly thrown: { readonly name: string; readonly message: string } };

/** Longest a load may take before it is given up (a config path that never finishes reading). */
export const VALIDATE_DEADLINE_MS = 60_000;

/** Loads and validates in a fresh isolate; rejects with what the load threw. */
export function validateInIsolate(request: ValidateRequest): Promise<LoadResult> {
  const worker = new Worker(new URL("./validator_worker.ts", import.meta.url), {
    type: "module",
    name: "ferry-config-validator",
  });
  const { promise, resolve, reject } = Promise.withResolvers<LoadResult>();
  const timer = setTimeout(
    () => reject(new Error(`config not loaded within ${VALIDATE_DEADLINE_MS / 1000} s`)),
    VALIDATE_DEADLINE_MS,
  );
  worker.onmessage = (e: MessageEvent<ValidateReply>) => {
    const reply = e.data;
    if ("result" in reply) return resolve(reply.result);
    const err = new Error(reply.thrown.message);
    err.name = reply.thrown.name;
    reject(err);
  };
  // Handled here, or the error would end this isolate too.
  worker.onerror = (e) => {
    e.preventDefault();
    reject(new Error(`config validator failed: ${e.message}`));
  };
  worker.onmessageerror = () => reject(new Error("config validator sent an unreadable answer"));
  worker.postMessage(request);
  return promise.finally(() => {
    clearTimeout(timer);
    worker.terminate();
  });
}
