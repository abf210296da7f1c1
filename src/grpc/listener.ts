/**
 * A `protocol: grpc` listener: accepts TCP (h2c, prior knowledge) or TLS (ALPN h2) connections,
 * runs Ferry's own HTTP/2 server on each (src/h2/) and hands every stream to the gRPC proxy.
 * Routing uses the listener's compiled router on `:authority` and `:path`.
 */
import { DEFAULT_GRPC_TIMEOUTS, type ListenerPlan, type Snapshot } from "../config/compile.ts";
import { H2Connection } from "../h2/connection.ts";
import { headerValue } from "../h2/headers.ts";
import type { HeaderField } from "../h2/hpack.ts";
import type { H2Stream } from "../h2/stream.ts";
import type { Logger } from "../observability/log.ts";
import { normalizeHost, normalizePath } from "../routing/path.ts";
import { ProxyError } from "../server/errors.ts";
import type { AuthzInput } from "../policy/authz.ts";
import type { ClientIdentity } from "../pipeline/types.ts";
import { ClientAuthListener } from "../server/node_tls.ts";
import {
  type AcceptErrorReason,
  acceptLoop,
  ConnectionAdmission,
  type ConnectionCaps,
} from "../server/admission.ts";
import { answerError, type GrpcCallRecord, proxyCall } from "./proxy.ts";
import { GrpcStatus } from "./status.ts";

const REQUEST_ID = /^[\x21-\x7e]{1,128}$/;

export interface GrpcListenerOptions {
  /** `server.max_connections` / `max_connections_per_ip`, read at every accept. */
  readonly caps: () => ConnectionCaps;
  readonly onAcceptError?: (reason: AcceptErrorReason) => void;
  /** Share the port with other workers (SO_REUSEPORT; server.workers > 1). */
  readonly reusePort?: boolean;
}

export class GrpcListener {
  readonly #listener: Deno.Listener;
  readonly #conns = new Set<H2Connection>();
  readonly #log: Logger;
  readonly #admission: ConnectionAdmission;
  #stopping = false;

  private constructor(listener: Deno.Listener, log: Logger, caps: () => ConnectionCaps) {
    this.#listener = listener;
    this.#log = log;
    this.#admission = new ConnectionAdmission(caps);
  }

  static start(
    plan: ListenerPlan,
    currentSnapshot: () => Snapshot,
    log: Logger,
    opts: GrpcListenerOptions,
  ): GrpcListener {
    const name = plan.name;
    // Deno.listenTls cannot ask for a client certificate: with a client CA, node:tls accepts.
    const listener = plan.tls?.clientCa !== undefined
      ? new ClientAuthListener({
        hostname: plan.hostname,
        port: plan.port,
        cert: plan.tls.cert,
        key: plan.tls.key,
        clientCa: plan.tls.clientCa,
        clientAuth: plan.tls.clientAuth ?? "require",
        alpnProtocols: ["h2"],
        handshakeTimeoutMs: plan.grpcTimeouts.handshakeMs,
      }) as unknown as Deno.Listener
      : plan.tls
      ? Deno.listenTls({
        hostname: plan.hostname,
        port: plan.port,
        cert: plan.tls.cert,
        key: plan.tls.key,
        alpnProtocols: ["h2"],
        ...(opts.reusePort ? { reusePort: true } : {}),
      })
      : Deno.listen({
        hostname: plan.hostname,
        port: plan.port,
        ...(opts.reusePort ? { reusePort: true } : {}),
      });
    const l = new GrpcListener(listener, log, opts.caps);
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
    if (this.#admission.admit(peerIp)) {
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
        handshakeTimeoutMs: timeouts.handshakeMs,
        settingsAckTimeoutMs: timeouts.settingsAckMs,
        idleTimeoutMs: timeouts.idleMs,
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
    const incomingId = headerValue(fields, "x-request-id");
    const requestId = incomingId !== undefined && REQUEST_ID.test(incomingId) &&
        (snap.requestIdPolicy === "always" ||
          (snap.requestIdPolicy === "trusted" && snap.trust.has(peerIp)))
      ? incomingId
      : crypto.randomUUID();
    const rec: GrpcCallRecord = { attempts: 0, flag: "-" };
    const rawPath = headerValue(fields, ":path") ?? "/";
    try {
      const route = plan && matchRoute(plan, fields, rawPath);
      if (!route?.grpc) {
        throw new ProxyError("no_route", `no gRPC route for ${rawPath}`);
      }
      // Authorization answers PERMISSION_DENIED / UNAUTHENTICATED from the same error table.
      if (route.authz) {
        await route.authz.check(name, authzInput(fields, rawPath, peerIp, identity));
      }
      await proxyCall(ds, fields, route.grpc, {
        peerIp,
        peerTrusted: snap.trust.has(peerIp),
        scheme: plan?.tls ? "https" : "http",
        requestId,
        identity,
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

/** A call as authorization policies see it. */
function authzInput(
  fields: readonly HeaderField[],
  rawPath: string,
  peerIp: string,
  identity: ClientIdentity | undefined,
): AuthzInput {
  const q = rawPath.indexOf("?");
  const path = normalizePath(q < 0 ? rawPath : rawPath.slice(0, q));
  return {
    method: headerValue(fields, ":method") ?? "POST",
    path: path.ok ? path.path : rawPath,
    header: (name) => headerValue(fields, name),
    clientIp: peerIp,
    identity,
  };
}
