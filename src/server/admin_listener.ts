/**
 * The admin listener's socket: the same connection guard (src/server/guard.ts) and Ferry's own
 * HTTP/1.1 server (src/h1/server.ts) as the proxy listeners, so a slowloris head, a flood of idle
 * connections, an oversized or malformed head, or a client that stops reading a large /metrics
 * answer cannot hold the port that scrapes, probes and /reload need (docs/connections.md, "The
 * admin listener"). Always guarded, whatever `server.connection_guard` says: that switch trades
 * the guard's CPU for throughput on the proxy's hot path, which the admin port is not.
 */
import type { FerryConfig } from "../config/schema.ts";
import { ADMIN_MAX_CONNECTIONS } from "../config/admin_defaults.ts";
import { errorFields, type Logger } from "../observability/log.ts";
import type { FerryMetrics } from "../observability/metrics.ts";
import { errorResponse, ProxyError } from "../pipeline/errors.ts";
import { splitAddress } from "./compile.ts";
import { ConnectionGuard, drainGuarded, type GuardLimits, guardLimits } from "./guard.ts";

/** The listener's name in logs and in the metrics' `listener` label. */
const NAME = "admin";
/**
 * How long a shutdown lets admin requests in flight finish (the admin listener stops last, after
 * the proxy listeners drained): a scrape or a probe takes milliseconds.
 */
const ADMIN_DRAIN_MS = 2_000;

export interface AdminListener {
  readonly addr: Deno.NetAddr;
  /**
   * The port in `localhost:<port>`, the Host filled in for a request that sends none (HTTP/2
   * without :authority, HTTP/1.0 without Host), so the admin handler can tell (AdminView.port).
   */
  fillInPort(): number | undefined;
  /** Open connections right now. */
  openConnections(): number;
  /** Stops accepting, lets requests in flight finish (bounded), closes the rest. */
  shutdown(): Promise<void>;
}

export interface AdminListenerOptions {
  /** `admin.address`. */
  readonly address: string;
  readonly handler: (req: Request) => Promise<Response>;
  /** The config serving now: limits are read at every accept and sweep (a reload applies). */
  readonly config: () => FerryConfig;
  /** The serving snapshot's metrics. */
  readonly metrics: () => FerryMetrics;
  readonly log: Logger;
}

/**
 * The admin listener's guard limits: the server's timeouts (`header_timeout`, `idle_timeout`,
 * `send_timeout`) and the admin section's own connection caps.
 */
export function adminGuardLimits(config: FerryConfig): GuardLimits {
  return {
    ...guardLimits(config.server),
    maxConnections: config.admin?.max_connections ?? ADMIN_MAX_CONNECTIONS,
    maxConnectionsPerIp: config.admin?.max_connections_per_ip ?? 0,
  };
}

/** Binds the admin listener (throws if it cannot) and starts serving. */
export function startAdminListener(o: AdminListenerOptions): AdminListener {
  const { hostname, port } = splitAddress(o.address);
  const guard = new ConnectionGuard({
    name: NAME,
    hostname,
    port,
    limits: () => adminGuardLimits(o.config()),
    log: o.log,
    onAcceptError: (socket, reason) => o.metrics().acceptError(NAME, socket, reason),
    onRefused: (reason) => o.metrics().downstreamRefusal(NAME, reason),
    // HTTP/1.0 health checks without Host keep working, as on Deno.serve.
    hostlessHttp10: true,
  });
  const onError = (err: unknown) => {
    const requestId = crypto.randomUUID();
    o.log.error("unhandled error in the admin listener", {
      request_id: requestId,
      ...errorFields(err),
    });
    return errorResponse(new ProxyError("internal", "unexpected failure"), requestId);
  };
  const stop = new AbortController();
  try {
    // HTTP/1.1 is served in-process; HTTP/2 (h2c) takes the guard's loopback hop, as on the
    // proxy listeners.
    const inner = guard.wrap(o.handler);
    guard.start(
      (innerPort) =>
        Deno.serve({
          hostname: "127.0.0.1",
          port: innerPort,
          signal: stop.signal,
          onListen: () => {},
          onError,
        }, inner),
      { handler: o.handler, onError },
    );
  } catch (err) {
    stop.abort();
    void guard.close();
    throw err;
  }
  const a = guard.addr;
  o.log.info("admin listening", { address: `${a.hostname}:${a.port}` });
  return {
    addr: a,
    fillInPort: () => guard.innerPort(),
    openConnections: () => guard.openConnections(),
    shutdown: () => drainGuarded(guard, ADMIN_DRAIN_MS),
  };
}
