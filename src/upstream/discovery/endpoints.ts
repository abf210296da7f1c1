/**
 * Endpoint reconciliation for dynamic clusters: when discovery returns a new endpoint set, the
 * endpoints that stay keep their state objects (in-flight counts, health, slow start, outlier
 * statistics) and only new ones start fresh. A cluster then rebuilds its balancer over the
 * result with `options.states`, so nothing it learned about a surviving endpoint is lost (Envoy
 * keeps a host's `HostSharedPtr` across EDS/DNS updates for the same reason).
 *
 * Pure: no I/O, no clock, no mutation of its inputs.
 *
 * @example
 * ```ts
 * import { createBalancer } from "../balancers/mod.ts";
 * import { reconcileEndpoints } from "./endpoints.ts";
 * let current = reconcileEndpoints([], [{ url: "http://10.0.0.1:80", weight: 1 }]).endpoints;
 * const next = reconcileEndpoints(current, [
 *   { url: "http://10.0.0.1:80", weight: 1 },
 *   { url: "http://10.0.0.2:80", weight: 1 },
 * ]);
 * const lb = createBalancer("round_robin", next.endpoints, {
 *   states: next.endpoints.map((e) => e.state),
 * });
 * current = next.endpoints; // next.kept[0].state === the old 10.0.0.1 state
 * ```
 */
import { createEndpointState, type EndpointState } from "../balancers/types.ts";

/** What discovery reports for one endpoint: where it is and how much traffic it should take. */
export interface EndpointDescriptor {
  /** `scheme://host:port`, port always explicit, IPv6 in brackets: the endpoint's identity. */
  readonly url: string;
  /** A positive weight for the balancer. */
  readonly weight: number;
}

/** An endpoint as a cluster tracks it: its identity, weight and the state it owns. */
export interface EndpointWithState<S = EndpointState> {
  /** `scheme://host:port` (the same form as `EndpointDescriptor.url` and cluster origins). */
  readonly origin: string;
  readonly weight: number;
  readonly state: S;
}

/** A surviving endpoint whose weight changed; its state is kept, the caller decides the rest. */
export interface Reweighted<S> {
  readonly endpoint: EndpointWithState<S>;
  readonly from: number;
  readonly to: number;
}

export interface Reconciliation<S> {
  /** The new endpoint list, in the order of `next`; pass `endpoints.map((e) => e.state)`. */
  readonly endpoints: EndpointWithState<S>[];
  /** Endpoints new in `next`, with fresh state. */
  readonly added: EndpointWithState<S>[];
  /** Endpoints of `old` that are gone (their state objects, e.g. to drain or retire). */
  readonly removed: EndpointWithState<S>[];
  /** Endpoints in both; each carries the very state object (`===`) it had in `old`. */
  readonly kept: EndpointWithState<S>[];
  /** The subset of `kept` whose weight changed (e.g. an SRV weight edit). */
  readonly reweighted: Reweighted<S>[];
}

/**
 * The identity of an endpoint URL: `scheme://host:port` with the default port spelled out and
 * IPv6 normalised, so `http://[fd00:0::1]` and `http://[fd00::1]:80` are the same endpoint.
 * Throws `RangeError` for a URL that is not http(s).
 */
export function originOf(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new RangeError(`endpoint url ${JSON.stringify(url)} is not a valid URL`);
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    throw new RangeError(`endpoint url ${JSON.stringify(url)} must be http or https`);
  }
  const port = u.port || (u.protocol === "https:" ? "443" : "80");
  return `${u.protocol}//${u.hostname}:${port}`;
}

/**
 * Reconciles the endpoints a cluster has (`old`) with the set discovery just reported (`next`):
 * endpoints present in both (same origin) keep their existing state object, new ones get
 * `freshState(descriptor)` (by default `createEndpointState(weight)`, the balancers' own).
 * Duplicate origins in `next` keep the first. Throws `RangeError` for a non-positive weight or
 * an invalid URL in `next`, naming the index. Inputs are not modified.
 */
export function reconcileEndpoints<S = EndpointState>(
  old: readonly EndpointWithState<S>[],
  next: readonly EndpointDescriptor[],
  freshState: (d: EndpointDescriptor) => S = (d) => createEndpointState(d.weight) as S,
): Reconciliation<S> {
  const previous = new Map<string, EndpointWithState<S>>();
  for (const e of old) if (!previous.has(e.origin)) previous.set(e.origin, e);
  const endpoints: EndpointWithState<S>[] = [];
  const added: EndpointWithState<S>[] = [];
  const kept: EndpointWithState<S>[] = [];
  const reweighted: Reweighted<S>[] = [];
  const seen = new Set<string>();
  next.forEach((d, i) => {
    if (!Number.isFinite(d.weight) || d.weight <= 0) {
      throw new RangeError(`next[${i}].weight must be a positive number, got ${d.weight}`);
    }
    let origin: string;
    try {
      origin = originOf(d.url);
    } catch (err) {
      throw new RangeError(`next[${i}].url: ${(err as Error).message}`);
    }
    if (seen.has(origin)) return;
    seen.add(origin);
    const before = previous.get(origin);
    if (before) {
      const e = Object.freeze({ origin, weight: d.weight, state: before.state });
      kept.push(e);
      if (before.weight !== d.weight) {
        reweighted.push({ endpoint: e, from: before.weight, to: d.weight });
      }
      endpoints.push(e);
    } else {
      const e = Object.freeze({ origin, weight: d.weight, state: freshState(d) });
      added.push(e);
      endpoints.push(e);
    }
  });
  const removed = [...previous.values()].filter((e) => !seen.has(e.origin));
  return { endpoints, added, removed, kept, reweighted };
}
