#!/usr/bin/env bash
# The bank debits before it signs: with the signer down, a load is reserved (the money held)
# and never signed for, so the device never holds an allow; the ledger's deadline compensates
# the load, and the device, once the bank answers again, learns that nothing was applied.
. "$(dirname "$0")/lib.sh"
readonly DEADLINE_MS=4000 SETTLE_WAIT_S=20
e2e_begin signer_down
cluster_up --deadline-ms $DEADLINE_MS
account_new ALICE-001 100000
wallet_new w1 ALICE-001
serial=$(wallet_serial w1)
is_state() { [ "$(load_state "$1")" == "$2" ]; }
load_field() { q --json load show "$1" | jq -r ".$2"; }

# The path works with the signer up.
wallet_load w1 ALICE-001 10.00 || fail "first load: $(cat "$X/w1.out")"
assert_match "first load" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"

"$S/ops/cluster" stop signer-0 --dir "$X" >/dev/null || fail "ops/cluster stop signer-0"
if wallet_load w1 ALICE-001 20.00; then
  fail "a load completed with the signer down: $(cat "$X/w1.out")"
fi
e2e_log "the wallet said: $(tr '\n' ' ' <"$X/w1.out")"
txn=$(q --json device show "$serial" | jq -r .reserved_txn)
[ -n "$txn" ] && [ "$txn" != null ] || fail "no load reserved: the ledger should debit before it asks for the signature"
assert_eq "ledger state with the signer down" RESERVED "$(load_state "$txn")"
assert_eq "allow bytes stored for it" 0 "$(load_field "$txn" allow_bytes)"
assert_eq "account debited (the money is held)" 97000 "$(account_balance ALICE-001)"
assert_eq "wallet not credited" 1000 "$(wallet_balance w1)"
assert_eq "wallet counter unchanged" 1 "$(wallet_counter w1)"
assert_match "wallet still waits for its first answer" '^PENDING' "$(wallet_field w1 state)"
log_has "$X/logs/ledger-0.log" '"event":"ledger.sign_failed"' || fail "the ledger did not log the signer's failure"

wait_until $SETTLE_WAIT_S "load $txn compensated at its deadline" is_state "$txn" COMPENSATED
assert_eq "reason of the compensation" REPORT_MISSING "$(load_field "$txn" reason)"
assert_eq "allow bytes after the compensation" 0 "$(load_field "$txn" allow_bytes)"
assert_eq "account refunded" 99000 "$(account_balance ALICE-001)"

# The signer is back: the device's retry is told the load is over, and no allow is signed for
# money the ledger gave back.
"$S/ops/cluster" start signer-0 --dir "$X" >/dev/null || fail "ops/cluster start signer-0"
wallet_run w1 sync || true
e2e_log "sync said: $(tr '\n' ' ' <"$X/w1.out")"
assert_eq "ledger state after sync" COMPENSATED "$(load_state "$txn")"
assert_eq "allow bytes after sync" 0 "$(load_field "$txn" allow_bytes)"
assert_eq "wallet balance after sync" 1000 "$(wallet_balance w1)"
assert_eq "wallet counter after sync" 1 "$(wallet_counter w1)"
assert_match "wallet state after sync" '^IDLE' "$(wallet_field w1 state)"

# And the next load goes through.
wallet_load w1 ALICE-001 5.00 || fail "load after the signer came back: $(cat "$X/w1.out")"
assert_match "load after the signer came back" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "account after it" 98500 "$(account_balance ALICE-001)"
e2e_end
