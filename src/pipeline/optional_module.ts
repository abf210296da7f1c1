/**
 * A module Ferry loads only when the config uses it (node:tls, the gRPC listener, jose, the
 * Redis client): importing them all at start-up cost about 12 MiB of resident memory that a
 * plain HTTP config never uses (docs/PERFORMANCE.md, "Memory: where it goes and what was cut").
 *
 * `load()` runs while a config is built (src/server/optional_parts.ts), never per request;
 * after it, `get()` is a synchronous field read for the code that builds or runs the part.
 */
export class OptionalModule<T> {
  readonly #importer: () => Promise<T>;
  #module: T | undefined;
  #loading: Promise<T> | undefined;

  constructor(readonly name: string, importer: () => Promise<T>) {
    this.#importer = importer;
  }

  /** Imports the module once; later calls return the same promise. */
  load(): Promise<T> {
    this.#loading ??= this.#importer().then((m) => (this.#module = m));
    return this.#loading;
  }

  get loaded(): boolean {
    return this.#module !== undefined;
  }

  /** The module; a config that needs it was built, so it is loaded (else a bug: throws). */
  get(): T {
    if (this.#module === undefined) {
      throw new Error(
        `optional part "${this.name}" used before it was loaded ` +
          "(src/server/optional_parts.ts loads it while the config is built)",
      );
    }
    return this.#module;
  }
}
