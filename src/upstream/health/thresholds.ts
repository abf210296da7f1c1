/**
 * The rise/fall counter behind active health checks (HAProxy's `rise`/`fall`, Envoy's
 * `healthy_threshold`/`unhealthy_threshold`): an endpoint changes state only after that many
 * consecutive results the other way, so one odd probe never flips it.
 */

export interface ThresholdOptions {
  /** Consecutive successes that make an unhealthy endpoint healthy. */
  readonly healthyThreshold: number;
  /** Consecutive failures that make a healthy endpoint unhealthy. */
  readonly unhealthyThreshold: number;
  /** The state before any probe. */
  readonly initiallyHealthy: boolean;
}

export class ThresholdCounter {
  readonly #opts: ThresholdOptions;
  #healthy: boolean;
  #successes = 0;
  #failures = 0;
  /** No probe seen yet: Envoy lets the first success mark a starting-unhealthy endpoint up. */
  #fresh = true;

  constructor(opts: ThresholdOptions) {
    this.#opts = opts;
    this.#healthy = opts.initiallyHealthy;
  }

  get healthy(): boolean {
    return this.#healthy;
  }

  /** Consecutive successes so far (0 after any failure). */
  get successes(): number {
    return this.#successes;
  }

  /** Consecutive failures so far (0 after any success). */
  get failures(): number {
    return this.#failures;
  }

  /** Feeds one probe result; returns true when the health state changed. */
  observe(success: boolean): boolean {
    const fresh = this.#fresh;
    this.#fresh = false;
    if (success) {
      this.#successes++;
      this.#failures = 0;
      if (!this.#healthy && (fresh || this.#successes >= this.#opts.healthyThreshold)) {
        this.#healthy = true;
        return true;
      }
    } else {
      this.#failures++;
      this.#successes = 0;
      if (this.#healthy && this.#failures >= this.#opts.unhealthyThreshold) {
        this.#healthy = false;
        return true;
      }
    }
    return false;
  }
}
