#!/usr/bin/env bash
# Two checkouts side by side on HTTP/1.1: OLD with the guard on, NEW with the guard on and NEW with
# it off, all three running at once against one Deno upstream, loaded in turn (interleaved rounds)
# with wrk; prints Ferry CPU us per request per round. PATHQ=/64k asks the upstream for 64 KiB
# answers (default: 13 bytes). Everything started here is stopped by PID at the end.
#   OLD=/work/wt/base NEW=$PWD ROUNDS=3 DURATION=4 bench/tools/guard_ab.sh
set -euo pipefail
OLD=${OLD:?a checkout to compare with}
NEW=${NEW:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
DENO=$(command -v deno)
ROUNDS=${ROUNDS:-4}; DURATION=${DURATION:-4}; CONNS=${CONNS:-50}; PATHQ=${PATHQ:-/}
OUT=${OUT:-/tmp/guard_ab}; mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }
UP_PORT=$(free_port)
"$DENO" run --allow-net - >/dev/null 2>&1 <<JS &
const big = new Uint8Array(64 * 1024).fill(97);
Deno.serve({ hostname: "127.0.0.1", port: $UP_PORT, onListen() {} }, (req) => new URL(req.url).pathname === "/64k" ? new Response(big) : new Response("Hello, world!"));
JS
pids+=($!)
start() { # dir guard
  local port; port=$(free_port)
  local name; name=$(basename "$1")-$2
  cat > "$OUT/$name.yaml" <<Y
listeners: [{ name: b, address: "127.0.0.1:$port" }]
server: { connection_guard: $2 }
log: { level: warn }
routes: [{ name: all, cluster: up, timeout: 30s }]
clusters: [{ name: up, endpoints: ["http://127.0.0.1:$UP_PORT"] }]
Y
  (cd "$1" && exec "$DENO" run --allow-net --allow-read --allow-env --allow-ffi --unstable-no-legacy-abort --unstable-net main.ts --config "$OUT/$name.yaml") > "$OUT/$name.log" 2>&1 &
  echo "$! $port"
}
declare -A PID PORT REQ CPU
for v in "old $OLD true" "new $NEW true" "new $NEW false"; do
  set -- $v; read -r p q < <(start "$2" "$3"); k="$1-$3"; PID[$k]=$p; PORT[$k]=$q; pids+=($p)
done
for k in "${!PORT[@]}"; do for _ in $(seq 100); do curl -fs "http://127.0.0.1:${PORT[$k]}/" >/dev/null 2>&1 && break; sleep 0.1; done; wrk -t1 -c10 -d1s "http://127.0.0.1:${PORT[$k]}$PATHQ" >/dev/null; done
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
ORDER=("old-true" "new-true" "new-false")
for r in $(seq $ROUNDS); do
  for k in "${ORDER[@]}"; do
    b=$(ticks ${PID[$k]})
    out=$(wrk -t1 -c$CONNS -d${DURATION}s "http://127.0.0.1:${PORT[$k]}$PATHQ")
    a=$(ticks ${PID[$k]})
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    us=$(awk -v t=$((a-b)) -v n=$n -v hz=$HZ 'BEGIN {printf "%.1f", t/hz*1e6/n}')
    echo "round $r $k req=$n us/req=$us rps=$((n/DURATION))"
    sleep 1
  done
done
