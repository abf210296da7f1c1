import assert from "node:assert/strict";
import { FD_HEADROOM, fdBudget } from "./descriptors.ts";

Deno.test("fdBudget: the admin listener's own cap counts, three descriptors a connection (always guarded)", () => {
  const server = { max_connections: 1000, connection_guard: false };
  const http = [{ protocol: "http" as const }];
  assert.deepEqual(fdBudget(http, server), { needed: FD_HEADROOM + 1000, bounded: true });
  assert.deepEqual(fdBudget(http, server, { max_connections: 100 }), {
    needed: FD_HEADROOM + 1000 + 300,
    bounded: true,
  });
  assert.equal(fdBudget(http, server, { max_connections: 0 }).bounded, false);
});
