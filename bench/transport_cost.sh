#!/usr/bin/env bash
# Instructions per request on each HTTP/1.1 upstream transport, counted by valgrind's callgrind
# (repeatable on a shared machine, unlike CPU time): Ferry under callgrind in front of an nginx
# backend, h2load --h1 -c 10 sending N1 then N2 requests; (count(N2) - count(N1)) / (N2 - N1) is
# the cost of one request. "node": h2load's own headers (no accept-language), which Ferry sends
# through node:http; "fetch": accept, accept-language and accept-encoding: identity set, which
# Ferry sends through fetch (docs/design.md "Which transport"). About 20 minutes on a busy box.
# Needs valgrind, nginx, h2load, curl. Everything started here is stopped by PID.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
WORK=$(mktemp -d)
N1=${N1:-1500} N2=${N2:-3000}
BACKEND=$(deno eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();')
FERRY=$(deno eval 'const l = Deno.listen({hostname: "127.0.0.1", port: 0}); console.log(l.addr.port); l.close();')
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK; proxy_temp_path $WORK; fastcgi_temp_path $WORK; uwsgi_temp_path $WORK; scgi_temp_path $WORK;
  server { listen 127.0.0.1:$BACKEND; keepalive_requests 100000; location / { return 200 "Hello, world!"; } } }
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK" &
NGINX_PID=$!
trap 'kill $NGINX_PID 2>/dev/null || true' EXIT
sleep 1
cat >"$WORK/ferry.yaml" <<YAML
listeners: [{ name: bench, address: "127.0.0.1:$FERRY" }]
log: { level: warn }
routes: [{ name: all, cluster: up }]
clusters: [{ name: up, endpoints: ["http://127.0.0.1:$BACKEND"] }]
YAML
count() { # name n headers...
  local name=$1 n=$2; shift 2
  cd $REPO
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.$n.out" deno run -A --unstable-no-legacy-abort main.ts --config "$WORK/ferry.yaml" >"$WORK/$name.$n.log" 2>&1 &
  local pid=$!
  cd - >/dev/null
  for _ in $(seq 240); do curl -sf -m 5 "127.0.0.1:$FERRY/" >/dev/null && break; sleep 0.5; done
  h2load --h1 -n "$n" -c 10 "$@" "http://127.0.0.1:$FERRY/" | grep -E "succeeded" >&2
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
  sed -nE 's/.*Collected : ([0-9]+).*/\1/p' "$WORK/$name.$n.log"
}
for variant in node fetch; do
  if [ $variant = fetch ]; then H=(-H "accept: */*" -H "accept-language: en" -H "accept-encoding: identity"); else H=(); fi
  a=$(count $variant $N1 "${H[@]}"); b=$(count $variant $N2 "${H[@]}")
  echo "$variant: $(( (b - a) / (N2 - N1) )) instructions per request ($a @ $N1, $b @ $N2)"
done
