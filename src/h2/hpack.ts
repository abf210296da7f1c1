/**
 * HPACK (RFC 7541): header block encoder and decoder with the static table, a dynamic table per
 * direction, prefix integers, string literals with optional Huffman coding and table-size
 * updates. Errors are `HpackError` (a connection-level COMPRESSION_ERROR in HTTP/2).
 */
import { huffmanDecode, huffmanEncode, HuffmanError, huffmanLength } from "./huffman.ts";

export type HeaderField = readonly [name: string, value: string];

export class HpackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "HpackError";
  }
}

/** RFC 7541 Appendix A. Index 1 is the first entry. */
export const STATIC_TABLE: readonly HeaderField[] = [
  [":authority", ""],
  [":method", "GET"],
  [":method", "POST"],
  [":path", "/"],
  [":path", "/index.html"],
  [":scheme", "http"],
  [":scheme", "https"],
  [":status", "200"],
  [":status", "204"],
  [":status", "206"],
  [":status", "304"],
  [":status", "400"],
  [":status", "404"],
  [":status", "500"],
  ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"],
  ["accept-language", ""],
  ["accept-ranges", ""],
  ["accept", ""],
  ["access-control-allow-origin", ""],
  ["age", ""],
  ["allow", ""],
  ["authorization", ""],
  ["cache-control", ""],
  ["content-disposition", ""],
  ["content-encoding", ""],
  ["content-language", ""],
  ["content-length", ""],
  ["content-location", ""],
  ["content-range", ""],
  ["content-type", ""],
  ["cookie", ""],
  ["date", ""],
  ["etag", ""],
  ["expect", ""],
  ["expires", ""],
  ["from", ""],
  ["host", ""],
  ["if-match", ""],
  ["if-modified-since", ""],
  ["if-none-match", ""],
  ["if-range", ""],
  ["if-unmodified-since", ""],
  ["last-modified", ""],
  ["link", ""],
  ["location", ""],
  ["max-forwards", ""],
  ["proxy-authenticate", ""],
  ["proxy-authorization", ""],
  ["range", ""],
  ["referer", ""],
  ["refresh", ""],
  ["retry-after", ""],
  ["server", ""],
  ["set-cookie", ""],
  ["strict-transport-security", ""],
  ["transfer-encoding", ""],
  ["user-agent", ""],
  ["vary", ""],
  ["via", ""],
  ["www-authenticate", ""],
];

const STATIC_EXACT = new Map<string, number>();
const STATIC_NAME = new Map<string, number>();
for (const [i, [n, v]] of STATIC_TABLE.entries()) {
  STATIC_EXACT.set(`${n}\u0000${v}`, i + 1);
  if (!STATIC_NAME.has(n)) STATIC_NAME.set(n, i + 1);
}

const encoder = new TextEncoder();

/** RFC 7541 4.1: an entry's size is its name and value octets plus 32. */
export function entrySize(name: string, value: string): number {
  return octets(name) + octets(value) + 32;
}

/**
 * The string's length in octets as it goes on the wire (see `stringBytes`): the table sizes on
 * both ends must agree byte for byte (RFC 7541 4.1), or one end evicts what the other refers to.
 */
function octets(s: string): number {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0xff) return encoder.encode(s).length;
  return s.length;
}

/** The FIFO dynamic table of RFC 7541 2.3.2: newest entry first, evicted from the end. */
class DynamicTable {
  entries: HeaderField[] = [];
  size = 0;
  constructor(public maxSize: number) {}

  get(index: number): HeaderField | undefined {
    return this.entries[index];
  }

  add(name: string, value: string): void {
    const s = entrySize(name, value);
    this.entries.unshift([name, value]);
    this.size += s;
    this.evict();
  }

  resize(max: number): void {
    this.maxSize = max;
    this.evict();
  }

  /** What adding an entry larger than the whole table does (RFC 7541 4.4). */
  clear(): void {
    this.entries = [];
    this.size = 0;
  }

  private evict(): void {
    while (this.size > this.maxSize && this.entries.length > 0) {
      const [n, v] = this.entries.pop()!;
      this.size -= entrySize(n, v);
    }
  }
}

// ---- primitives (RFC 7541 5.1, 5.2) ----

/** Appends an integer with an N-bit prefix; `first` holds the pattern bits above the prefix. */
export function encodeInteger(out: number[], value: number, prefixBits: number, first: number) {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out.push(first | value);
    return;
  }
  out.push(first | max);
  value -= max;
  while (value >= 128) {
    out.push((value % 128) + 128);
    value = Math.floor(value / 128);
  }
  out.push(value);
}

/** Reads an N-bit-prefix integer at `pos`; returns [value, next position]. */
export function decodeInteger(buf: Uint8Array, pos: number, prefixBits: number): [number, number] {
  if (pos >= buf.length) throw new HpackError("truncated integer");
  const max = (1 << prefixBits) - 1;
  let value = buf[pos++]! & max;
  if (value < max) return [value, pos];
  let shift = 1;
  for (;;) {
    if (pos >= buf.length) throw new HpackError("truncated integer");
    const b = buf[pos++]!;
    value += (b & 0x7f) * shift;
    if (value > 0x7fffffff) throw new HpackError("integer overflow");
    if ((b & 0x80) === 0) return [value, pos];
    shift *= 128;
  }
}

/**
 * Field values are bytes (RFC 9110 5.5 allows obs-text, 0x80-0xff) and Headers holds them as
 * Latin-1 strings, one char per byte: encoded and decoded that way they pass through unchanged.
 * (TextDecoder's "latin1" is windows-1252, which turns 0x80 into U+20AC; UTF-8 would send 0xe9 as
 * two bytes.) A string with a char above 0xff has no byte form; it goes out as UTF-8.
 */
function stringBytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c > 0xff) return encoder.encode(s);
    out[i] = c;
  }
  return out;
}

function bytesString(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i += 4096) {
    s += String.fromCharCode.apply(null, b.subarray(i, i + 4096) as unknown as number[]);
  }
  return s;
}

function encodeString(out: number[], s: string, huffman: boolean): void {
  const raw = stringBytes(s);
  if (huffman && raw.length > 0) {
    const hlen = huffmanLength(raw);
    if (hlen <= raw.length) {
      encodeInteger(out, hlen, 7, 0x80);
      for (const b of huffmanEncode(raw)) out.push(b);
      return;
    }
  }
  encodeInteger(out, raw.length, 7, 0);
  for (const b of raw) out.push(b);
}

/** The string at `pos`; undefined (skipped, not decoded) when it is longer than `maxLength`. */
function decodeString(
  buf: Uint8Array,
  pos: number,
  maxLength: number,
): [string | undefined, number] {
  if (pos >= buf.length) throw new HpackError("truncated string");
  const huff = (buf[pos]! & 0x80) !== 0;
  const [len, p] = decodeInteger(buf, pos, 7);
  if (p + len > buf.length) throw new HpackError("truncated string");
  if (len > maxLength) return [undefined, p + len];
  const bytes = buf.subarray(p, p + len);
  let text: string;
  try {
    text = bytesString(huff ? huffmanDecode(bytes) : bytes);
  } catch (err) {
    if (err instanceof HuffmanError) throw new HpackError(err.message);
    throw err;
  }
  return [text, p + len];
}

// ---- encoder ----

export interface EncoderOptions {
  /** Huffman-code strings when that is shorter (default true). */
  readonly huffman?: boolean;
  /** Starting table size both sides agreed on out of band (RFC 7541 Appendix C uses 256). */
  readonly tableSize?: number;
}

/** Names never added to the dynamic table (RFC 7541 7.1.3: secrets stay out of shared state). */
const NEVER_INDEX = new Set(["authorization", "proxy-authorization"]);

export class HpackEncoder {
  readonly #table: DynamicTable;
  readonly #huffman: boolean;
  #pendingResize: number | undefined;

  constructor(opts: EncoderOptions = {}) {
    this.#huffman = opts.huffman ?? true;
    this.#table = new DynamicTable(opts.tableSize ?? 4096);
  }

  get tableSize(): number {
    return this.#table.size;
  }

  /** The peer's SETTINGS_HEADER_TABLE_SIZE changed: the next block starts with an update. */
  setMaxTableSize(size: number): void {
    const next = Math.min(size, 4096);
    if (next !== this.#table.maxSize) {
      this.#table.resize(next);
      this.#pendingResize = next;
    }
  }

  encode(fields: Iterable<HeaderField>): Uint8Array {
    const out: number[] = [];
    if (this.#pendingResize !== undefined) {
      encodeInteger(out, this.#pendingResize, 5, 0x20);
      this.#pendingResize = undefined;
    }
    for (const [name, value] of fields) this.#field(out, name, value);
    return Uint8Array.from(out);
  }

  #field(out: number[], name: string, value: string): void {
    const exact = STATIC_EXACT.get(`${name}\u0000${value}`);
    if (exact !== undefined) return encodeInteger(out, exact, 7, 0x80);
    const entries = this.#table.entries;
    let nameIndex = STATIC_NAME.get(name) ?? 0;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (e[0] !== name) continue;
      if (e[1] === value) return encodeInteger(out, STATIC_TABLE.length + 1 + i, 7, 0x80);
      if (nameIndex === 0) nameIndex = STATIC_TABLE.length + 1 + i;
    }
    const sensitive = NEVER_INDEX.has(name);
    const index = !sensitive && entrySize(name, value) <= this.#table.maxSize / 2;
    if (index) encodeInteger(out, nameIndex, 6, 0x40);
    else encodeInteger(out, nameIndex, 4, sensitive ? 0x10 : 0x00);
    if (nameIndex === 0) encodeString(out, name, this.#huffman);
    encodeString(out, value, this.#huffman);
    if (index) this.#table.add(name, value);
  }
}

// ---- decoder ----

export interface DecoderOptions {
  /** Our SETTINGS_HEADER_TABLE_SIZE: the most the peer may size its table to. Default 4096. */
  readonly maxTableSize?: number;
  /** Our SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 6.5.2 sizing). Default 64 KiB. */
  readonly maxHeaderListSize?: number;
}

export class HeaderListTooLarge extends Error {
  constructor(readonly size: number) {
    super(`header list of at least ${size} bytes exceeds the limit`);
    this.name = "HeaderListTooLarge";
  }
}

export class HpackDecoder {
  readonly #table: DynamicTable;
  readonly #settingsMax: number;
  readonly maxHeaderListSize: number;

  constructor(opts: DecoderOptions = {}) {
    this.#settingsMax = opts.maxTableSize ?? 4096;
    this.#table = new DynamicTable(this.#settingsMax);
    this.maxHeaderListSize = opts.maxHeaderListSize ?? 65536;
  }

  /** Current dynamic table (newest first), for tests. */
  get table(): readonly HeaderField[] {
    return this.#table.entries;
  }
  get tableSize(): number {
    return this.#table.size;
  }

  /**
   * Decodes a complete header block. The whole block is always processed (the dynamic table must
   * stay in sync with the peer); when the list exceeds `maxHeaderListSize`, HeaderListTooLarge
   * is thrown at the end, which is a stream error, not a connection error.
   */
  decode(block: Uint8Array): HeaderField[] {
    const fields: HeaderField[] = [];
    let listSize = 0;
    let pos = 0;
    let fieldSeen = false;
    // A longer string makes the list too large, and is larger than the table too.
    const strMax = Math.max(this.maxHeaderListSize, this.#settingsMax);
    while (pos < block.length) {
      const b = block[pos]!;
      let name: string | undefined;
      let value: string | undefined;
      if (b & 0x80) {
        // 6.1 indexed field
        const [index, p] = decodeInteger(block, pos, 7);
        pos = p;
        [name, value] = this.#lookup(index);
      } else if ((b & 0xe0) === 0x20) {
        // 6.3 dynamic table size update: only before the first field
        if (fieldSeen) throw new HpackError("table size update after a header field");
        const [size, p] = decodeInteger(block, pos, 5);
        if (size > this.#settingsMax) throw new HpackError("table size update above the limit");
        this.#table.resize(size);
        pos = p;
        continue;
      } else {
        // 6.2.1 incremental indexing (01), 6.2.2 without (0000), 6.2.3 never indexed (0001)
        const incremental = (b & 0xc0) === 0x40;
        const [index, p] = decodeInteger(block, pos, incremental ? 6 : 4);
        pos = p;
        if (index === 0) [name, pos] = decodeString(block, pos, strMax);
        else name = this.#lookup(index)[0];
        [value, pos] = decodeString(block, pos, strMax);
        if (name === undefined || value === undefined) {
          // Over the list limit on its own: the stream's 431, not the connection's
          // COMPRESSION_ERROR. Adding an entry larger than the table empties it (RFC 7541
          // 4.4), which keeps the table in step with the peer's without the string.
          if (incremental) this.#table.clear();
          fieldSeen = true;
          listSize += strMax + 32; // at least
          continue;
        }
        if (incremental) this.#table.add(name, value);
      }
      fieldSeen = true;
      listSize += name.length + value.length + 32;
      if (listSize <= this.maxHeaderListSize) fields.push([name, value]);
    }
    if (listSize > this.maxHeaderListSize) throw new HeaderListTooLarge(listSize);
    return fields;
  }

  #lookup(index: number): HeaderField {
    if (index === 0) throw new HpackError("index 0");
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1]!;
    const e = this.#table.get(index - STATIC_TABLE.length - 1);
    if (!e) throw new HpackError(`index ${index} beyond the dynamic table`);
    return e;
  }
}
