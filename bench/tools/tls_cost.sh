#!/usr/bin/env bash
# What TLS, mTLS and mTLS plus a JWT rule cost, on one Ferry with three TLS listeners and the same
# direct_response route:
#   tls       server certificate only
#   mtls      client_ca set (require): every client presents a certificate
#   mtls_jwt  as mtls, plus a listener authorization policy: a JWT (ES256, jwks_file) whose claim
#             an allow rule checks
# Two loads, in interleaved rounds:
#   s_time     openssl s_time -new: one connection at a time, a full handshake and a GET each
#              (handshakes per second as one sequential client sees them; the JWT listener is
#              not measured here: s_time cannot send the token)
#   keepalive  a Deno client (fetch; client certificate and token on every listener), 20 requests
#              in flight over reused HTTP/1.1 connections
#   handshake  the same client with a new connection (and TLS handshake) per request
# Reports requests (or handshakes) per second and Ferry CPU time per request (utime+stime of the
# Ferry process over the run / requests).
#   ROUNDS=2 DURATION=5 bench/tools/tls_cost.sh
# FERRY_REPO=<checkout> measures another checkout's main.ts (for example one where plain TLS
# listeners still accept with Deno.listenTls).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
FERRY_REPO=${FERRY_REPO:-$REPO}
DENO=${DENO:-$(command -v deno)}
. "$HERE/start_flags.sh"
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
OUT=${OUT:-/tmp/tls_cost}
mkdir -p "$OUT"
command -v openssl >/dev/null || { echo "needs openssl" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

cd "$OUT"
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
leaf() {
  printf "subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n" "$2" "$3" >"$1.ext"
  openssl req $ec -keyout "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext" 2>/dev/null
}
leaf server "IP:127.0.0.1" serverAuth
leaf client "URI:spiffe://cluster.local/ns/bench/sa/client" clientAuth
cd "$REPO"

# A signing key, its JWKS file and one token (valid for an hour), made with jose.
TOKEN=$("$DENO" run --allow-write="$OUT" - "$OUT" <<'EOF'
import * as jose from "jose";
const out = Deno.args[0];
const { publicKey, privateKey } = await jose.generateKeyPair("ES256", { extractable: true });
const jwk = { ...(await jose.exportJWK(publicKey)), kid: "bench", alg: "ES256" };
await Deno.writeTextFile(`${out}/jwks.json`, JSON.stringify({ keys: [jwk] }));
console.log(
  await new jose.SignJWT({ role: "admin" }).setProtectedHeader({ alg: "ES256", kid: "bench" })
    .setIssuer("https://issuer.bench").setAudience("bench").setExpirationTime("1h").sign(privateKey),
);
EOF
)

free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }
declare -A PORT
for l in tls mtls mtls_jwt; do PORT[$l]=$(free_port); done
cat >"$OUT/ferry.yaml" <<EOF
listeners:
  - { name: tls, address: "127.0.0.1:${PORT[tls]}", tls: { cert: $OUT/server.pem, key: $OUT/server.key } }
  - name: mtls
    address: "127.0.0.1:${PORT[mtls]}"
    tls: { cert: $OUT/server.pem, key: $OUT/server.key, client_ca: $OUT/ca.pem }
  - name: mtls_jwt
    address: "127.0.0.1:${PORT[mtls_jwt]}"
    tls: { cert: $OUT/server.pem, key: $OUT/server.key, client_ca: $OUT/ca.pem }
    authorization:
      jwt: { provider: corp }
      rules: [{ name: admins, action: allow, claims: { role: admin } }]
jwt_providers:
  - { name: corp, issuer: "https://issuer.bench", audiences: [bench], jwks_file: $OUT/jwks.json }
server: { workers: 1 }
log: { level: warn }
routes:
  - name: hello
    direct_response: { status: 200, body: "hello from ferry\n" }
EOF
(cd "$FERRY_REPO" && exec "$DENO" run $START_FLAGS main.ts --config "$OUT/ferry.yaml") \
  >"$OUT/ferry.log" 2>&1 &
PID=$!
pids+=("$PID")
auth=(--cacert "$OUT/ca.pem" --cert "$OUT/client.pem" --key "$OUT/client.key" -H "authorization: Bearer $TOKEN")
for _ in $(seq 100); do
  curl -fs "${auth[@]}" "https://127.0.0.1:${PORT[mtls_jwt]}/" >/dev/null 2>&1 && break
  sleep 0.1
done
for l in tls mtls mtls_jwt; do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "${auth[@]}" "https://127.0.0.1:${PORT[$l]}/")" = 200 ] ||
    { echo "listener $l does not answer 200" >&2; exit 1; }
done

# The load client: prints the number of 200 answers and of failures.
cat >"$OUT/client.ts" <<'EOF'
const [port, mode, seconds, dir, token] = Deno.args;
const read = (f: string) => Deno.readTextFileSync(`${dir}/${f}`);
const tls = { caCerts: [read("ca.pem")], cert: read("client.pem"), key: read("client.key") };
const shared = Deno.createHttpClient({ ...tls, http2: false });
const headers = { authorization: `Bearer ${token}` };
const until = Date.now() + Number(seconds) * 1000;
let ok = 0, failed = 0;
await Promise.all(Array.from({ length: 20 }, async () => {
  while (Date.now() < until) {
    // handshake: a client of its own per request, so every request opens a connection.
    const client = mode === "handshake" ? Deno.createHttpClient({ ...tls, http2: false }) : shared;
    try {
      const res = await fetch(`https://127.0.0.1:${port}/`, { client, headers });
      await res.arrayBuffer();
      if (res.status === 200) ok++;
      else failed++;
    } catch {
      failed++;
    } finally {
      if (client !== shared) client.close();
    }
  }
}));
shared.close();
console.log(ok, failed);
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
declare -A REQS CPU
for round in $(seq "$ROUNDS"); do
  for l in tls mtls; do
    certs=()
    [ "$l" = tls ] || certs=(-cert "$OUT/client.pem" -key "$OUT/client.key")
    before=$(cpu_ticks "$PID")
    n=$(openssl s_time -connect "127.0.0.1:${PORT[$l]}" -new -time "$DURATION" -www / "${certs[@]}" 2>/dev/null |
      awk '/connections in [0-9.]+ real seconds/ {print $1}')
    after=$(cpu_ticks "$PID")
    REQS[$l-s_time]=$((${REQS[$l-s_time]:-0} + n))
    CPU[$l-s_time]=$((${CPU[$l-s_time]:-0} + after - before))
  done
  for mode in keepalive handshake; do
    for l in tls mtls mtls_jwt; do
      before=$(cpu_ticks "$PID")
      read -r ok failed < <("$DENO" run -A "$OUT/client.ts" "${PORT[$l]}" "$mode" "$DURATION" "$OUT" "$TOKEN")
      after=$(cpu_ticks "$PID")
      [ "$failed" = 0 ] || { echo "$l $mode round $round: $failed failed requests" >&2; exit 1; }
      REQS[$l-$mode]=$((${REQS[$l-$mode]:-0} + ok))
      CPU[$l-$mode]=$((${CPU[$l-$mode]:-0} + after - before))
    done
  done
done

printf '%-10s %-9s %10s %8s %12s\n' mode listener requests req/s cpu_us/req
for mode in s_time keepalive handshake; do
  for l in tls mtls mtls_jwt; do
    n=${REQS[$l-$mode]:-}
    [ -n "$n" ] || continue
    us=$(awk -v c="${CPU[$l-$mode]}" -v t="$TICK" -v n="$n" 'BEGIN {printf "%.1f", c / t * 1e6 / n}')
    rps=$(awk -v n="$n" -v d="$DURATION" -v r="$ROUNDS" 'BEGIN {printf "%.0f", n / d / r}')
    printf '%-10s %-9s %10s %8s %12s\n' "$mode" "$l" "$n" "$rps" "$us"
  done
done
