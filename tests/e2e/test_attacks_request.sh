#!/usr/bin/env bash
# Attacks on the load request, each refused with its code and nothing debited: the replay of a
# used request, the amount changed after signing, a request signed with another device's key,
# another device's certificate claiming this device, a stale counter, and a device that is not
# bound to the account it loads from.
. "$(dirname "$0")/lib.sh"
e2e_begin attacks_request
cluster_up --deadline-ms 5000
account_new ALICE-001 100000
account_new BOB-001 100000
wallet_new w1 ALICE-001
wallet_new w2 BOB-001

# One genuine load through a recording (not altering) man in the middle.
mitm_start w1 none --save "$X/used-request"
wallet_load w1 ALICE-001 10.00 || fail "genuine load: $(cat "$X/w1.out")"
assert_match "genuine load" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
mitm_stop w1
[ -s "$X/used-request" ] || fail "the man in the middle recorded no request"
wallet_load w2 BOB-001 3.00 || fail "w2's load: $(cat "$X/w2.out")"

before_alice=$(account_balance ALICE-001)
before_bob=$(account_balance BOB-001)
before_check=$(q check | jq -c '[.shards[].currencies]')
nothing_moved() { # WHAT
  assert_eq "ALICE-001 after $1" "$before_alice" "$(account_balance ALICE-001)"
  assert_eq "BOB-001 after $1" "$before_bob" "$(account_balance BOB-001)"
  assert_eq "ledger totals after $1" "$before_check" "$(q check | jq -c '[.shards[].currencies]')"
  assert_eq "no load reserved after $1" 0 "$(q check | jq '[.shards[].reserved] | add')"
  check_ok
}

# Replay of the used (confirmed) request, byte for byte: the saga is idempotent by txn id, and
# a settled load is never allowed again.
line=$(forge send --method load --in "$X/used-request")
assert_eq "replay of a used request" QC_ESTATE "$(forge_code "$line")"
nothing_moved "the replay"

# The same signed request sent as a report: the signature covers the type's context, so a
# body signed as one type never verifies as another.
line=$(forge send --method report --in "$X/used-request")
assert_eq "a request replayed as a report" QC_EBADSIG "$(forge_code "$line")"
nothing_moved "the request replayed as a report"

# Malformed input: bytes that are no protobuf, an unknown method, a request without its certificate.
printf '\xff\xff\xff not a protobuf' >"$X/garbage" # 0xff: field 31, wire type 7 (none)
line=$(forge send --method load --in "$X/garbage")
assert_eq "bytes that are no protobuf as a request" QC_EDECODE "$(forge_code "$line")"
line=$(forge send --method unload --in "$X/used-request")
assert_eq "unknown method" QC_EMETHOD "$(forge_code "$line")"
line=$(forge request --key "$X/w1/device.key" --cert - --device "$(wallet_serial w1)" \
  --account ALICE-001 --amount 500 --counter 1 --balance 1000)
assert_eq "request without a certificate" QC_EMISSING "$(forge_code "$line")"
nothing_moved "the malformed input"

# Amount changed after signing (the signature is kept).
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 500 --counter 1 --balance 1000 \
  --no-send --save "$X/unsent-request")
line=$(forge tamper --in "$X/unsent-request" --amount 50000)
assert_eq "amount changed after signing" QC_EBADSIG "$(forge_code "$line")"
nothing_moved "the altered amount"

# Signed with w2's key, carrying w1's certificate and naming w1.
w1_serial=$(wallet_serial w1)
line=$(forge request --key "$X/w2/device.key" --cert "$X/w1/device.pem" --device "$w1_serial" \
  --account ALICE-001 --amount 500 --counter 1 --balance 1000)
assert_eq "request signed by another device's key" QC_EKEYID "$(forge_code "$line")"
nothing_moved "another device's key"

# w2's own key and certificate, but the body names w1 (and w1's account).
line=$(forge request --key "$X/w2/device.key" --cert "$X/w2/device.pem" --device "$w1_serial" \
  --account ALICE-001 --amount 500 --counter 1 --balance 1000)
assert_eq "another device's certificate claiming w1" QC_EDEVICEID "$(forge_code "$line")"
nothing_moved "the claimed identity"

# A counter below the device's: an old state of the device.
line=$(forge request $(forge_as w1) --account ALICE-001 --amount 500 --counter 0 --balance 0)
assert_eq "stale counter" QC_ESTALE "$(forge_code "$line")"
nothing_moved "the stale counter"

# w1 is bound to ALICE-001, not to BOB-001: the real wallet is refused.
if wallet_load w1 BOB-001 1.00; then fail "a load from an unbound account succeeded"; fi
assert_match "device not bound to the account" 'not bound to this account' "$(cat "$X/w1.out")"
assert_match "wallet back to idle" '^IDLE' "$(wallet_field w1 state)"
# The same with a forged request, to see the code itself.
line=$(forge request $(forge_as w1) --account BOB-001 --amount 500 --counter 1 --balance 1000)
assert_eq "forged request on an unbound account" QC_ENOTBOUND "$(forge_code "$line")"
nothing_moved "the unbound account"
assert_eq "w1 balance" 1000 "$(wallet_balance w1)"
assert_eq "w2 balance" 300 "$(wallet_balance w2)"
e2e_end
