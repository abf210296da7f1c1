/**
 * Follows the frame headers in a client's WebSocket byte stream (RFC 6455 5.2) without keeping
 * any payload, so that a frame or a message (all its fragments) over the limits is refused when
 * its header arrives: before its bytes reach Deno's WebSocket, which would collect them in memory.
 * With `requireMask`, an unmasked frame is refused the same way (RFC 6455 5.1: a server MUST close
 * the connection on one; Deno's WebSocket takes it as if masked).
 */
/** RFC 6455 7.4.1 close codes for the two kinds of violation. */
const CLOSE_PROTOCOL_ERROR = 1002;
const CLOSE_MESSAGE_TOO_BIG = 1009;

export class WsFrameLimit {
  readonly #head = new Uint8Array(14);
  #headLen = 0;
  #payloadLeft = 0;
  /** Bytes of the unfinished fragmented message so far. */
  #message = 0;
  /** Why the stream was refused; once set, nothing more is relayed. */
  violation: string | undefined;
  /** Data frame headers seen (opcodes 0-2: messages and their fragments, not pings). */
  dataFrames = 0;
  /** A close frame's header was seen. */
  closeSeen = false;
  /** The close code for `violation`: 1009 (too big) or 1002 (protocol error). */
  violationCode = CLOSE_MESSAGE_TOO_BIG;

  /**
   * `requireMask`: a client's frames (RFC 6455 5.3); `forbidMask`: a server's, which must be
   * unmasked (5.1: a client MUST close the connection on a masked one).
   */
  constructor(
    readonly maxFrameBytes: number,
    readonly maxMessageBytes: number,
    readonly requireMask = false,
    readonly forbidMask = false,
  ) {}

  /**
   * Reads `n` more bytes of `buf`; returns how many may be relayed: all of them, or those before
   * the header of the first frame over a limit (then `violation` says why).
   */
  feed(buf: Uint8Array, n: number): number {
    if (this.violation) return 0;
    let i = 0;
    let headStart = 0;
    while (i < n) {
      if (this.#payloadLeft > 0) {
        const take = Math.min(this.#payloadLeft, n - i);
        this.#payloadLeft -= take;
        i += take;
        continue;
      }
      if (this.#headLen === 0) headStart = i;
      this.#head[this.#headLen++] = buf[i++]!;
      const need = headerLength(this.#head, this.#headLen);
      if (need === undefined || this.#headLen < need) continue;
      const fin = (this.#head[0]! & 0x80) !== 0;
      const opcode = this.#head[0]! & 0x0f;
      const len = payloadLength(this.#head);
      const masked = (this.#head[1]! & 0x80) !== 0;
      this.#headLen = 0;
      if (this.requireMask && !masked) {
        this.violation = "unmasked frame from the client";
        this.violationCode = CLOSE_PROTOCOL_ERROR;
        return headStart;
      }
      if (this.forbidMask && masked) {
        this.violation = "masked frame from the server";
        this.violationCode = CLOSE_PROTOCOL_ERROR;
        return headStart;
      }
      if (len > this.maxFrameBytes) {
        this.violation = `frame of ${len} bytes over the limit of ${this.maxFrameBytes}`;
        return headStart;
      }
      // Control frames (8 and up) may come between fragments and are not part of the message.
      if (opcode === 8) this.closeSeen = true;
      if (opcode < 8) {
        this.dataFrames++;
        const total = (opcode === 0 ? this.#message : 0) + len;
        if (total > this.maxMessageBytes) {
          this.violation = `message of ${total}+ bytes over the limit of ${this.maxMessageBytes}`;
          return headStart;
        }
        this.#message = fin ? 0 : total;
      }
      this.#payloadLeft = len;
    }
    return n;
  }

  /** True between frames: everything fed so far ends with a whole frame. */
  get atFrameStart(): boolean {
    return this.#headLen === 0 && this.#payloadLeft === 0;
  }
}

/** Header size once its first two bytes are known: 2, the extended length, the mask key. */
function headerLength(head: Uint8Array, have: number): number | undefined {
  if (have < 2) return undefined;
  const len7 = head[1]! & 0x7f;
  const ext = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
  return 2 + ext + ((head[1]! & 0x80) !== 0 ? 4 : 0);
}

function payloadLength(head: Uint8Array): number {
  const len7 = head[1]! & 0x7f;
  if (len7 === 126) return (head[2]! << 8) | head[3]!;
  if (len7 !== 127) return len7;
  let len = 0;
  for (let i = 2; i < 10; i++) len = len * 256 + head[i]!;
  return len;
}
