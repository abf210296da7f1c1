/**
 * GET /clusters with `server.workers > 1`: the main isolate's view (config, health verdicts,
 * shared breaker states) with the per-request counters each worker keeps on its own summed in:
 * requests and retries in flight, upstream connections, passive ejections and failures, and the
 * breaker transitions each worker made.
 */
import type { clustersView } from "../server/cluster_view.ts";

type View = ReturnType<typeof clustersView>;
type ClusterEntry = View["clusters"][number];
type EndpointEntry = ClusterEntry["endpoints"][number];

export function mergeClusterViews(main: View, workers: readonly View[]): View {
  return {
    ...main,
    clusters: main.clusters.map((c) => {
      const theirs = workers.flatMap((w) => w.clusters.filter((x) => x.name === c.name));
      return {
        ...c,
        active_requests: c.active_requests + sum(theirs, (x) => x.active_requests),
        retries_in_flight: c.retries_in_flight + sum(theirs, (x) => x.retries_in_flight),
        panic: c.panic || theirs.some((x) => x.panic),
        endpoints: c.endpoints.map((e) => {
          const same = theirs.flatMap((x) => x.endpoints.filter((y) => y.origin === e.origin));
          return mergeEndpoint(e, same);
        }),
      };
    }),
  };
}

function mergeEndpoint(e: EndpointEntry, same: readonly EndpointEntry[]): EndpointEntry {
  const connections = e.connections && {
    open: e.connections.open + sum(same, (x) => x.connections?.open ?? 0),
    idle: e.connections.idle + sum(same, (x) => x.connections?.idle ?? 0),
    waiting: e.connections.waiting + sum(same, (x) => x.connections?.waiting ?? 0),
    opened: e.connections.opened + sum(same, (x) => x.connections?.opened ?? 0),
    reused: e.connections.reused + sum(same, (x) => x.connections?.reused ?? 0),
  };
  const breaker = e.breaker && {
    ...e.breaker,
    times_opened: (e.breaker.times_opened ?? 0) + sum(same, (x) => x.breaker?.times_opened ?? 0),
    times_half_opened: (e.breaker.times_half_opened ?? 0) +
      sum(same, (x) => x.breaker?.times_half_opened ?? 0),
    times_closed: (e.breaker.times_closed ?? 0) + sum(same, (x) => x.breaker?.times_closed ?? 0),
  };
  return {
    ...e,
    in_flight: e.in_flight + sum(same, (x) => x.in_flight),
    connections,
    ejected: e.ejected || same.some((x) => x.ejected),
    ejections: e.ejections + sum(same, (x) => x.ejections),
    recent_failures: e.recent_failures + sum(same, (x) => x.recent_failures),
    breaker,
  };
}

function sum<T>(xs: readonly T[], f: (x: T) => number): number {
  let n = 0;
  for (const x of xs) n += f(x);
  return n;
}
