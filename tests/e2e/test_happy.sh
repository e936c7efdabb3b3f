#!/usr/bin/env bash
# The happy path: one wallet, three loads, each CONFIRMED; the account is debited exactly the
# amounts, the wallet holds them, FLOAT equals the wallet.
. "$(dirname "$0")/lib.sh"
e2e_begin happy
cluster_up --deadline-ms 5000
account_new ALICE-001 100000
wallet_new w1 ALICE-001

for amount in 12.34 0.01 100.00; do
  wallet_load w1 ALICE-001 "$amount" || fail "load $amount: $(cat "$X/w1.out")"
  assert_match "outcome of load $amount" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
done
assert_eq "wallet balance" 11235 "$(wallet_balance w1)"
assert_eq "wallet counter" 3 "$(wallet_counter w1)"
assert_eq "account balance" $((100000 - 11235)) "$(account_balance ALICE-001)"
txn=$(sed -n 's/^Transaction: //p' "$X/w1.out")
assert_eq "ledger state of the last load" CONFIRMED "$(load_state "$txn")"
assert_eq "ledger's device counter" 3 "$(q --json device show "$(wallet_serial w1)" | jq -r .counter)"

# More than the account holds: refused with QC_EFUNDS, nothing debited.
if wallet_load w1 ALICE-001 10000.00; then fail "an overdraft load succeeded"; fi
assert_match "overdraft refusal" 'insufficient funds' "$(cat "$X/w1.out")"
assert_eq "account balance after the refusal" $((100000 - 11235)) "$(account_balance ALICE-001)"
assert_eq "wallet balance after the refusal" 11235 "$(wallet_balance w1)"

# The other business refusals reach the device with their words, and nothing moves: an
# amount over the account's per-load limit, a wallet over its cap, a frozen account.
account_new LIMITED-001 100000 --load-max 500
wallet_new w2 LIMITED-001 --wallet-cap 800
if wallet_load w2 LIMITED-001 6.00; then fail "a load over the account's limit succeeded"; fi
assert_match "load over the limit" "outside the account's limits" "$(cat "$X/w2.out")"
wallet_load w2 LIMITED-001 5.00 || fail "load within the limit: $(cat "$X/w2.out")"
if wallet_load w2 LIMITED-001 4.00; then fail "a load over the wallet cap succeeded"; fi
assert_match "load over the wallet cap" 'exceed its cap' "$(cat "$X/w2.out")"
q account freeze LIMITED-001 >/dev/null || fail "qcctl account freeze"
if wallet_load w2 LIMITED-001 1.00; then fail "a load from a frozen account succeeded"; fi
assert_match "load from a frozen account" 'account frozen' "$(cat "$X/w2.out")"
assert_eq "LIMITED-001 balance" 99500 "$(account_balance LIMITED-001)"
assert_eq "w2 balance" 500 "$(wallet_balance w2)"
assert_match "w2 idle" '^IDLE' "$(wallet_field w2 state)"
e2e_end
