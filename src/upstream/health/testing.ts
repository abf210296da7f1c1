/** A fake clock with timers for the health tests: time moves only when a test says so. */
import type { Timers } from "./timers.ts";

interface Pending {
  readonly id: number;
  readonly at: number;
  readonly fn: () => void;
}

export class FakeTimers implements Timers {
  #now: number;
  #seq = 0;
  #pending: Pending[] = [];

  constructor(start = 1_000) {
    this.#now = start;
  }

  now = (): number => this.#now;

  setTimeout = (fn: () => void, ms: number): unknown => {
    const id = ++this.#seq;
    this.#pending.push({ id, at: this.#now + Math.max(0, ms), fn });
    return id;
  };

  clearTimeout = (handle: unknown): void => {
    this.#pending = this.#pending.filter((p) => p.id !== handle);
  };

  /** Timers armed and not yet fired. */
  get pending(): number {
    return this.#pending.length;
  }

  /**
   * Moves time forward by `ms`, firing due timers in time order; after each one, lets promise
   * callbacks (fake probes) settle so that the timers they arm are seen too.
   */
  async advance(ms: number): Promise<void> {
    const end = this.#now + ms;
    for (;;) {
      await settle();
      let next: Pending | undefined;
      for (const p of this.#pending) {
        if (p.at <= end && (next === undefined || p.at < next.at)) next = p;
      }
      if (next === undefined) break;
      this.#pending = this.#pending.filter((p) => p !== next);
      this.#now = Math.max(this.#now, next.at);
      next.fn();
    }
    this.#now = end;
    await settle();
  }
}

/** Lets queued promise callbacks run (a few microtask turns). */
export async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

/** A deterministic random source cycling through `values`. */
export function sequence(...values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length]!;
}
