/**
 * Fuzzing (fast-check, a bounded number of runs so CI stays fast) of Ferry's HTTP/2 input side:
 * the frame parser (FrameReader, validateFrame, unpad, parseSettings), the HPACK decoder (with
 * Huffman strings) and a whole H2Connection in both roles over a real socket. Random bytes and
 * mutations of valid frames and header blocks must only ever raise the stack's own protocol
 * errors (H2Error, HpackError, HeaderListTooLarge), never anything else, and never hang.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  CLIENT_PREFACE,
  ErrorCode,
  Flag,
  frame,
  FrameReader,
  FrameType,
  goawayFrame,
  H2Error,
  headerFrames,
  parseSettings,
  pingFrame,
  rstFrame,
  Setting,
  settingsAck,
  settingsFrame,
  unpad,
  validateFrame,
  windowUpdateFrame,
} from "../src/h2/frames.ts";
import {
  type HeaderField,
  HeaderListTooLarge,
  HpackDecoder,
  HpackEncoder,
  HpackError,
} from "../src/h2/hpack.ts";
import { H2Connection } from "../src/h2/connection.ts";

const RUNS = 300;

/** Runs the parser over `chunks`; returns the frames read. Only H2Error may escape. */
function parseAll(chunks: readonly Uint8Array[]): number {
  const reader = new FrameReader(16_384);
  let frames = 0;
  let bytes = 0;
  for (const c of chunks) {
    reader.push(c);
    bytes += c.length;
    for (let f = reader.next(); f; f = reader.next()) {
      frames++;
      // Every frame takes at least its 9-byte header: the loop cannot spin.
      assert.ok(frames * 9 <= bytes, "more frames than the bytes allow");
      validateFrame(f);
      if (f.type === FrameType.DATA || f.type === FrameType.HEADERS) unpad(f);
      if (f.type === FrameType.SETTINGS) parseSettings(f.payload);
    }
  }
  return frames;
}

function onlyProtocolErrors(run: () => void, allowed: readonly (new (...a: never[]) => Error)[]) {
  const started = performance.now();
  try {
    run();
  } catch (err) {
    if (!allowed.some((k) => err instanceof k)) throw err;
  }
  assert.ok(performance.now() - started < 2_000, "one input took over 2 s");
}

const header: fc.Arbitrary<HeaderField> = fc.tuple(
  fc.oneof(
    fc.constantFrom(":method", ":path", ":authority", "content-type", "te", "x-custom-bin"),
    fc.string({ minLength: 1, maxLength: 20 }).map((s) => s.toLowerCase()),
  ),
  fc.oneof(fc.string({ maxLength: 40 }), fc.constantFrom("POST", "/a/b", "application/grpc")),
);

/** A valid frame sequence, as a client would send it (header blocks from a real encoder). */
const validFrames: fc.Arbitrary<Uint8Array[]> = fc.array(
  fc.oneof(
    fc.record({
      id: fc.integer({ min: 1, max: 99 }),
      fields: fc.array(header, { maxLength: 8 }),
      end: fc.boolean(),
    }).map(({ id, fields, end }) =>
      headerFrames(2 * id - 1, new HpackEncoder().encode(fields), end, 64)
    ),
    fc.record({ id: fc.integer({ min: 1, max: 99 }), data: fc.uint8Array({ maxLength: 64 }) })
      .map(({ id, data }) => [frame(FrameType.DATA, 0, 2 * id - 1, data)]),
    fc.constant([settingsFrame([[Setting.INITIAL_WINDOW_SIZE, 1 << 20]]), settingsAck()]),
    fc.uint8Array({ minLength: 8, maxLength: 8 }).map((d) => [pingFrame(d, false)]),
    fc.integer({ min: 0, max: 0x7fffffff }).map((n) => [windowUpdateFrame(0, n)]),
    fc.integer({ min: 1, max: 99 }).map((id) => [rstFrame(2 * id - 1, ErrorCode.CANCEL)]),
    fc.constant([goawayFrame(0, ErrorCode.NO_ERROR, "bye")]),
  ),
  { maxLength: 12 },
).map((groups) => groups.flat());

/** Byte-level mutations: flip, overwrite, cut, insert. */
const mutation = fc.record({
  at: fc.nat(),
  kind: fc.constantFrom("flip", "set", "cut", "insert", "truncate"),
  byte: fc.integer({ min: 0, max: 255 }),
});

function mutate(bytes: Uint8Array, ms: readonly { at: number; kind: string; byte: number }[]) {
  let b = Uint8Array.from(bytes);
  for (const m of ms) {
    if (b.length === 0) break;
    const at = m.at % b.length;
    if (m.kind === "flip") b[at]! ^= 1 << (m.byte % 8);
    else if (m.kind === "set") b[at] = m.byte;
    else if (m.kind === "cut") b = Uint8Array.from([...b.subarray(0, at), ...b.subarray(at + 1)]);
    else if (m.kind === "insert") {
      b = Uint8Array.from([...b.subarray(0, at), m.byte, ...b.subarray(at)]);
    } else b = b.subarray(0, at);
  }
  return b;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** Splits `bytes` at the given points, so frames straddle reads. */
function split(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of at) {
    out.push(bytes.subarray(prev, c));
    prev = c;
  }
  out.push(bytes.subarray(prev));
  return out;
}

Deno.test("h2 fuzz: the frame parser on random bytes raises only H2Error", () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 8 }), (chunks) => {
      onlyProtocolErrors(() => parseAll(chunks), [H2Error]);
    }),
    { numRuns: RUNS },
  );
});

Deno.test("h2 fuzz: mutated valid frames, split anywhere, raise only H2Error", () => {
  fc.assert(
    fc.property(
      validFrames,
      fc.array(mutation, { maxLength: 6 }),
      fc.array(fc.nat(), { maxLength: 5 }),
      (frames, ms, cuts) => {
        const bytes = mutate(concat(frames), ms);
        onlyProtocolErrors(() => parseAll(split(bytes, cuts)), [H2Error]);
      },
    ),
    { numRuns: RUNS },
  );
  // And unmutated, the same sequences parse without any error at the frame layer.
  fc.assert(
    fc.property(validFrames, fc.array(fc.nat(), { maxLength: 5 }), (frames, cuts) => {
      const n = parseAll(split(concat(frames), cuts));
      assert.equal(n, frames.length);
    }),
    { numRuns: 100 },
  );
});

Deno.test("h2 fuzz: HPACK decoding of random and mutated blocks raises only HPACK errors", () => {
  const allowed = [HpackError, HeaderListTooLarge];
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 200 }), { maxLength: 4 }), (blocks) => {
      // One decoder across blocks: its dynamic table carries state from one to the next.
      const dec = new HpackDecoder({ maxHeaderListSize: 4096 });
      for (const b of blocks) onlyProtocolErrors(() => dec.decode(b), allowed);
    }),
    { numRuns: RUNS },
  );
  fc.assert(
    fc.property(
      fc.array(fc.array(header, { maxLength: 10 }), { minLength: 1, maxLength: 4 }),
      fc.array(mutation, { maxLength: 4 }),
      fc.boolean(),
      (lists, ms, huffman) => {
        const enc = new HpackEncoder({ huffman });
        const dec = new HpackDecoder();
        // Unmutated, what was encoded comes back exactly (an oracle for the mutated runs).
        const blocks = lists.map((l) => enc.encode(l));
        const roundTrip = new HpackDecoder();
        blocks.forEach((b, i) => assert.deepEqual(roundTrip.decode(b), lists[i]));
        for (const b of blocks) onlyProtocolErrors(() => dec.decode(mutate(b, ms)), allowed);
      },
    ),
    { numRuns: RUNS },
  );
});

/**
 * One H2Connection in `role`, fed `bytes` over a real socket by a raw peer, which then closes.
 * The connection must end within the bound, and never with an error that is not a protocol one
 * (a non-H2Error escaping the frame handling surfaces as "read failed: SomethingError").
 */
async function feedConnection(role: "server" | "client", bytes: Uint8Array): Promise<string> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  let reason = "";
  const make = (conn: Deno.Conn) =>
    new H2Connection(conn, {
      role,
      onStream: (s) => {
        void s.headers.then(() => {
          s.sendHeaders([[":status", "200"], ["grpc-status", "0"]], true);
        }).catch(() => {});
      },
      onClose: (r) => (reason = r.message),
    });
  let h2: H2Connection;
  let raw: Deno.Conn;
  if (role === "server") {
    const accepted = listener.accept();
    raw = await Deno.connect({ hostname: "127.0.0.1", port });
    h2 = make(await accepted);
    await raw.write(CLIENT_PREFACE);
  } else {
    const accepted = listener.accept();
    h2 = make(await Deno.connect({ hostname: "127.0.0.1", port }));
    raw = await accepted;
    // A client connection gets its streams from us: open a few so responses have somewhere to go.
    for (let i = 0; i < 3; i++) {
      void h2.request([[":method", "POST"], [":path", "/x"], [":scheme", "http"], [
        ":authority",
        "x",
      ]]).then((s) => s.closed).catch(() => {});
    }
  }
  listener.close();
  const draining = (async () => {
    const buf = new Uint8Array(65536);
    while ((await raw.read(buf).catch(() => null)) !== null) { /* discard */ }
  })();
  try {
    await raw.write(settingsFrame([]));
    await raw.write(bytes);
  } catch { /* the connection may already have closed on us */ }
  await new Promise((r) => setTimeout(r, 20));
  try {
    raw.close();
  } catch { /* closed */ }
  let timer: ReturnType<typeof setTimeout> | undefined;
  const ended = await Promise.race([
    h2.done.then(() => true),
    new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 3_000))),
  ]);
  clearTimeout(timer);
  await draining;
  if (!ended) h2.close();
  assert.ok(ended, "the connection ended after its peer closed");
  assert.doesNotMatch(reason, /read failed: \w*Error\b/, `a non-protocol error: ${reason}`);
  return reason;
}

Deno.test("h2 fuzz: a connection fed mutated frames ends with a protocol error, never a crash", async () => {
  for (const role of ["server", "client"] as const) {
    await fc.assert(
      fc.asyncProperty(validFrames, fc.array(mutation, { maxLength: 6 }), async (frames, ms) => {
        const bytes = mutate(concat(frames), ms);
        await feedConnection(role, bytes);
      }),
      { numRuns: 40 },
    );
  }
  // A frame of each known type with random flags and payload, on random streams.
  await fc.assert(
    fc.asyncProperty(
      fc.array(
        fc.record({
          type: fc.integer({ min: 0, max: 10 }),
          flags: fc.integer({ min: 0, max: 255 }),
          id: fc.integer({ min: 0, max: 9 }),
          payload: fc.uint8Array({ maxLength: 40 }),
        }),
        { maxLength: 12 },
      ),
      async (fs) => {
        const bytes = concat(fs.map((f) => frame(f.type, f.flags, f.id, f.payload)));
        await feedConnection("server", bytes);
      },
    ),
    { numRuns: 40 },
  );
  // Sanity: the harness sees a real protocol error as one.
  const reason = await feedConnection(
    "server",
    frame(FrameType.PING, Flag.ACK, 1, new Uint8Array(8)),
  );
  assert.match(reason, /PING on a stream/);
});
