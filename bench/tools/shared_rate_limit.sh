#!/usr/bin/env bash
# What a Redis-backed (shared) rate limit costs per request against a local one: one Ferry
# process with four direct_response routes, loaded in turn (interleaved rounds) with wrk
# (HTTP/1.1 keep-alive):
#   /none    no limiter
#   /local   a local global limiter (rate and burst 1e6: it never refuses)
#   /shared  the same limit on Redis, default sync_interval 100ms (leases of 1e5 tokens)
#   /small   the same on Redis with sync_interval 5ms (leases of 5000 tokens that expire after
#            10 ms: at this load a Redis call every 10 ms and some requests wait for one)
# Reports requests/s, wrk latency p50/p99 and Ferry CPU per request (utime+stime of the Ferry
# process over the phase / requests). Starts its own redis-server and upstream-less Ferry; stops
# both by PID at the end. Short by design (2-core machine shared with others):
#   ROUNDS=3 DURATION=5 bench/tools/shared_rate_limit.sh          about 1.5 minutes
# Output: a table on stdout; raw wrk output under ${OUT:-/tmp/shared_rate_limit}.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DENO=${DENO:-$(command -v deno)}
. "$HERE/start_flags.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-32}
OUT=${OUT:-/tmp/shared_rate_limit}
mkdir -p "$OUT"
rm -f "$OUT"/*.txt
for t in wrk redis-server; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }

REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
pids+=($!)

PORT=$(free_port)
cat >"$OUT/ferry.yaml" <<EOF
listeners: [{ name: bench, address: "127.0.0.1:$PORT" }]
log: { level: warn }
server: { watch_config: false, workers: 1 }
routes:
  - { name: none, match: { path: { exact: /none } }, direct_response: { status: 200, body: "ok" } }
  - { name: local, match: { path: { exact: /local } }, direct_response: { status: 200, body: "ok" }, rate_limit: [local] }
  - { name: shared, match: { path: { exact: /shared } }, direct_response: { status: 200, body: "ok" }, rate_limit: [shared] }
  - { name: small, match: { path: { exact: /small } }, direct_response: { status: 200, body: "ok" }, rate_limit: [small] }
rate_limits:
  - { name: local, scope: global, rate: 1000000, burst: 1000000 }
  - name: shared
    scope: global
    rate: 1000000
    burst: 1000000
    redis: { address: "127.0.0.1:$REDIS_PORT", key_prefix: "bench:" }
  - name: small
    scope: global
    rate: 1000000
    burst: 1000000
    redis: { address: "127.0.0.1:$REDIS_PORT", key_prefix: "bench:", sync_interval: 5ms }
EOF
(cd "$REPO" && exec "$DENO" run $START_FLAGS main.ts --config "$OUT/ferry.yaml") \
  >"$OUT/ferry.log" 2>&1 &
PID=$!
pids+=("$PID")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/none" >/dev/null 2>&1 && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
ROUTES=(none local shared small)
declare -A REQ CPU LAT NON2XX
run_one() { # $1 = route
  local before after out reqs
  before=$(cpu_ticks "$PID")
  out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/$1")
  after=$(cpu_ticks "$PID")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  LAT[$1]+="$(awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {print p50 "/" p99}' <<<"$out") "
  NON2XX[$1]=$(( ${NON2XX[$1]:-0} + $(awk '/Non-2xx/ {print $5}' <<<"$out" | grep . || echo 0) ))
  echo "$out" >>"$OUT/$1.txt"
  REQ[$1]=$(( ${REQ[$1]:-0} + reqs ))
  CPU[$1]=$(( ${CPU[$1]:-0} + after - before ))
  sleep 1
}

for r in "${ROUTES[@]}"; do wrk -t1 -c10 -d1s "http://127.0.0.1:$PORT/$r" >/dev/null; done
for _ in $(seq "$ROUNDS"); do for r in "${ROUTES[@]}"; do run_one "$r"; done; done

echo "| route | requests | non-2xx | req/s | Ferry CPU us/req | wrk p50/p99 per round |"
echo "| --- | --- | --- | --- | --- | --- |"
for r in "${ROUTES[@]}"; do
  us=$(awk -v t="${CPU[$r]}" -v n="${REQ[$r]}" -v hz="$TICK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  rps=$(awk -v n="${REQ[$r]}" -v s="$((ROUNDS * DURATION))" 'BEGIN {printf "%.0f", n / s}')
  echo "| /$r | ${REQ[$r]} | ${NON2XX[$r]} | $rps | $us | ${LAT[$r]}|"
done
echo
echo "Redis calls (commandstats):"
redis-cli -p "$REDIS_PORT" info commandstats | grep -E "evalsha|script" || true
