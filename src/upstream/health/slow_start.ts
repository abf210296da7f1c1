/**
 * Slow start, as Envoy computes it: an endpoint that has just become usable gets
 * `weight x max(minWeightPercent / 100, (elapsed / window) ^ (1 / aggression))` until the
 * window is over. With `aggression` 1 (the default) the weight grows linearly with time and the
 * floor only holds it up early on (10% of the weight for the first 10% of the window); above 1
 * the weight climbs faster at first, below 1 slower.
 */
import { checkRange } from "./timers.ts";

export interface SlowStartOptions {
  /** Ramp length; 0 (the default) turns slow start off. */
  readonly windowMs?: number;
  /** Envoy's `aggression`: the ramp's curve, > 0. Default 1 (linear). */
  readonly aggression?: number;
  /** The least share of its weight a ramping endpoint gets, in percent. Default 10. */
  readonly minWeightPercent?: number;
  /** Ramp every endpoint from the first `start()` too, not only on recovery. Default false. */
  readonly atStartup?: boolean;
}

export interface SlowStartCurve {
  readonly windowMs: number;
  readonly aggression: number;
  /** Fraction in [0, 1]. */
  readonly minFactor: number;
}

/** Validates slow-start options (errors name the field) and applies the defaults. */
export function slowStartCurve(opts: SlowStartOptions = {}): SlowStartCurve {
  return {
    windowMs: checkRange("slowStart.windowMs", opts.windowMs ?? 0, 0),
    aggression: checkRange("slowStart.aggression", opts.aggression ?? 1, Number.MIN_VALUE),
    minFactor: checkRange("slowStart.minWeightPercent", opts.minWeightPercent ?? 10, 0, 100) /
      100,
  };
}

/** The share of its weight an endpoint gets `elapsedMs` into its ramp, in (0, 1]. */
export function slowStartFactor(curve: SlowStartCurve, elapsedMs: number): number {
  if (curve.windowMs <= 0 || elapsedMs >= curve.windowMs) return 1;
  const time = Math.max(elapsedMs, 1) / curve.windowMs;
  const factor = curve.aggression === 1 ? time : Math.pow(time, 1 / curve.aggression);
  return Math.max(curve.minFactor, factor);
}
