#!/usr/bin/env bash
# Ferry vs peer reverse proxies (nginx, haproxy, caddy, node-http-proxy, fastify, deno-min,
# deno-hdr, and no proxy at all) on loopback, using the shared harness in
# ../shared/peers/run.sh (see its README.md). Ferry is slotted in as target "ferry", started
# from this repo with env-var config (one catch-all route, one cluster, full header handling)
# and also driven over prior-knowledge h2c on the same port.
#
# Time (measured on the 2-core box): a full default run (all 9 targets, h1-small h1-64k h2-small,
# ROUNDS=3, both modes) takes about 26 minutes, 13 per mode (MODES=unpinned or MODES=pinned);
# a smoke run
#   ROUNDS=1 DURATION=3 MODES=unpinned TARGETS="direct deno-hdr ferry" bench/tools/peers.sh
# about 1.5 minutes. Results and method: docs/PERFORMANCE.md. The harness may apt-get/npm-install
# its tools on first use (needs root).
#
# Environment: ROUNDS DURATION MODES TARGETS SCENARIOS (and the harness's other knobs) pass
# through; PEERS_DIR overrides the harness location; DENO defaults to `deno` on PATH.
# Output: /tmp/peers/results/<stamp>/{results.jsonl,report.md,run/}; report on stdout.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/peers}
[[ -x $PEERS_DIR/run.sh ]] || { echo "peers harness not found: $PEERS_DIR/run.sh (set PEERS_DIR)" >&2; exit 1; }

if [[ -z ${DENO:-} ]] && command -v deno >/dev/null 2>&1; then DENO=$(command -v deno); fi
[[ -n ${DENO:-} ]] && export DENO

# Fetch Ferry's npm dependencies into the harness's DENO_DIR up front, so the first start does
# not spend the readiness window downloading.
if [[ -n ${DENO:-} ]]; then
  (cd "$REPO" && DENO_DIR="${PEERS_WORK:-/tmp/peers}/deno_dir" "$DENO" cache --quiet main.ts src/config/validator_worker.ts) ||
    echo "warning: deno cache main.ts failed; continuing" >&2
fi

# Passed through from the caller (run.sh appends "ferry" to TARGETS if it is not listed).
for v in ROUNDS DURATION MODES TARGETS SCENARIOS FERRY_WORKERS; do
  if [[ -n ${!v+x} ]]; then export "${v?}"; fi
done

# run.sh runs this as: bash -c "exec $PROJECT_PROXY_CMD", in PROJECT_PROXY_CWD, with DENO exported.
export PROJECT_PROXY_NAME=ferry
export PROJECT_PROXY_H2C=1
export PROJECT_PROXY_CWD=$REPO
export PROJECT_PROXY_CMD='env PROXY_LISTEN_ADDR=127.0.0.1:{PORT} PROXY_UPSTREAM_ADDRS={UPSTREAM} PROXY_LOG_LEVEL=warn PROXY_WORKERS=${FERRY_WORKERS:-1} "$DENO" run -A --unstable-no-legacy-abort --unstable-net --v8-flags=--max-semi-space-size=4,--heap-growing-percent=100,--single-threaded-gc,--no-allocation-site-pretenuring main.ts'

exec "$PEERS_DIR/run.sh"
