/** Command-line parsing for main.ts: a few flags, strict about anything else. */

export interface CliOptions {
  readonly config: string | undefined;
  readonly check: boolean;
  readonly version: boolean;
  readonly help: boolean;
}

export const USAGE = `Ferry: a Deno-native reverse proxy and service-mesh data plane.

Usage: deno task start [--config FILE] [--check]
       ferry [--config FILE] [--check] [--version] [--help]

Options:
  --config FILE   YAML config (default: $PROXY_CONFIG, else the PROXY_* environment
                  quick start, else config/ferry.yaml)
  --check         validate and compile the config, print a summary, exit
  --version       print the version
  --help          this text

Environment quick start (no file): PROXY_LISTEN_ADDR, PROXY_UPSTREAM_ADDRS (comma-separated),
  PROXY_METRICS_ADDR (admin listener), PROXY_REQUEST_TIMEOUT_MS, PROXY_LOG_LEVEL.

Exit codes: 0 ok (or drained on SIGTERM/SIGINT), 1 invalid config, 2 bad usage,
            3 could not start (for example an address in use).
`;

export class UsageError extends Error {}

export function parseArgs(args: readonly string[]): CliOptions {
  let config: string | undefined;
  let check = false, version = false, help = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === "--config" || a === "-c") {
      const v = args[++i];
      if (v === undefined) throw new UsageError(`${a} needs a file name`);
      config = v;
    } else if (a.startsWith("--config=")) config = a.slice("--config=".length);
    else if (a === "--check") check = true;
    else if (a === "--version" || a === "-V") version = true;
    else if (a === "--help" || a === "-h") help = true;
    else throw new UsageError(`unknown argument: ${a}`);
  }
  return { config, check, version, help };
}
