#!/usr/bin/env bash
# The signer signs by role and kind: allows and outcomes for ledger keys only, checkpoints for
# the audit key only. The gateway's CURVE key gets nothing signed: the signer's allow-list does
# not even admit it, and when an operator admits it by mistake the role check still refuses it
# (QC_EROLE), counts it, logs it and sends it to the audit log as a security event, and signs
# nothing. A ledger key asking for a checkpoint is refused alike.
. "$(dirname "$0")/lib.sh"
readonly CALL_TIMEOUT_MS=1500 RELOAD_WAIT_S=10 LOG_WAIT_S=10 AUDIT_WAIT_S=20
e2e_begin signer_roles
cluster_up --deadline-ms 10000
signer_ep=$(sed -n 's/^listen = //p' "$X/conf/signer-0.conf")
signer_pub=$(tr -d '\n' <"$X/keys/signer.key.pub")
signer_http=$(sed -n 's/^http_port = //p' "$X/conf/signer-0.conf")
sign_as() { # KEYNAME KIND: the first word of e2e_forge's line
  forge_code "$("$FORGE" sign --endpoint "$signer_ep" --server-key "$signer_pub" \
    --curve-keys "$X/keys/$1.key" --kind "$2" --amount 100000 --timeout-ms $CALL_TIMEOUT_MS)"
}
metric() { curl -sf "http://127.0.0.1:$signer_http/metrics" | sed -n "s/^$1 //p"; }
signed() { metric "qc_signer_signatures_total{kind=\"$1\"}"; }
refused() { metric "qc_signer_refused_total{kind=\"$1\"}"; }
is_role_refused() { [ "$(sign_as gateway-0 allow)" == QC_EROLE ]; }

# As ops/cluster sets it up, the gateway's key is not even admitted: the handshake fails.
assert_eq "a LoadAllow asked with the gateway's key" QC_ETIMEOUT "$(sign_as gateway-0 allow)"
assert_eq "an AuditCheckpoint asked with the gateway's key" QC_ETIMEOUT "$(sign_as gateway-0 checkpoint)"

# An operator adds the gateway's key to the signer's allow-list by mistake and reloads.
{ tr -d '\n' <"$X/keys/gateway-0.key.pub"; echo; } >>"$X/keys/signers.allow"
kill -HUP "$(cat "$X/pids/signer-0.pid")"
wait_until $RELOAD_WAIT_S "the signer admits the gateway's key and refuses it by role" is_role_refused
assert_eq "a LoadOutcome asked with the gateway's key" QC_EROLE "$(sign_as gateway-0 outcome)"
assert_eq "an AuditCheckpoint asked with the gateway's key" QC_EROLE "$(sign_as gateway-0 checkpoint)"
assert_eq "an AuditCheckpoint asked with a ledger key" QC_EROLE "$(sign_as ledger checkpoint)"
assert_eq "a LoadAllow asked with the audit key" QC_EROLE "$(sign_as audit allow)"
assert_eq "allows signed" 0 "$(signed load_allow)"
assert_eq "outcomes signed" 0 "$(signed load_outcome)"
assert_ge "allows refused by role (the gateway's, the audit key's)" 2 "$(refused load_allow)"
assert_eq "outcomes refused by role (the gateway's)" 1 "$(refused load_outcome)"
assert_eq "checkpoints refused by role (the gateway's, the ledger's)" 2 "$(refused audit_checkpoint)"
gw_pub=$(tr -d '\n' <"$X/keys/gateway-0.key.pub")
# A Z85 key holds regex characters: a fixed-string match.
wait_until $LOG_WAIT_S "the signer logs the refusal as a security event" \
  grep -qF "\"event\":\"security.sign_refused\",\"peer\":\"$gw_pub\",\"kind\":\"load_allow\"" \
  "$X/logs/signer-0.log"
audit_refusals() { "$B/audit/qc-audit" export --dir "$X/data/audit-0" 2>/dev/null | grep -c 'security.sign_refused' || true; }
has_audit_refusals() { [ "$(audit_refusals)" -ge 5 ]; }
wait_until $AUDIT_WAIT_S "the refusals reach the audit log" has_audit_refusals

# The bank still signs for the ledger, after the debit: a load goes through.
account_new ALICE-001 100000
wallet_new w1 ALICE-001
wallet_load w1 ALICE-001 10.00 || fail "load: $(cat "$X/w1.out")"
assert_match "load" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
assert_eq "allows signed, for the ledger" 1 "$(signed load_allow)"
assert_eq "outcomes signed, for the ledger" 1 "$(signed load_outcome)"
e2e_end
