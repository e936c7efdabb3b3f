#!/usr/bin/env bash
# test_audit_witness.sh - the audit log survives the loss of one machine (issue 14): two
# independent audit witnesses each pull every ledger outbox and take every gateway and signer
# event. Witness audit-1 is killed with SIGKILL in the middle of a bounded qc-loadgen run and
# its store wiped. Then:
#  - audit-0 holds every event: the shard's outbox seqs 1..N without a hole, acked to the
#    end, and every CONFIRMED load's reserve, allow and outcome; `qcctl audit verify` ok;
#  - the ledger kept for audit-1 every event audit-1 had not acked (its lag gauge);
#  - audit-1 started on an empty store refuses to append across the hole (audit.relay_gap);
#  - audit-1 rebuilt from a hot copy of audit-0 (mdb_copy, docs/OPERATIONS.md) catches up and
#    holds the same ledger events as audit-0, and verifies;
#  - with audit-0 killed too, a device's receipt is served from audit-1 through the gateway.
source "$(dirname "$0")/lib.sh"
e2e_begin audit_witness

readonly LOADS=150 DEVICES=10 CONCURRENCY=4 DEADLINE_MS=4000
readonly CATCH_UP_S=30

cluster_up --audits 2 --deadline-ms "$DEADLINE_MS"
cp_cert=$X/hsm/keys/audit-checkpoint-v1.cert.pem
ledger_metrics() { curl -sf --max-time 2 "http://127.0.0.1:$((E2E_BASE_PORT + 340))/metrics"; }
lag_of() { { ledger_metrics || true; } | sed -n "s/^qc_ledger_outbox_lag{consumer=\"$1\"} //p"; }
loads_on_shard() { { q check 2>/dev/null || true; } | jq '.shards[0].loads // 0'; }
assert_eq "ledger names both witnesses" "audit_consumers = audit-0,audit-1" \
  "$(grep '^audit_consumers' "$X/conf/ledger-0.conf")"

# copy_log WITNESS DEST: a consistent copy of a running witness's LMDB (a read transaction).
copy_log() { rm -rf "$2" && mkdir -p "$2" && mdb_copy "$X/data/$1" "$2"; }
# ledger_seqs DIR: the source_seq of every shard-0 event of the log copy in DIR, sorted.
ledger_seqs() { "$QCCTL" audit export --dir "$1" | jq -r 'select(.source == "ledger-0") | .source_seq' | sort -n; }

"$B/client/loadgen/qc-loadgen" --dir "$X" --devices "$DEVICES" --mode closed \
  --concurrency "$CONCURRENCY" --loads "$LOADS" --floor-ms 0 --progress false \
  --json "$X/result.json" >"$X/loadgen.out" 2>"$X/loadgen.err" &
lg=$!
E2E_PIDS+=("$lg")
past_start() { [ "$(loads_on_shard)" -ge $((DEVICES + 30)) ]; }
wait_until 60 "loads under way" past_start

# The machine of audit-1 is lost: the process and its disk.
"$S/ops/cluster" kill audit-1 --dir "$X" >/dev/null
rm -rf "$X/data/audit-1" && mkdir -p "$X/data/audit-1"
lag_at_kill=$(lag_of audit-1)
e2e_log "kill -9 audit-1 and wipe its store with $(loads_on_shard) loads on the shard (its lag $lag_at_kill)"

wait "$lg" || { cat "$X/loadgen.out" >&2; fail "qc-loadgen while a witness was lost"; }
r=$X/result.json
confirmed=$(jq -r '.outcomes.CONFIRMED // 0' "$r")
assert_eq "loads CONFIRMED with one witness lost" "$LOADS" "$confirmed"
none_reserved() { [ "$(q check | jq '.shards[0].reserved')" == 0 ]; }
wait_until $((DEADLINE_MS / 1000 + 15)) "no load RESERVED after the deadline" none_reserved

# The ledger kept what audit-1 never acked: its lag grew by every event since the kill, while
# audit-0 caught up to the end.
audit0_done() { [ "$(lag_of audit-0)" == 0 ]; }
wait_until "$CATCH_UP_S" "audit-0 acked every outbox event" audit0_done
lag1=$(lag_of audit-1)
assert_ge "events kept for the lost audit-1 (its lag)" $((lag_at_kill + LOADS)) "$lag1"
depth=$({ ledger_metrics || true; } | sed -n 's/^qc_ledger_outbox_depth //p')
assert_eq "outbox depth == what audit-1 lacks" "$lag1" "$depth"

# audit-0 holds every event of the shard, 1..N without a hole, and every CONFIRMED load's
# reserve, allow and outcome.
copy_log audit-0 "$X/copy-0"
ledger_seqs "$X/copy-0" >"$X/seqs-0"
n=$(wc -l <"$X/seqs-0")
assert_eq "audit-0's shard events are 1..N" "$(seq 1 "$n" | md5sum)" "$(md5sum <"$X/seqs-0")"
"$QCCTL" audit export --dir "$X/copy-0" |
  jq -r 'select(.source == "ledger-0" and (.type | startswith("load."))) | "\(.txn_id) \(.type)"' |
  sort -u >"$X/load-events"
with() { awk -v t="$1" '$2 == t { print $1 }' "$X/load-events" | sort -u; }
with load.confirmed >"$X/confirmed"
assert_ge "loads CONFIRMED in audit-0 (the run's and the warm-ups')" "$confirmed" "$(wc -l <"$X/confirmed")"
assert_eq "CONFIRMED loads without their reserve in audit-0" 0 \
  "$(comm -23 "$X/confirmed" <(with load.reserved) | wc -l)"
assert_eq "CONFIRMED loads without their allow in audit-0" 0 \
  "$(comm -23 "$X/confirmed" <(with load.allowed) | wc -l)"
assert_eq "loads on the shard == loads reserved in audit-0" "$(loads_on_shard)" "$(with load.reserved | wc -l)"
out=$("$QCCTL" audit verify --json --dir "$X/copy-0" --cert "$cp_cert") || fail "verify audit-0: $out"
assert_eq "audit-0 verifies" true "$(jq -r .ok <<<"$out")"

# audit-1 started on a new, empty store (made by init, as on a new disk: a service refuses a
# missing one): the shard deleted events both witnesses had acked, so its first event is not
# seq 1, and the relay appends nothing across the hole.
"$B/audit/qc-audit" init --config "$X/conf/audit-1.conf" >/dev/null || fail "init audit-1's new store"
"$S/ops/cluster" start audit-1 --dir "$X" >/dev/null || fail "start audit-1 on an empty store"
gap_logged() { log_has "$X/logs/audit-1.log" 'audit.relay_gap'; }
wait_until 15 "audit-1 on an empty store refuses the hole" gap_logged
"$S/ops/cluster" stop audit-1 --dir "$X" >/dev/null
copy_log audit-1 "$X/copy-1"
assert_eq "shard events appended by the empty audit-1" 0 "$(ledger_seqs "$X/copy-1" | wc -l)"

# The runbook: rebuild audit-1 from a hot copy of audit-0 and start it. It acks what the copy
# holds and pulls the rest, which the ledger kept for it.
rm -rf "$X/data/audit-1" && mkdir -p "$X/data/audit-1"
mdb_copy "$X/data/audit-0" "$X/data/audit-1" || fail "mdb_copy of audit-0"
# Events after the copy, while audit-1 is still down: only the ledger's outbox has them for it.
for i in 1 2 3; do account_new "after-copy-$i" 100 >/dev/null; done
"$S/ops/cluster" start audit-1 --dir "$X" >/dev/null || fail "start the rebuilt audit-1"
audit1_done() { [ "$(lag_of audit-1)" == 0 ]; }
wait_until "$CATCH_UP_S" "the rebuilt audit-1 acked every outbox event" audit1_done
drained() { [ "$({ ledger_metrics || true; } | sed -n 's/^qc_ledger_outbox_depth //p')" == 0 ]; }
wait_until "$CATCH_UP_S" "the outbox drained once both witnesses acked" drained
copy_log audit-0 "$X/copy-0"
copy_log audit-1 "$X/copy-1"
assert_eq "audit-1 holds the same shard events as audit-0" \
  "$(ledger_seqs "$X/copy-0" | md5sum)" "$(ledger_seqs "$X/copy-1" | md5sum)"
assert_ge "shard events in the rebuilt audit-1 (the copy's and those pulled after it)" \
  $((n + 3)) "$(ledger_seqs "$X/copy-1" | wc -l)"
out=$("$QCCTL" audit verify --json --dir "$X/copy-1" --cert "$cp_cert") || fail "verify audit-1: $out"
assert_eq "the rebuilt audit-1 verifies" true "$(jq -r .ok <<<"$out")"
# Gateway and signer events reach both witnesses too: signatures of allows in each.
for w in 0 1; do
  assert_ge "signatures of allows in audit-$w" 1 \
    "$("$QCCTL" audit export --dir "$X/copy-$w" | jq -r .type | grep -c '^sign.load_allow$')"
done

# Receipts: a gateway forwards a device's receipt to the first witness that is up. With
# audit-0 lost as well, the device's load is proven from audit-1's log, under a head the HSM
# signed.
account_new ALICE-001 100000
wallet_new w1 ALICE-001
"$WALLET" install-bank --home "$X/w1" --allow "$X/hsm/keys/allow-signing-v1.cert.pem" \
  --outcome "$X/hsm/keys/outcome-signing-v1.cert.pem" --checkpoint "$cp_cert" >/dev/null ||
  fail "install-bank --checkpoint"
wallet_load w1 ALICE-001 12.34 || fail "load: $(cat "$X/w1.out")"
txn=$(sed -n 's/^Transaction: //p' "$X/w1.out")
"$S/ops/cluster" kill audit-0 --dir "$X" >/dev/null
receipt_confirmed() {
  "$WALLET" receipt "$txn" --home "$X/w1" >"$X/receipt.out" 2>&1 &&
    grep -q 'load.confirmed' "$X/receipt.out"
}
wait_until 40 "a receipt from audit-1 with audit-0 killed" receipt_confirmed
assert_match "the request proven from audit-1's log" 'load.reserved .*inclusion proof verified' \
  "$(cat "$X/receipt.out")"
check_ok
e2e_log "PASS"
