#!/usr/bin/env bash
# A service client whose CURVE key is not in the allow-lists reaches neither the ledger nor
# the signer: its calls time out and the servers log rpc.refused. The same calls with allowed
# keys are answered (so the refusal is about the key, not the endpoint).
. "$(dirname "$0")/lib.sh"
readonly CALL_TIMEOUT_MS=1500 ALLOWED_TIMEOUT_MS=5000 LOG_WAIT_S=5
e2e_begin curve_refused
cluster_up --deadline-ms 5000
"$B/ops/tools/qc-curve-keygen" "$X/keys/stranger.key" >/dev/null || fail "qc-curve-keygen"
ledger_ep=$(sed -n 's/^listen = //p' "$X/conf/ledger-0.conf")
signer_ep=$(sed -n 's/^listen = //p' "$X/conf/signer-0.conf")
ledger_pub=$(tr -d '\n' <"$X/keys/ledger.key.pub")
signer_pub=$(tr -d '\n' <"$X/keys/signer.key.pub")
refusals() { grep -c '"event":"rpc.refused"' "$1" || true; }
more_refusals() { [ "$(refusals "$1")" -gt "$2" ]; }

# The ledger: qcctl with the stranger's key.
n=$(refusals "$X/logs/ledger-0.log")
rc=0
out=$("$QCCTL" --config "$X/conf/qcctl.conf" --curve-key "$X/keys/stranger.key" \
  --timeout-ms $CALL_TIMEOUT_MS account open EVE-001 2>&1) || rc=$?
assert_eq "qcctl with a stranger's key: exit (3 = no shard answered; it said: ${out##*qcctl: })" 3 "$rc"
wait_until $LOG_WAIT_S "ledger logs rpc.refused" more_refusals "$X/logs/ledger-0.log" "$n"
# The key is a pattern (-e: a Z85 key may begin with '-'), and grep reads all its input (no -q:
# under pipefail, the first grep dying of SIGPIPE would fail the check).
stranger=$(tr -d '\n' <"$X/keys/stranger.key.pub")
grep '"event":"rpc.refused"' "$X/logs/ledger-0.log" | grep -F -e "$stranger" >/dev/null ||
  fail "the ledger's rpc.refused lines do not name the stranger's key"
# ... and with e2e_forge, a raw call.
line=$("$FORGE" call --endpoint "$ledger_ep" --server-key "$ledger_pub" \
  --curve-keys "$X/keys/stranger.key" --method check --timeout-ms $CALL_TIMEOUT_MS)
assert_eq "raw ledger call with a stranger's key" QC_ETIMEOUT "$(forge_code "$line")"
if q account show EVE-001 >/dev/null 2>&1; then fail "the stranger opened an account"; fi

# The signer: a sign request with the stranger's key, then the same with the ledger's (the one
# service that asks it for allows and outcomes).
n=$(refusals "$X/logs/signer-0.log")
line=$("$FORGE" call --endpoint "$signer_ep" --server-key "$signer_pub" \
  --curve-keys "$X/keys/stranger.key" --method sign --timeout-ms $CALL_TIMEOUT_MS)
assert_eq "signer call with a stranger's key" QC_ETIMEOUT "$(forge_code "$line")"
wait_until $LOG_WAIT_S "signer logs rpc.refused" more_refusals "$X/logs/signer-0.log" "$n"
line=$("$FORGE" call --endpoint "$signer_ep" --server-key "$signer_pub" \
  --curve-keys "$X/keys/ledger.key" --method sign --timeout-ms $ALLOWED_TIMEOUT_MS)
assert_match "signer call with the ledger's key is answered" '^QC_E(DECODE|MISSING|INVAL)' "$line"
line=$("$FORGE" call --endpoint "$ledger_ep" --server-key "$ledger_pub" \
  --curve-keys "$X/keys/qcctl.key" --method no-such-method --timeout-ms $ALLOWED_TIMEOUT_MS)
assert_match "ledger call with qcctl's key is answered" '^QC_E' "$line"
[ "$(forge_code "$line")" != QC_ETIMEOUT ] || fail "the ledger did not answer an allowed key"
e2e_end
