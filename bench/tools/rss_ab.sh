#!/usr/bin/env bash
# Interleaved A/B of start-up variants of Ferry (env quick start, shipped defaults) in front of one
# Deno.serve backend: per round and variant, a fresh Ferry; RSS at rest, then `wrk -t1 -c50` for
# DURATION s; peak RSS (VmHWM), requests/s and CPU per request (utime+stime of Ferry over the run,
# from /proc/PID/stat). Variants are `label|ENV=a ENV2=b|deno flags[|checkout]` (either of the
# first two may be empty; the optional fourth runs another checkout's main.ts, for a before/after
# of two trees in the same minutes):
#   ROUNDS=4 bench/tools/rss_ab.sh "shipped||" "arena2|MALLOC_ARENA_MAX=2|" \
#     "semi4||--v8-flags=--max-semi-space-size=4"
# Prints one line per run, then medians per variant. FERRY_DIR runs another checkout's main.ts;
# BODY_BYTES (13) sizes the backend's answer (65536 for the h1-64k shape).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${FERRY_DIR:-$(cd "$HERE/../.." && pwd)}
DENO=${DENO:-$(command -v deno)}
DURATION=${DURATION:-8}
free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }
UP=$(free_port)
PORT=$(free_port)
"$DENO" run --allow-net - >/dev/null 2>&1 <<JS &
const body = ${BODY_BYTES:-0} > 0 ? new Uint8Array(${BODY_BYTES:-0}).fill(120) : "Hello, world!";
Deno.serve({ hostname: "127.0.0.1", port: $UP, onListen() {} }, () => new Response(body));
JS
UPPID=$!
OUT=$(mktemp)
trap 'kill $UPPID 2>/dev/null || true; rm -f "$OUT"' EXIT
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
one() { # label env flags [checkout]
  local label=$1 envs=$2 flags=$3 tree=${4:-$REPO} pid rest hwm rps t0 t1 reqs
  # shellcheck disable=SC2086
  env PROXY_LISTEN_ADDR="127.0.0.1:$PORT" PROXY_UPSTREAM_ADDRS="http://127.0.0.1:$UP" \
    PROXY_LOG_LEVEL=warn $envs "$DENO" run -A --unstable-no-legacy-abort --unstable-net $flags \
    "$tree/main.ts" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.2; done
  sleep 1
  rest=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  t0=$(cpu_ticks "$pid")
  wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$PORT/" >"$OUT"
  t1=$(cpu_ticks "$pid")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  rps=$(awk '/Requests\/sec/ {print int($2)}' "$OUT")
  reqs=$(awk '/requests in/ {print $1}' "$OUT")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  printf '%s rest=%d peak=%d rps=%d us_per_req=%.1f load=%s\n' "$label" $((rest / 1024)) \
    $((hwm / 1024)) "$rps" "$(echo "($t1 - $t0) * 1000000 / $TICKS / $reqs" | bc -l)" \
    "$(cut -d' ' -f1 /proc/loadavg)"
}
RESULTS=$(mktemp)
for _ in $(seq "${ROUNDS:-3}"); do
  for v in "$@"; do
    IFS='|' read -r label envs flags tree <<<"$v"
    one "$label" "$envs" "$flags" "$tree" | tee -a "$RESULTS"
  done
done
echo "medians (rest MiB, peak MiB, req/s, CPU us/req):"
for v in "$@"; do
  label=${v%%|*}
  grep "^$label " "$RESULTS" | awk -v l="$label" '
    { for (i = 2; i <= 5; i++) { split($i, kv, "="); v[i, NR] = kv[2] } n = NR }
    function med(i,   a, k, j, t) { for (k = 1; k <= n; k++) a[k] = v[i, k] + 0
      for (k = 1; k <= n; k++) for (j = k + 1; j <= n; j++) if (a[j] < a[k]) { t = a[k]; a[k] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
    END { printf "%-12s rest %5.1f  peak %5.1f  rps %7.0f  us/req %6.1f\n", l, med(2), med(3), med(4), med(5) }'
done
rm -f "$RESULTS"
