#!/usr/bin/env bash
# Many loads from many devices at once: 8 wallets x 4 loads on 2 ledger shards behind 2
# gateways (half the wallets talk to each). Every load is CONFIRMED, every account is debited
# exactly its loads, and both shards and both gateways did work.
. "$(dirname "$0")/lib.sh"
readonly WALLETS=8 LOADS=4 AMOUNT=1.25 AMOUNT_MINOR=125 FUNDS=100000
e2e_begin parallel
cluster_up --gateways 2 --shards 2 --deadline-ms 10000

for i in $(seq 1 $WALLETS); do
  account_new "ACCT-$i" $FUNDS
  wallet_new "w$i" "ACCT-$i"
  # Each gateway has its own CURVE key, so a wallet is pointed at one gateway with its key.
  g=$((i % 2))
  cat >"$X/w$i/wallet.conf" <<CONF
gateway = tcp://127.0.0.1:$((E2E_BASE_PORT + 1 + g))
gateway_key = $(tr -d '\n' <"$X/keys/gateway-$g.key.pub")
CONF
done

run_wallet() { # i: LOADS loads in a row, each must be CONFIRMED
  local i=$1 n
  for n in $(seq 1 $LOADS); do
    wallet_load "w$i" "ACCT-$i" $AMOUNT || { echo "w$i load $n: $(cat "$X/w$i.out")"; return 1; }
    grep -q 'Bank outcome: CONFIRMED' "$X/w$i.out" || { echo "w$i load $n: $(cat "$X/w$i.out")"; return 1; }
  done
}
start=$(date +%s.%N)
pids=()
for i in $(seq 1 $WALLETS); do
  run_wallet "$i" >"$X/run-w$i.log" 2>&1 &
  pids+=("$!")
  E2E_PIDS+=("$!")
done
failed=0
for i in $(seq 1 $WALLETS); do
  wait "${pids[$((i - 1))]}" || { failed=1; cat "$X/run-w$i.log" >&2; }
done
e2e_log "$((WALLETS * LOADS)) loads in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
assert_eq "every wallet's loads confirmed" 0 "$failed"

for i in $(seq 1 $WALLETS); do
  assert_eq "w$i balance" $((LOADS * AMOUNT_MINOR)) "$(wallet_balance "w$i")"
  assert_eq "w$i counter" $LOADS "$(wallet_counter "w$i")"
  assert_eq "ACCT-$i balance" $((FUNDS - LOADS * AMOUNT_MINOR)) "$(account_balance "ACCT-$i")"
done
check=$(q check)
assert_eq "loads on the shards" $((WALLETS * LOADS)) "$(jq '[.shards[].loads] | add' <<<"$check")"
assert_eq "shards that served loads" 2 "$(jq '[.shards[] | select(.loads > 0)] | length' <<<"$check")"
for g in 0 1; do
  port=$(sed -n 's/^http_port = //p' "$X/conf/gateway-$g.conf")
  allowed=$(curl -sf "http://127.0.0.1:$port/metrics" | sed -n 's/^qc_gateway_loads_total{result="allowed"} //p')
  # At least: a wallet whose call timed out re-sends the same request, answered again.
  assert_ge "loads allowed by gateway-$g" $((WALLETS * LOADS / 2)) "${allowed%.*}"
done
e2e_end
