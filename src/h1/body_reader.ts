/**
 * A request body that can be read straight into the reader's own buffer: the mirror image of the
 * codec's response-body relay (takeBodyRelay in connection.ts). Ferry's HTTP/1.1 server offers one
 * beside each request body stream; the upstream codec takes it and reads the client's bytes into
 * one reused buffer, so an upload leaves no chunk object per read to the garbage collector.
 *
 * A wrapper that makes a stream of a body stream (the size limit, the body watch) offers a reader
 * of its own that applies its policy to the inner reader, or none: then the codec reads the
 * wrapper's stream, as every other consumer (fetch, the HTTP/2 transport, extensions) does.
 */
export interface BodyReader {
  /**
   * Reads body bytes into `buf` (at least one); resolves to their count, or null at the end of
   * the body. Rejects with the body's failure (the client left, bad framing, over the limit).
   * One read at a time; `buf` is the caller's again once the read settles.
   */
  read(buf: Uint8Array): Promise<number | null>;
  /** The body is not wanted any more (the upstream exchange failed). */
  cancel(reason?: unknown): void;
}

const offers = new WeakMap<ReadableStream<Uint8Array>, () => BodyReader | undefined>();

/**
 * Offers a direct reader for `stream`. `make` runs when the reader is taken and returns undefined
 * when the body can no longer be read that way (its stream was read from already).
 */
export function offerBodyReader(
  stream: ReadableStream<Uint8Array>,
  make: () => BodyReader | undefined,
): void {
  offers.set(stream, make);
}

/**
 * The direct reader offered for `stream`, when nothing has read from the stream yet; taking it
 * locks the stream (the reader is now the only way to the body).
 */
export function takeBodyReader(stream: ReadableStream<Uint8Array>): BodyReader | undefined {
  const make = offers.get(stream);
  if (!make || stream.locked) return undefined;
  offers.delete(stream);
  const reader = make();
  if (reader) stream.getReader(); // locked: nobody else reads this body
  return reader;
}
