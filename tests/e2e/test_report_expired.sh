#!/usr/bin/env bash
# A device whose certificate expires while its load is in flight: its report is still the
# evidence of what it applied and settles the load (refusing it let the deadline refund a load
# the device holds: money created); a new load under the expired certificate is refused.
. "$(dirname "$0")/lib.sh"
readonly CERT_LIFE_S=8
e2e_begin report_expired
cluster_up --deadline-ms 30000
account_new ALICE-001 100000
wallet_new w1 ALICE-001 --no-enroll

# A certificate that expires CERT_LIFE_S from now (ops/devca issues whole days).
end=$(date -u -d "+$CERT_LIFE_S seconds" +%Y%m%d%H%M%SZ)
start=$(date -u -d '-1 hour' +%Y%m%d%H%M%SZ)
openssl ca -batch -config "$X/ca/openssl.cnf" -extensions device_cert -startdate "$start" \
  -enddate "$end" -subj "/CN=$(wallet_serial w1)" -notext -in "$X/w1/device.csr" \
  -out "$X/w1/short.pem" 2>"$X/openssl.log" ||
  { cat "$X/openssl.log" >&2; fail "could not make a short-lived certificate"; }
expires=$(date +%s -d "+$CERT_LIFE_S seconds")
"$WALLET" install-cert --home "$X/w1" "$X/w1/short.pem" >/dev/null || fail "install-cert"
q device enroll "$X/w1/short.pem" --account ALICE-001 >/dev/null || fail "enroll"

# The device applies the load and dies before its report leaves.
if QC_FAULT=wallet.after_credit_before_report wallet_load w1 ALICE-001 5.00; then
  fail "the wallet survived its fault point"
fi
assert_eq "wallet credited" 500 "$(wallet_balance w1)"
while [ "$(date +%s)" -le "$expires" ]; do sleep 0.5; done

# Back after its certificate expired: the report settles the load all the same.
wallet_run w1 sync || fail "sync after the certificate expired: $(cat "$X/w1.out")"
assert_match "outcome" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
log_has "$X/logs/gateway-0.log" 'report.certificate_no_longer_valid' ||
  fail "the gateway did not log the expired certificate's report"
assert_eq "account balance" 99500 "$(account_balance ALICE-001)"

# A new load under the expired certificate is refused, and nothing moves.
if wallet_load w1 ALICE-001 1.00; then fail "a load under an expired certificate went through"; fi
assert_match "refusal" 'QC_ECERTEXPIRED' "$(cat "$X/w1.out")"
assert_eq "account balance after the refusal" 99500 "$(account_balance ALICE-001)"
assert_eq "wallet balance after the refusal" 500 "$(wallet_balance w1)"
e2e_end
