/**
 * EndpointHealth: one cluster's health, written into the `EndpointState` objects its balancer
 * reads. It combines
 *
 * - active health checks (`active.ts`; without them every endpoint is assumed healthy),
 * - passive outlier ejection (`outlier.ts`, fed by `record()` once per attempt),
 * - the panic threshold: when the share of usable (healthy and not ejected) endpoints falls
 *   below `panicThresholdPercent`, every endpoint is made eligible, so load spreads over all of
 *   them instead of crushing the few survivors (Envoy's panic mode),
 * - slow start (`slow_start.ts`): an endpoint that becomes usable again ramps its
 *   `effectiveWeight` up over a window, updated by a timer every `tickMs` while any ramps.
 *
 * It is the only writer of `eligible` and `effectiveWeight`, and writes them only on events and
 * timer ticks, never per request; `inFlight` stays the forwarder's. Balancers that place by
 * configured weight (ring_hash, maglev) read only `eligible`.
 */
import type { EndpointState } from "../balancers/types.ts";
import { ActiveHealthChecker, type ActiveHealthOptions } from "./active.ts";
import {
  type Outcome,
  OutlierDetector,
  type OutlierMemory,
  type OutlierOptions,
} from "./outlier.ts";
import type { ProbeTarget } from "./probe.ts";
import {
  type SlowStartCurve,
  slowStartCurve,
  slowStartFactor,
  type SlowStartOptions,
} from "./slow_start.ts";
import { checkRange, realTimers, type Timers } from "./timers.ts";

/** What the manager needs of an endpoint (Ferry's `Endpoint` fits). */
export interface HealthEndpoint extends ProbeTarget {
  readonly weight: number;
}

export type HealthEvent =
  | { readonly type: "healthy" | "unhealthy"; readonly index: number; readonly reason: string }
  | {
    readonly type: "ejected";
    readonly index: number;
    readonly untilMs: number;
    readonly reason: string;
  }
  | { readonly type: "returned"; readonly index: number }
  | { readonly type: "panic" | "panic_over"; readonly usable: number; readonly total: number };

export interface EndpointHealthOptions {
  /** Active probing; absent means no probes and every endpoint counts as healthy. */
  readonly active?: Omit<ActiveHealthOptions, "timers" | "random"> | undefined;
  /** Outlier ejection; absent means `record()` ejects nothing (it still counts failures). */
  readonly outlier?: Omit<OutlierOptions, "now"> | undefined;
  /** Below this share of usable endpoints, all become eligible; 0 turns it off. Default 50. */
  readonly panicThresholdPercent?: number;
  readonly slowStart?: SlowStartOptions | undefined;
  /** Slow-start weight update period. Default 250. */
  readonly tickMs?: number;
  /** Health changes, ejections and panic, for the log. */
  readonly onEvent?: (event: HealthEvent) => void;
  readonly timers?: Timers;
  readonly random?: () => number;
  /** Per endpoint, what an earlier membership knew of it (see `carryOver`). */
  readonly seeds?: readonly (EndpointSeed | undefined)[];
}

/**
 * What one endpoint's health carries into a new membership (DNS update, reload with a changed
 * endpoint list): probe verdict, outlier record (ejection, multiplier, failures) and ramp.
 */
export interface EndpointSeed {
  readonly healthy: boolean;
  readonly outlier: OutlierMemory;
  readonly rampFrom: number | undefined;
}

/** One endpoint in the admin `/clusters` view. */
export interface EndpointHealthSnapshot {
  readonly index: number;
  readonly origin: string;
  readonly weight: number;
  /** By active checks (always true without them). */
  readonly healthy: boolean;
  readonly ejected: boolean;
  /** Clock time the ejection ends (the injected clock, ms), or `undefined`. */
  readonly ejectedUntil: number | undefined;
  /** Times ejected since start. */
  readonly ejections: number;
  /** What the balancer may use: usable, or anything during panic. */
  readonly eligible: boolean;
  readonly effectiveWeight: number;
  readonly inFlight: number;
  /** Failed attempts recorded in the last 10-20 s (the outlier interval). */
  readonly recentFailures: number;
  /** The reason of the last probe, `""` without active checks. */
  readonly lastProbe: string;
  /** The cluster is in panic (every endpoint eligible). */
  readonly panic: boolean;
}

export class EndpointHealth {
  readonly #endpoints: readonly HealthEndpoint[];
  readonly #states: readonly EndpointState[];
  readonly #timers: Timers;
  readonly #panicPercent: number;
  readonly #curve: SlowStartCurve;
  readonly #slowAtStartup: boolean;
  readonly #tickMs: number;
  readonly #onEvent: ((event: HealthEvent) => void) | undefined;
  readonly #checker: ActiveHealthChecker | undefined;
  readonly #outlier: OutlierDetector;
  readonly #healthy: boolean[];
  readonly #ejected: boolean[];
  /** Clock time the endpoint's ramp began, or `undefined` when it is not ramping. */
  readonly #rampFrom: (number | undefined)[];
  #panic = false;
  #rampTimer: unknown = undefined;
  #returnTimer: unknown = undefined;
  #returnAt = Infinity;
  #state: "new" | "running" | "closed" = "new";

  constructor(
    endpoints: readonly HealthEndpoint[],
    states: readonly EndpointState[],
    opts: EndpointHealthOptions = {},
  ) {
    if (states.length !== endpoints.length) {
      throw new RangeError(
        `states must have one entry per endpoint (${endpoints.length}), got ${states.length}`,
      );
    }
    endpoints.forEach((e, i) => {
      if (e.index !== i) throw new RangeError(`endpoints[${i}].index must be ${i}, got ${e.index}`);
    });
    this.#endpoints = endpoints;
    this.#states = states;
    this.#timers = opts.timers ?? realTimers;
    this.#panicPercent = checkRange(
      "panicThresholdPercent",
      opts.panicThresholdPercent ?? 50,
      0,
      100,
    );
    this.#curve = slowStartCurve(opts.slowStart);
    this.#slowAtStartup = opts.slowStart?.atStartup ?? false;
    this.#tickMs = checkRange("tickMs", opts.tickMs ?? 250, 1);
    this.#onEvent = opts.onEvent;
    const n = endpoints.length;
    const seeds = opts.seeds;
    this.#ejected = new Array<boolean>(n).fill(false);
    this.#rampFrom = Array.from({ length: n }, (_, i) => seeds?.[i]?.rampFrom);
    const adopt = seeds?.map((s) => s?.outlier);
    const outlierOpts = opts.outlier;
    this.#outlier = new OutlierDetector(
      n,
      outlierOpts === undefined
        // Counting only: keeps recentFailures for the admin view but never ejects.
        ? {
          consecutive5xx: 0,
          consecutiveGatewayFailure: 0,
          now: () => this.#timers.now(),
          ...(adopt ? { adopt } : {}),
        }
        : {
          ...outlierOpts,
          ...(adopt ? { adopt } : {}),
          now: () => this.#timers.now(),
          onEject: (i, until, reason) => {
            outlierOpts.onEject?.(i, until, reason);
            this.#emit({ type: "ejected", index: i, untilMs: until, reason });
            this.#ejected[i] = true;
            this.#armReturn();
            this.#changed(i, false);
          },
          onReturn: (i) => {
            outlierOpts.onReturn?.(i);
            this.#emit({ type: "returned", index: i });
            this.#ejected[i] = false;
            this.#changed(i, true);
          },
        },
    );
    const active = opts.active;
    if (active) {
      this.#checker = new ActiveHealthChecker(endpoints, {
        ...active,
        ...(seeds ? { initiallyHealthy: seeds.map((s) => s?.healthy) } : {}),
        timers: this.#timers,
        ...(opts.random ? { random: opts.random } : {}),
        onTransition: (i, healthy, reason) => {
          active.onTransition?.(i, healthy, reason);
          this.#emit({ type: healthy ? "healthy" : "unhealthy", index: i, reason });
          this.#healthy[i] = healthy;
          // As Envoy's successful_active_health_check_uneject_host (default on): a backend that
          // passes its probes again is not kept out by an older passive ejection.
          // uneject() reports the return through onReturn above.
          if (healthy) this.#outlier.uneject(i);
          this.#changed(i, healthy);
        },
      });
      this.#healthy = endpoints.map((_, i) => this.#checker!.healthy(i));
    } else {
      this.#healthy = new Array<boolean>(n).fill(true);
    }
    // Ejections carried over stay in force until their time is up (one that is already over
    // returns here, through onReturn).
    for (let i = 0; i < n; i++) this.#ejected[i] = this.#outlier.status(i).ejected;
    this.#recompute();
  }

  /** Starts probes (and the startup ramp if configured). Idempotent. */
  start(): void {
    if (this.#state !== "new") return;
    this.#state = "running";
    if (this.#curve.windowMs > 0 && this.#slowAtStartup) {
      const now = this.#timers.now();
      this.#endpoints.forEach((_, i) => {
        if (this.#usable(i)) this.#rampFrom[i] = now;
      });
    }
    // Also picks up ramps begun before start() (an ejection that ended early, or carried over).
    if (this.#rampFrom.some((from) => from !== undefined)) this.#rampTick();
    this.#armReturn();
    this.#checker?.start();
  }

  /**
   * Takes an active-check verdict made elsewhere: with `server.workers > 1` only the main isolate
   * probes, and each worker's clusters follow its verdicts (src/workers/supervisor.ts).
   */
  setHealthy(index: number, healthy: boolean): void {
    if (this.#healthy[index] === undefined || this.#healthy[index] === healthy) return;
    this.#healthy[index] = healthy;
    if (healthy) this.#outlier.uneject(index);
    this.#changed(index, healthy);
  }

  /** Endpoint `index`'s health to carry into the membership that replaces this one. */
  seed(index: number): EndpointSeed {
    return {
      healthy: this.#healthy[index]!,
      outlier: this.#outlier.memory(index),
      rampFrom: this.#rampFrom[index],
    };
  }

  /**
   * Records one attempt's outcome on endpoint `index`: call it once per attempt from the
   * forwarder (see `outcomeOfStatus` / `outcomeOfError`). O(1); may eject the endpoint.
   */
  record(index: number, outcome: Outcome): void {
    if (this.#state === "closed") return;
    this.#outlier.record(index, outcome);
  }

  /** True while the cluster is in panic and every endpoint is eligible. */
  get panic(): boolean {
    return this.#panic;
  }

  /** Endpoints that are healthy and not ejected. */
  get usableCount(): number {
    let n = 0;
    for (let i = 0; i < this.#endpoints.length; i++) if (this.#usable(i)) n++;
    return n;
  }

  snapshot(): EndpointHealthSnapshot[] {
    return this.#endpoints.map((e, i) => {
      const o = this.#outlier.status(i);
      const s = this.#states[i]!;
      return {
        index: i,
        origin: e.origin,
        weight: e.weight,
        healthy: this.#healthy[i]!,
        ejected: o.ejected,
        ejectedUntil: o.ejectedUntil,
        ejections: o.ejections,
        eligible: s.eligible,
        effectiveWeight: s.effectiveWeight,
        inFlight: s.inFlight,
        recentFailures: o.recentFailures,
        lastProbe: this.#checker?.status(i).lastReason ?? "",
        panic: this.#panic,
      };
    });
  }

  /** Stops timers and probes; resolves once probes in flight have settled. */
  async close(): Promise<void> {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#timers.clearTimeout(this.#rampTimer);
    this.#timers.clearTimeout(this.#returnTimer);
    this.#rampTimer = this.#returnTimer = undefined;
    await this.#checker?.stop();
  }

  #usable(i: number): boolean {
    return this.#healthy[i]! && !this.#ejected[i]!;
  }

  #emit(event: HealthEvent): void {
    try {
      this.#onEvent?.(event);
    } catch {
      // A listener must not break health bookkeeping.
    }
  }

  /** Endpoint `i` may have become usable (`up`) or not; updates its ramp and eligibility. */
  #changed(i: number, up: boolean): void {
    if (this.#state === "closed") return;
    const state = this.#states[i]!;
    const weight = this.#endpoints[i]!.weight;
    if (up && this.#usable(i) && this.#curve.windowMs > 0) {
      this.#rampFrom[i] = this.#timers.now();
      state.effectiveWeight = weight * slowStartFactor(this.#curve, 0);
      this.#armRamp();
    } else if (!up) {
      this.#rampFrom[i] = undefined;
      state.effectiveWeight = weight;
    }
    this.#recompute();
  }

  #recompute(): void {
    const n = this.#endpoints.length;
    const usable = this.usableCount;
    const panic = n > 0 && usable * 100 < this.#panicPercent * n;
    for (let i = 0; i < n; i++) this.#states[i]!.eligible = panic || this.#usable(i);
    if (panic !== this.#panic) {
      this.#panic = panic;
      this.#emit({ type: panic ? "panic" : "panic_over", usable, total: n });
    }
  }

  #armRamp(): void {
    if (this.#rampTimer !== undefined || this.#state !== "running") return;
    this.#rampTimer = this.#timers.setTimeout(() => {
      this.#rampTimer = undefined;
      this.#rampTick();
    }, this.#tickMs);
  }

  /** Moves every ramping endpoint's weight along its curve; re-arms while any still ramps. */
  #rampTick(): void {
    const now = this.#timers.now();
    let ramping = false;
    this.#rampFrom.forEach((from, i) => {
      if (from === undefined) return;
      const factor = slowStartFactor(this.#curve, now - from);
      this.#states[i]!.effectiveWeight = this.#endpoints[i]!.weight * factor;
      if (factor >= 1) this.#rampFrom[i] = undefined;
      else ramping = true;
    });
    if (ramping) this.#armRamp();
  }

  /** One timer, at the earliest end of an ejection, so endpoints return without traffic. */
  #armReturn(): void {
    const at = this.#outlier.nextReturnAt;
    if (at === Infinity || at >= this.#returnAt || this.#state === "closed") return;
    this.#timers.clearTimeout(this.#returnTimer);
    this.#returnAt = at;
    this.#returnTimer = this.#timers.setTimeout(() => {
      this.#returnTimer = undefined;
      this.#returnAt = Infinity;
      this.#outlier.tick();
      this.#armReturn();
    }, Math.max(0, at - this.#timers.now()));
  }
}
