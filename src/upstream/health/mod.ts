/**
 * Endpoint health for one cluster: active probes, passive outlier ejection, panic threshold and
 * slow start, written into the `EndpointState` objects the cluster's balancer reads.
 *
 * @example
 * ```ts
 * const health = new EndpointHealth(cluster.endpoints, cluster.states, {
 *   active: { path: "/healthz", intervalMs: 5_000, unhealthyThreshold: 3 },
 *   outlier: { consecutive5xx: 5 },
 *   slowStart: { windowMs: 30_000 },
 * });
 * health.start();
 * // per attempt, in the forwarder:
 * health.record(endpoint.index, outcomeOfStatus(response.status));
 * // on cluster close:
 * await health.close();
 * ```
 */
export {
  EndpointHealth,
  type EndpointHealthOptions,
  type EndpointHealthSnapshot,
  type EndpointSeed,
  type HealthEndpoint,
  type HealthEvent,
} from "./manager.ts";
export {
  ActiveHealthChecker,
  type ActiveHealthOptions,
  type ProbeStatus,
  type TransitionListener,
} from "./active.ts";
export {
  type Outcome,
  outcomeOfError,
  outcomeOfStatus,
  OutlierDetector,
  type OutlierOptions,
  type OutlierStatus,
} from "./outlier.ts";
export {
  compileStatuses,
  DEFAULT_EXPECTED_STATUSES,
  type HttpProbeOptions,
  HttpProber,
  type Probe,
  type ProbeResult,
  type ProbeTarget,
  type StatusSpec,
} from "./probe.ts";
export { slowStartCurve, slowStartFactor, type SlowStartOptions } from "./slow_start.ts";
export { ThresholdCounter, type ThresholdOptions } from "./thresholds.ts";
export { realTimers, type Timers } from "./timers.ts";
