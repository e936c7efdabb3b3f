#!/usr/bin/env bash
# Reconciliation by the signed counter, before any deadline: a new request from a device whose
# previous load is still RESERVED settles that load first. Counter c+1 proves the device
# applied it (CONFIRMED, its report was lost); counter c proves it did not (COMPENSATED). The
# new requests are made with the device's own key by e2e_forge, since qc-wallet itself always
# finishes (re-reports or re-requests) its load in progress before a new one.
. "$(dirname "$0")/lib.sh"
e2e_begin reconcile
cluster_up --deadline-ms 60000 # no deadline may fire during the test
account_new ALICE-001 100000
wallet_new w1 ALICE-001
serial=$(wallet_serial w1)
reserved_txn() { q --json device show "$serial" | jq -r .reserved_txn; }

# A new request's load is ended by a REJECTED report signed with the device key, as a device
# that refused its allow would.
reject() { # TXN COUNTER BALANCE
  local line
  line=$(forge report $(forge_as w1) --account ALICE-001 --txn "$1" --counter "$2" --balance "$3" \
    --status rejected --reason "test: not applied")
  assert_eq "REJECTED report of $1" "QC_OK state=LOAD_COMPENSATED" "$line"
}

# (1) Report lost: credited (counter 1), the report never arrived.
if QC_FAULT=wallet.after_credit_before_report wallet_load w1 ALICE-001 40.00; then
  fail "the wallet survived its fault point"
fi
lost=$(reserved_txn)
[ -n "$lost" ] || fail "no load reserved after the lost report"
assert_eq "wallet counter after the credit" 1 "$(wallet_counter w1)"
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 100 --counter 1 --balance 4000)
assert_eq "next request (counter c+1)" QC_OK "$(forge_code "$line")"
assert_eq "the lost-report load, proven applied" CONFIRMED "$(load_state "$lost")"
next=$(sed -n 's/.*txn=\([0-9a-f]*\).*/\1/p' <<<"$line")
assert_eq "the new load" RESERVED "$(load_state "$next")"
reject "$next" 1 4000
assert_eq "account: the proven load only" 96000 "$(account_balance ALICE-001)"
check_ok
wallet_run w1 sync || fail "sync of the proven load: $(cat "$X/w1.out")"
assert_match "sync's outcome" 'CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "ledger state after sync" CONFIRMED "$(load_state "$lost")"
assert_eq "wallet balance" 4000 "$(wallet_balance w1)"
assert_eq "account after sync" 96000 "$(account_balance ALICE-001)"
assert_eq "wallets == FLOAT" 4000 "$(float_total)"

# (2) Not applied: the device died holding its allow (counter still 1).
if QC_FAULT=wallet.after_allow_received wallet_load w1 ALICE-001 50.00; then
  fail "the wallet survived its fault point"
fi
unapplied=$(reserved_txn)
[ -n "$unapplied" ] || fail "no load reserved after the device died holding its allow"
assert_eq "account debited by the reserve" 91000 "$(account_balance ALICE-001)"
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 100 --counter 1 --balance 4000)
assert_eq "next request (counter c)" QC_OK "$(forge_code "$line")"
assert_eq "the unapplied load, proven not applied" COMPENSATED "$(load_state "$unapplied")"
next=$(sed -n 's/.*txn=\([0-9a-f]*\).*/\1/p' <<<"$line")
reject "$next" 1 4000
assert_eq "account refunded" 96000 "$(account_balance ALICE-001)"
check_ok
wallet_run w1 sync || true
e2e_log "sync said: $(tr '\n' ' ' <"$X/w1.out")"
assert_match "wallet state after sync" '^IDLE' "$(wallet_field w1 state)"
assert_eq "wallet balance after sync" 4000 "$(wallet_balance w1)"
assert_eq "wallet counter after sync" 1 "$(wallet_counter w1)"
assert_eq "ledger state after sync" COMPENSATED "$(load_state "$unapplied")"
wallet_load w1 ALICE-001 1.00 || fail "load after reconciliation: $(cat "$X/w1.out")"
assert_match "next load" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "account at the end" 95900 "$(account_balance ALICE-001)"

# (3) Disconnected after the Reserve, back before the deadline: sync re-sends the same request,
# gets the very allow the ledger stored, applies it once and reports: CONFIRMED.
if QC_FAULT=wallet.after_allow_received wallet_load w1 ALICE-001 3.00; then
  fail "the wallet survived its fault point"
fi
txn=$(reserved_txn)
[ -n "$txn" ] || fail "no load reserved"
allow_before=$(q --json load show "$txn" | jq -r .allow_bytes)
wallet_run w1 sync || fail "sync before the deadline: $(cat "$X/w1.out")"
assert_match "sync before the deadline" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "ledger state" CONFIRMED "$(load_state "$txn")"
assert_eq "stored allow's size unchanged by the retry" "$allow_before" "$(q --json load show "$txn" | jq -r .allow_bytes)"
assert_eq "wallet balance" 4400 "$(wallet_balance w1)"
assert_eq "wallet counter" 3 "$(wallet_counter w1)"
assert_eq "account" 95600 "$(account_balance ALICE-001)"

# (4) A retried request gets the very same allow bytes, even though the gateway signed a new
# allow (another host time and deadline) for the retry.
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 100 --counter 3 --balance 4400 \
  --save "$X/retried-request" --allow-out "$X/allow-1")
assert_eq "first sending" QC_OK "$(forge_code "$line")"
sleep 0.01 # a later host time for the retry's new allow (ms resolution)
line=$(forge send --method load --in "$X/retried-request" --allow-out "$X/allow-2")
assert_eq "retry" QC_OK "$(forge_code "$line")"
cmp -s "$X/allow-1" "$X/allow-2" || fail "the retry got other allow bytes than the first sending"
e2e_log "ok: the retry's allow is byte for byte the first one"
next=$(sed -n 's/.*txn=\([0-9a-f]*\).*/\1/p' <<<"$line")
[ -n "$next" ] || next=$(reserved_txn)
reject "$next" 3 4400
assert_eq "account after the rejected retry load" 95600 "$(account_balance ALICE-001)"
e2e_end
