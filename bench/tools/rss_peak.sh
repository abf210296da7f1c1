#!/usr/bin/env bash
# Resting and peak RSS of deno-hdr (the peers harness's) and Ferry (env quick start, shipped
# defaults, started with `deno task start`'s V8 flags), each in front of the same Deno.serve
# backend: RSS once it answers, then VmHWM after `wrk -t1 -c50 -d8s`. ROUNDS (2). FERRY_FLAGS
# gives a third Ferry variant its own deno flags instead, e.g. another young generation size:
#   FERRY_FLAGS=--v8-flags=--max-semi-space-size=8 bench/tools/rss_peak.sh
# BEFORE=<another checkout> adds that checkout's Ferry, started as its `deno task start` was
# before the 4 MiB young generation (for a before/after in the same minutes). Each line also
# gives the CPU per request (utime+stime over the wrk run, /proc/PID/stat).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/peers}
DENO=${DENO:-$(command -v deno)}
free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }
UP=$(free_port)
PORT=$(free_port)
"$DENO" run --allow-net - >/dev/null 2>&1 <<JS &
Deno.serve({ hostname: "127.0.0.1", port: $UP, onListen() {} }, () => new Response("Hello, world!"));
JS
UPPID=$!
trap 'kill $UPPID 2>/dev/null || true' EXIT
TICKS=$(getconf CLK_TCK)
measure() { # label command...
  local label=$1 pid idle hwm out t0 t1
  shift
  "$@" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.2; done
  idle=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  out=$(wrk -t1 -c50 -d8s "http://127.0.0.1:$PORT/")
  t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  echo "$label: rest $((idle / 1024)) MiB, peak $((hwm / 1024)) MiB," \
    "$(awk '/Requests\/sec/ {print $2}' <<<"$out") req/s," \
    "$(awk -v t="$((t1 - t0))" -v hz="$TICKS" '/requests in/ {printf "%.1f", t * 1e6 / hz / $1}' <<<"$out") us/req," \
    "load $(cut -d' ' -f1 /proc/loadavg)"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}
export PROXY_LISTEN_ADDR=127.0.0.1:$PORT PROXY_UPSTREAM_ADDRS=http://127.0.0.1:$UP PROXY_LOG_LEVEL=warn
for _ in $(seq "${ROUNDS:-2}"); do
  measure deno-hdr "$DENO" run -A "$PEERS_DIR/proxies/deno-hdr.ts" "$PORT" "http://127.0.0.1:$UP"
  measure ferry "$DENO" run -A --unstable-no-legacy-abort --unstable-net \
    --v8-flags=--max-semi-space-size=4,--heap-growing-percent=100,--single-threaded-gc,--no-allocation-site-pretenuring "$REPO/main.ts"
  if [[ -n ${BEFORE:-} ]]; then
    measure "ferry before" "$DENO" run -A --unstable-no-legacy-abort --unstable-net "$BEFORE/main.ts"
  fi
  if [[ -n ${FERRY_FLAGS:-} ]]; then
    # shellcheck disable=SC2086
    measure "ferry $FERRY_FLAGS" "$DENO" run -A --unstable-no-legacy-abort --unstable-net $FERRY_FLAGS \
      "$REPO/main.ts"
  fi
done
