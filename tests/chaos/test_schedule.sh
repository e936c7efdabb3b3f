#!/usr/bin/env bash
# A chaos run is reproducible from its seed: two plans drawn from one seed are identical, and
# another seed draws another plan. Every kind of fault is in the schedule, every wallet point in
# the devices' plans. Environment (CTest): QC_SOURCE_DIR, QC_BINARY_DIR.
set -euo pipefail
: "${QC_SOURCE_DIR:?set by CTest}" "${QC_BINARY_DIR:?set by CTest}"
X=$(mktemp -d "${TMPDIR:-/tmp}/qc-chaos-schedule.XXXXXX")
trap 'rm -rf "$X"' EXIT
plan() { "$QC_SOURCE_DIR/tests/chaos/run" --loads 500 --seed "$1" --plan-only --dir "$X/$2" --build "$QC_BINARY_DIR" >/dev/null; }
plan 5 a
plan 5 b
plan 6 c
diff -r "$X/a/chaos" "$X/b/chaos" || { echo "FAIL: seed 5 drew two different plans" >&2; exit 1; }
if diff -q -r "$X/a/chaos" "$X/c/chaos" >/dev/null; then
  echo "FAIL: seeds 5 and 6 drew the same plan" >&2
  exit 1
fi
s=$X/a/chaos/schedule
for k in gateway signer ledger audit; do
  grep -q " kill $k-" "$s" || { echo "FAIL: no kill of $k in the schedule" >&2; exit 1; }
done
grep -q ' kill w' "$s" || { echo "FAIL: no kill of a device in the schedule" >&2; exit 1; }
for p in ledger.after_commit_before_reply ledger.mid_group_commit ledger.after_reserve_before_sign \
  ledger.after_sign_before_store signer.after_sign audit.after_commit_before_ack; do
  grep -q " point .* $p:" "$s" || { echo "FAIL: point $p not in the schedule" >&2; exit 1; }
done
if grep -q "gateway\.after_sign" "$s"; then
  echo "FAIL: the gateway signs nothing, yet a gateway signing point is scheduled" >&2
  exit 1
fi
grep -q ' stop ' "$s" && grep -q ' audit_down ' "$s" || { echo "FAIL: no stop or audit outage" >&2; exit 1; }
for p in wallet.after_request_signed wallet.after_allow_received wallet.after_credit_before_report; do
  grep -q " $p " "$X"/a/chaos/plans/* || { echo "FAIL: $p in no device's plan" >&2; exit 1; }
done
# Replicated shards: leader kills and follower wipes are scheduled, ledger targets are
# replicas (ledger-S-R), and no ledger fault point (followers commit nothing).
"$QC_SOURCE_DIR/tests/chaos/run" --loads 500 --seed 5 --replicas 3 --plan-only --dir "$X/r" \
  --build "$QC_BINARY_DIR" >/dev/null
s=$X/r/chaos/schedule
grep -q ' leader ledger-[0-9]* ' "$s" || { echo "FAIL: no leader kill with --replicas 3" >&2; exit 1; }
grep -q ' wipe ledger-[0-9]* ' "$s" || { echo "FAIL: no follower wipe with --replicas 3" >&2; exit 1; }
if grep -q ' point .* ledger\.' "$s" || grep -E -q ' (kill|stop) ledger-[0-9]+ ' "$s"; then
  echo "FAIL: with --replicas 3 a ledger point, or a ledger target that is not a replica" >&2
  exit 1
fi
echo "PASS: the schedule is a function of the seed and holds every kind of fault"
