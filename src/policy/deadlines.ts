/**
 * Request deadlines without a timer per request. Measured under load, one `setTimeout` per
 * proxied request cost ~17 us of CPU (docs/PERFORMANCE.md); a per-duration FIFO checked by one
 * shared interval costs well under 1 us. Requests with the same timeout expire in arrival order,
 * so each lane is a doubly linked list: arm appends, cancel unlinks, the tick pops expired heads.
 * Deadlines fire up to one tick late (10 ms by default).
 */

export interface Deadline {
  /** Stops the deadline from firing; safe to call more than once. */
  cancel(): void;
}

class Entry implements Deadline {
  prev: Entry | undefined = undefined;
  next: Entry | undefined = undefined;
  constructor(
    readonly lane: Lane,
    readonly at: number,
    readonly fire: (arg: unknown) => void,
    readonly arg: unknown,
  ) {}
  cancel(): void {
    this.lane.unlink(this);
  }
}

class Lane {
  head: Entry | undefined = undefined;
  tail: Entry | undefined = undefined;
  size = 0;
  #linked = new WeakSet<Entry>();

  push(e: Entry): void {
    e.prev = this.tail;
    if (this.tail) this.tail.next = e;
    else this.head = e;
    this.tail = e;
    this.size++;
    this.#linked.add(e);
  }

  unlink(e: Entry): void {
    if (!this.#linked.delete(e)) return;
    if (e.prev) e.prev.next = e.next;
    else this.head = e.next;
    if (e.next) e.next.prev = e.prev;
    else this.tail = e.prev;
    e.prev = e.next = undefined;
    this.size--;
  }
}

/** Lanes kept while empty; past this many, empty lanes are dropped at each tick. */
const MAX_IDLE_LANES = 64;

/**
 * The lane a deadline of `ms` goes to: 10 ms steps up to 1,280 ms, then 128 steps per doubling
 * (1,280-2,560 ms in 10 ms steps... 81.92-163.84 s in 640 ms steps), always rounding up.
 */
export function laneLength(ms: number): number {
  if (!(ms > 0)) return 0;
  if (ms <= 1280) return Math.ceil(ms / 10) * 10;
  const step = 10 * 2 ** Math.floor(Math.log2(ms / 1280));
  return Math.ceil(ms / step) * step;
}

export interface DeadlineQueueOptions {
  /** How often expiry is checked; the worst-case lateness of a deadline. */
  readonly tickMs?: number;
  /** Clock in ms; tests pass a fake one and call `tick()` themselves. */
  readonly now?: () => number;
  /** Set false in tests that drive `tick()` by hand. */
  readonly autoTick?: boolean;
}

export class DeadlineQueue {
  readonly #lanes = new Map<number, Lane>();
  readonly #tickMs: number;
  readonly #now: () => number;
  readonly #autoTick: boolean;
  #interval: ReturnType<typeof setInterval> | undefined;
  #pending = 0;

  constructor(opts: DeadlineQueueOptions = {}) {
    this.#tickMs = opts.tickMs ?? 10;
    this.#now = opts.now ?? (() => performance.now());
    this.#autoTick = opts.autoTick ?? true;
  }

  /**
   * Calls `fire(arg)` once `ms` have passed, unless cancelled first. Passing `arg` lets a caller
   * use one shared `fire` function instead of a closure per request.
   */
  arm<T>(ms: number, fire: (arg: T) => void, arg?: T): Deadline {
    let lane = this.#lanes.get(ms);
    if (!lane) {
      lane = new Lane();
      this.#lanes.set(ms, lane);
    }
    const entry = new Entry(lane, this.#now() + ms, fire as (arg: unknown) => void, arg);
    lane.push(entry);
    this.#pending++;
    if (this.#autoTick && this.#interval === undefined) {
      this.#interval = setInterval(() => this.tick(), this.#tickMs);
      // The interval must never keep the process alive by itself.
      Deno.unrefTimer(this.#interval as unknown as number);
    }
    return entry;
  }

  /**
   * For deadlines of any length (a gRPC client's `grpc-timeout`, which differs per call): the
   * length is rounded up to one of a bounded set of lanes, so lanes stay few however many
   * distinct lengths arrive. Never early; late by at most 1/128 of the length plus one tick.
   */
  armRoundedUp<T>(ms: number, fire: (arg: T) => void, arg?: T): Deadline {
    return this.arm(laneLength(ms), fire, arg);
  }

  /** Number of armed, unexpired deadlines. */
  get size(): number {
    let n = 0;
    for (const lane of this.#lanes.values()) n += lane.size;
    return n;
  }

  /** Fires every expired deadline; returns how many fired. */
  tick(): number {
    const now = this.#now();
    let fired = 0;
    let remaining = 0;
    for (const [ms, lane] of this.#lanes) {
      while (lane.head && lane.head.at <= now) {
        const e = lane.head;
        lane.unlink(e);
        fired++;
        try {
          e.fire(e.arg);
        } catch {
          // A deadline callback must not stop the others from firing.
        }
      }
      remaining += lane.size;
      // Many lanes only come from rounded lengths (armRoundedUp): drop the empty ones.
      if (lane.size === 0 && this.#lanes.size > MAX_IDLE_LANES) this.#lanes.delete(ms);
    }
    this.#pending = remaining;
    if (remaining === 0 && this.#interval !== undefined) {
      clearInterval(this.#interval);
      this.#interval = undefined;
    }
    return fired;
  }

  /** Stops the interval; armed deadlines no longer fire on their own. */
  close(): void {
    if (this.#interval !== undefined) clearInterval(this.#interval);
    this.#interval = undefined;
  }
}
