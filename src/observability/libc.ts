/**
 * The few libc calls Ferry makes through FFI (descriptor limits and counts, socket buffer sizes),
 * opened once. Undefined off Linux/glibc or without --allow-ffi (asked first: dlopen without the
 * permission would prompt on a terminal), and then every caller does without.
 */
const SYMBOLS = {
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  opendir: { parameters: ["buffer"], result: "pointer" },
  readdir: { parameters: ["pointer"], result: "pointer" },
  closedir: { parameters: ["pointer"], result: "i32" },
} as const;

export type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let cached: Libc | null | undefined;

export function libc(): Libc | undefined {
  if (cached === undefined) cached = open();
  return cached ?? undefined;
}

function open(): Libc | null {
  if (Deno.build.os !== "linux") return null;
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return null;
  try {
    return Deno.dlopen("libc.so.6", SYMBOLS).symbols;
  } catch {
    return null; // not glibc (musl names it differently)
  }
}
