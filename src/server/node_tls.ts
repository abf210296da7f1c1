/**
 * node:tls where Deno's own TLS falls short: Deno.listenTls cannot ask for or verify a client
 * certificate, and Deno.connectTls shows nothing of the peer's certificate. node:tls can do
 * both (measured in Deno 2.9.6). Its sockets are wrapped here in the pull-style part of
 * `Deno.Conn` that Ferry's byte pumps and HTTP/2 client use (`read`, `write`, `closeWrite`,
 * `close`, addresses, `handshake`), so the code around them does not change.
 */
import * as nodeTls from "node:tls";
// Re-exported for src/upstream/upstream_tls.ts, which loads this module only when needed.
export { nodeTls };
import type { ClientIdentity } from "../pipeline/types.ts";
import { identityFromId } from "../policy/authz.ts";
import { type CertificatePair, type ListenerTls, pairForServerName } from "./tls_material.ts";

/** Bytes buffered from the socket before it is paused (the reader is behind). */
const HIGH_WATER = 1 << 20;

/** A node TLS socket as a `Deno.Conn`-like object (only the members Ferry uses). */
export class NodeTlsConn {
  readonly #socket: nodeTls.TLSSocket;
  readonly #chunks: Uint8Array[] = [];
  #buffered = 0;
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;
  /** The verified client certificate's identity (server side), undefined without one. */
  readonly identity: ClientIdentity | undefined;

  constructor(socket: nodeTls.TLSSocket, identity?: ClientIdentity) {
    this.#socket = socket;
    this.identity = identity;
    const wake = () => {
      const w = this.#wake;
      this.#wake = undefined;
      w?.();
    };
    socket.on("data", (chunk: Uint8Array) => {
      this.#chunks.push(chunk);
      this.#buffered += chunk.length;
      if (this.#buffered > HIGH_WATER) socket.pause();
      wake();
    });
    socket.on("end", () => {
      this.#ended = true;
      wake();
    });
    socket.on("close", () => {
      this.#ended = true;
      wake();
    });
    socket.on("error", (err: Error) => {
      this.#error = err;
      wake();
    });
  }

  get remoteAddr(): Deno.NetAddr {
    return {
      transport: "tcp",
      hostname: normalizeAddress(this.#socket.remoteAddress),
      port: this.#socket.remotePort ?? 0,
    };
  }

  get localAddr(): Deno.NetAddr {
    return {
      transport: "tcp",
      hostname: normalizeAddress(this.#socket.localAddress),
      port: this.#socket.localPort ?? 0,
    };
  }

  /** The handshake is complete before a node socket is handed over. */
  handshake(): Promise<{ alpnProtocol: string | null }> {
    const p = this.#socket.alpnProtocol;
    return Promise.resolve({ alpnProtocol: typeof p === "string" ? p : null });
  }

  setNoDelay(on = true): void {
    this.#socket.setNoDelay(on);
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => (this.#wake = r));
    }
    const head = this.#chunks[0]!;
    const n = Math.min(p.length, head.length);
    p.set(head.subarray(0, n));
    if (n === head.length) this.#chunks.shift();
    else this.#chunks[0] = head.subarray(n);
    this.#buffered -= n;
    if (this.#buffered <= HIGH_WATER / 2 && this.#socket.isPaused()) this.#socket.resume();
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    // node may keep the bytes until they are flushed; callers reuse their buffers after the
    // promise settles, which is after the flush (the callback).
    return new Promise((resolve, reject) => {
      this.#socket.write(p, (err?: Error | null) => err ? reject(err) : resolve(p.length));
    });
  }

  closeWrite(): Promise<void> {
    return new Promise((resolve) => this.#socket.end(() => resolve()));
  }

  close(): void {
    this.#socket.destroy();
  }
}

function normalizeAddress(a: string | undefined): string {
  if (!a) return "0.0.0.0";
  // IPv4 clients of a dual-stack socket appear as ::ffff:a.b.c.d.
  return a.startsWith("::ffff:") && a.includes(".") ? a.slice(7) : a;
}

/**
 * The identity a verified certificate stands for: its SPIFFE ID (URI SAN `spiffe://`), else its
 * first DNS SAN, else its subject CN.
 */
export function identityOfCertificate(
  cert: nodeTls.PeerCertificate | Record<string, never>,
): ClientIdentity | undefined {
  if (!cert || !("subject" in cert)) return undefined;
  const hash = cert.fingerprint256
    ? { certHash: cert.fingerprint256.replaceAll(":", "").toLowerCase() }
    : {};
  const sans = (cert.subjectaltname ?? "").split(/,\s*/);
  const spiffe = sans.find((s) => s.startsWith("URI:spiffe://"));
  if (spiffe) return { ...identityFromId(spiffe.slice(4)), ...hash };
  const dns = sans.find((s) => s.startsWith("DNS:"));
  if (dns) return { id: dns.slice(4), kind: "dns", trustDomain: undefined, ...hash };
  const cn = cert.subject?.CN;
  const name = Array.isArray(cn) ? cn[0] : cn;
  return name ? { id: name, kind: "cn", trustDomain: undefined, ...hash } : undefined;
}

export interface TlsListenerOptions {
  readonly hostname: string;
  readonly port: number;
  readonly tls: ListenerTls;
  readonly alpnProtocols: string[];
}

/**
 * A TLS listener on node:tls, with the `accept()` / `close()` / `addr` of a `Deno.Listener`.
 * node:tls is used because Deno.listenTls can do none of: ask for a client certificate (mTLS),
 * choose a certificate by server name (SNI), swap certificates while listening (rotation), set
 * a minimum version, or time out a handshake. Connections whose handshake fails never come out of
 * `accept()`.
 *
 * node's `listen()` binds asynchronously while the guard (like `Deno.listenTls`) is built
 * synchronously and reports its address at once. So the address is bound first with
 * `Deno.listen` (a bind error surfaces here, synchronously, as before), released, and bound again
 * by node; a failure of that second bind is thrown once by `accept()`.
 */
export class TlsListener {
  readonly #server: nodeTls.Server;
  readonly #ready: NodeTlsConn[] = [];
  #waiting: { resolve: (c: NodeTlsConn) => void; reject: (e: Error) => void } | undefined;
  #failure: Error | undefined;
  #failureSeen = false;
  #closed = false;
  /** The contexts new handshakes use; replaced as a whole by `update`. */
  #contexts: ServingContexts;
  readonly addr: Deno.NetAddr;

  constructor(opts: TlsListenerOptions) {
    const reserve = Deno.listen({ hostname: opts.hostname, port: opts.port });
    this.addr = reserve.addr as Deno.NetAddr;
    reserve.close();
    const tls = opts.tls;
    this.#contexts = servingContexts(tls);
    const clientAuth = tls.clientCa !== undefined ? (tls.clientAuth ?? "require") : undefined;
    const require = clientAuth === "require";
    this.#server = nodeTls.createServer({
      ...secureContextOptions(tls, tls.defaultPair),
      ...(clientAuth
        ? {
          requestCert: true,
          // optional: the handshake goes on without a certificate; one that does not verify is
          // refused below, so "optional" never means "any certificate".
          rejectUnauthorized: require,
        }
        : {}),
      ALPNProtocols: opts.alpnProtocols,
      handshakeTimeout: tls.handshakeTimeoutMs,
      SNICallback: (name, done) => {
        const c = this.#contexts;
        done(null, pairForServerName(c.sni, c.fallback, name).context);
      },
    });
    this.#server.on("error", (err: Error) => this.#fail(err));
    listenNow(this.#server, this.addr);
    this.#server.on("secureConnection", (socket: nodeTls.TLSSocket) => {
      let identity: ClientIdentity | undefined;
      if (clientAuth) {
        const cert = socket.getPeerCertificate();
        const presented = cert !== null && typeof cert === "object" && "subject" in cert;
        if (!socket.authorized && (require || presented)) {
          socket.destroy();
          return;
        }
        identity = socket.authorized ? identityOfCertificate(cert) : undefined;
      }
      const conn = new NodeTlsConn(socket, identity);
      const w = this.#waiting;
      if (w) {
        this.#waiting = undefined;
        w.resolve(conn);
      } else this.#ready.push(conn);
    });
    // Failed handshakes (no certificate in require mode, an unknown CA, a version below the
    // minimum, the handshake timeout) end here, unseen. node does not close the socket itself
    // after a handshake timeout (measured on Deno 2.9.6): close it.
    this.#server.on("tlsClientError", (_err: Error, socket: nodeTls.TLSSocket) => {
      socket.destroy();
    });
  }

  /**
   * New certificates (rotation, or a reload that changed the material): handshakes from now on
   * use them; connections already open keep theirs.
   */
  update(tls: ListenerTls): void {
    this.#contexts = servingContexts(tls);
    this.#server.setSecureContext(secureContextOptions(tls, tls.defaultPair));
  }

  #fail(err: Error): void {
    this.#failure = err;
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.reject(err);
    if (w) this.#failureSeen = true;
  }

  accept(): Promise<Deno.Conn> {
    const next = this.#ready.shift();
    if (next) return Promise.resolve(next as unknown as Deno.Conn);
    if (this.#failure && !this.#failureSeen) {
      this.#failureSeen = true;
      return Promise.reject(this.#failure);
    }
    // After a failure has been reported once, the listener is dead: wait until it is closed.
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve: (c) => resolve(c as unknown as Deno.Conn), reject };
    });
  }

  close(): void {
    if (this.#closed) throw new Deno.errors.BadResource("listener closed");
    this.#closed = true;
    this.#server.close();
    for (const c of this.#ready.splice(0)) c.close();
    const w = this.#waiting;
    this.#waiting = undefined;
    w?.reject(new Deno.errors.BadResource("listener closed"));
  }
}

/**
 * Binds a node server before returning, as Deno.listenTls does: `listen(port, host)` first looks
 * the host up (asynchronously, even for an IP literal), so for a few milliseconds after Ferry
 * says "listening" a connect would be refused. node:net's own bind step (`_listen2`, what
 * `listen` runs after the lookup; present in Deno 2.9.6's node:net) is synchronous; without it,
 * the public `listen` is used.
 */
function listenNow(server: nodeTls.Server, addr: Deno.NetAddr): void {
  const bind = (server as unknown as {
    _listen2?: (host: string, port: number, family: 4 | 6, backlog: number) => void;
  })._listen2;
  if (typeof bind === "function") {
    bind.call(server, addr.hostname, addr.port, addr.hostname.includes(":") ? 6 : 4, 511);
  } else server.listen(addr.port, addr.hostname);
}

interface ServingContext {
  readonly serverNames: readonly string[];
  readonly context: nodeTls.SecureContext;
}

interface ServingContexts {
  readonly fallback: ServingContext;
  readonly sni: readonly ServingContext[];
}

/** One node SecureContext per pair, built once per update (not per handshake). */
function servingContexts(tls: ListenerTls): ServingContexts {
  const build = (p: CertificatePair): ServingContext => ({
    serverNames: p.serverNames,
    context: nodeTls.createSecureContext(secureContextOptions(tls, p)),
  });
  return { fallback: build(tls.defaultPair), sni: tls.sni.map(build) };
}

/** A context carries the client CA and the minimum version too: SNI replaces the whole context. */
function secureContextOptions(
  tls: ListenerTls,
  pair: CertificatePair,
): nodeTls.SecureContextOptions {
  return {
    cert: pair.cert,
    key: pair.key,
    minVersion: tls.minVersion,
    ...(tls.clientCa !== undefined ? { ca: tls.clientCa } : {}),
  };
}
