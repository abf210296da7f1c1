/**
 * The parts of prom-client Ferry uses, imported one by one: its index also loads the Pushgateway
 * (node:http, node:https, node:zlib), Summary (tdigest, bintrees) and the cluster aggregator, none
 * of which Ferry uses; measured in a running Ferry, the index holds 1.2 MiB more V8 heap than these
 * parts (docs/PERFORMANCE.md, "Memory: where it goes and what was cut"). The types are the index's.
 */
import type * as Prom from "prom-client";
import RegistryImpl from "prom-client/lib/registry.js";
import CounterImpl from "prom-client/lib/counter.js";
import GaugeImpl from "prom-client/lib/gauge.js";
import HistogramImpl from "prom-client/lib/histogram.js";
import collectDefaultMetricsImpl from "prom-client/lib/defaultMetrics.js";
import AggregatorRegistryImpl from "prom-client/lib/cluster.js";

export const Registry = RegistryImpl as typeof Prom.Registry;
export type Registry = Prom.Registry;
export const Counter = CounterImpl as typeof Prom.Counter;
export type Counter<T extends string = string> = Prom.Counter<T>;
export const Gauge = GaugeImpl as typeof Prom.Gauge;
export type Gauge<T extends string = string> = Prom.Gauge<T>;
export const Histogram = HistogramImpl as typeof Prom.Histogram;
export type Histogram<T extends string = string> = Prom.Histogram<T>;
export const collectDefaultMetrics = collectDefaultMetricsImpl as typeof Prom.collectDefaultMetrics;

/**
 * The cluster aggregator's `aggregate` (src/workers/supervisor.ts merges the workers' metrics
 * with it); node:cluster itself is required only when its listeners are used, which Ferry never
 * does.
 */
export const AggregatorRegistry = AggregatorRegistryImpl as typeof Prom.AggregatorRegistry;
