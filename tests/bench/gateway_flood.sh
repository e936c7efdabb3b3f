#!/usr/bin/env bash
# gateway_flood.sh - the gateway's memory after floods of connections, on a local cluster.
#
# Starts a cluster (one gateway, one ledger, one signer, one audit) from BUILD, floods the
# gateway's device port ROUNDS times with CONNECTIONS connections (tests/bench/gateway_flood:
# idle ones, cut-short ZMTP greetings, bytes that are no ZMTP, real CURVE calls), and prints
# the gateway's RSS before, at its peak and SETTLE_MS after each round, then the gateway's
# connection metrics. Run it under the ports lock:
#   flock /tmp/qc-ports.lock tests/bench/gateway_flood.sh [BUILD] [CONNECTIONS] [ROUNDS]
# Environment: BASE_PORT (default 19000), HOLD_MS (5000), SETTLE_MS (10000), GATEWAY_ENV (extra
# environment of the gateway, e.g. GATEWAY_ENV="MALLOC_ARENA_MAX=64" to compare allocators), and
# MAX_CONNECTIONS (the gateway's max_connections; unset = the default).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$top/build/dev}" && pwd)
connections=${2:-5000}
rounds=${3:-2}
base=${BASE_PORT:-19000}
dir=$(mktemp -d "${TMPDIR:-/tmp}/qc-gateway-flood.XXXXXX")
trap '"$top/ops/cluster" down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
ulimit -n "$(ulimit -Hn)"
"$top/ops/cluster" up --dir "$dir" --build "$build" --base-port "$base" --replicas 1 >"$dir/up.log" 2>&1 ||
  { cat "$dir/up.log" >&2; exit 1; }
if [ -n "${MAX_CONNECTIONS:-}" ] || [ -n "${GATEWAY_ENV:-}" ]; then
  "$top/ops/cluster" stop gateway-0 --dir "$dir" >/dev/null
  [ -n "${MAX_CONNECTIONS:-}" ] && echo "max_connections = $MAX_CONNECTIONS" >>"$dir/conf/gateway-0.conf"
  # shellcheck disable=SC2086
  env ${GATEWAY_ENV:-} "$top/ops/cluster" start gateway-0 --dir "$dir" >/dev/null
fi
pid=$(cat "$dir/pids/gateway-0.pid")
endpoint=$(sed -n 's/^listen = //p' "$dir/conf/gateway-0.conf")
key=$(tr -d '\n' <"$dir/keys/gateway-0.key.pub")
sleep 2
echo "gateway pid $pid endpoint $endpoint fd limit $(ulimit -n) ${GATEWAY_ENV:-}"
grep -E '^Vm(RSS|HWM)' "/proc/$pid/status" | tr '\n' ' '
echo
"$build/tests/bench/gateway_flood" --endpoint "$endpoint" --server-key "$key" --pid "$pid" \
  --connections "$connections" --rounds "$rounds" --hold-ms "${HOLD_MS:-5000}" \
  --settle-ms "${SETTLE_MS:-10000}" 2>"$dir/flood.log"
http=$(sed -n "s/^http_port *= *//p" "$dir/conf/gateway-0.conf")
curl -s "http://127.0.0.1:$http/metrics" | grep -E '^qc_gateway_(connections|busy)' || true
grep -c . "$dir/logs/gateway-0.log" | sed "s/^/gateway log lines: /"
grep -E "memory_trimmed|connection_limit|suppressed" "$dir/logs/gateway-0.log" | cut -c1-300 | tail -${LOG_TAIL:-6}
