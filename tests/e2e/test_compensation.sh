#!/usr/bin/env bash
# Compensation: a device that refuses a forged allow reports REJECTED and the ledger gives the
# money back (COMPENSATED); a report whose content does not match the load compensates it too.
. "$(dirname "$0")/lib.sh"
e2e_begin compensation
cluster_up --deadline-ms 5000
account_new ALICE-001 100000
wallet_new w1 ALICE-001
wallet_load w1 ALICE-001 10.00 || fail "first load: $(cat "$X/w1.out")"
serial=$(wallet_serial w1)

# A man in the middle alters the allow: first its amount under the bank's signature, then
# re-signed with a key of its own. The device refuses both and reports REJECTED.
for mode in amount resign; do
  mitm_start w1 "$mode"
  if wallet_load w1 ALICE-001 5.00; then :; fi
  out=$(cat "$X/w1.out")
  txn=$(q --json device show "$serial" | jq -r .reserved_txn)
  assert_eq "no load left reserved after the forged allow ($mode)" "" "$txn"
  assert_match "the wallet reports the outcome of the forged allow ($mode)" 'COMPENSATED' "$out"
  txn=$(sed -n 's/^Transaction: //p' "$X/w1.out")
  [ -n "$txn" ] || txn=$(jq -r 'select(.event == "load.requested") | .txn' "$X/w1/oplog.jsonl" | tail -1)
  assert_eq "ledger state of the forged-allow load ($mode)" COMPENSATED "$(load_state "$txn")"
  assert_match "ledger reason ($mode)" "^REPORT_REJECTED: allow" "$(q --json load show "$txn" | jq -r .reason)"
  assert_eq "wallet balance after the forged allow ($mode)" 1000 "$(wallet_balance w1)"
  assert_eq "wallet counter after the forged allow ($mode)" 1 "$(wallet_counter w1)"
  assert_eq "account balance after the forged allow ($mode)" 99000 "$(account_balance ALICE-001)"
  assert_match "wallet state ($mode)" '^IDLE' "$(wallet_field w1 state)"
  mitm_stop w1
  check_ok
done
assert_match "the man in the middle altered allows" 'mitm altered an allow \(QC_OK\)' "$(cat "$X/logs/mitm.log")"

# A report signed by the device but not matching the load (its allow digest names no allow):
# the ledger compensates.
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 700 --counter 1 --balance 1000)
assert_eq "forged request of the mismatch case" QC_OK "$(forge_code "$line")"
txn=$(sed -n 's/.*txn=\([0-9a-f]*\).*/\1/p' <<<"$line")
assert_eq "account debited while reserved" 98300 "$(account_balance ALICE-001)"
line=$(forge report $(forge_as w1) --account ALICE-001 --txn "$txn" --counter 2 --balance 1700 --status applied)
assert_eq "reply to a mismatching report" "QC_OK state=LOAD_COMPENSATED" "$line"
assert_eq "ledger reason of the mismatch" REPORT_MISMATCH "$(q --json load show "$txn" | jq -r .reason)"
assert_eq "account balance after the mismatch" 99000 "$(account_balance ALICE-001)"
# The device never saw that load: it still loads normally.
wallet_load w1 ALICE-001 1.00 || fail "load after the mismatch: $(cat "$X/w1.out")"
assert_match "load after the compensations" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "account balance at the end" 98900 "$(account_balance ALICE-001)"
e2e_end
