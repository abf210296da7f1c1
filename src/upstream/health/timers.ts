/**
 * The clock and timers health code runs on, injectable so tests drive time by hand
 * (`testing.ts` has a fake). Real timers are unref'd: health checks never keep the process alive.
 */

export interface Timers {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** `performance.now()` and unref'd `setTimeout`. */
export const realTimers: Timers = {
  now: () => performance.now(),
  setTimeout(fn, ms) {
    const id = setTimeout(fn, ms);
    Deno.unrefTimer(id);
    return id;
  },
  clearTimeout(handle) {
    clearTimeout(handle as number);
  },
};

/** Checks that `value` is a finite number in [min, max]; names the field otherwise. */
export function checkRange(field: string, value: number, min: number, max = Infinity): number {
  if (typeof value !== "number" || Number.isNaN(value) || value < min || value > max) {
    const range = max === Infinity ? `>= ${min}` : `in [${min}, ${max}]`;
    throw new RangeError(`${field} must be a number ${range}, got ${value}`);
  }
  return value;
}

/** Like `checkRange`, for whole numbers. */
export function checkInt(field: string, value: number, min: number, max = Infinity): number {
  checkRange(field, value, min, max);
  if (!Number.isInteger(value)) throw new RangeError(`${field} must be an integer, got ${value}`);
  return value;
}
