#!/usr/bin/env bash
# What downstream mTLS costs: one Ferry with two TLS listeners on the same direct_response route,
# `tls` (Deno.listenTls in the connection guard) and `mtls` (node:tls with `client_ca`, require),
# loaded in turn by a Deno client (fetch, client certificate on both, 20 requests in flight):
#   keepalive  requests over reused connections (HTTP/1.1)
#   handshake  a new connection (and TLS handshake) per request
# Reports requests/s and Ferry CPU time per request (utime+stime of the Ferry process over the
# run / requests). wrk and h2load cannot present a client certificate, hence the Deno client.
#   ROUNDS=2 DURATION=5 bench/tools/mtls_cost.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DENO=${DENO:-$(command -v deno)}
. "$HERE/start_flags.sh"
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
OUT=${OUT:-/tmp/mtls_cost}
mkdir -p "$OUT"

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

free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }
TLS_PORT=$(free_port)
MTLS_PORT=$(free_port)
cat >"$OUT/ferry.yaml" <<EOF
listeners:
  - { name: tls, address: "127.0.0.1:$TLS_PORT", tls: { cert: $OUT/server.pem, key: $OUT/server.key } }
  - name: mtls
    address: "127.0.0.1:$MTLS_PORT"
    tls: { cert: $OUT/server.pem, key: $OUT/server.key, client_ca: $OUT/ca.pem }
server: { workers: 1 }
log: { level: warn }
routes:
  - name: hello
    direct_response: { status: 200, body: "hello from ferry\n" }
EOF
"$DENO" run $START_FLAGS main.ts --config "$OUT/ferry.yaml" >"$OUT/ferry.log" 2>&1 &
PID=$!
pids+=("$PID")
for _ in $(seq 100); do
  curl -fs --cacert "$OUT/ca.pem" --cert "$OUT/client.pem" --key "$OUT/client.key" \
    "https://127.0.0.1:$MTLS_PORT/" >/dev/null 2>&1 && break
  sleep 0.1
done

# The load client: prints the number of 200 answers.
cat >"$OUT/client.ts" <<'EOF'
const [port, mode, seconds, dir] = Deno.args;
const read = (f: string) => Deno.readTextFileSync(`${dir}/${f}`);
const tls = { caCerts: [read("ca.pem")], cert: read("client.pem"), key: read("client.key") };
const shared = Deno.createHttpClient({ ...tls, http2: false });
const until = Date.now() + Number(seconds) * 1000;
let ok = 0, failed = 0;
await Promise.all(Array.from({ length: 20 }, async () => {
  while (Date.now() < until) {
    // handshake: a client of its own per request, so every request opens a connection.
    const client = mode === "handshake" ? Deno.createHttpClient({ ...tls, http2: false }) : shared;
    try {
      const res = await fetch(`https://127.0.0.1:${port}/`, { client });
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
  for mode in keepalive handshake; do
    for l in tls mtls; do
      port=$([ $l = tls ] && echo "$TLS_PORT" || echo "$MTLS_PORT")
      before=$(cpu_ticks "$PID")
      read -r ok failed < <("$DENO" run -A "$OUT/client.ts" "$port" "$mode" "$DURATION" "$OUT")
      after=$(cpu_ticks "$PID")
      [ "$failed" = 0 ] || { echo "$l $mode round $round: $failed failed requests" >&2; exit 1; }
      REQS[$l-$mode]=$((${REQS[$l-$mode]:-0} + ok))
      CPU[$l-$mode]=$((${CPU[$l-$mode]:-0} + after - before))
    done
  done
done

printf '%-10s %-9s %10s %8s %12s\n' mode listener requests req/s cpu_us/req
for mode in keepalive handshake; do
  for l in tls mtls; do
    n=${REQS[$l-$mode]}
    us=$(awk -v c="${CPU[$l-$mode]}" -v t="$TICK" -v n="$n" 'BEGIN {printf "%.1f", c / t * 1e6 / n}')
    rps=$(awk -v n="$n" -v d="$DURATION" -v r="$ROUNDS" 'BEGIN {printf "%.0f", n / d / r}')
    printf '%-10s %-9s %10s %8s %12s\n' "$mode" "$l" "$n" "$rps" "$us"
  done
done
