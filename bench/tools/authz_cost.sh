#!/usr/bin/env bash
# What a JWT authorization rule costs per request: one Ferry with three routes, loaded in turn
# (interleaved rounds) with wrk over HTTP/1.1 keep-alive, every request carrying the same
# `Authorization: Bearer <ES256 token>` header:
#   /plain    direct_response, no policy
#   /jwt      the same direct_response behind `jwt: {provider}` + an allow rule on a claim
#   /proxied  forwarded to a Deno.serve upstream, no policy (what a proxied request costs)
# Reports requests/s and Ferry CPU time per request (utime+stime of the Ferry process over the
# run / requests). Everything started here is stopped by PID at the end.
#   ROUNDS=3 DURATION=5 bench/tools/authz_cost.sh
# CACHE_SIZE=0 turns the verified-token cache off (every request verifies the signature).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DENO=${DENO:-$(command -v deno)}
. "$HERE/start_flags.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-20}
OUT=${OUT:-/tmp/authz_cost}
mkdir -p "$OUT"
command -v wrk >/dev/null || { echo "needs wrk" >&2; exit 1; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }

# A signing key, its JWKS file and one token (valid for an hour), made with jose.
TOKEN=$(cd "$REPO" && "$DENO" run --allow-write="$OUT" - "$OUT" <<'EOF'
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

UP_PORT=$(free_port)
"$DENO" run --allow-net - >/dev/null 2>&1 <<EOF &
Deno.serve({ hostname: "127.0.0.1", port: $UP_PORT, onListen() {} }, () => new Response("hello from upstream\n"));
EOF
pids+=($!)

PORT=$(free_port)
cat >"$OUT/ferry.yaml" <<EOF
listeners: [{ name: bench, address: "127.0.0.1:$PORT" }]
server: { workers: 1 }
log: { level: warn }
jwt_providers:
  - name: corp
    issuer: "https://issuer.bench"
    audiences: [bench]
    jwks_file: $OUT/jwks.json
    cache_size: ${CACHE_SIZE:-10000}
routes:
  - name: plain
    match: { path: { exact: /plain } }
    direct_response: { status: 200, body: "hello from ferry\n" }
  - name: jwt
    match: { path: { exact: /jwt } }
    direct_response: { status: 200, body: "hello from ferry\n" }
    authorization:
      jwt: { provider: corp }
      rules: [{ name: admins, action: allow, claims: { role: admin } }]
  - name: proxied
    match: { path: { exact: /proxied } }
    cluster: up
clusters: [{ name: up, endpoints: ["http://127.0.0.1:$UP_PORT"] }]
EOF
(cd "$REPO" && exec "$DENO" run $START_FLAGS main.ts --config "$OUT/ferry.yaml") \
  >"$OUT/ferry.log" 2>&1 &
PID=$!
pids+=("$PID")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/plain" >/dev/null 2>&1 && break; sleep 0.1; done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/jwt")" = 200 ] ||
  { echo "the JWT route does not answer 200" >&2; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
declare -A REQS CPU RPS
for path in plain jwt proxied; do REQS[$path]=0; CPU[$path]=0; RPS[$path]=0; done
for round in $(seq "$ROUNDS"); do
  for path in plain jwt proxied; do
    before=$(cpu_ticks "$PID")
    wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "authorization: Bearer $TOKEN" \
      "http://127.0.0.1:$PORT/$path" >"$OUT/wrk-$path-$round.txt"
    after=$(cpu_ticks "$PID")
    n=$(awk '/requests in/ {print $1}' "$OUT/wrk-$path-$round.txt")
    rps=$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk-$path-$round.txt")
    non2xx=$(awk '/Non-2xx/ {print $5}' "$OUT/wrk-$path-$round.txt")
    [ -z "$non2xx" ] || { echo "$path round $round: $non2xx non-2xx answers" >&2; exit 1; }
    REQS[$path]=$((REQS[$path] + n))
    CPU[$path]=$((CPU[$path] + after - before))
    RPS[$path]=$(awk -v a="${RPS[$path]}" -v b="$rps" 'BEGIN {print a + b}')
  done
done

printf '%-8s %12s %10s %12s\n' route requests req/s cpu_us/req
for path in plain jwt proxied; do
  us=$(awk -v c="${CPU[$path]}" -v t="$TICK" -v n="${REQS[$path]}" 'BEGIN {printf "%.1f", c / t * 1e6 / n}')
  rps=$(awk -v r="${RPS[$path]}" -v k="$ROUNDS" 'BEGIN {printf "%.0f", r / k}')
  printf '%-8s %12s %10s %12s\n' "$path" "${REQS[$path]}" "$rps" "$us"
done
