/**
 * Where the bytes sit for a client that stops reading: Ferry (a subprocess, guard on unless
 * GUARD=false) between a raw upstream streaming 64 MiB and a raw client that reads 1 MiB and
 * then nothing. Prints what the upstream managed to write and `ss -tnm` for every socket on the
 * way (Recv-Q/Send-Q and the buffer sizes: rb = receive, tb = send). Linux, needs `ss`.
 *
 *     deno run -A bench/tools/stall_buffers.ts            # GUARD=false to compare
 */
import { spawnFerry, tempConfig } from "../../tests/helpers.ts";

const MiB = 1 << 20;
const total = 64 * MiB;
const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
const state = { written: 0 };
(async () => {
  for await (const conn of listener) {
    (async () => {
      await conn.read(new Uint8Array(8192));
      const chunk = new Uint8Array(64 * 1024).fill(120);
      await conn.write(
        new TextEncoder().encode(`HTTP/1.1 200 OK\r\ncontent-length: ${total}\r\n\r\n`),
      );
      try {
        while (state.written < total) state.written += await conn.write(chunk);
      } catch { /* Ferry let go */ }
    })();
  }
})();
const upPort = (listener.addr as Deno.NetAddr).port;
const guard = Deno.env.get("GUARD") ?? "true";
const file = await tempConfig(`listeners: [{ name: public, address: "127.0.0.1:0" }]
server: { send_timeout: 30s, connection_guard: ${guard} }
routes: [{ name: all, cluster: up }]
clusters: [{ name: up, endpoints: ["http://127.0.0.1:${upPort}"] }]
`);
const ferry = await spawnFerry(["--config", file]);
const port = Number(new URL(ferry.listeners.get("public")!).port);
const conn = await Deno.connect({ hostname: "127.0.0.1", port });
await conn.write(new TextEncoder().encode("GET /big HTTP/1.1\r\nHost: t\r\n\r\n"));
const buf = new Uint8Array(64 * 1024);
let got = 0;
while (got < MiB) got += (await conn.read(buf)) ?? 0;
let last = -1;
for (let i = 0; i < 40 && last !== state.written; i++) {
  last = state.written;
  await new Promise((r) => setTimeout(r, 500));
}
const clientPort = (conn.localAddr as Deno.NetAddr).port;
console.log(
  `upstream wrote ${(state.written / MiB).toFixed(1)} MiB, the client read ${
    (got / MiB).toFixed(1)
  } MiB (Ferry ${port}, upstream ${upPort}, client ${clientPort})`,
);
const ss = new Deno.Command("ss", { args: ["-tnmp"], stdout: "piped" }).outputSync();
const lines = new TextDecoder().decode(ss.stdout).split("\n");
for (let i = 0; i < lines.length; i++) {
  const l = lines[i]!;
  if (
    l.includes(`pid=${ferry.child.pid},`) || l.includes(`:${upPort} `) ||
    l.includes(`:${clientPort} `)
  ) console.log(l.replace(/\s+/g, " "), lines[i + 1]?.trim());
}
ferry.child.kill("SIGKILL");
Deno.exit(0);
