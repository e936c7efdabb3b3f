#!/usr/bin/env bash
# test_failover.sh - a ledger shard of 3 replicas (a Raft group) loses its leader to kill -9 in
# the middle of a bounded qc-loadgen run. A new leader serves within seconds; every load ends
# final (none left RESERVED once the report deadline has passed); the killed replica, started
# again, catches up; and `qcctl check` is ok on every replica, the three agreeing on every total.
# The clients (gateway, audit relay, qcctl, qc-loadgen's admin) follow the leader by
# themselves: nothing is reconfigured.
source "$(dirname "$0")/lib.sh"
e2e_begin failover

readonly LOADS=300 DEVICES=20 CONCURRENCY=8 DEADLINE_MS=4000
readonly LEADER_S=20    # a first leader after start
readonly NEW_LEADER_S=15 # a new leader after the kill (the figure of the issue: "seconds")
readonly AFTER_LOADS=100 AFTER_DEVICES=10
readonly CATCH_UP_S=30

cluster_up --replicas 3 --deadline-ms "$DEADLINE_MS"

# leader_id: the shard's leader as the reachable replicas report it (empty when none). qcctl
# exits 3 while a replica is down: the JSON is what counts.
leader_id() {
  { q --json --timeout-ms 1000 shard status --shard 0 2>/dev/null || true; } |
    jq -r '.shards[0].leader_id // empty'
}
has_leader() { [ -n "$(leader_id)" ]; }
has_new_leader() { local l; l=$(leader_id); [ -n "$l" ] && [ "$l" != "$1" ]; }
loads_on_shard() { { q check 2>/dev/null || true; } | jq '.shards[0].loads // 0'; }

wait_until "$LEADER_S" "a leader elected" has_leader
old=$(leader_id)
e2e_log "leader: ledger-0-$old"

"$B/client/loadgen/qc-loadgen" --dir "$X" --devices "$DEVICES" --mode closed \
  --concurrency "$CONCURRENCY" --loads "$LOADS" --floor-ms 0 --progress false \
  --json "$X/result.json" >"$X/loadgen.out" 2>"$X/loadgen.err" &
lg=$!
E2E_PIDS+=("$lg")

# Kill the leader once the measured run is well under way (warm-up loads count too).
past_start() { [ "$(loads_on_shard)" -ge $((DEVICES + 40)) ]; }
wait_until 60 "loads under way" past_start
"$S/ops/cluster" kill "ledger-0-$old" --dir "$X" >/dev/null
t0=$(date +%s.%N)
e2e_log "kill -9 ledger-0-$old with $(loads_on_shard) loads on the shard"
wait_until "$NEW_LEADER_S" "a new leader after kill -9" has_new_leader "$old"
new=$(leader_id)
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
e2e_log "FIGURE seconds to a new leader after kill -9: $secs (ledger-0-$new)"

# The run ends by itself (bounded by --loads and each call's budget). While no leader is
# known the replicas answer QC_ENOQUORUM (or QC_ENOTLEADER naming nobody), and the gateway's
# client waits the election out within its budget (rpc_timeout_ms, 3 s): no load may be
# refused for want of a leader. Each load still ends, with its outcome or refused for another
# reason; one whose report was refused is settled by the deadline.
wait "$lg" || e2e_log "qc-loadgen exited $? (some loads failed during the change of leader)"
cat "$X/loadgen.out" >&2
r=$X/result.json
no_leader=$(jq '[.errors | to_entries[] | select(.key | test("ENOQUORUM|ENOTLEADER")) | .value] | add // 0' "$r")
e2e_log "FIGURE loads refused for want of a leader: $no_leader; failed in all: $(jq -r .failed "$r") of $LOADS ($(jq -c .errors "$r"))"
assert_eq "loads refused QC_ENOQUORUM or QC_ENOTLEADER during the election" 0 "$no_leader"
assert_eq "loads started" "$LOADS" "$(jq -r .started "$r")"
assert_eq "loads that ended (an outcome or a refusal each)" "$LOADS" \
  "$(($(jq -r .completed "$r") + $(jq -r .failed "$r")))"
assert_ge "loads CONFIRMED" 1 "$(jq -r '.outcomes.CONFIRMED // 0' "$r")"

# The new leader serves: a second run, through the same gateway, loses no load.
"$B/client/loadgen/qc-loadgen" --dir "$X" --devices "$AFTER_DEVICES" --mode closed \
  --concurrency "$CONCURRENCY" --loads "$AFTER_LOADS" --floor-ms 0 --progress false \
  --json "$X/after.json" >"$X/after.out" 2>"$X/after.err" || { cat "$X/after.out" >&2; fail "qc-loadgen after the change of leader"; }
assert_eq "loads CONFIRMED by the new leader" "$AFTER_LOADS" "$(jq -r '.outcomes.CONFIRMED // 0' "$X/after.json")"
assert_eq "loads refused by the new leader" 0 "$(jq -r .failed "$X/after.json")"
e2e_log "FIGURE loads/s through the new leader (ASan build): $(jq -r .loads_per_s "$X/after.json")"

# Every load final: after the report deadline nothing is RESERVED, on the leader...
none_reserved() { [ "$(q check | jq '.shards[0].reserved')" == 0 ]; }
wait_until $((DEADLINE_MS / 1000 + 15)) "no load RESERVED after the deadline" none_reserved

# ...and, once the killed replica is back and has caught up, on every replica alike.
"$S/ops/cluster" start "ledger-0-$old" --dir "$X" >/dev/null || fail "restart ledger-0-$old"
replicas_agree() {
  local c
  c=$(q check --replicas) || return 1
  [ "$(jq '[.shards[] | select(.ok)] | length' <<<"$c")" == 3 ] &&
    [ "$(jq -c '[.shards[] | {loads, reserved, transfers, currencies}] | unique | length' <<<"$c")" == 1 ]
}
wait_until "$CATCH_UP_S" "every replica checks ok and agrees" replicas_agree
c=$(q check --replicas)
e2e_log "check on every replica: $(jq -c '[.shards[] | {endpoint, ok, loads, reserved}]' <<<"$c")"
assert_eq "qcctl check ok on every replica" true "$(jq -r .ok <<<"$c")"
assert_eq "no load RESERVED on any replica" 0 "$(jq '[.shards[].reserved] | add' <<<"$c")"
assert_ge "loads on each replica (both runs' warm-ups and CONFIRMED at least)" \
  $((DEVICES + AFTER_DEVICES + AFTER_LOADS + $(jq -r '.outcomes.CONFIRMED // 0' "$r"))) \
  "$(jq '[.shards[].loads] | min' <<<"$c")"
all_caught_up() {
  local st
  st=$(q --json shard status --shard 0) &&
    [ "$(jq '[.shards[0].replicas[] | select(.reachable and .lag == 0)] | length' <<<"$st")" == 3 ]
}
wait_until 10 "3 replicas reachable, none lagging" all_caught_up
# e2e_end's wallet sum does not apply: qc-loadgen's devices live in its memory, not in wallets.
check_ok
e2e_log "PASS"
