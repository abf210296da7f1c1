/**
 * Files a config names: where they are (relative to the config file) and how large they may be.
 * Free of the schema and the YAML parser, so worker isolates resolve paths without loading them.
 */

/** Resolves a path written in a config file against that file's folder (absolute stays as is). */
export function resolveConfigPath(configFile: string, p: string): string {
  // Plain POSIX path handling: importing node:path would load Node's compatibility layer.
  const slash = configFile.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : configFile.slice(0, slash);
  return normalizePosix(p.startsWith("/") ? p : `${dir}/${p}`);
}

/** The largest file a config may name (certificates, CA bundles, keys, tokens, modules). */
export const MAX_NAMED_FILE_BYTES = 16 * 1024 * 1024;

/** Removes `.` and `..` segments and repeated slashes from a POSIX path. */
function normalizePosix(path: string): string {
  const absolute = path.startsWith("/");
  const out: string[] = [];
  for (const seg of path.split("/")) {
    if (seg === "" || seg === ".") continue;
    if (seg === ".." && out.length > 0 && out[out.length - 1] !== "..") out.pop();
    else if (seg !== ".." || !absolute) out.push(seg);
  }
  const joined = out.join("/");
  return absolute ? `/${joined}` : joined || ".";
}
