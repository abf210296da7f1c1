#!/usr/bin/env bash
# CPU per request of Ferry's HTTP requests to an h2c upstream over fetch (`transport: fetch`, the
# default for h2c/auto without identity checks) against Ferry's own HTTP/2 client
# (`transport: h2`): one Ferry process per transport, both running through the whole measurement,
# runs interleaved (fetch, h2, fetch, h2, ...) so both see the same spells of load from other
# processes. The upstream speaks h2c (prior knowledge): Deno.serve, or nginx with UPSTREAM=nginx
# (`listen ... http2`; fetch gets 400 there, see below). Load: wrk
# (HTTP/1.1 downstream, -c50) and h2load (h2c downstream, -c10 -m10). CPU from /proc/PID/stat
# (utime+stime) of the Ferry process over each run, divided by the requests it completed.
#   ROUNDS=3 DURATION=5 BODY=13 bench/tools/h2_transport_cost.sh
# TLS=1: an auto cluster of a Deno.serve TLS upstream (ALPN h2) instead of h2c.
# Output: one line per run, then medians per transport and tool.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DENO=${DENO:-$(command -v deno)}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
BODY=${BODY:-13}
BASE=${BASE_PORT:-26500}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $WORK/nginx.pid ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
. "$HERE/start_flags.sh"

UP=$BASE
head -c "$BODY" /dev/zero | tr '\0' 'x' >"$WORK/body.txt"
if [[ ${UPSTREAM:-deno} == nginx ]]; then
  # nginx answers 400 ("duplicate host header") to fetch over HTTP/2: fetch sends `host` beside
  # `:authority`. Only the h2 transport can be measured against it.
  cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP http2;
    location / { root $WORK; try_files /body.txt =404; }
  }
}
NGINX
  nginx -c "$WORK/nginx.conf" -p "$WORK"
elif [[ ${TLS:-} == 1 ]]; then
  # An auto cluster: Deno.serve over TLS (ALPN h2), a throw-away CA made here.
  ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  openssl req -x509 $ec -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 1 -subj /CN=bench-ca \
    -addext basicConstraints=critical,CA:TRUE 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$WORK/leaf.ext"
  openssl req $ec -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" -subj /CN=127.0.0.1 2>/dev/null
  openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -out "$WORK/cert.pem" -days 1 -extfile "$WORK/leaf.ext" 2>/dev/null
  cat >"$WORK/upstream.ts" <<TS
const body = Deno.readFileSync("$WORK/body.txt");
Deno.serve({
  hostname: "127.0.0.1",
  port: $UP,
  cert: Deno.readTextFileSync("$WORK/cert.pem"),
  key: Deno.readTextFileSync("$WORK/key.pem"),
  onListen() {},
}, () => new Response(body));
TS
  "$DENO" run --allow-net --allow-read "$WORK/upstream.ts" &
  PIDS+=($!)
else
  # Deno.serve speaks h2c with prior knowledge on a plain listener.
  cat >"$WORK/upstream.ts" <<TS
const body = Deno.readFileSync("$WORK/body.txt");
Deno.serve({ hostname: "127.0.0.1", port: $UP, onListen() {} }, () => new Response(body));
TS
  "$DENO" run --allow-net --allow-read "$WORK/upstream.ts" &
  PIDS+=($!)
fi

declare -A PORT PID
i=1
TRANSPORTS=${TRANSPORTS:-fetch h2}
for t in $TRANSPORTS; do
  PORT[$t]=$((BASE + i))
  i=$((i + 1))
  cat >"$WORK/ferry-$t.yaml" <<YAML
listeners:
  - { name: default, address: "127.0.0.1:${PORT[$t]}" }
log: { level: warn }
routes:
  - { name: default, cluster: upstream, timeout: 30s }
clusters:
  - name: upstream
    transport: $t
YAML
  if [[ ${TLS:-} == 1 ]]; then
    printf '    protocol: auto\n    endpoints: ["https://127.0.0.1:%s"]\n    tls: { ca_file: %s }\n' \
      "$UP" "$WORK/ca.pem" >>"$WORK/ferry-$t.yaml"
  else
    printf '    protocol: h2c\n    endpoints: ["http://127.0.0.1:%s"]\n' "$UP" >>"$WORK/ferry-$t.yaml"
  fi
  (cd "$REPO" && exec "$DENO" run $START_FLAGS main.ts --config "$WORK/ferry-$t.yaml" \
    >"$WORK/ferry-$t.log" 2>&1) &
  PID[$t]=$!
  PIDS+=("${PID[$t]}")
done
for t in $TRANSPORTS; do
  for _ in $(seq 1 100); do
    curl -fs -o /dev/null "http://127.0.0.1:${PORT[$t]}/" && break
    sleep 0.1
  done
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# Runs one load; prints "<requests> <rps>".
load() {
  local tool=$1 port=$2 secs=$3
  if [[ $tool == wrk ]]; then
    # Only 2xx answers count (wrk counts every answer).
    wrk -t1 -c50 -d"${secs}s" "http://127.0.0.1:$port/" | awk '
      /requests in/ { n = $1 } /Non-2xx/ { bad = $NF } /Requests\/sec/ { r = $2 }
      END { print n - bad, r * (n - bad) / n }'
  else
    h2load -c10 -m10 -D"$secs" "http://127.0.0.1:$port/" | awk '
      /^finished in/ { r = $4 } /^requests:/ { n = $8 } END { print n, r }'
  fi
}

# Warm-up: JIT and pools.
for t in $TRANSPORTS; do
  load wrk "${PORT[$t]}" 2 >/dev/null
  load h2load "${PORT[$t]}" 2 >/dev/null
done

RESULTS=$WORK/results.txt
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) body=$BODY tls=${TLS:-0}"
for r in $(seq 1 "$ROUNDS"); do
  for tool in wrk h2load; do
    for t in $TRANSPORTS; do
      before=$(cpu_ticks "${PID[$t]}")
      read -r n rps < <(load "$tool" "${PORT[$t]}" "$DURATION")
      after=$(cpu_ticks "${PID[$t]}")
      us=$(awk -v a="$after" -v b="$before" -v n="$n" -v hz="$TICK" \
        'BEGIN { printf "%.1f", (a - b) / hz * 1e6 / n }')
      echo "round=$r tool=$tool transport=$t requests=$n rps=$rps us_per_req=$us" | tee -a "$RESULTS"
    done
  done
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for tool in wrk h2load; do
  for t in $TRANSPORTS; do
    lines=$(grep "tool=$tool transport=$t " "$RESULTS")
    rps=$(sed 's/.*rps=\([0-9.]*\).*/\1/' <<<"$lines" | median)
    us=$(sed 's/.*us_per_req=\([0-9.]*\).*/\1/' <<<"$lines" | median)
    echo "median tool=$tool transport=$t rps=$rps us_per_req=$us"
  done
done
