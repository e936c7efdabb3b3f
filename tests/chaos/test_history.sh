#!/usr/bin/env bash
# Every line the chaos run writes to its history parses as JSON and says what the call was told,
# whatever the call: a load, a healing sync (its number is "heal1": written bare, that made
# invalid JSON and failed the checker with exit 4), a failed call whose output quotes a message.
# Environment (CTest): QC_SOURCE_DIR.
set -euo pipefail
: "${QC_SOURCE_DIR:?set by CTest}"
. "$QC_SOURCE_DIR/tests/chaos/history.sh"
X=$(mktemp -d "${TMPDIR:-/tmp}/qc-chaos-history.XXXXXX")
trap 'rm -rf "$X"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

T1=7313d70c110f1e6ad17c421653b4f182
T2=00112233445566778899aabbccddeeff
# A sync during healing that was told a late confirmation (qc-wallet's own words).
printf 'Bank outcome: LATE_CONFIRMED. Wallet balance: 12.34 (counter 7).\nTransaction: %s\n' \
  "$T1" >"$X/heal.out"
# A load that first finished the previous one, then was confirmed itself.
printf 'Bank outcome: COMPENSATED. Wallet balance: 1.00 (counter 3).\nTransaction: %s\n' "$T1" >"$X/load.out"
printf 'Load from account ACCT-1 into wallet QC1\n  amount:      1.02 (currency 156)\n' >>"$X/load.out"
printf 'Bank outcome: CONFIRMED. Wallet balance: 2.02 (counter 4).\nTransaction: %s\n' "$T2" >>"$X/load.out"
# A failed call: a refusal with quotes and a backslash, a fault point's JSON log line, no outcome.
printf 'qc-wallet: the bank refused the load: "already settled" \\ (QC_ESTATE)\n' >"$X/fail.out"
printf '{"level":"error","event":"fault.fired","point":"wallet.after_allow_received"}\n' >>"$X/fail.out"
printf 'Transaction: %s\n' "$T2" >>"$X/fail.out"

h=$X/w1.jsonl
history_line w1 heal1 sync "" - 0 "$X/heal.out" >>"$h"
history_line w1 12 load 1.02 - 0 "$X/load.out" >>"$h"
history_line w1 13 load 0.39 wallet.after_allow_received 134 "$X/fail.out" >>"$h"
history_line w1 heal40 sync "" - 1 /dev/null >>"$h"

[ "$(wc -l <"$h")" -eq 4 ] || fail "4 calls wrote $(wc -l <"$h") lines"
i=0
while IFS= read -r line; do
  i=$((i + 1))
  jq -e 'type == "object"' <<<"$line" >/dev/null 2>&1 || fail "history line $i does not parse: $line"
done <"$h"
# What qc-chaos-check and the run's fault counts read from the history, field by field.
expect() { # JQ WANT
  local got
  got=$(jq -sc "$1" "$h") || fail "jq $1 on the history failed"
  [ "$got" == "$2" ] || fail "$1: got $got, want $2"
}
expect '[.[].n]' '["heal1","12","13","heal40"]'
expect '[.[].rc]' '[0,0,134,1]'
expect '[.[] | select(.rc != 0)] | length' '2'
expect '[.[].acks | length]' '[1,2,0,0]'
expect '.[1].acks' "[{\"txn\":\"$T1\",\"outcome\":\"COMPENSATED\"},{\"txn\":\"$T2\",\"outcome\":\"CONFIRMED\"}]"
expect '[.[].txn]' "[\"$T1\",\"$T2\",\"$T2\",\"\"]"
expect '[.[].fault]' '["-","-","wallet.after_allow_received","-"]'
expect '[.[] | .t | test("^[0-9]+\\.[0-9]+$")] | all' 'true'
# qc-chaos-check's own reading of the acks.
acks=$(jq -r '.wallet as $w | (.acks // [])[] | ["ack", $w, .txn, .outcome] | @tsv' "$h")
[ "$acks" == "$(printf 'ack\tw1\t%s\tLATE_CONFIRMED\nack\tw1\t%s\tCOMPENSATED\nack\tw1\t%s\tCONFIRMED' "$T1" "$T1" "$T2")" ] ||
  fail "the checker reads the acks as: $acks"
echo "PASS: every history line parses and holds what its call was told"
