#!/usr/bin/env bash
# The live fuzzer (tests/fuzz/live, qc-fuzz-live): mutated valid frames over CURVE, at every
# layer (the Rpc frame, the body in it, the signed body in the envelope), to a real gateway
# ("load", "report"), ledger ("reserve", "settle") and signer ("sign"), for a bounded time
# each. Afterwards every service is alive and healthy, qcctl check is ok, not one unit of money
# moved, no load is reserved, and a genuine load still goes through.
. "$(dirname "$0")/lib.sh"
e2e_begin live_fuzz
cluster_up --deadline-ms 5000
account_new ALICE-001 100000
wallet_new w1 ALICE-001
wallet_load w1 ALICE-001 10.00 || fail "genuine load: $(cat "$X/w1.out")"

readonly LIVE_SECONDS=${LIVE_SECONDS:-6}
before_alice=$(account_balance ALICE-001)
before_wallet=$(wallet_balance w1)
before_check=$(q check | jq -c '[.shards[].currencies]')
ledger_endpoints=$(sed -n 's/^ledger = //p' "$X/conf/gateway-0.conf" | cut -d';' -f1)
# Only the ledgers call the signer (the bank debits before it signs): take it from one.
ledger_conf=$(ls "$X"/conf/ledger-*.conf | head -n 1)
signer_endpoint=$(sed -n 's/^signer = //p' "$ledger_conf" | cut -d, -f1)
ledger_key=$(sed -n 's/^ledger_key = //p' "$X/conf/gateway-0.conf")
signer_key=$(sed -n 's/^signer_key = //p' "$ledger_conf")
[ -n "$signer_endpoint" ] && [ -n "$signer_key" ] || fail "no signer in $ledger_conf"

live() { # ENDPOINT SERVER_KEY CURVE_KEY METHOD
  "$B/tests/fuzz/live/qc-fuzz-live" --endpoint "$1" --server-key "$2" --curve-key "$3" \
    --method "$4" $(forge_as w1 | sed 's/--key/--device-key/; s/--cert/--device-cert/; s/--device /--device-id /') \
    --account ALICE-001 --seconds "$LIVE_SECONDS" --random-seed "${LIVE_RANDOM_SEED:-$RANDOM}"
}
device_key=$X/keys/fuzz-device.key # any CURVE key: the gateway's device port admits all
"$B/ops/tools/qc-curve-keygen" "$device_key" >/dev/null
for m in load report; do
  out=$(live "$GW_ENDPOINT" "$GW_KEY" "$device_key" $m) || fail "qc-fuzz-live $m"
  e2e_log "gateway: $out"
  assert_match "frames sent to the gateway ($m)" 'sent=[1-9]' "$out"
  assert_match "every gateway reply code a QC_E* code ($m)" 'odd_codes=0( |$)' "$out"
done
# The ledger admits the gateways' key: the fuzzer borrows it, and fuzzes every replica of the
# shard (followers refuse writes, so the leader is the one that parses them all).
for ep in ${ledger_endpoints//,/ }; do
  for m in reserve settle; do
    out=$(LIVE_SECONDS=$((LIVE_SECONDS / 2 > 0 ? LIVE_SECONDS / 2 : 1)) live "$ep" "$ledger_key" \
      "$X/keys/gateway-0.key" $m) || fail "qc-fuzz-live $m $ep"
    e2e_log "ledger $ep: $out"
    assert_match "frames sent to the ledger $ep ($m)" 'sent=[1-9]' "$out"
    assert_match "every ledger reply code a QC_E* code ($m)" 'odd_codes=0( |$)' "$out"
  done
done
# The signer signs for the ledger's key only (roles): the fuzzer borrows it, so the signer
# parses the mutated bodies by their kind rather than refusing the caller first.
out=$(live "$signer_endpoint" "$signer_key" "$X/keys/ledger.key" sign) || fail "qc-fuzz-live sign"
e2e_log "signer: $out"
assert_match "frames sent to the signer" 'sent=[1-9]' "$out"

# Every service alive and healthy.
status=$("$S/ops/cluster" status --dir "$X")
e2e_log "after the fuzzing: $(tr '\n' ' ' <<<"$status")"
if grep -E -v -q '^[^ ]+ +pid [0-9]+ +healthy( |$)' <<<"$status"; then
  fail "a service is down or unhealthy after the fuzzing: $status"
fi
# Not one unit moved, nothing reserved, the books balance.
assert_eq "ALICE-001 after the fuzzing" "$before_alice" "$(account_balance ALICE-001)"
assert_eq "w1 after the fuzzing" "$before_wallet" "$(wallet_balance w1)"
assert_eq "ledger totals after the fuzzing" "$before_check" "$(q check | jq -c '[.shards[].currencies]')"
assert_eq "no load reserved after the fuzzing" 0 "$(q check | jq '[.shards[].reserved] | add')"
check_ok
# And the services still serve: a genuine load goes through.
wallet_load w1 ALICE-001 1.00 || fail "genuine load after the fuzzing: $(cat "$X/w1.out")"
assert_match "genuine load after the fuzzing" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
e2e_end
