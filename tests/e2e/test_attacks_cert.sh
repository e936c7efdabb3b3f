#!/usr/bin/env bash
# Certificates: a device revoked by the operator (qcctl device revoke), a certificate revoked
# by the CA (ops/devca revoke, read by the running gateway without a restart) and an expired
# certificate are refused with their codes, and nothing is debited.
. "$(dirname "$0")/lib.sh"
e2e_begin attacks_cert
cluster_up --deadline-ms 5000
account_new ALICE-001 100000
wallet_new w1 ALICE-001
wallet_new w2 ALICE-001
wallet_new w3 ALICE-001
wallet_new w4 ALICE-001
wallet_new w5 ALICE-001
for w in w1 w2 w3; do
  wallet_load "$w" ALICE-001 1.00 || fail "first load of $w: $(cat "$X/$w.out")"
done
before=$(account_balance ALICE-001)
nothing_moved() { # WHAT
  assert_eq "ALICE-001 after $1" "$before" "$(account_balance ALICE-001)"
  assert_eq "no load reserved after $1" 0 "$(q check | jq '[.shards[].reserved] | add')"
  check_ok
}

# Revoked by the operator while a load is in flight: the device's report still settles it
# (revocation stops new loads, not the evidence of one the device applied).
if QC_FAULT=wallet.after_credit_before_report wallet_load w4 ALICE-001 5.00; then
  fail "the wallet survived its fault point"
fi
txn=$(q --json device show "$(wallet_serial w4)" | jq -r .reserved_txn)
[ -n "$txn" ] || fail "no load reserved for w4"
q device revoke "$(wallet_serial w4)" >/dev/null || fail "qcctl device revoke w4"
wallet_run w4 sync || fail "w4's sync after its revocation: $(cat "$X/w4.out")"
assert_match "w4's report after its revocation" 'Bank outcome: CONFIRMED' "$(cat "$X/w4.out")"
assert_eq "w4's load" CONFIRMED "$(load_state "$txn")"
if wallet_load w4 ALICE-001 1.00; then fail "a revoked device loaded"; fi
assert_match "w4's next load" 'device revoked' "$(cat "$X/w4.out")"
before=$(account_balance ALICE-001)

# Revoked by the operator in the ledger's device registry.
q device revoke "$(wallet_serial w1)" >/dev/null || fail "qcctl device revoke"
if wallet_load w1 ALICE-001 2.00; then fail "a revoked device loaded"; fi
assert_match "load of a revoked device" 'device revoked' "$(cat "$X/w1.out")"
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 200 --counter 1 --balance 100)
assert_eq "forged request of a revoked device" QC_EREVOKED "$(forge_code "$line")"
nothing_moved "the operator's revocation"

# Revoked by the CA while the gateway runs: the next load is refused. w5's certificate is revoked
# while its load is in flight (credited, report not yet sent).
if QC_FAULT=wallet.after_credit_before_report wallet_load w5 ALICE-001 6.00; then
  fail "the wallet survived its fault point"
fi
w5_txn=$(q --json device show "$(wallet_serial w5)" | jq -r .reserved_txn)
[ -n "$w5_txn" ] || fail "no load reserved for w5"
"$S/ops/devca" revoke "$X/ca" "$X/w2/device.pem" >/dev/null || fail "devca revoke w2"
"$S/ops/devca" revoke "$X/ca" "$X/w5/device.pem" >/dev/null || fail "devca revoke w5"
# No restart: the running gateway sees the new CRL file within a second
# (gateway/gateway_trust.h) and re-reads it.
for _ in $(seq 1 50); do
  log_has "$X/logs/gateway-0.log" '"event":"gateway.crl_reloaded"' && break
  sleep 0.1
done
log_has "$X/logs/gateway-0.log" '"event":"gateway.crl_reloaded"' ||
  fail "the running gateway did not re-read the CRL the CA changed"
sleep 1.5 # the two revocations are two files: let the next poll see the second one too
# w5's report still settles its load (the gateway used to refuse it, and the deadline then
# refunded a load the device held, for ever out of step with FLOAT).
wallet_run w5 sync || fail "w5's sync after the CA revoked it: $(cat "$X/w5.out")"
assert_match "w5's report after the CRL revoked it" 'Bank outcome: CONFIRMED' "$(cat "$X/w5.out")"
assert_eq "w5's load" CONFIRMED "$(load_state "$w5_txn")"
log_has "$X/logs/gateway-0.log" '"event":"report.certificate_no_longer_valid"' ||
  fail "the gateway did not log the report made under a revoked certificate"
if wallet_load w5 ALICE-001 1.00; then fail "a device with a revoked certificate loaded"; fi
assert_match "w5's next load" 'certificate revoked' "$(cat "$X/w5.out")"
before=$(account_balance ALICE-001)
if wallet_load w2 ALICE-001 2.00; then fail "a device with a revoked certificate loaded"; fi
assert_match "load with a revoked certificate" 'certificate revoked' "$(cat "$X/w2.out")"
line=$(forge request $(forge_as w2) --account ALICE-001 --amount 200 --counter 1 --balance 100)
assert_eq "forged request with a revoked certificate" QC_ECERTREVOKED "$(forge_code "$line")"
nothing_moved "the CA's revocation"

# Expired: a certificate for w3's key and serial, valid only in 2020 (ops/devca issues only
# certificates valid from now, so this one is made with openssl ca directly).
openssl ca -batch -config "$X/ca/openssl.cnf" -extensions device_cert \
  -startdate 20200101000000Z -enddate 20200201000000Z -subj "/CN=$(wallet_serial w3)" -notext \
  -in "$X/w3/device.csr" -out "$X/w3/expired.pem" 2>"$X/openssl.log" ||
  { cat "$X/openssl.log" >&2; fail "could not make an expired certificate"; }
line=$(forge request --key "$X/w3/device.key" --cert "$X/w3/expired.pem" --device "$(wallet_serial w3)" \
  --account ALICE-001 --amount 200 --counter 1 --balance 100)
assert_eq "request with an expired certificate" QC_ECERTEXPIRED "$(forge_code "$line")"
nothing_moved "the expired certificate"
# The same device with its valid certificate still loads: the refusals were about the
# certificates, not the device.
wallet_load w3 ALICE-001 2.00 || fail "w3's load with its valid certificate: $(cat "$X/w3.out")"
assert_match "w3's load" 'Bank outcome: CONFIRMED' "$(cat "$X/w3.out")"
assert_eq "w1 balance" 100 "$(wallet_balance w1)"
assert_eq "w2 balance" 100 "$(wallet_balance w2)"
assert_eq "w3 balance" 300 "$(wallet_balance w3)"
assert_eq "w4 balance" 500 "$(wallet_balance w4)"
assert_eq "w5 balance" 600 "$(wallet_balance w5)"
e2e_end
