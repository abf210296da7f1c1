/**
 * A WebSocket joined byte for byte: the client's socket (through the connection guard) and the
 * upstream socket the h1 codec upgraded. Frames are not decoded, so close codes, extensions
 * (permessage-deflate) and subprotocols pass exactly as the two ends speak them. Only frame
 * headers are followed, for the limits: the guard checks the client's frames and messages
 * (src/pipeline/ws_frames.ts), this checks the upstream's messages, counts messages both ways for
 * the idle timeout, and writes close frames of its own only between frames.
 */
import type { ByteTunnel, DownstreamLink, TunnelClient } from "../pipeline/downstream.ts";
import { WsFrameLimit } from "../pipeline/ws_frames.ts";
import type { Upgraded } from "../h1/upgrade.ts";
import type { BodyErrorCounter } from "./transport.ts";

const READ_BUFFER = 16 * 1024;
/** The status line Deno.serve writes for an upgrade; the head ends at the next blank line. */
const SWITCHING = new TextEncoder().encode("HTTP/1.1 101 Switching Protocols\r\n");
const CRLFCRLF = [13, 10, 13, 10];
/** How long queued close frames may take to go out once the connection is being dropped. */
const CLOSE_FLUSH_MS = 1000;

const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;
const CLOSE_INTERNAL = 1011;
/** RFC 6455 7.4.1 registry: "bad gateway", the honest code when the upstream vanished. */
const CLOSE_BAD_GATEWAY = 1014;

export class WsTunnel implements ByteTunnel {
  readonly #up: Upgraded;
  readonly #link: DownstreamLink;
  #client: TunnelClient | undefined;
  /** The upstream's frames: its message limit, boundaries, data frames and its close. */
  readonly #fromUpstream: WsFrameLimit;
  /** The client's frames (its limits are the guard's): boundaries and data frames. */
  readonly #fromClient = new WsFrameLimit(Infinity, Infinity);
  /** Writes to each side go one after another, so a close frame never splits another frame. */
  #toUpstream: Promise<void> = Promise.resolve();
  #toClient: Promise<void> = Promise.resolve();
  /** performance.now() since an upstream write has been pending; 0: none. */
  #upstreamWritingSince = 0;
  /** Ferry sent its own close frames: no more data is relayed either way. */
  #closing = false;
  #closed = false;
  #markUpstreamEnded!: () => void;
  /** Resolves once the upstream's side has ended (EOF or error). */
  readonly #upstreamEnded = new Promise<void>((r) => this.#markUpstreamEnded = r);
  readonly #head = new SwitchingHeadEnd();
  readonly #bodyErrors: BodyErrorCounter | undefined;
  /** The client's side ended (its EOF): an upstream closing after that did not break anything. */
  #clientEnded = false;

  constructor(
    up: Upgraded,
    link: DownstreamLink,
    maxMessageBytes: number,
    bodyErrors?: BodyErrorCounter,
  ) {
    this.#up = up;
    this.#link = link;
    this.#bodyErrors = bodyErrors;
    // A masked frame from the upstream is refused, not passed on for the client to refuse.
    this.#fromUpstream = new WsFrameLimit(Infinity, maxMessageBytes, false, true);
    link.closeTunnel = (code, reason) => this.#closeWith(code, reason, code, reason);
  }

  headEnd(buf: Uint8Array, n: number): number {
    return this.#head.end(buf, n);
  }

  async start(client: TunnelClient): Promise<void> {
    this.#client = client;
    const conn = this.#up.conn;
    const buf = new Uint8Array(READ_BUFFER);
    let chunk = this.#up.early;
    // Read on after a close, discarding: an upstream blocked writing reads no close frame. A
    // failed client write ends only the client's side (the guard drops the connection).
    for (;;) {
      if (chunk.length > 0) await this.#relayUp(chunk).catch(() => {});
      let n: number | null;
      try {
        n = await conn.read(buf);
      } catch {
        break; // a reset: as an end
      }
      if (n === null) break;
      chunk = buf.subarray(0, n);
    }
    this.#markUpstreamEnded();
    if (this.#closed) return;
    // The upstream broke a live tunnel: no close frame either way, nobody asked it to stop.
    if (
      !this.#closing && !this.#clientEnded && !this.#fromUpstream.closeSeen &&
      !this.#fromClient.closeSeen
    ) this.#bodyErrors?.bodyFailed("upstream_reset");
    // The upstream left without its close frame: the client hears why, if it can.
    if (!this.#closing && !this.#fromUpstream.closeSeen && this.#fromUpstream.atFrameStart) {
      this.#closing = true;
      this.#send("client", CLOSE_BAD_GATEWAY, "upstream closed without a close frame");
    }
    await this.#toClient.catch(() => {});
    client.finish();
  }

  /** Upstream bytes to the client, unless over the upstream's message limit. */
  async #relayUp(bytes: Uint8Array): Promise<void> {
    if (this.#closing || this.#closed) return;
    const before = this.#fromUpstream.dataFrames;
    const allowed = this.#fromUpstream.feed(bytes, bytes.length);
    if (this.#fromUpstream.dataFrames !== before) this.#link.lastMessageAt = performance.now();
    if (allowed > 0) await this.#write("client", bytes.subarray(0, allowed));
    if (allowed < bytes.length) {
      const limit = this.#fromUpstream;
      this.#closeWith(
        CLOSE_INTERNAL,
        limit.violationCode === CLOSE_TOO_BIG
          ? `upstream message over ${limit.maxMessageBytes} bytes`
          : `upstream protocol error: ${limit.violation}`,
        limit.violationCode,
        limit.violation!,
      );
    }
  }

  async fromClient(bytes: Uint8Array): Promise<void> {
    if (this.#closing || this.#closed) return;
    const before = this.#fromClient.dataFrames;
    this.#fromClient.feed(bytes, bytes.length);
    if (this.#fromClient.dataFrames !== before) this.#link.lastMessageAt = performance.now();
    await this.#write("upstream", bytes);
  }

  clientEnded(): void {
    this.#clientEnded = true;
    this.#up.conn.closeWrite().catch(() => {});
  }

  sweep(now: number, sendTimeoutMs: number): void {
    const since = this.#upstreamWritingSince;
    if (sendTimeoutMs <= 0 || since === 0 || now - since <= sendTimeoutMs) return;
    // The upstream's write side is stuck mid-frame: only the client can be told.
    this.#closeWith(CLOSE_POLICY, "upstream is not reading: send timeout", 0, "");
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // A close frame sent to the upstream gets time to be read (the upstream's bytes are drained
    // meanwhile) and answered; otherwise the socket closes at once.
    if (!this.#closing) return this.#up.close();
    const timer = setTimeout(() => this.#up.close(), CLOSE_FLUSH_MS);
    this.#upstreamEnded.then(() => {
      clearTimeout(timer);
      this.#up.close();
    });
  }

  /**
   * Ferry's own close: a close frame to each side that is between frames (`upstreamCode` 0: none
   * to the upstream), then nothing more is relayed; the guard drops the connection after a grace
   * period if the ends do not close it first.
   */
  #closeWith(
    clientCode: number,
    clientReason: string,
    upstreamCode: number,
    upstreamReason: string,
  ) {
    if (this.#closing || this.#closed) return;
    this.#closing = true;
    if (this.#client && this.#fromUpstream.atFrameStart) {
      this.#send("client", clientCode, clientReason);
    }
    if (upstreamCode > 0 && this.#fromClient.atFrameStart) {
      this.#send("upstream", upstreamCode, upstreamReason);
      this.#toUpstream.then(() => this.#up.conn.closeWrite()).catch(() => {});
    }
    if (this.#client) {
      const client = this.#client;
      this.#toClient.then(() => client.finish(), () => {});
    }
  }

  #send(to: "client" | "upstream", code: number, reason: string): void {
    this.#write(to, closeFrame(code, reason, to === "upstream")).catch(() => {});
  }

  /** Queued behind earlier writes to the same side; rejects when the side is gone. */
  #write(to: "client" | "upstream", bytes: Uint8Array): Promise<void> {
    if (to === "client") {
      const client = this.#client!;
      return this.#toClient = this.#toClient.then(() => client.write(bytes));
    }
    const conn = this.#up.conn;
    return this.#toUpstream = this.#toUpstream.then(async () => {
      this.#upstreamWritingSince = performance.now();
      try {
        let off = 0;
        while (off < bytes.length) {
          off += await conn.write(bytes.subarray(off));
          this.#upstreamWritingSince = performance.now();
        }
      } finally {
        this.#upstreamWritingSince = 0;
      }
    });
  }
}

/**
 * Finds the end of Deno.serve's 101 head in the bytes it writes towards the client, across reads.
 * Responses to earlier pipelined requests may come first: the head starts at its status line.
 */
export class SwitchingHeadEnd {
  /** How much of the status line, then of the blank line, was seen. */
  #statusMatched = 0;
  #blankMatched = -1;

  /** Index just past the head's blank line in `buf[0, n)`, or -1 when it is not there. */
  end(buf: Uint8Array, n: number): number {
    for (let i = 0; i < n; i++) {
      const b = buf[i]!;
      if (this.#blankMatched < 0) {
        if (b === SWITCHING[this.#statusMatched]) {
          if (++this.#statusMatched === SWITCHING.length) this.#blankMatched = 2;
        } else this.#statusMatched = b === SWITCHING[0] ? 1 : 0;
      } else if (b === CRLFCRLF[this.#blankMatched]) {
        if (++this.#blankMatched === 4) return i + 1;
      } else this.#blankMatched = b === 13 ? 1 : 0;
    }
    return -1;
  }
}

/** A close frame (RFC 6455 5.5.1): masked when it goes to the upstream, as a client's must be. */
function closeFrame(code: number, reason: string, masked: boolean): Uint8Array {
  let text = new TextEncoder().encode(reason);
  // Control frames carry at most 125 bytes: 2 for the code, 123 for the reason.
  if (text.length > 123) text = new TextEncoder().encode(truncateUtf8(reason, 123));
  const payload = new Uint8Array(2 + text.length);
  payload[0] = code >> 8;
  payload[1] = code & 0xff;
  payload.set(text, 2);
  const headLen = masked ? 6 : 2;
  const frame = new Uint8Array(headLen + payload.length);
  frame[0] = 0x88; // FIN, close
  frame[1] = (masked ? 0x80 : 0) | payload.length;
  if (!masked) {
    frame.set(payload, 2);
    return frame;
  }
  const mask = crypto.getRandomValues(new Uint8Array(4));
  frame.set(mask, 2);
  for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i]! ^ mask[i & 3]!;
  return frame;
}

/** The longest prefix of `text` whose UTF-8 fits in `max` bytes (never half a character). */
function truncateUtf8(text: string, max: number): string {
  let out = "";
  let bytes = 0;
  for (const ch of text) {
    const size = new TextEncoder().encode(ch).length;
    if (bytes + size > max) break;
    out += ch;
    bytes += size;
  }
  return out;
}
