/**
 * Probe behind `server.workers`: do `reusePort` listeners in Workers of one process share the
 * connections of one port, for Deno.serve and for a raw Deno.listen accept loop (the guard's)?
 *
 *   deno run -A --unstable-net scripts/reuseport_probe.ts
 *
 * Prints, per kind, how many of 200 connections each of two workers answered. Measured on
 * kernel 6.18, Deno 2.9.6: serve {"0":97,"1":103}, listen {"0":99,"1":101}.
 */
const CONNECTIONS = 200;

// A Worker runs this same file (its import.meta.main is true too): it is told apart by name.
const WORKER_NAME = "reuseport-probe";

if ((globalThis as { name?: string }).name !== WORKER_NAME) {
  for (const kind of ["serve", "listen"] as const) console.log(kind, await probe(kind));
} else {
  // Inside a worker: bind the port with reusePort and answer with this worker's index.
  const scope = self as unknown as {
    onmessage: (e: MessageEvent) => void;
    postMessage(m: unknown): void;
  };
  scope.onmessage = (e: MessageEvent<{ i: number; port: number; kind: string }>) => {
    const { i, port, kind } = e.data;
    const body = `worker-${i}`;
    if (kind === "serve") {
      Deno.serve({ port, reusePort: true, onListen() {} }, () => new Response(body));
    } else {
      const listener = Deno.listen({ port, reusePort: true });
      (async () => {
        for await (const c of listener) {
          await c.read(new Uint8Array(1024));
          const head = `HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\nconnection: close`;
          await c.write(new TextEncoder().encode(`${head}\r\n\r\n${body}`));
          c.close();
        }
      })();
    }
    scope.postMessage("ready");
  };
}

async function probe(kind: "serve" | "listen"): Promise<string> {
  // Hold the port (with reusePort, so the workers can join it) while the workers bind.
  const holder = Deno.listen({ port: 0, reusePort: true });
  const port = (holder.addr as Deno.NetAddr).port;
  const workers = await Promise.all([0, 1].map((i) => {
    const w = new Worker(import.meta.url, { type: "module", name: WORKER_NAME });
    w.postMessage({ i, port, kind });
    return new Promise<Worker>((resolve) => (w.onmessage = () => resolve(w)));
  }));
  holder.close();
  const seen: Record<string, number> = {};
  for (let n = 0; n < CONNECTIONS; n++) {
    const c = await Deno.connect({ port });
    await c.write(
      new TextEncoder().encode("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
    );
    const text = await new Response(c.readable).text();
    const id = text.match(/worker-(\d)/)?.[1] ?? "?";
    seen[id] = (seen[id] ?? 0) + 1;
  }
  for (const w of workers) w.terminate();
  return JSON.stringify(seen);
}
