/**
 * A circuit-breaker store as the registry keeps it: the store, a count of transitions into each
 * state per slot (for /clusters and the dashboard), and which endpoint each slot stands for (for
 * the metrics). Slots follow the cluster's stable endpoint slots.
 */
import type { SharedRegion } from "../policy/shared_memory.ts";
import type { BreakerConfigSchema } from "../config/schema.ts";
import type { Cluster } from "../upstream/cluster.ts";
import {
  BREAKER_STATE_NAMES,
  type BreakerConfig,
  BreakerStore,
} from "../policy/circuit_breaker.ts";
import type { Logger } from "../observability/log.ts";
import type { FerryMetrics } from "../observability/metrics.ts";

/** A breaker store as the metrics see it: whose it is and which endpoint each slot is. */
export interface BreakerView {
  readonly cluster: string;
  /** "cluster", or "route:<name>" for a route's own breaker. */
  readonly scope: string;
  /** [slot, endpoint origin] for the cluster's current endpoints; [0, "*"] cluster-wide. */
  slots(): readonly (readonly [number, string])[];
  readonly record: BreakerRecord;
}

/** A breaker store with a count of transitions into each state, per slot. */
export interface BreakerRecord {
  readonly store: BreakerStore;
  /** `transitions[slot * 3 + state]`: times that slot entered closed (0), open (1), half-open (2). */
  readonly transitions: Uint32Array;
  /** Stops following the cluster's endpoint changes (the record is no longer used). */
  readonly detach: () => void;
  readonly view: BreakerView;
}

/** Config field names -> the breaker store's option names. */
function breakerConfig(b: BreakerConfigSchema): BreakerConfig {
  return {
    mode: b.mode,
    failureThreshold: b.failures,
    successThreshold: b.successes,
    openTimeoutMs: b.open_timeout,
    maxHalfOpenRequests: b.max_half_open,
    failureRatePercent: b.failure_rate,
    minimumRequests: b.min_requests,
    windowMs: b.window,
  };
}

/** A breaker store for a cluster's endpoints that logs and counts every state change. */
export function breakerStore(
  b: BreakerConfigSchema,
  cluster: Cluster,
  scope: string,
  log: Logger | undefined,
  metrics: FerryMetrics,
  /** Process-wide memory for the store (server.workers > 1), by size. */
  shared?: (bytes: number) => SharedRegion | undefined,
): BreakerRecord {
  const perCluster = b.scope === "cluster";
  // Per-endpoint breakers live in the endpoints' stable slots (see `Endpoint.slot`).
  const slots = perCluster ? 1 : cluster.slotCapacity;
  const transitions = new Uint32Array(slots * 3);
  const region = shared?.(BreakerStore.byteLength(slots, breakerConfig(b)));
  const store = new BreakerStore(slots, breakerConfig(b), {
    ...(region ? { buffer: region.buffer, byteOffset: region.byteOffset } : {}),
    onTransition: (slot, from, to) => {
      transitions[slot * 3 + to]!++;
      const endpoint = perCluster
        ? "*"
        : cluster.endpoints.find((e) => e.slot === slot)?.origin ?? "gone";
      metrics.breakerTransition(cluster.name, scope, endpoint, BREAKER_STATE_NAMES[to]);
      log?.info("circuit breaker state change", {
        cluster: cluster.name,
        scope,
        endpoint,
        from: BREAKER_STATE_NAMES[from],
        to: BREAKER_STATE_NAMES[to],
      });
    },
  });
  const detach = perCluster ? () => {} : cluster.onSlotReuse((slot) => {
    store.reset(slot);
    transitions.fill(0, slot * 3, slot * 3 + 3);
  });
  const record: BreakerRecord = {
    store,
    transitions,
    detach,
    view: {
      cluster: cluster.name,
      scope,
      slots: () =>
        perCluster ? [[0, "*"]] : cluster.endpoints.map((e) => [e.slot, e.origin] as const),
      get record() {
        return record;
      },
    },
  };
  return record;
}
