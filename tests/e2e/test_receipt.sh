#!/usr/bin/env bash
# Receipts (issue 18): a device proves its load is in the bank's audit log, through the
# gateway, under a tree head the HSM signed; the next head is taken only with its consistency
# proof; the exported receipt verifies offline under the audit-checkpoint certificate and no
# other; qcctl audit prove and verify agree on a copy of the log.
. "$(dirname "$0")/lib.sh"
e2e_begin receipt
cluster_up --deadline-ms 5000
account_new ALICE-001 100000
wallet_new w1 ALICE-001
cp_cert=$X/hsm/keys/audit-checkpoint-v1.cert.pem
"$WALLET" install-bank --home "$X/w1" --allow "$X/hsm/keys/allow-signing-v1.cert.pem" \
  --outcome "$X/hsm/keys/outcome-signing-v1.cert.pem" --checkpoint "$cp_cert" >/dev/null ||
  fail "install-bank --checkpoint"

# receipt_until PATTERN: asks for the receipt of $txn until its output matches PATTERN (the
# load's entries wait at most one checkpoint period, 10 s, for a signed head).
receipt_until() {
  for _ in $(seq 1 30); do
    if "$WALLET" receipt "$txn" --home "$X/w1" "${@:2}" >"$X/receipt.out" 2>&1 &&
      grep -q "$1" "$X/receipt.out"; then
      return 0
    fi
    sleep 1
  done
  fail "no receipt matching '$1': $(cat "$X/receipt.out")"
}

wallet_load w1 ALICE-001 12.34 || fail "load: $(cat "$X/w1.out")"
txn=$(sed -n 's/^Transaction: //p' "$X/w1.out")
receipt_until 'load.confirmed'
out=$(cat "$X/receipt.out")
assert_match "the request is proven" 'load.reserved .*inclusion proof verified' "$out"
assert_match "the allow is proven" 'load.allowed .*inclusion proof verified' "$out"
assert_match "the first head is kept" 'first tree head seen' "$out"
[ -f "$X/w1/treehead" ] || fail "the wallet kept no tree head"

# Another load: a later head, taken with its consistency proof from the kept one.
wallet_load w1 ALICE-001 1.00 || fail "second load: $(cat "$X/w1.out")"
receipt_until 'extends the one seen before' --export "$X/receipt.bin"
[ ! -f "$X/w1/treehead.fork" ] || fail "a fork was reported on an honest log"

# Offline, anywhere: the bank's audit-checkpoint certificate and no other key.
out=$("$WALLET" verify-receipt "$X/receipt.bin" --checkpoint "$cp_cert") ||
  fail "verify-receipt: $out"
assert_match "the exported receipt verifies" "ok: the receipt verifies" "$out"
if "$WALLET" verify-receipt "$X/receipt.bin" --checkpoint "$X/hsm/keys/allow-signing-v1.cert.pem" \
  >/dev/null 2>&1; then
  fail "a receipt verified under the allow-signing key"
fi
# A byte of the receipt changed (an entry's last byte, near the end of the file).
size=$(stat -c %s "$X/receipt.bin")
cp "$X/receipt.bin" "$X/bad.bin"
printf '\x7a' | dd of="$X/bad.bin" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
if cmp -s "$X/receipt.bin" "$X/bad.bin"; then
  printf '\x7b' | dd of="$X/bad.bin" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
fi
if "$WALLET" verify-receipt "$X/bad.bin" --checkpoint "$cp_cert" >/dev/null 2>&1; then
  fail "an altered receipt verified"
fi

# The operator's view of the same load, on a copy of the log.
cp -r "$X/data/audit-0" "$X/audit-copy"
out=$("$QCCTL" audit prove --json --dir "$X/audit-copy" --cert "$cp_cert" "$txn") ||
  fail "qcctl audit prove: $out"
assert_eq "qcctl audit prove verified" true "$(jq -r .verified <<<"$out")"
assert_eq "entries of the load proven" 3 "$(jq '.entries | length' <<<"$out")"
out=$("$QCCTL" audit verify --json --dir "$X/audit-copy" --cert "$cp_cert") ||
  fail "qcctl audit verify: $out"
assert_eq "verify ok" true "$(jq -r .ok <<<"$out")"
assert_eq "every checkpoint is a tree head" "$(jq .checkpoints <<<"$out")" "$(jq .tree_heads <<<"$out")"
e2e_end
