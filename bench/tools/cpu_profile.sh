#!/usr/bin/env bash
# A V8 CPU profile of Ferry's main thread on the h1-small path: a Deno.serve backend returning 13
# bytes, Ferry with the config the peers harness's env variables give (one listener, one route,
# one cluster; shipped defaults otherwise: guard on, metrics on),
# wrk -t1 -c50 for DURATION seconds, then SIGTERM (Ferry drains and exits; the profile is written
# at exit). Prints the top self-time functions (bench/tools/profile_summary.ts).
#   DURATION=15 bench/tools/cpu_profile.sh            # H2=1: h2load -c10 -m10 instead of wrk
# Environment: GUARD=false (connection_guard off), BYTES (the backend's body size; default the
# 13-byte "Hello, world!", BYTES=65536 for the h1-64k path), OUT (default /tmp/cpu_profile), TOP (15). Everything started here is stopped by PID.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DENO=${DENO:-$(command -v deno)}
. "$HERE/start_flags.sh"
DURATION=${DURATION:-15}
OUT=${OUT:-/tmp/cpu_profile}
rm -rf "$OUT" && mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { "$DENO" eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();'; }

UP_PORT=$(free_port)
BODY_JS='"Hello, world!"'
[[ -n ${BYTES:-} ]] && BODY_JS="new Uint8Array($BYTES).fill(120)"
"$DENO" run --allow-net - >/dev/null 2>&1 <<JS &
const body = ${BODY_JS};
Deno.serve({ hostname: "127.0.0.1", port: $UP_PORT, onListen() {} }, () => new Response(body));
JS
pids+=($!)
PORT=$(free_port)
cat >"$OUT/ferry.yaml" <<YAML
listeners: [{ name: default, address: "127.0.0.1:$PORT" }]
server: { connection_guard: ${GUARD:-true}, workers: 1 }
log: { level: warn }
routes: [{ name: default, cluster: upstream, timeout: 30000ms }]
clusters: [{ name: upstream, endpoints: ["http://127.0.0.1:$UP_PORT"] }]
YAML
(cd "$REPO" && exec "$DENO" run $START_FLAGS --cpu-prof --cpu-prof-dir="$OUT" \
  main.ts --config "$OUT/ferry.yaml") \
  >"$OUT/ferry.log" 2>&1 &
FERRY=$!
pids+=("$FERRY")
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
if [[ -n ${H2:-} ]]; then
  h2load -D"$DURATION" -c10 -m10 "http://127.0.0.1:$PORT/" | grep -E "^(finished|requests)"
else
  wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:$PORT/" | grep -E "Requests/sec|requests in"
fi
kill -TERM "$FERRY"
for _ in $(seq 100); do kill -0 "$FERRY" 2>/dev/null || break; sleep 0.1; done
prof=$(ls "$OUT"/*.cpuprofile | head -1)
echo "profile: $prof"
"$DENO" run --allow-read "$HERE/profile_summary.ts" "$prof" "${TOP:-15}"
