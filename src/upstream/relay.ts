/**
 * The response body handed to Deno.serve where the connection guard's send timeout cannot judge
 * the client alone: HTTP/2 streams (one stalled stream does not block the connection) and
 * listeners without the guard. Pulled from the upstream only when the downstream asks for more
 * (highWaterMark 0), with two rules (docs/connections.md "Clients that stop reading"):
 *
 * - behind the guard, nothing is pulled while the guard's write to the client is blocked, so the
 *   loopback socket pair between guard and Deno.serve does not fill up for a client that is not
 *   reading;
 * - a downstream that takes no chunk for `sendTimeoutMs` while the client socket itself is not
 *   blocked (an HTTP/2 stream without flow-control window, or any client without the guard) ends
 *   the relay: the upstream body is cancelled and `release` runs. A blocked client socket is the
 *   guard's send timeout's to judge, write by write.
 */
import type { Deadline, DeadlineQueue } from "../policy/deadlines.ts";
import { downstreamTicket } from "../pipeline/downstream.ts";
import { ClientGoneReason, TimeoutReason } from "./transport.ts";

/** A body this small is read off the upstream connection at once, whatever the client does. */
const SMALL_BODY_BYTES = 64 * 1024;

export function relayBody(
  source: ReadableStream<Uint8Array>,
  req: Request,
  contentLength: string | null,
  sendTimeoutMs: number,
  deadlines: DeadlineQueue,
  release: (reason: Error) => void,
): ReadableStream<Uint8Array> {
  const ticket = downstreamTicket(req);
  const link = ticket?.link;
  // Deno.serve pipes a fetch body natively; a JS stream around it costs about twice the CPU
  // (per small request, and per byte of a large one). So wrap only where needed: not for a
  // body small enough to leave the upstream connection at once, not when send_timeout is off,
  // and not on HTTP/1.1 behind the guard, whose send timeout drops the connection, which
  // cancels the upstream too.
  if (contentLength !== null && Number(contentLength) <= SMALL_BODY_BYTES) return source;
  if (sendTimeoutMs <= 0 || (link && !link.h2)) return source;
  const reader = source.getReader();
  let stall: Deadline | undefined;
  let controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  let ended = false;
  const end = (reason: Error) => {
    if (ended) return;
    ended = true;
    stall?.cancel();
    release(reason);
    reader.cancel(reason).catch(() => {});
    try {
      controller?.error(reason);
    } catch { /* already closed */ }
  };
  const fire = () => {
    stall = undefined;
    // The guard is waiting on a write to this client: its send timeout decides.
    if (link && link.writingSince > 0 && !link.closed) return arm();
    end(new TimeoutReason(`the client took no data for ${sendTimeoutMs} ms`));
    if (ticket) link!.abandon(ticket);
  };
  const arm = () => {
    if (sendTimeoutMs > 0) stall = deadlines.arm(sendTimeoutMs, fire);
  };
  return new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    async pull(c) {
      stall?.cancel();
      stall = undefined;
      const blocked = link?.writable();
      if (blocked) await blocked;
      if (ended) return;
      if (link?.closed) return end(new ClientGoneReason("the client connection closed"));
      const r = await reader.read();
      if (ended) return;
      if (r.done) {
        ended = true;
        c.close();
        return;
      }
      c.enqueue(r.value);
      arm();
    },
    cancel(reason) {
      ended = true;
      stall?.cancel();
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 });
}
