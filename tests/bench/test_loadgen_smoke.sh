#!/usr/bin/env bash
# test_loadgen_smoke.sh - qc-loadgen against a small real cluster (ops/cluster): 200 loads in
# closed loop from 40 simulated devices (after a warm-up load of each); every load must end
# CONFIRMED, none may fail, and
# `qcctl check` must pass afterwards. No timing assertions: it runs under sanitizers beside
# other tests. Environment (CTest): QC_SOURCE_DIR, QC_BINARY_DIR, LOADGEN_BASE_PORT.
set -euo pipefail
: "${QC_SOURCE_DIR:?set by CTest}" "${QC_BINARY_DIR:?set by CTest}" "${LOADGEN_BASE_PORT:?set by CTest}"

readonly LOADS=200 DEVICES=40 CONCURRENCY=20
S=$QC_SOURCE_DIR
B=$QC_BINARY_DIR
X=$(mktemp -d "${TMPDIR:-/tmp}/qc-loadgen-smoke.XXXXXX")

fail() { echo "FAIL loadgen_smoke: $*" >&2; exit 1; }

cleanup() {
  local rc=$?
  set +e
  [ -f "$X/cluster.env" ] && "$S/ops/cluster" down --dir "$X" >/dev/null 2>&1
  if grep -l -E 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|Assertion .* failed' \
    "$X"/logs/*.log "$X"/loadgen.err 2>/dev/null; then
    echo "FAIL loadgen_smoke: a sanitizer error or an assertion (files above)" >&2
    rc=1
  fi
  if [ "$rc" -eq 0 ]; then
    rm -rf "$X"
  else
    echo "loadgen_smoke: kept $X" >&2
    for f in "$X"/loadgen.err "$X"/logs/*.log; do
      [ -f "$f" ] && { echo "--- tail $f" >&2; tail -15 "$f" >&2; }
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$S/ops/cluster" up --dir "$X" --build "$B" --base-port "$LOADGEN_BASE_PORT" --replicas 1 \
  >"$X/cluster-up.log" 2>&1 ||
  { cat "$X/cluster-up.log" >&2; fail "ops/cluster up failed"; }

"$B/client/loadgen/qc-loadgen" --dir "$X" --devices "$DEVICES" --mode closed --concurrency "$CONCURRENCY" \
  --loads "$LOADS" --floor-ms 100 --progress false --json "$X/result.json" \
  >"$X/loadgen.out" 2>"$X/loadgen.err" || { cat "$X/loadgen.out" "$X/loadgen.err" >&2; fail "qc-loadgen failed"; }
cat "$X/loadgen.out"

r=$X/result.json
[ "$(jq -r .started "$r")" == "$LOADS" ] || fail "started $(jq -r .started "$r"), expected $LOADS"
[ "$(jq -r .completed "$r")" == "$LOADS" ] || fail "completed $(jq -r .completed "$r"), expected $LOADS"
[ "$(jq -r .outcomes.CONFIRMED "$r")" == "$LOADS" ] || fail "CONFIRMED $(jq -c .outcomes "$r")"
[ "$(jq -r .failed "$r")" == 0 ] || fail "failed loads: $(jq -c .errors "$r")"
[ "$(jq -r .latency_ms.request_outcome.count "$r")" == "$LOADS" ] || fail "latency samples missing"
[ "$(jq -r '.cpu_s | length' "$r")" -ge 4 ] || fail "CPU of the services not measured: $(jq -c .cpu_s "$r")"
awk -v v="$(jq -r .floor.per_load_us "$r")" 'BEGIN { exit !(v > 0) }' || fail "no crypto floor"

check=$("$B/ops/qcctl/qcctl" --config "$X/conf/qcctl.conf" check) || fail "qcctl check failed: $check"
[ "$(jq -r .ok <<<"$check")" == true ] || fail "qcctl check: $check"
loads=$(jq '[.shards[].loads] | add' <<<"$check")
[ "$loads" == $((LOADS + DEVICES)) ] || fail "the ledger holds $loads loads, expected $((LOADS + DEVICES))"
[ "$(jq '[.shards[].reserved] | add' <<<"$check")" == 0 ] || fail "loads left RESERVED: $check"
echo "loadgen_smoke: ok ($LOADS loads CONFIRMED, qcctl check ok)"
