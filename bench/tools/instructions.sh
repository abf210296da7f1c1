#!/usr/bin/env bash
# Instructions per request, Ferry vs the harness's deno-hdr, counted by valgrind's callgrind:
# repeatable whatever else the machine is doing, unlike CPU time on a shared box.
# Each proxy runs under callgrind in front of an nginx backend; h2load --h1 sends a fixed number
# of requests; the difference between two counts divided by the difference in requests is the
# cost of one request (start-up and warm-up cancel out). Takes about 5 minutes.
# Needs: valgrind, nginx, h2load (nghttp2-client), curl; PEERS_DIR for deno-hdr.ts.
# Run by hand (not a `deno bench` file):  bench/tools/instructions.sh   (N1=2500 N2=4500)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/peers}
N1=${N1:-2500} N2=${N2:-4500}
WORK=$(mktemp -d)
BACKEND=18380 HDR=18390 FERRY=18391

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/error.log;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$BACKEND; keepalive_requests 100000;
  location / { return 200 "Hello, world!"; } } }
NGINX
nginx -c "$WORK/nginx.conf" &
NGINX_PID=$!
trap 'kill $NGINX_PID 2>/dev/null || true' EXIT
sleep 1

# count NAME PORT N -- command: total instructions after N requests
count() {
  local name=$1 port=$2 n=$3
  shift 4
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.$n.out" "$@" >"$WORK/$name.$n.log" 2>&1 &
  local pid=$!
  for _ in $(seq 240); do curl -sf -m 5 "127.0.0.1:$port/" >/dev/null && break; sleep 0.5; done
  h2load --h1 -n "$n" -c 10 "http://127.0.0.1:$port/" >/dev/null 2>&1
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  sed -nE 's/.*Collected : ([0-9]+).*/\1/p' "$WORK/$name.$n.log"
}

HDR_CMD=(deno run -A "$PEERS_DIR/proxies/deno-hdr.ts" "$HDR" "http://127.0.0.1:$BACKEND")
export PROXY_LISTEN_ADDR=127.0.0.1:$FERRY PROXY_UPSTREAM_ADDRS=http://127.0.0.1:$BACKEND PROXY_LOG_LEVEL=warn
FERRY_CMD=(deno run -A --unstable-no-legacy-abort "$REPO/main.ts")

h1=$(count hdr $HDR "$N1" -- "${HDR_CMD[@]}")
h2=$(count hdr $HDR "$N2" -- "${HDR_CMD[@]}")
f1=$(count ferry $FERRY "$N1" -- "${FERRY_CMD[@]}")
f2=$(count ferry $FERRY "$N2" -- "${FERRY_CMD[@]}")
python3 - "$h1" "$h2" "$f1" "$f2" "$N1" "$N2" <<'PY'
import sys
h1, h2, f1, f2, n1, n2 = map(int, sys.argv[1:])
hdr = (h2 - h1) / (n2 - n1)
fer = (f2 - f1) / (n2 - n1)
print(f"instructions per request ({n1}->{n2} requests): deno-hdr {hdr:,.0f}  ferry {fer:,.0f}  ratio {fer/hdr:.2f}")
PY
