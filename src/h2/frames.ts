/**
 * HTTP/2 frame layer (RFC 9113 section 4 and 6): the 9-byte header, a reader that cuts a byte
 * stream into frames under SETTINGS_MAX_FRAME_SIZE, per-type size and stream-id checks, padding
 * removal and writers for every frame Ferry sends. Knows nothing of streams or HPACK.
 */

export const FrameType = {
  DATA: 0x0,
  HEADERS: 0x1,
  PRIORITY: 0x2,
  RST_STREAM: 0x3,
  SETTINGS: 0x4,
  PUSH_PROMISE: 0x5,
  PING: 0x6,
  GOAWAY: 0x7,
  WINDOW_UPDATE: 0x8,
  CONTINUATION: 0x9,
} as const;

export const Flag = {
  END_STREAM: 0x1,
  ACK: 0x1,
  END_HEADERS: 0x4,
  PADDED: 0x8,
  PRIORITY: 0x20,
} as const;

/** RFC 9113 section 7. */
export const ErrorCode = {
  NO_ERROR: 0x0,
  PROTOCOL_ERROR: 0x1,
  INTERNAL_ERROR: 0x2,
  FLOW_CONTROL_ERROR: 0x3,
  SETTINGS_TIMEOUT: 0x4,
  STREAM_CLOSED: 0x5,
  FRAME_SIZE_ERROR: 0x6,
  REFUSED_STREAM: 0x7,
  CANCEL: 0x8,
  COMPRESSION_ERROR: 0x9,
  CONNECT_ERROR: 0xa,
  ENHANCE_YOUR_CALM: 0xb,
  INADEQUATE_SECURITY: 0xc,
  HTTP_1_1_REQUIRED: 0xd,
} as const;

export const Setting = {
  HEADER_TABLE_SIZE: 0x1,
  ENABLE_PUSH: 0x2,
  MAX_CONCURRENT_STREAMS: 0x3,
  INITIAL_WINDOW_SIZE: 0x4,
  MAX_FRAME_SIZE: 0x5,
  MAX_HEADER_LIST_SIZE: 0x6,
} as const;

export const CLIENT_PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
export const DEFAULT_WINDOW = 65_535;
export const MAX_WINDOW = 0x7fffffff;
export const MIN_FRAME_SIZE = 16_384;
export const MAX_FRAME_SIZE_LIMIT = 0xffffff;

/** A protocol violation: `stream` 0 means a connection error (GOAWAY), else RST_STREAM. */
export class H2Error extends Error {
  constructor(readonly code: number, message: string, readonly stream = 0) {
    super(message);
    this.name = "H2Error";
  }
}

export interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly streamId: number;
  readonly payload: Uint8Array;
}

/**
 * Cuts incoming bytes into frames. `maxFrameSize` is what we advertised; a larger frame is a
 * FRAME_SIZE_ERROR before its payload is buffered, so a peer cannot make us hold more.
 */
export class FrameReader {
  #buf: Uint8Array = new Uint8Array(0);
  constructor(public maxFrameSize = MIN_FRAME_SIZE) {}

  push(chunk: Uint8Array): void {
    if (this.#buf.length === 0) this.#buf = chunk;
    else {
      const next = new Uint8Array(this.#buf.length + chunk.length);
      next.set(this.#buf);
      next.set(chunk, this.#buf.length);
      this.#buf = next;
    }
  }

  /** Bytes held but not yet returned as frames. */
  get buffered(): number {
    return this.#buf.length;
  }

  /** Takes `n` raw bytes (the connection preface) when that many are buffered. */
  take(n: number): Uint8Array | undefined {
    if (this.#buf.length < n) return undefined;
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  next(): Frame | undefined {
    const b = this.#buf;
    if (b.length < 9) return undefined;
    const length = (b[0]! << 16) | (b[1]! << 8) | b[2]!;
    if (length > this.maxFrameSize) {
      throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, `frame of ${length} bytes over the limit`);
    }
    if (b.length < 9 + length) return undefined;
    const frame: Frame = {
      type: b[3]!,
      flags: b[4]!,
      streamId: ((b[5]! & 0x7f) << 24 | b[6]! << 16 | b[7]! << 8 | b[8]!) >>> 0,
      payload: b.subarray(9, 9 + length),
    };
    this.#buf = b.subarray(9 + length);
    return frame;
  }
}

/**
 * Checks a frame's size and stream id against its type (RFC 9113 section 6); throws the
 * connection or stream error the RFC names. Unknown types pass (they are ignored, 4.1).
 */
export function validateFrame(f: Frame): void {
  const len = f.payload.length;
  const conn = (code: number, msg: string) => new H2Error(code, msg);
  switch (f.type) {
    case FrameType.DATA:
    case FrameType.HEADERS:
    case FrameType.CONTINUATION:
      if (f.streamId === 0) throw conn(ErrorCode.PROTOCOL_ERROR, "frame on stream 0");
      return;
    case FrameType.PRIORITY:
      if (f.streamId === 0) throw conn(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0");
      if (len !== 5) {
        throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, "PRIORITY size", f.streamId);
      }
      // RFC 9113 5.3.1. (A HEADERS frame's priority block is not checked: its header block must
      // still be decoded to keep HPACK in step, and priorities are ignored anyway.)
      if ((readUint32(f.payload, 0) & 0x7fffffff) === f.streamId) {
        throw new H2Error(ErrorCode.PROTOCOL_ERROR, "stream depends on itself", f.streamId);
      }
      return;
    case FrameType.RST_STREAM:
      if (f.streamId === 0) throw conn(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0");
      if (len !== 4) throw conn(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM size");
      return;
    case FrameType.SETTINGS:
      if (f.streamId !== 0) throw conn(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream");
      if (f.flags & Flag.ACK && len !== 0) {
        throw conn(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with payload");
      }
      if (len % 6 !== 0) throw conn(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS size");
      return;
    case FrameType.PUSH_PROMISE:
      throw conn(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE is not accepted");
    case FrameType.PING:
      if (f.streamId !== 0) throw conn(ErrorCode.PROTOCOL_ERROR, "PING on a stream");
      if (len !== 8) throw conn(ErrorCode.FRAME_SIZE_ERROR, "PING size");
      return;
    case FrameType.GOAWAY:
      if (f.streamId !== 0) throw conn(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream");
      if (len < 8) throw conn(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY size");
      return;
    case FrameType.WINDOW_UPDATE:
      if (len !== 4) throw conn(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE size");
      return;
  }
}

/**
 * The payload without padding (DATA, HEADERS) and without the priority block (HEADERS):
 * RFC 9113 6.1 and 6.2. Padding that covers the whole payload is a PROTOCOL_ERROR.
 */
export function unpad(f: Frame): Uint8Array {
  let p = f.payload;
  let pad = 0;
  if (f.flags & Flag.PADDED) {
    if (p.length < 1) throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, "padded frame too short");
    pad = p[0]!;
    p = p.subarray(1);
  }
  if (f.type === FrameType.HEADERS && f.flags & Flag.PRIORITY) {
    if (p.length < 5) throw new H2Error(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority too short");
    p = p.subarray(5);
  }
  if (pad > p.length) throw new H2Error(ErrorCode.PROTOCOL_ERROR, "padding exceeds the payload");
  return p.subarray(0, p.length - pad);
}

export function readUint32(p: Uint8Array, at: number): number {
  return ((p[at]! << 24) | (p[at + 1]! << 16) | (p[at + 2]! << 8) | p[at + 3]!) >>> 0;
}

export function parseSettings(payload: Uint8Array): [id: number, value: number][] {
  const out: [number, number][] = [];
  for (let i = 0; i + 6 <= payload.length; i += 6) {
    out.push([(payload[i]! << 8) | payload[i + 1]!, readUint32(payload, i + 2)]);
  }
  return out;
}

// ---- writers ----

export function frame(type: number, flags: number, streamId: number, payload?: Uint8Array) {
  const len = payload?.length ?? 0;
  const out = new Uint8Array(9 + len);
  out[0] = len >>> 16;
  out[1] = (len >>> 8) & 0xff;
  out[2] = len & 0xff;
  out[3] = type;
  out[4] = flags;
  writeUint32(out, 5, streamId & 0x7fffffff);
  if (payload) out.set(payload, 9);
  return out;
}

function writeUint32(out: Uint8Array, at: number, v: number): void {
  out[at] = v >>> 24;
  out[at + 1] = (v >>> 16) & 0xff;
  out[at + 2] = (v >>> 8) & 0xff;
  out[at + 3] = v & 0xff;
}

function uint32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  writeUint32(b, 0, v);
  return b;
}

export function settingsFrame(settings: readonly (readonly [number, number])[]): Uint8Array {
  const p = new Uint8Array(settings.length * 6);
  settings.forEach(([id, v], i) => {
    p[i * 6] = id >>> 8;
    p[i * 6 + 1] = id & 0xff;
    writeUint32(p, i * 6 + 2, v);
  });
  return frame(FrameType.SETTINGS, 0, 0, p);
}

export const settingsAck = (): Uint8Array => frame(FrameType.SETTINGS, Flag.ACK, 0);

export function pingFrame(data: Uint8Array, ack: boolean): Uint8Array {
  return frame(FrameType.PING, ack ? Flag.ACK : 0, 0, data);
}

export function goawayFrame(lastStreamId: number, code: number, debug = ""): Uint8Array {
  const d = new TextEncoder().encode(debug.slice(0, 256));
  const p = new Uint8Array(8 + d.length);
  writeUint32(p, 0, lastStreamId & 0x7fffffff);
  writeUint32(p, 4, code);
  p.set(d, 8);
  return frame(FrameType.GOAWAY, 0, 0, p);
}

export function rstFrame(streamId: number, code: number): Uint8Array {
  return frame(FrameType.RST_STREAM, 0, streamId, uint32(code));
}

export function windowUpdateFrame(streamId: number, increment: number): Uint8Array {
  return frame(FrameType.WINDOW_UPDATE, 0, streamId, uint32(increment));
}

/** HEADERS plus as many CONTINUATION frames as `maxFrameSize` requires (RFC 9113 6.10). */
export function headerFrames(
  streamId: number,
  block: Uint8Array,
  endStream: boolean,
  maxFrameSize: number,
): Uint8Array[] {
  const out: Uint8Array[] = [];
  let off = 0;
  do {
    const part = block.subarray(off, off + maxFrameSize);
    off += part.length;
    const last = off >= block.length;
    const first = out.length === 0;
    const flags = (last ? Flag.END_HEADERS : 0) | (first && endStream ? Flag.END_STREAM : 0);
    out.push(frame(first ? FrameType.HEADERS : FrameType.CONTINUATION, flags, streamId, part));
  } while (off < block.length);
  return out;
}
