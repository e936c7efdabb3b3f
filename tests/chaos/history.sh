# tests/chaos/history.sh - the history of a chaos run: one JSON line per qc-wallet call, in
# DIR/chaos/history/NAME.jsonl. Sourced by `run` (and by test_history.sh, which parses what it
# writes). Every value goes through jq, so that no value (a healing call's "heal3", a quote in a
# message) can make a line that does not parse; qc-chaos-check reads these lines with jq.
#
# A line: {"wallet": NAME, "n": the call's load number or "healI" (a string), "verb",
#          "amount", "fault", "rc": exit status (a number), "txn": the last transaction the
#          call named, "acks": [{"txn", "outcome"}] the outcomes it was told, "t": epoch time}

# history_acks OUT: the outcomes a call's output told, as a JSON array: "Bank outcome: X."
# then "Transaction: T" make {"txn": T, "outcome": X}.
history_acks() {
  awk '/^Bank outcome:/ { o = $3; sub(/\.$/, "", o) }
       /^Transaction:/ { if (o != "") print $2 "\t" o; o = "" }' "$1" |
    jq -Rnc '[inputs | split("\t") | {txn: .[0], outcome: .[1]}]'
}

# history_line NAME N VERB AMOUNT FAULT RC OUT: the history line of one call, from its
# arguments, exit status and output file.
history_line() {
  local acks txn
  [[ $6 =~ ^[0-9]+$ ]] || { echo "history_line: exit status '$6' is not a number" >&2; return 2; }
  acks=$(history_acks "$7")
  txn=$(sed -n 's/^Transaction: //p' "$7" | tail -1)
  jq -nc --arg wallet "$1" --arg n "$2" --arg verb "$3" --arg amount "$4" --arg fault "$5" \
    --argjson rc "$6" --arg txn "$txn" --argjson acks "$acks" --arg t "$(date +%s.%N)" \
    '{wallet: $wallet, n: $n, verb: $verb, amount: $amount, fault: $fault, rc: $rc, txn: $txn,
      acks: $acks, t: $t}'
}
