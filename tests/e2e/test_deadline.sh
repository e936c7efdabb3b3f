#!/usr/bin/env bash
# Deadline compensation by the ledger's own timer: (1) the device credits its wallet and dies
# before reporting: the ledger compensates (REPORT_MISSING), and the report that `qc-wallet
# sync` finally sends makes it LATE_CONFIRMED; (2) the device disconnects right after the
# Reserve (it holds an allow it never judged): the ledger compensates and sync abandons the
# load on the device, which applied nothing.
. "$(dirname "$0")/lib.sh"
readonly DEADLINE_MS=3000 SETTLE_WAIT_S=20
e2e_begin deadline
cluster_up --deadline-ms $DEADLINE_MS
account_new ALICE-001 100000
wallet_new w1 ALICE-001
serial=$(wallet_serial w1)
reserved_txn() { q --json device show "$serial" | jq -r .reserved_txn; }
is_state() { [ "$(load_state "$1")" == "$2" ]; }

# (1) Credited, report never sent.
if QC_FAULT=wallet.after_credit_before_report wallet_load w1 ALICE-001 20.00; then
  fail "the wallet survived its fault point: $(cat "$X/w1.out")"
fi
txn=$(reserved_txn)
[ -n "$txn" ] || fail "no load reserved after the wallet died before its report"
assert_eq "ledger state before the deadline" RESERVED "$(load_state "$txn")"
assert_eq "wallet credited before the report" 2000 "$(wallet_balance w1)"
assert_eq "account debited" 98000 "$(account_balance ALICE-001)"
wait_until $SETTLE_WAIT_S "load $txn compensated at its deadline" is_state "$txn" COMPENSATED
assert_eq "reason of the compensation" REPORT_MISSING "$(q --json load show "$txn" | jq -r .reason)"
assert_eq "account refunded by the compensation" 100000 "$(account_balance ALICE-001)"
check_ok
wallet_run w1 sync || fail "sync after the deadline: $(cat "$X/w1.out")"
assert_match "sync's outcome" 'LATE_CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "ledger state after sync" LATE_CONFIRMED "$(load_state "$txn")"
assert_eq "account debited again" 98000 "$(account_balance ALICE-001)"
assert_eq "wallet balance after sync" 2000 "$(wallet_balance w1)"
assert_match "wallet state after sync" '^IDLE' "$(wallet_field w1 state)"
check_ok
assert_eq "wallets == FLOAT after sync" 2000 "$(float_total)"

# (2) Disconnected after the Reserve.
if QC_FAULT=wallet.after_allow_received wallet_load w1 ALICE-001 30.00; then
  fail "the wallet survived its fault point: $(cat "$X/w1.out")"
fi
txn=$(reserved_txn)
[ -n "$txn" ] || fail "no load reserved after the wallet died holding its allow"
assert_eq "account debited by the reserve" 95000 "$(account_balance ALICE-001)"
assert_eq "wallet not credited" 2000 "$(wallet_balance w1)"
wait_until $SETTLE_WAIT_S "load $txn compensated at its deadline" is_state "$txn" COMPENSATED
assert_eq "reason of the compensation" REPORT_MISSING "$(q --json load show "$txn" | jq -r .reason)"
assert_eq "account refunded" 98000 "$(account_balance ALICE-001)"
wallet_run w1 sync || true
e2e_log "sync said: $(tr '\n' ' ' <"$X/w1.out")"
assert_match "wallet state after sync" '^IDLE' "$(wallet_field w1 state)"
assert_eq "wallet balance after sync" 2000 "$(wallet_balance w1)"
assert_eq "wallet counter after sync" 1 "$(wallet_counter w1)"
assert_eq "ledger state after sync" COMPENSATED "$(load_state "$txn")"
assert_eq "account after sync" 98000 "$(account_balance ALICE-001)"
wallet_load w1 ALICE-001 1.00 || fail "load after the abandoned one: $(cat "$X/w1.out")"
assert_match "next load" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"

# (3) A late proof by the counter: w1's report is lost and its load compensated at the
# deadline; w1's next request (counter c+1) proves it applied it: LATE_CONFIRMED.
if QC_FAULT=wallet.after_credit_before_report wallet_load w1 ALICE-001 4.00; then
  fail "the wallet survived its fault point"
fi
txn=$(q --json device show "$serial" | jq -r .reserved_txn)
[ -n "$txn" ] || fail "no load reserved"
wait_until $SETTLE_WAIT_S "load $txn compensated at its deadline" is_state "$txn" COMPENSATED
assert_eq "account refunded" 97900 "$(account_balance ALICE-001)"
counter=$(wallet_counter w1)
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 100 --counter "$counter" \
  --balance "$(wallet_balance w1)")
assert_eq "next request (counter c+1)" QC_OK "$(forge_code "$line")"
assert_eq "the compensated load, proven applied by the counter" LATE_CONFIRMED "$(load_state "$txn")"
assert_eq "reason" COUNTER_PROVES_APPLIED "$(q --json load show "$txn" | jq -r .reason)"
next=$(sed -n 's/.*txn=\([0-9a-f]*\).*/\1/p' <<<"$line")
line=$(forge report $(forge_as w1) --account ALICE-001 --txn "$next" --counter "$counter" \
  --balance "$(wallet_balance w1)" --status rejected --reason "test: not applied")
assert_eq "REJECTED report of the probe request" "QC_OK state=LOAD_COMPENSATED" "$line"
assert_eq "account debited again" 97500 "$(account_balance ALICE-001)"
wallet_run w1 sync || fail "sync: $(cat "$X/w1.out")"
assert_match "sync" 'LATE_CONFIRMED' "$(cat "$X/w1.out")"
check_ok
assert_eq "wallets == FLOAT" "$(wallet_balance w1)" "$(float_total)"

# (4) A late report after the money was spent elsewhere: POOR-001 holds exactly one load; p1's
# report is lost and compensated, p2 (same account) spends the refund, then p1's report
# arrives: LATE_CONFIRMED, the account goes negative and is flagged for the operator, and no
# money was created.
account_new POOR-001 2000
wallet_new p1 POOR-001
wallet_new p2 POOR-001
if QC_FAULT=wallet.after_credit_before_report wallet_load p1 POOR-001 20.00; then
  fail "the wallet survived its fault point"
fi
txn=$(q --json device show "$(wallet_serial p1)" | jq -r .reserved_txn)
[ -n "$txn" ] || fail "no load reserved for p1"
wait_until $SETTLE_WAIT_S "load $txn compensated at its deadline" is_state "$txn" COMPENSATED
wallet_load p2 POOR-001 20.00 || fail "p2 spending the refund: $(cat "$X/p2.out")"
assert_eq "POOR-001 emptied by p2" 0 "$(account_balance POOR-001)"
wallet_run p1 sync || fail "p1's sync: $(cat "$X/p1.out")"
assert_match "p1's sync" 'LATE_CONFIRMED' "$(cat "$X/p1.out")"
assert_eq "p1's load" LATE_CONFIRMED "$(load_state "$txn")"
assert_eq "the late load is flagged" true "$(q --json load show "$txn" | jq -r .flagged)"
assert_eq "POOR-001 overdrawn" -2000 "$(account_balance POOR-001)"
assert_eq "POOR-001 marked overdrawn" true "$(q --json account show POOR-001 | jq -r .overdrawn)"
e2e_end
