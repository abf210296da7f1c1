/**
 * A real redis-server for tests: each test starts its own on a free port (no persistence) and
 * stops it by its PID. `.ci/run` installs the Debian package.
 */

export interface RunningRedis {
  readonly port: number;
  readonly address: string;
  child: Deno.ChildProcess;
  /** SIGKILL, as a crash would; waits for the process to be gone. */
  kill(): Promise<void>;
  /** Starts a fresh server on the same port (empty: no data, no scripts). */
  restart(): Promise<void>;
  /** Runs redis-cli against this server; returns stdout. */
  cli(...args: string[]): Promise<string>;
}

/** A port that was free a moment ago (bound to port 0 and released). */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function spawn(port: number, extra: readonly string[]): Deno.ChildProcess {
  return new Deno.Command("redis-server", {
    args: [
      ...["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      ...extra,
    ],
    stdout: "null",
    stderr: "null",
  }).spawn();
}

async function waitReady(port: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      await c.write(new TextEncoder().encode("PING\r\n"));
      const buf = new Uint8Array(16);
      const n = await c.read(buf);
      c.close();
      // -NOAUTH: up, with a password (--requirepass).
      if (n && /^(\+PONG|-NOAUTH)/.test(new TextDecoder().decode(buf.subarray(0, n)))) return;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis-server on ${port} did not start`);
}

/** `extra`: more redis-server arguments (--requirepass, --tls-port, ...). */
export async function startRedis(extra: readonly string[] = []): Promise<RunningRedis> {
  const port = freePort();
  const r: RunningRedis = {
    port,
    address: `127.0.0.1:${port}`,
    child: spawn(port, extra),
    async kill() {
      try {
        r.child.kill("SIGKILL");
      } catch { /* already gone */ }
      await r.child.status;
    },
    async restart() {
      r.child = spawn(port, extra);
      await waitReady(port);
    },
    async cli(...args: string[]) {
      const out = await new Deno.Command("redis-cli", {
        args: ["-p", String(port), ...args],
        stdout: "piped",
        stderr: "null",
      }).output();
      return new TextDecoder().decode(out.stdout).trim();
    },
  };
  await waitReady(port);
  return r;
}
