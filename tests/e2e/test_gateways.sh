#!/usr/bin/env bash
# The gateway holds nothing: a load whose allow came through gateway-0, which is then killed
# (SIGKILL), is finished through gateway-1; a load reserved through gateway-1 is settled by a
# report through gateway-0 after it restarted; and a wallet that knows both gateways (the
# cluster's wallet.conf) fails over by itself when one is down.
. "$(dirname "$0")/lib.sh"
e2e_begin gateways
cluster_up --gateways 2 --deadline-ms 30000
account_new ALICE-001 100000
wallet_new w1 ALICE-001
# The wallet is pointed at one gateway at a time, to know which one served it.
use_gateway() { # G
  printf 'gateway = tcp://127.0.0.1:%s\ngateway_key = %s\n' "$((E2E_BASE_PORT + 1 + $1))" \
    "$(tr -d '\n' <"$X/keys/gateway-$1.key.pub")" >"$X/w1/wallet.conf"
}

use_gateway 0
if QC_FAULT=wallet.after_credit_before_report wallet_load w1 ALICE-001 8.00; then
  fail "the wallet survived its fault point"
fi
txn=$(q --json device show "$(wallet_serial w1)" | jq -r .reserved_txn)
[ -n "$txn" ] || fail "no load reserved"
"$S/ops/cluster" kill gateway-0 --dir "$X" >/dev/null
use_gateway 1
wallet_run w1 sync || fail "sync through gateway-1: $(cat "$X/w1.out")"
assert_match "outcome through the other gateway" 'CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "ledger state" CONFIRMED "$(load_state "$txn")"

if QC_FAULT=wallet.after_credit_before_report wallet_load w1 ALICE-001 2.00; then
  fail "the wallet survived its fault point"
fi
txn=$(q --json device show "$(wallet_serial w1)" | jq -r .reserved_txn)
[ -n "$txn" ] || fail "no load reserved through gateway-1"
"$S/ops/cluster" start gateway-0 --dir "$X" >/dev/null || fail "restart gateway-0"
use_gateway 0
wallet_run w1 sync || fail "sync through the restarted gateway-0: $(cat "$X/w1.out")"
assert_match "outcome through the restarted gateway" 'CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "ledger state" CONFIRMED "$(load_state "$txn")"
assert_eq "wallet balance" 1000 "$(wallet_balance w1)"
assert_eq "account balance" 99000 "$(account_balance ALICE-001)"

# Every gateway answers to the one key devices know, so the wallet's own failover works.
cp "$X/conf/wallet.conf" "$X/w1/wallet.conf"
"$S/ops/cluster" stop gateway-0 --dir "$X" >/dev/null
wallet_load w1 ALICE-001 3.00 || fail "load with gateway-0 down: $(cat "$X/w1.out")"
assert_match "outcome with gateway-0 down" 'CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "wallet balance" 1300 "$(wallet_balance w1)"
assert_eq "account balance" 98700 "$(account_balance ALICE-001)"
e2e_end
