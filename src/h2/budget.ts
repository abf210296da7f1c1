/**
 * A byte budget shared by several holders (the HTTP/2 connections of a process): memory held on
 * credit already returned to a peer is taken from it, and given back when read or dropped. A
 * full budget means "hold the peer's credit instead", which bounds memory in total.
 */
export class ByteBudget {
  #used = 0;
  constructor(readonly limit: number) {}

  get used(): number {
    return this.#used;
  }

  /** Takes `n` bytes if they fit. */
  tryTake(n: number): boolean {
    if (this.#used + n > this.limit) return false;
    this.#used += n;
    return true;
  }

  give(n: number): void {
    this.#used = Math.max(0, this.#used - n);
  }
}
