#!/usr/bin/env bash
# Forged reports are not the device speaking: an APPLIED report signed with a key that is not
# the certificate's, and one signed by another enrolled device naming this one, are refused
# as security events and settle nothing; the ledger's deadline then compensates the load.
. "$(dirname "$0")/lib.sh"
readonly DEADLINE_MS=3000 SETTLE_WAIT_S=20
e2e_begin attacks_report
cluster_up --deadline-ms $DEADLINE_MS
account_new ALICE-001 100000
account_new MALLORY-001 100000
wallet_new w1 ALICE-001
wallet_new m1 MALLORY-001
serial=$(wallet_serial w1)
is_state() { [ "$(load_state "$1")" == "$2" ]; }

# w1 dies holding its allow: the load stays RESERVED, nobody applied it.
if QC_FAULT=wallet.after_allow_received wallet_load w1 ALICE-001 25.00; then
  fail "the wallet survived its fault point"
fi
txn=$(q --json device show "$serial" | jq -r .reserved_txn)
[ -n "$txn" ] || fail "no load reserved"
assert_eq "account debited by the reserve" 97500 "$(account_balance ALICE-001)"

# Signed with m1's key, carrying w1's certificate.
line=$(forge report --key "$X/m1/device.key" --cert "$X/w1/device.pem" --device "$serial" \
  --account ALICE-001 --txn "$txn" --counter 1 --balance 2500 --status applied)
assert_eq "report signed with another key" QC_EKEYID "$(forge_code "$line")"
# m1's own key and certificate, naming w1.
line=$(forge report --key "$X/m1/device.key" --cert "$X/m1/device.pem" --device "$serial" \
  --account ALICE-001 --txn "$txn" --counter 1 --balance 2500 --status applied)
assert_eq "report of another device naming w1" QC_EDEVICEID "$(forge_code "$line")"
assert_eq "load still reserved after the forged reports" RESERVED "$(load_state "$txn")"
assert_eq "gateway security events" 2 "$(grep -c '"event":"security.bad_report"' "$X/logs/gateway-0.log")"

wait_until $SETTLE_WAIT_S "load $txn compensated at its deadline" is_state "$txn" COMPENSATED
assert_eq "reason" REPORT_MISSING "$(q --json load show "$txn" | jq -r .reason)"
assert_eq "account refunded" 100000 "$(account_balance ALICE-001)"
assert_eq "MALLORY-001 untouched" 100000 "$(account_balance MALLORY-001)"
wallet_run w1 sync || true
assert_match "w1 idle after sync" '^IDLE' "$(wallet_field w1 state)"
assert_eq "w1 balance" 0 "$(wallet_balance w1)"
assert_eq "m1 balance" 0 "$(wallet_balance m1)"

# The evidence reached the audit log: both forged reports (the gateway's security events, the
# exact bytes received) and the signer's signatures, delivered at least once and kept once.
audit_types() {
  rm -rf "$X/audit-copy" && cp -r "$X/data/audit-0" "$X/audit-copy" &&
    "$QCCTL" audit export --dir "$X/audit-copy" | jq -r .type
}
audit_has_reports() { [ "$(audit_types | grep -c '^security.bad_report$')" -eq 2 ]; }
wait_until $SETTLE_WAIT_S "the forged reports in the audit log" audit_has_reports
assert_ge "signatures of allows in the audit log" 1 "$(audit_types | grep -c '^sign.load_allow$')"
"$QCCTL" audit verify --dir "$X/audit-copy" --cert "$X/hsm/keys/audit-checkpoint-v1.cert.pem" \
  >"$X/verify.out" || fail "audit verify: $(cat "$X/verify.out")"
e2e_end
