/**
 * Active health checking for one cluster: each endpoint is probed every `intervalMs` (plus
 * jitter), one probe at a time, each bounded by `timeoutMs`. Consecutive-result thresholds
 * decide transitions, reported through `onTransition`. Probes go over their own HTTP client
 * (`probe.ts`), never the cluster's pool. Timers and randomness are injectable for tests.
 *
 * @example
 * ```ts
 * const checker = new ActiveHealthChecker(cluster.endpoints, {
 *   path: "/healthz",
 *   intervalMs: 5_000,
 *   onTransition: (i, healthy, reason) => log.info({ i, healthy, reason }),
 * });
 * checker.start();
 * // ...
 * await checker.stop();
 * ```
 */
import { type HttpProbeOptions, HttpProber, type Probe, type ProbeTarget } from "./probe.ts";
import { GrpcHealthProber, type GrpcProbeOptions } from "./grpc_probe.ts";
import { ThresholdCounter } from "./thresholds.ts";
import { checkInt, checkRange, realTimers, type Timers } from "./timers.ts";

export type TransitionListener = (index: number, healthy: boolean, reason: string) => void;

export interface ActiveHealthOptions extends HttpProbeOptions {
  /** Time between the end of one probe and the start of the next. Default 5000. */
  readonly intervalMs?: number;
  /** A probe that takes longer fails. Default 1000. */
  readonly timeoutMs?: number;
  /** Random extra delay, as a fraction of the interval, added to each wait. Default 0.1. */
  readonly jitterFraction?: number;
  /** Random extra delay in ms added to each wait (on top of `jitterFraction`). Default 0. */
  readonly jitterMs?: number;
  /** Consecutive successes that make an unhealthy endpoint healthy. Default 2. */
  readonly healthyThreshold?: number;
  /** Consecutive failures that make a healthy endpoint unhealthy. Default 3. */
  readonly unhealthyThreshold?: number;
  /**
   * State before the first probe. Default `"healthy"`. From `"unhealthy"` the first probe's
   * success alone marks an endpoint healthy (as Envoy does), so startup does not wait for
   * `healthyThreshold` intervals; later recoveries need the full threshold.
   */
  readonly initialState?: "healthy" | "unhealthy";
  /** Per endpoint, overrides `initialState` (health carried over from an earlier membership). */
  readonly initiallyHealthy?: readonly (boolean | undefined)[];
  /** Called on every health change (not on every probe). */
  readonly onTransition?: TransitionListener;
  /** Called after every probe, for metrics. */
  readonly onProbe?: (index: number, ok: boolean, reason: string, durationMs: number) => void;
  /** Probe with `grpc.health.v1.Health/Check` instead of an HTTP GET (`path` is then unused). */
  readonly grpc?: GrpcProbeOptions | undefined;
  /** Replaces the HTTP probe (tests, other protocols); must honour its signal. */
  readonly probe?: Probe;
  readonly timers?: Timers;
  /** Floats in [0, 1), like `Math.random`; drives jitter. */
  readonly random?: () => number;
}

/** What the checker knows of one endpoint, for admin views. */
export interface ProbeStatus {
  readonly healthy: boolean;
  readonly consecutiveSuccesses: number;
  readonly consecutiveFailures: number;
  /** Reason of the last probe (`"status 200"`, `"connection refused"`, ...), or `""`. */
  readonly lastReason: string;
  /** Clock time the last probe finished, or `undefined` before the first. */
  readonly lastProbeAt: number | undefined;
  readonly probes: number;
}

interface Slot {
  readonly target: ProbeTarget;
  readonly counter: ThresholdCounter;
  timer: unknown;
  abort: AbortController | undefined;
  running: Promise<void> | undefined;
  lastReason: string;
  lastProbeAt: number | undefined;
  probes: number;
}

export class ActiveHealthChecker {
  readonly #slots: readonly Slot[];
  readonly #intervalMs: number;
  readonly #timeoutMs: number;
  readonly #jitterSpanMs: number;
  readonly #healthyThreshold: number;
  readonly #unhealthyThreshold: number;
  readonly #timers: Timers;
  readonly #random: () => number;
  readonly #probe: Probe;
  readonly #prober: { close(): void } | undefined;
  readonly #onTransition: TransitionListener | undefined;
  readonly #onProbe: ActiveHealthOptions["onProbe"];
  #state: "new" | "running" | "stopped" = "new";

  constructor(targets: readonly ProbeTarget[], opts: ActiveHealthOptions = {}) {
    this.#intervalMs = checkRange("intervalMs", opts.intervalMs ?? 5_000, 1);
    this.#timeoutMs = checkRange("timeoutMs", opts.timeoutMs ?? 1_000, 1);
    const jitterFraction = checkRange("jitterFraction", opts.jitterFraction ?? 0.1, 0, 1);
    const jitterMs = checkRange("jitterMs", opts.jitterMs ?? 0, 0);
    this.#jitterSpanMs = jitterFraction * this.#intervalMs + jitterMs;
    this.#healthyThreshold = checkInt("healthyThreshold", opts.healthyThreshold ?? 2, 1);
    this.#unhealthyThreshold = checkInt("unhealthyThreshold", opts.unhealthyThreshold ?? 3, 1);
    const initial = opts.initialState ?? "healthy";
    if (initial !== "healthy" && initial !== "unhealthy") {
      throw new RangeError(
        `initialState must be "healthy" or "unhealthy", got ${JSON.stringify(initial)}`,
      );
    }
    this.#timers = opts.timers ?? realTimers;
    this.#random = opts.random ?? Math.random;
    this.#onTransition = opts.onTransition;
    this.#onProbe = opts.onProbe;
    if (opts.probe) {
      this.#probe = opts.probe;
      this.#prober = undefined;
    } else if (opts.grpc) {
      const prober = new GrpcHealthProber({
        ...opts.grpc,
        ...(opts.caCerts ? { caCerts: opts.caCerts } : {}),
        ...(opts.tls ? { tls: opts.tls } : {}),
      });
      this.#prober = prober;
      this.#probe = prober.probe;
    } else {
      const prober = new HttpProber(opts);
      this.#prober = prober;
      this.#probe = prober.probe;
    }
    const thresholds = {
      healthyThreshold: this.#healthyThreshold,
      unhealthyThreshold: this.#unhealthyThreshold,
      initiallyHealthy: initial === "healthy",
    };
    this.#slots = targets.map((target, i) => ({
      target,
      counter: new ThresholdCounter({
        ...thresholds,
        initiallyHealthy: opts.initiallyHealthy?.[i] ?? thresholds.initiallyHealthy,
      }),
      timer: undefined,
      abort: undefined,
      running: undefined,
      lastReason: "",
      lastProbeAt: undefined,
      probes: 0,
    }));
  }

  /** Starts probing: each endpoint's first probe comes within the jitter span. Idempotent. */
  start(): void {
    if (this.#state !== "new") return;
    this.#state = "running";
    for (const slot of this.#slots) this.#schedule(slot, this.#random() * this.#jitterSpanMs);
  }

  /**
   * Stops for good: cancels timers, aborts probes in flight and closes the probe client once
   * they have settled. A stopped checker cannot be started again.
   */
  async stop(): Promise<void> {
    if (this.#state === "stopped") return;
    this.#state = "stopped";
    const running: Promise<void>[] = [];
    for (const slot of this.#slots) {
      this.#timers.clearTimeout(slot.timer);
      slot.timer = undefined;
      slot.abort?.abort(new DOMException("health checker stopped", "AbortError"));
      if (slot.running) running.push(slot.running);
    }
    await Promise.allSettled(running);
    this.#prober?.close();
  }

  /** Whether endpoint `index` is healthy by its probes. */
  healthy(index: number): boolean {
    return this.#slot(index).counter.healthy;
  }

  status(index: number): ProbeStatus {
    const s = this.#slot(index);
    return {
      healthy: s.counter.healthy,
      consecutiveSuccesses: s.counter.successes,
      consecutiveFailures: s.counter.failures,
      lastReason: s.lastReason,
      lastProbeAt: s.lastProbeAt,
      probes: s.probes,
    };
  }

  #slot(index: number): Slot {
    const s = this.#slots[index];
    if (s === undefined) throw new RangeError(`no endpoint at index ${index}`);
    return s;
  }

  #schedule(slot: Slot, delayMs: number): void {
    slot.timer = this.#timers.setTimeout(() => {
      slot.timer = undefined;
      slot.running = this.#run(slot);
    }, delayMs);
  }

  async #run(slot: Slot): Promise<void> {
    const timers = this.#timers;
    const abort = new AbortController();
    slot.abort = abort;
    const timeoutMs = this.#timeoutMs;
    const timeout = timers.setTimeout(
      () => abort.abort(new DOMException(`timeout after ${timeoutMs} ms`, "TimeoutError")),
      timeoutMs,
    );
    const started = timers.now();
    let ok: boolean;
    let reason: string;
    try {
      // The race keeps a probe that ignores its signal from stalling this endpoint's checks.
      ({ ok, reason } = await Promise.race([
        this.#probe(slot.target, abort.signal),
        aborted(abort),
      ]));
      if (abort.signal.aborted && ok) {
        ok = false;
        reason = abortReason(abort.signal);
      }
    } catch (err) {
      ok = false;
      reason = abort.signal.aborted ? abortReason(abort.signal) : errorText(err);
    } finally {
      timers.clearTimeout(timeout);
      slot.abort = undefined;
      slot.running = undefined;
    }
    if (this.#state !== "running") return;
    slot.probes++;
    slot.lastReason = reason;
    slot.lastProbeAt = timers.now();
    this.#onProbe?.(slot.target.index, ok, reason, slot.lastProbeAt - started);
    if (slot.counter.observe(ok)) {
      const healthy = slot.counter.healthy;
      const n = healthy ? slot.counter.successes : slot.counter.failures;
      const what = healthy
        ? (n === 1 ? "success" : "successes")
        : (n === 1 ? "failure" : "failures");
      this.#onTransition?.(slot.target.index, healthy, `${n} consecutive ${what}, last: ${reason}`);
    }
    if (this.#state === "running") {
      this.#schedule(slot, this.#intervalMs + this.#random() * this.#jitterSpanMs);
    }
  }
}

function aborted(abort: AbortController): Promise<never> {
  return new Promise((_, reject) => {
    abort.signal.addEventListener("abort", () => reject(abort.signal.reason), { once: true });
  });
}

function abortReason(signal: AbortSignal): string {
  const r = signal.reason;
  return r instanceof Error ? r.message : String(r);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
