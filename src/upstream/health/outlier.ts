/**
 * Passive outlier detection after Envoy's `outlier_detection`: the forwarder reports each
 * attempt's outcome, and an endpoint with too many consecutive 5xx or gateway failures is
 * ejected for `baseEjectionTimeMs x times ejected` (capped by `maxEjectionTimeMs`), then returns
 * by itself. No timer of its own: expiry is checked on `record()` (one comparison) and by
 * `tick()`, which the owner calls at `nextReturnAt`.
 *
 * Counting follows Envoy (non-split mode): a 502/503/504 ("gateway") counts toward both the
 * gateway and the 5xx streak, another 5xx counts toward the 5xx streak and breaks the gateway
 * streak, a connect failure counts like a 503, a success breaks both. Ejecting, or declining to
 * because of `maxEjectionPercent`, resets the endpoint's streaks.
 *
 * `maxEjectionPercent`: an ejection may not take the ejected share above it, counting the new
 * one, as current Envoy does. Unlike Envoy (whose `always_eject_one_host` defaults to false),
 * `alwaysEjectOne` defaults to true: with the 10% default a cluster of fewer than ten endpoints
 * could otherwise never eject anything, and most clusters are that small. It lets a cluster of
 * two or more endpoints eject one even above the percentage; a one-endpoint cluster follows the
 * percentage alone.
 */
import { checkInt, checkRange } from "./timers.ts";

/** One attempt's result, as the forwarder sees it. */
export type Outcome = "success" | "5xx" | "gateway" | "connect-failure";

/** The outcome of an attempt that got a response with `status`. */
export function outcomeOfStatus(status: number): Outcome {
  if (status === 502 || status === 503 || status === 504) return "gateway";
  return status >= 500 && status <= 599 ? "5xx" : "success";
}

/**
 * What a gRPC call's status says about the endpoint, for breakers and outlier detection:
 * UNAVAILABLE (14) is a gateway failure, server-side failures (UNKNOWN 2, DEADLINE_EXCEEDED 4,
 * INTERNAL 13, DATA_LOSS 15) count as 5xx; everything else is the application's answer.
 */
export function outcomeOfGrpcStatus(status: number): Outcome {
  switch (status) {
    case 14:
      return "gateway";
    case 2:
    case 4:
    case 13:
    case 15:
      return "5xx";
    default:
      return "success";
  }
}

/**
 * The outcome of an attempt that failed without a response, by `ProxyError` kind; `undefined`
 * for failures that say nothing about the endpoint (the client went away) and are not recorded.
 */
export function outcomeOfError(kind: string): Outcome | undefined {
  switch (kind) {
    case "upstream_connect_failure":
    case "upstream_id_mismatch":
      return "connect-failure";
    case "upstream_reset":
    case "upstream_timeout":
    case "upstream_protocol_error":
      return "gateway";
    default:
      return undefined;
  }
}

export interface OutlierOptions {
  /** Consecutive 5xx (any, gateway included) that eject; 0 turns the check off. Default 5. */
  readonly consecutive5xx?: number;
  /** Consecutive 502/503/504 or connect failures that eject; 0 turns it off. Default 5. */
  readonly consecutiveGatewayFailure?: number;
  /** Ejection time for a first ejection; the n-th lasts n times this. Default 30000. */
  readonly baseEjectionTimeMs?: number;
  /** Cap on one ejection's length (never below the base). Default 300000. */
  readonly maxEjectionTimeMs?: number;
  /** Most endpoints ejected at once, in percent of the cluster. Default 10. */
  readonly maxEjectionPercent?: number;
  /** Allow one ejection in a cluster of >= 2 even above the percentage. Default true. */
  readonly alwaysEjectOne?: boolean;
  /**
   * Each full interval an endpoint spends un-ejected takes one off its ejection multiplier
   * (Envoy's `interval`); also the window of `recentFailures`. Default 10000.
   */
  readonly intervalMs?: number;
  readonly now?: () => number;
  readonly onEject?: (index: number, untilMs: number, reason: string) => void;
  readonly onReturn?: (index: number) => void;
  /** Per endpoint, the record to continue from (`memory(i)` of an earlier detector). */
  readonly adopt?: readonly (OutlierMemory | undefined)[];
}

/** One endpoint's outlier record, opaque; moved to a new detector when membership changes. */
export type OutlierMemory = { readonly __outlierMemory: true };

export interface OutlierStatus {
  readonly ejected: boolean;
  /** Clock time the current ejection ends, or `undefined`. */
  readonly ejectedUntil: number | undefined;
  /** The ejection multiplier: grows by one per ejection, decays while un-ejected. */
  readonly multiplier: number;
  /** Ejections since start. */
  readonly ejections: number;
  readonly consecutive5xx: number;
  readonly consecutiveGatewayFailures: number;
  /** Failed attempts in the last one to two intervals. */
  readonly recentFailures: number;
}

class Monitor {
  consecutive5xx = 0;
  consecutiveGateway = 0;
  /** Clock time the ejection ends; 0 when not ejected. */
  ejectedUntil = 0;
  multiplier = 0;
  ejections = 0;
  /** When the multiplier last decayed (or the endpoint last returned). */
  decayedAt = 0;
  bucketStart = 0;
  failuresNow = 0;
  failuresBefore = 0;
}

export class OutlierDetector {
  readonly #monitors: readonly Monitor[];
  readonly #consecutive5xx: number;
  readonly #consecutiveGateway: number;
  readonly #baseMs: number;
  readonly #maxMs: number;
  readonly #maxPercent: number;
  readonly #alwaysEjectOne: boolean;
  readonly #intervalMs: number;
  readonly #now: () => number;
  readonly #onEject: OutlierOptions["onEject"];
  readonly #onReturn: OutlierOptions["onReturn"];
  #ejectedCount = 0;
  #nextReturnAt = Infinity;

  constructor(size: number, opts: OutlierOptions = {}) {
    checkInt("size", size, 0);
    this.#consecutive5xx = checkInt("consecutive5xx", opts.consecutive5xx ?? 5, 0);
    this.#consecutiveGateway = checkInt(
      "consecutiveGatewayFailure",
      opts.consecutiveGatewayFailure ?? 5,
      0,
    );
    this.#baseMs = checkRange("baseEjectionTimeMs", opts.baseEjectionTimeMs ?? 30_000, 1);
    this.#maxMs = Math.max(
      this.#baseMs,
      checkRange("maxEjectionTimeMs", opts.maxEjectionTimeMs ?? 300_000, 1),
    );
    this.#maxPercent = checkRange("maxEjectionPercent", opts.maxEjectionPercent ?? 10, 0, 100);
    this.#alwaysEjectOne = opts.alwaysEjectOne ?? true;
    this.#intervalMs = checkRange("intervalMs", opts.intervalMs ?? 10_000, 1);
    this.#now = opts.now ?? (() => performance.now());
    this.#onEject = opts.onEject;
    this.#onReturn = opts.onReturn;
    const start = this.#now();
    this.#monitors = Array.from({ length: size }, (_, i) => {
      const kept = opts.adopt?.[i] as unknown as Monitor | undefined;
      if (kept instanceof Monitor) {
        if (kept.ejectedUntil !== 0) this.#ejectedCount++;
        return kept;
      }
      const m = new Monitor();
      m.decayedAt = m.bucketStart = start;
      return m;
    });
    this.#recomputeNext();
  }

  /** Endpoint `index`'s record, for `adopt` of the detector that replaces this one. */
  memory(index: number): OutlierMemory {
    const m = this.#monitors[index];
    if (m === undefined) throw new RangeError(`no endpoint at index ${index}`);
    return m as unknown as OutlierMemory;
  }

  get size(): number {
    return this.#monitors.length;
  }

  /** Endpoints ejected right now (as of the last `record()` / `tick()`). */
  get ejectedCount(): number {
    return this.#ejectedCount;
  }

  /** Clock time of the next return from ejection, `Infinity` when none is ejected. */
  get nextReturnAt(): number {
    return this.#nextReturnAt;
  }

  /**
   * Records one attempt's outcome on endpoint `index` (once per attempt, from the forwarder).
   * Returns true when this outcome ejected the endpoint. O(1) unless an ejection is due to end.
   */
  record(index: number, outcome: Outcome): boolean {
    const m = this.#monitors[index];
    if (m === undefined) throw new RangeError(`no endpoint at index ${index}`);
    const now = this.#now();
    if (now >= this.#nextReturnAt) this.tick();
    if (outcome === "success") {
      m.consecutive5xx = 0;
      m.consecutiveGateway = 0;
      return false;
    }
    if (now - m.bucketStart >= this.#intervalMs) {
      m.failuresBefore = now - m.bucketStart >= 2 * this.#intervalMs ? 0 : m.failuresNow;
      m.failuresNow = 0;
      m.bucketStart = now;
    }
    m.failuresNow++;
    m.consecutive5xx++;
    if (outcome === "5xx") m.consecutiveGateway = 0;
    else m.consecutiveGateway++;
    const g = this.#consecutiveGateway;
    if (g > 0 && m.consecutiveGateway >= g) {
      return this.#tryEject(index, m, now, `${m.consecutiveGateway} consecutive gateway failures`);
    }
    const f = this.#consecutive5xx;
    if (f > 0 && m.consecutive5xx >= f) {
      return this.#tryEject(index, m, now, `${m.consecutive5xx} consecutive 5xx`);
    }
    return false;
  }

  /** Whether endpoint `index` is ejected now (ending ejections that are over). */
  isEjected(index: number): boolean {
    if (this.#now() >= this.#nextReturnAt) this.tick();
    return (this.#monitors[index]?.ejectedUntil ?? 0) > 0;
  }

  /** Returns every endpoint whose ejection is over; gives their indexes. */
  tick(): number[] {
    const now = this.#now();
    const returned: number[] = [];
    if (now < this.#nextReturnAt) return returned;
    let next = Infinity;
    this.#monitors.forEach((m, i) => {
      if (m.ejectedUntil === 0) return;
      if (m.ejectedUntil <= now) {
        this.#return(m, now);
        returned.push(i);
      } else if (m.ejectedUntil < next) {
        next = m.ejectedUntil;
      }
    });
    this.#nextReturnAt = next;
    for (const i of returned) this.#onReturn?.(i);
    return returned;
  }

  /** Ends an ejection early (an active health check passed); true when one ended. */
  uneject(index: number): boolean {
    const m = this.#monitors[index];
    if (m === undefined || m.ejectedUntil === 0) return false;
    this.#return(m, this.#now());
    this.#recomputeNext();
    this.#onReturn?.(index);
    return true;
  }

  status(index: number): OutlierStatus {
    const m = this.#monitors[index];
    if (m === undefined) throw new RangeError(`no endpoint at index ${index}`);
    if (this.#now() >= this.#nextReturnAt) this.tick();
    const now = this.#now();
    const age = now - m.bucketStart;
    const recent = age >= 2 * this.#intervalMs
      ? 0
      : age >= this.#intervalMs
      ? m.failuresNow
      : m.failuresNow + m.failuresBefore;
    const ejected = m.ejectedUntil > now;
    return {
      ejected,
      ejectedUntil: ejected ? m.ejectedUntil : undefined,
      multiplier: this.#decayed(m, now),
      ejections: m.ejections,
      consecutive5xx: m.consecutive5xx,
      consecutiveGatewayFailures: m.consecutiveGateway,
      recentFailures: recent,
    };
  }

  #tryEject(index: number, m: Monitor, now: number, reason: string): boolean {
    m.consecutive5xx = 0;
    m.consecutiveGateway = 0;
    if (m.ejectedUntil !== 0) return false;
    const n = this.#monitors.length;
    const withinPercent = (this.#ejectedCount + 1) * 100 <= this.#maxPercent * n;
    const oneAllowed = this.#alwaysEjectOne && this.#ejectedCount === 0 && n >= 2;
    if (!withinPercent && !oneAllowed) return false;
    m.multiplier = this.#decayed(m, now) + 1;
    m.ejections++;
    m.ejectedUntil = now + Math.min(this.#baseMs * m.multiplier, this.#maxMs);
    this.#ejectedCount++;
    if (m.ejectedUntil < this.#nextReturnAt) this.#nextReturnAt = m.ejectedUntil;
    this.#onEject?.(index, m.ejectedUntil, reason);
    return true;
  }

  #return(m: Monitor, now: number): void {
    // Decay counts from when the ejection ended, even if that is noticed later.
    m.decayedAt = Math.min(now, m.ejectedUntil);
    m.ejectedUntil = 0;
    this.#ejectedCount--;
  }

  /** The multiplier after the decay owed for time spent un-ejected since `decayedAt`. */
  #decayed(m: Monitor, now: number): number {
    if (m.ejectedUntil !== 0 || m.multiplier === 0) return m.multiplier;
    const steps = Math.floor((now - m.decayedAt) / this.#intervalMs);
    if (steps > 0) {
      m.multiplier = Math.max(0, m.multiplier - steps);
      m.decayedAt += steps * this.#intervalMs;
    }
    return m.multiplier;
  }

  #recomputeNext(): void {
    let next = Infinity;
    for (const m of this.#monitors) {
      if (m.ejectedUntil !== 0 && m.ejectedUntil < next) next = m.ejectedUntil;
    }
    this.#nextReturnAt = next;
  }
}
