#!/usr/bin/env bash
# Ferry's two HTTP/1.1 upstream transports (transport: h1, Ferry's own codec; transport: fetch)
# against the harness's deno-hdr, through the shared peers harness (see bench/tools/peers.sh). Ferry
# runs from a YAML config equal to the PROXY_* quick start except for `transport`. One harness
# run per transport, each with deno-hdr, so both have a same-run reference.
#   ROUNDS=3 SCENARIOS=h1-small bench/tools/transports.sh
# Output: one report per transport on stdout (and under /tmp/peers/results/).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
DENO=${DENO:-$(command -v deno)}
. "$HERE/start_flags.sh"
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/peers}
if [[ -z ${DENO:-} ]]; then DENO=$(command -v deno); fi
export DENO
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$REPO" && DENO_DIR="${PEERS_WORK:-/tmp/peers}/deno_dir" "$DENO" cache --quiet main.ts) || true

for transport in ${TRANSPORTS:-h1 fetch}; do
  cat >"$WORK/ferry-$transport.yaml" <<YAML
listeners:
  - { name: default, address: "127.0.0.1:{PORT}" }
server: { workers: 1 }
log: { level: warn }
routes:
  - { name: default, cluster: upstream, timeout: 30s }
clusters:
  - name: upstream
    endpoints: ["{UPSTREAM}"]
    transport: $transport
YAML
  ROUNDS=${ROUNDS:-3} MODES=${MODES:-unpinned} SCENARIOS=${SCENARIOS:-h1-small} \
    TARGETS=${TARGETS:-deno-hdr} \
    PROJECT_PROXY_NAME="ferry-$transport" PROJECT_PROXY_CWD="$REPO" \
    PROJECT_PROXY_CONFIG="$WORK/ferry-$transport.yaml" \
    PROJECT_PROXY_CMD="\"\$DENO\" run $START_FLAGS main.ts --config {CONFIG}" \
    "$PEERS_DIR/run.sh"
done
