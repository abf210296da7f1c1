#!/usr/bin/env bash
# CPU per request of Ferry on the h1 codec (shipped defaults, `transport: h1`) against deno-hdr
# and caddy, through the shared peers harness (bench/tools/peers.sh explains it): h1-small
# (13-byte body) and h1-64k. One harness run per variant, each with its own deno-hdr and caddy,
# so every variant has same-run references; compare ratios within a run only.
#   ROUNDS=3 DURATION=8 VARIANTS="guard noguard" bench/tools/h1_cost.sh
# Variants: guard (connection guard on, the default), noguard (server.connection_guard: false).
# V8_FLAGS adds --v8-flags to Ferry's command line (the start task's own flags are always used).
# Output: one report per variant on stdout (and under /tmp/peers/results/).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/peers}
if [[ -z ${DENO:-} ]]; then DENO=$(command -v deno); fi
export DENO
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$REPO" && DENO_DIR="${PEERS_WORK:-/tmp/peers}/deno_dir" "$DENO" cache --quiet main.ts) || true
# The flags of `deno task start` (deno.json), so the figures are the shipped defaults'.
. "$HERE/start_flags.sh"
EXTRA=${V8_FLAGS:+--v8-flags=$V8_FLAGS}

for variant in ${VARIANTS:-guard noguard}; do
  guard=true
  [[ $variant == noguard ]] && guard=false
  cat >"$WORK/ferry-$variant.yaml" <<YAML
listeners:
  - { name: default, address: "127.0.0.1:{PORT}" }
log: { level: warn }
server: { connection_guard: $guard, workers: 1 }
routes:
  - { name: default, cluster: upstream, timeout: 30s }
clusters:
  - name: upstream
    endpoints: ["{UPSTREAM}"]
YAML
  ROUNDS=${ROUNDS:-3} MODES=${MODES:-unpinned} SCENARIOS=${SCENARIOS:-h1-small h1-64k} \
    TARGETS=${TARGETS:-deno-hdr caddy} \
    PROJECT_PROXY_NAME="ferry-$variant" PROJECT_PROXY_CWD="$REPO" \
    PROJECT_PROXY_CONFIG="$WORK/ferry-$variant.yaml" \
    PROJECT_PROXY_CMD="\"\$DENO\" run $START_FLAGS $EXTRA main.ts --config {CONFIG}" \
    "$PEERS_DIR/run.sh"
done
