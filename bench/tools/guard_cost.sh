#!/usr/bin/env bash
# What the connection guard costs per request: the same Ferry config with
# `server.connection_guard: true` (B: Ferry accepts TCP and pipes to Deno.serve on loopback) and
# `false` (A: Deno.serve takes the connections, checks in the handler only), both running at
# once against one upstream, loaded in turn (interleaved rounds) with wrk (HTTP/1.1, keep-alive)
# and h2load (h2c). Reports requests/s, latency and Ferry CPU time per request (utime+stime of
# the Ferry process over the run / requests), and the B/A ratios. Everything started here is
# stopped by PID at the end. Short by design (2-core machine shared with others):
#   ROUNDS=3 DURATION=3 bench/tools/guard_cost.sh        about 1 minute
# Output: a table on stdout; raw tool output under ${OUT:-/tmp/guard_cost}.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DENO=${DENO:-$(command -v deno)}
. "$HERE/start_flags.sh"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
CONNS=${CONNS:-50}
H2_N=${H2_N:-30000}
OUT=${OUT:-/tmp/guard_cost}
mkdir -p "$OUT"
for t in wrk h2load; do command -v $t >/dev/null || { echo "needs $t (apt-get install wrk nghttp2-client)" >&2; exit 1; }; done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }

UP_PORT=$(free_port)
"$DENO" run --allow-net - >/dev/null 2>&1 <<EOF &
Deno.serve({ hostname: "127.0.0.1", port: $UP_PORT, onListen() {} }, () => new Response("hello from upstream\n"));
EOF
pids+=($!)

start_ferry() { # $1 = guard true|false ; prints "pid port"
  local port cfg
  port=$(free_port)
  cfg=$OUT/ferry-$1.yaml
  cat >"$cfg" <<EOF
listeners: [{ name: bench, address: "127.0.0.1:$port" }]
server: { connection_guard: $1, workers: 1 }
log: { level: warn }
routes: [{ name: all, cluster: up }]
clusters: [{ name: up, endpoints: ["http://127.0.0.1:$UP_PORT"] }]
EOF
  (cd "$REPO" && exec "$DENO" run $START_FLAGS main.ts --config "$cfg") >"$OUT/ferry-$1.log" 2>&1 &
  echo "$! $port"
}
read -r PID_A PORT_A < <(start_ferry false)
pids+=("$PID_A")
read -r PID_B PORT_B < <(start_ferry true)
pids+=("$PID_B")
for p in "$PORT_A" "$PORT_B" "$UP_PORT"; do
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/" >/dev/null 2>&1 && break; sleep 0.1; done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

declare -A REQ CPU LAT
run_one() { # $1 = A|B  $2 = h1|h2
  local pid port before after out reqs
  if [[ $1 == A ]]; then pid=$PID_A port=$PORT_A; else pid=$PID_B port=$PORT_B; fi
  before=$(cpu_ticks "$pid")
  if [[ $2 == h1 ]]; then
    out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    LAT[$1-$2]+="$(awk '/^ +50%/ {p50=$2} /^ +99%/ {p99=$2} END {print p50 "/" p99}' <<<"$out") "
  else
    out=$(h2load -n"$H2_N" -c10 -m10 "http://127.0.0.1:$port/")
    reqs=$(awk '/^requests:/ {print $8}' <<<"$out")
    LAT[$1-$2]+="$(awk '/time for request:/ {print $6 "(mean)"}' <<<"$out") "
  fi
  after=$(cpu_ticks "$pid")
  echo "$out" >>"$OUT/$1-$2.txt"
  REQ[$1-$2]=$(( ${REQ[$1-$2]:-0} + reqs ))
  CPU[$1-$2]=$(( ${CPU[$1-$2]:-0} + after - before ))
  sleep 1
}

# warm-up, then interleaved rounds
for c in A B; do wrk -t1 -c10 -d1s "http://127.0.0.1:$([[ $c == A ]] && echo "$PORT_A" || echo "$PORT_B")/" >/dev/null; done
for r in $(seq "$ROUNDS"); do
  for s in h1 h2; do run_one A $s; run_one B $s; done
done

echo "| scenario | candidate | requests | req/s | Ferry CPU us/req | latency p50/p99 (wrk) or mean (h2load) |"
echo "| --- | --- | --- | --- | --- | --- |"
for s in h1 h2; do
  for c in A B; do
    k=$c-$s
    secs=$((ROUNDS * DURATION))
    us=$(awk -v t="${CPU[$k]}" -v n="${REQ[$k]}" -v hz="$TICK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
    rps=$(awk -v n="${REQ[$k]}" -v s="$secs" 'BEGIN {printf "%.0f", n / s}')
    [[ $s == h2 ]] && rps="-"
    echo "| $s | $c | ${REQ[$k]} | $rps | $us | ${LAT[$k]}|"
  done
  ratio=$(awk -v ta="${CPU[A-$s]}" -v na="${REQ[A-$s]}" -v tb="${CPU[B-$s]}" -v nb="${REQ[B-$s]}" \
    'BEGIN {printf "%.2f", (tb / nb) / (ta / na)}')
  echo "| $s | B/A CPU per request | | | $ratio | |"
done
