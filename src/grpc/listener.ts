/**
 * A `protocol: grpc` listener: accepts TCP (h2c, prior knowledge) or TLS (ALPN h2) connections,
 * runs Ferry's own HTTP/2 server on each (src/h2/) and hands every stream to the gRPC proxy.
 * Routing uses the listener's compiled router on `:authority` and `:path`.
 */
import { DEFAULT_GRPC_TIMEOUTS, type ListenerPlan, type Snapshot } from "../server/compile.ts";
import { type ConnectionTimeout, H2Connection } from "../h2/connection.ts";
import { headerValue } from "../h2/headers.ts";
import type { HeaderField } from "../h2/hpack.ts";
import type { H2Stream } from "../h2/stream.ts";
import type { Logger } from "../observability/log.ts";
import type { DownstreamRefusal } from "../observability/metrics.ts";
import { normalizeHost, normalizePath } from "../routing/path.ts";
import { ProxyError } from "../pipeline/errors.ts";
import { pickRequestId } from "../server/request_id.ts";
import type { CallFacts, ClientIdentity } from "../pipeline/types.ts";
import { admitCall } from "../pipeline/route_chain.ts";
import type { TlsListener } from "../server/node_tls.ts";
import { nodeTlsPart } from "../upstream/upstream_tls.ts";
import type { ListenerTls } from "../server/tls_material.ts";
import {
  type AcceptErrorReason,
  acceptLoop,
  type Admission,
  ConnectionAdmission,
  type ConnectionCaps,
  refusalLabel,
} from "../server/admission.ts";
import { answerError, grpcCallFacts, type GrpcCallRecord, proxyCall } from "./proxy.ts";
import { GrpcStatus } from "./status.ts";

/**
 * Calls one client connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS; RFC 9113
 * 6.5.2 advises no less than 100). Each open call may hold an upstream stream slot, so one
 * connection holds at most this many of an endpoint's (its MAX_CONCURRENT_STREAMS times
 * `max_connections_per_endpoint`, 1000 with 250 and 4), not all of them.
 */
const MAX_CALLS_PER_CONNECTION = 100;

/**
 * A connection's timeouts as ferry_downstream_refused_total names them: the handshake timeout is
 * the HTTP/2 counterpart of the guard's head timeout (`request_timeout`).
 */
const TIMEOUT_REFUSALS: Record<ConnectionTimeout, DownstreamRefusal> = {
  handshake: "request_timeout",
  settings_ack: "settings_timeout",
  idle: "idle_timeout",
};

export interface GrpcListenerOptions {
  /** `server.max_connections` / `max_connections_per_ip`, read at every accept. */
  readonly caps: () => ConnectionCaps;
  readonly onAcceptError?: (reason: AcceptErrorReason) => void;
  /** A connection refused over a cap, or ended by one of its timeouts (counted in metrics). */
  readonly onRefused?: (reason: DownstreamRefusal) => void;
  /** Share the port with other workers (SO_REUSEPORT; server.workers > 1). */
  readonly reusePort?: boolean;
  /** Counts the connections against the caps (default: this listener's own, one isolate). */
  readonly admission?: Admission | undefined;
}

export class GrpcListener {
  readonly #listener: Deno.Listener;
  readonly #conns = new Set<H2Connection>();
  readonly #log: Logger;
  readonly #admission: Admission;
  readonly #onRefused: ((reason: DownstreamRefusal) => void) | undefined;
  #stopping = false;

  private constructor(
    listener: Deno.Listener,
    log: Logger,
    admission: Admission,
    onRefused: ((reason: DownstreamRefusal) => void) | undefined,
  ) {
    this.#listener = listener;
    this.#log = log;
    this.#admission = admission;
    this.#onRefused = onRefused;
  }

  static start(
    plan: ListenerPlan,
    currentSnapshot: () => Snapshot,
    log: Logger,
    opts: GrpcListenerOptions,
  ): GrpcListener {
    const name = plan.name;
    // TLS is accepted by node:tls (mTLS, SNI, rotation, minimum version: src/server/node_tls.ts).
    const listener = plan.tls
      ? new (nodeTlsPart.get().TlsListener)({
        hostname: plan.hostname,
        port: plan.port,
        tls: plan.tls,
        alpnProtocols: ["h2"],
      }) as unknown as Deno.Listener
      : Deno.listen({
        hostname: plan.hostname,
        port: plan.port,
        ...(opts.reusePort ? { reusePort: true } : {}),
      });
    const l = new GrpcListener(
      listener,
      log,
      opts.admission ?? new ConnectionAdmission(opts.caps),
      opts.onRefused,
    );
    const addr = listener.addr as Deno.NetAddr;
    log.info("listening", {
      listener: name,
      address: `${addr.hostname}:${addr.port}`,
      tls: plan.tls !== undefined,
      protocol: "grpc",
    });
    void acceptLoop({
      listener,
      name,
      log,
      stopped: () => l.#stopping,
      onConnection: (conn) => l.#onConnection(conn, name, currentSnapshot),
      ...(opts.onAcceptError ? { onError: opts.onAcceptError } : {}),
    });
    return l;
  }

  get addr(): Deno.NetAddr {
    return this.#listener.addr as Deno.NetAddr;
  }

  /** New certificates for handshakes from now on (open connections keep theirs). */
  updateTls(tls: ListenerTls): void {
    (this.#listener as unknown as TlsListener).update(tls);
  }

  /** Open downstream connections right now (for a gauge). */
  openConnections(): number {
    return this.#admission.open;
  }

  #onConnection(conn: Deno.Conn, name: string, currentSnapshot: () => Snapshot): void {
    if (this.#stopping) {
      conn.close();
      return;
    }
    const peerIp = (conn.remoteAddr as Deno.NetAddr).hostname;
    // Over a cap the connection is closed at once, before any HTTP/2: the client sees
    // UNAVAILABLE and may retry elsewhere (no frame to spend work or memory on).
    const refused = this.#admission.admit(peerIp);
    if (refused) {
      this.#onRefused?.(refusalLabel(refused));
      conn.close();
      return;
    }
    let h2: H2Connection;
    try {
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      // Downstream mTLS: the verified client certificate's identity (node:tls listener only).
      const identity = (conn as { identity?: ClientIdentity }).identity;
      // Read per connection, so a reload's new timeouts apply to connections accepted after it.
      const timeouts = currentSnapshot().listeners.get(name)?.grpcTimeouts ??
        DEFAULT_GRPC_TIMEOUTS;
      h2 = new H2Connection(conn, {
        role: "server",
        maxConcurrentStreams: MAX_CALLS_PER_CONNECTION,
        handshakeTimeoutMs: timeouts.handshakeMs,
        settingsAckTimeoutMs: timeouts.settingsAckMs,
        idleTimeoutMs: timeouts.idleMs,
        onTimeout: (timeout) => this.#onRefused?.(TIMEOUT_REFUSALS[timeout]),
        // A malformed request (RFC 9113 8.1.1) is reset, an oversized header list answered 431,
        // neither forwarded: counted as the HTTP listeners count their 400s and 431s, and logged
        // with the rule it broke.
        onRefusedStream: (refusal, reason) => {
          this.#onRefused?.(refusal);
          this.#log.warn("grpc stream refused", { listener: name, peer: peerIp, refusal, reason });
        },
        onStream: (s) => void this.#serve(s, name, currentSnapshot, peerIp, identity),
        onClose: (r) => {
          this.#conns.delete(h2);
          this.#admission.release(peerIp);
          if (r.code !== 0) {
            this.#log.warn("grpc connection closed with an error", {
              listener: name,
              peer: peerIp,
              code: r.code,
              reason: r.message,
              by_peer: r.byPeer,
            });
          }
        },
      });
    } catch (err) {
      this.#admission.release(peerIp);
      throw err;
    }
    this.#conns.add(h2);
  }

  async #serve(
    ds: H2Stream,
    name: string,
    currentSnapshot: () => Snapshot,
    peerIp: string,
    identity: ClientIdentity | undefined,
  ): Promise<void> {
    const snap = currentSnapshot();
    const plan = snap.listeners.get(name);
    const fields = await ds.headers;
    const startedAt = performance.now();
    const requestId = pickRequestId(
      headerValue(fields, "x-request-id"),
      snap.requestIdPolicy,
      snap.trust.has(peerIp),
    );
    const rec: GrpcCallRecord = { attempts: 0, flag: "-" };
    const rawPath = headerValue(fields, ":path") ?? "/";
    try {
      const route = plan && matchRoute(plan, fields, rawPath);
      if (!route?.grpc) {
        throw new ProxyError("no_route", `no gRPC route for ${rawPath}`);
      }
      // The route's policy layers, as on HTTP: authorization (PERMISSION_DENIED /
      // UNAUTHENTICATED), fault injection, rate limits (RESOURCE_EXHAUSTED), each answered from
      // the one error table.
      const peerTrusted = snap.trust.has(peerIp);
      const clientIp = peerTrusted
        ? snap.trust.clientIp(peerIp, headerValue(fields, "x-forwarded-for") ?? null)
        : peerIp;
      // Named before the layers run, so a refused call is counted under its route and cluster.
      rec.route = route.name;
      rec.cluster = route.grpc.cluster.name;
      const facts = callFacts(fields, rawPath, clientIp, identity);
      const admitted = admitCall(route.layers, facts, { listener: name, route: route.name });
      if (admitted) await admitted;
      await proxyCall(ds, fields, route.grpc, {
        peerIp,
        facts,
        peerTrusted,
        scheme: plan?.tls ? "https" : "http",
        requestId,
        identity,
        arrivedAt: startedAt,
        ...(plan ? { clientCertHeader: plan.clientCertHeader } : {}),
      }, rec);
    } catch (err) {
      answerError(ds, err, rec);
    }
    snap.metrics.listener(name).grpcCalls(rec.route, rec.cluster).inc(
      rec.grpcStatus ?? GrpcStatus.UNKNOWN,
    );
    if (rec.flag !== "-" && rec.flag !== "DC" && this.#log.enabled("warn")) {
      this.#log.warn("grpc proxy error", {
        request_id: requestId,
        path: rawPath,
        grpc_status: rec.grpcStatus,
        flag: rec.flag,
        route: rec.route,
        endpoint: rec.endpoint,
      });
    }
    const accessLog = snap.accessLog;
    if (accessLog?.wants(rec.flag)) {
      accessLog.writeRecord({
        time: new Date().toISOString(),
        request_id: requestId,
        client: peerIp,
        method: "POST",
        authority: headerValue(fields, ":authority") ?? null,
        path: rawPath,
        status: 200,
        grpc_status: rec.grpcStatus ?? null,
        bytes_in: null,
        bytes_out: null,
        duration_ms: Math.round((performance.now() - startedAt) * 1000) / 1000,
        upstream_ms: rec.upstreamMs === undefined ? null : Math.round(rec.upstreamMs * 1000) / 1000,
        route: rec.route ?? null,
        cluster: rec.cluster ?? null,
        endpoint: rec.endpoint ?? null,
        attempts: rec.attempts,
        flags: rec.flag,
        listener: name,
        user_agent: headerValue(fields, "user-agent") ?? null,
        identity: identity?.id ?? null,
      });
    }
  }

  /** GOAWAY to every connection, wait for open calls up to the deadline, then close. */
  async drain(deadlineMs: number): Promise<void> {
    this.#stopping = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    await Promise.all([...this.#conns].map((c) => c.drain(deadlineMs)));
  }

  /** Hard stop. */
  close(): void {
    this.#stopping = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const c of this.#conns) c.close();
  }
}

function matchRoute(
  plan: ListenerPlan,
  fields: readonly (readonly [string, string])[],
  rawPath: string,
) {
  const host = normalizeHost(headerValue(fields, ":authority") ?? "");
  const q = rawPath.indexOf("?");
  const path = normalizePath(q < 0 ? rawPath : rawPath.slice(0, q));
  if (host === null || !path.ok) throw new ProxyError("bad_request", "invalid :authority or :path");
  // As on the HTTP listeners (src/server/handler.ts): no other scheme is proxied.
  const scheme = headerValue(fields, ":scheme");
  if (scheme !== "http" && scheme !== "https") {
    throw new ProxyError("bad_request", "request target scheme must be http or https");
  }
  const headers = new Headers();
  for (const [n, v] of fields) if (n.charCodeAt(0) !== 58) headers.append(n, v);
  return plan.router.match({
    method: headerValue(fields, ":method") ?? "POST",
    host,
    path: path.path,
    headers,
    search: q < 0 ? "" : rawPath.slice(q),
  });
}

/** A call as the route's policy layers and the hash key see it (path normalised). */
function callFacts(
  fields: readonly HeaderField[],
  rawPath: string,
  clientIp: string,
  identity: ClientIdentity | undefined,
): CallFacts {
  const q = rawPath.indexOf("?");
  const path = normalizePath(q < 0 ? rawPath : rawPath.slice(0, q));
  return grpcCallFacts(fields, path.ok ? path.path : rawPath, clientIp, identity);
}
