#!/usr/bin/env bash
# netns_long.sh - the long multi-host campaign (not in the default CTest run: -DQC_NETNS_LONG=ON
# registers it as deploy_netns_long; or run it by hand, as root, under the ports lock):
#   QC_SOURCE_DIR=$PWD QC_BINARY_DIR=$PWD/build/asan flock /tmp/qc-ports.lock tests/deploy/netns_long.sh
# Nine hosts in network namespaces rendered from one inventory (ops/deploy), then, each phase
# with loads from qc-loadgen (bounded in count and time) and the invariants after healing:
#   1. loads across hosts (a figure: loads/s, p50 and p99);
#   2. the shard's leader cut from its followers during a run;
#   3. the gateway cut from the shard during a run;
#   4. the audit host cut off (link down) during a run: loads go on, the outbox grows, and the
#      relay catches up once the link is back;
#   5. loss, a delay and a rate limit on every ledger host and the gateway (tc netem, or
#      iptables statistic + qc-netdelay + tbf where the kernel has no sch_netem);
#   6. a replica added from the inventory (render, reload, start with join, qcctl shard
#      add-replica as the render prints it) and a second gateway, then loads through both.
# Every FIGURE line is a measurement. LOADS scales every run (default 200).
NSX_NAME=netns_long
NSX_WATCHDOG_S=${NSX_WATCHDOG_S:-840}
NSX_INVENTORY="
host gw1 10.77.2.1
host gw2 10.77.2.2
host sig 10.77.2.3
host aud 10.77.2.4
host adm 10.77.2.5
host l1 10.77.2.11
host l2 10.77.2.12
host l3 10.77.2.13
host l4 10.77.2.14
gateway gw1
signer sig
audit aud
admin adm
replica 0 l1
replica 0 l2
replica 0 l3
set deadline_ms 5000
set log_level warn"
case "${1:-}" in -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
source "$(dirname "$0")/netns_lib.sh"
readonly LOADS=${LOADS:-200} DEVICES=${DEVICES:-20} CONC=${CONC:-8}
confirmed_total=0

# run_bg OUT LOADS: a qc-loadgen run in the background (its pid in LG).
run_bg() {
  nsx_loadgen "$1" "$2" "$DEVICES" "$CONC" &
  LG=$!
}
# finish OUT: waits for the run, prints its figures, adds its CONFIRMED to the total.
finish() {
  wait "$LG" || nsx_log "qc-loadgen $1 exited $? (loads refused while a link was down)"
  local c
  c=$(lg "$1" '.outcomes.CONFIRMED // 0')
  confirmed_total=$((confirmed_total + c))
  assert_eq "$1: loads that ended (an outcome or a refusal each)" "$(lg "$1" .started)" \
    "$(($(lg "$1" .completed) + $(lg "$1" .failed)))"
  nsx_log "FIGURE $1: $(lg "$1" .started) loads, CONFIRMED $c, failed $(lg "$1" .failed), $(lg "$1" .loads_per_s) loads/s, request to allow p50 $(lg "$1" .latency_ms.request_allow.p50) ms, p99 $(lg "$1" .latency_ms.request_allow.p99) ms"
}
under_way() { [ -s "$X/$1.err" ] && grep -q 'warm-up' "$X/$1.err"; }
metric() { # HOST PORT NAME: a metric's value on a service of HOST
  nsx_exec "$1" curl -sf --max-time 2 "http://127.0.0.1:$2/metrics" | awk -v n="$3" '$1 == n { print $2 }'
}

nsx_begin
nsx_up

# 1. Loads across hosts.
nsx_loadgen base "$LOADS" "$DEVICES" "$CONC" || fail "qc-loadgen across hosts: $(tail -3 "$X/base.err")"
LG=0
assert_eq "loads CONFIRMED across hosts" "$LOADS" "$(lg base '.outcomes.CONFIRMED // 0')"
confirmed_total=$((confirmed_total + LOADS))
nsx_log "FIGURE base: $LOADS loads, $(lg base .loads_per_s) loads/s, request to allow p50 $(lg base .latency_ms.request_allow.p50) ms, p99 $(lg base .latency_ms.request_allow.p99) ms"

# 2. The leader cut from its followers during a run.
old=$(leader_id)
oh=$(replica_host "$old")
run_bg leadercut "$LOADS"
wait_until 60 "the run under way" under_way leadercut
sleep 2
for id in 1 2 3; do [ "$id" = "$old" ] || nsx_cut "$oh" "$(replica_host "$id")"; done
t0=$(now_s)
new_leader() { local l; l=$(leader_id); [ -n "$l" ] && [ "$l" != "$old" ] && [ "$(role_of "$l")" = leader ]; }
wait_until 20 "a new leader on the majority side" new_leader
nsx_log "FIGURE leader cut: a new leader in $(since "$t0") s (ledger-0-$old -> ledger-0-$(leader_id))"
old_not_leader() { [ "$(role_of "$old")" != leader ]; }
wait_until 20 "the cut-off leader steps down" old_not_leader
sleep 3
nsx_heal
finish leadercut
nsx_invariants "$confirmed_total"

# 3. The gateway cut from the shard during a run: its loads are refused or time out, none is
# lost; those reserved before the cut whose report could not come are compensated at the
# deadline, and a late report still confirms.
run_bg gwcut "$LOADS"
wait_until 60 "the run under way" under_way gwcut
sleep 2
for h in l1 l2 l3; do nsx_cut gw1 "$h"; done
sleep 6
nsx_heal
finish gwcut
assert_ge "gwcut: loads refused while the gateway was cut off" 1 "$(lg gwcut .failed)"
nsx_invariants "$confirmed_total"

# 4. The audit host cut off during a run: the loads do not need it; the ledger's outbox keeps
# the events (durable) and the relay catches up when the link is back.
lh=$(replica_host "$(leader_id)")
lport=$(http_of "ledger-0-$(leader_id)")
run_bg auditcut "$LOADS"
nsx_link_down aud
wait "$LG" || true
depth=$(q check | jq '.shards[0].outbox_depth')
nsx_log "FIGURE audit cut: outbox depth after $LOADS loads: $depth"
assert_ge "outbox events waiting while audit is cut off (qcctl check)" 1 "$depth"
# The alert's gauge (QuancunOutboxBacklog) sees them too, within its refresh period.
gauge_up() { local g; g=$(metric "$lh" "$lport" qc_ledger_outbox_depth); [ "${g:-0}" -ge 1 ]; }
wait_until 5 "qc_ledger_outbox_depth on the leader" gauge_up
LG=0
c=$(lg auditcut '.outcomes.CONFIRMED // 0')
assert_eq "loads CONFIRMED with the audit cut off" "$LOADS" "$c"
confirmed_total=$((confirmed_total + c))
nsx_heal
t0=$(now_s)
drained() { [ "$(q check | jq '.shards[0].outbox_depth')" = 0 ] && [ "$(metric "$lh" "$lport" qc_ledger_outbox_depth)" = 0 ]; }
wait_until 120 "the audit relay drains the outbox" drained
nsx_log "FIGURE audit cut: outbox drained $(since "$t0") s after the link came back"
nsx_invariants "$confirmed_total"

# 5. Loss, a 20 ms delay and a rate limit on the ledger hosts and the gateway.
for h in gw1 l1 l2 l3; do nsx_degrade "$h" 5 20 20mbit; done
NSX_LOADGEN_TIMEOUT_MS=20000 nsx_loadgen lossy "$LOADS" "$DEVICES" "$CONC" || nsx_log "qc-loadgen lossy exited $?"
LG=0
c=$(lg lossy '.outcomes.CONFIRMED // 0')
nsx_log "FIGURE 5% loss + 20 ms + 20mbit: $LOADS loads, CONFIRMED $c, failed $(lg lossy .failed), $(lg lossy .loads_per_s) loads/s"
assert_ge "loads CONFIRMED through 5% loss" 1 "$c"
confirmed_total=$((confirmed_total + c))
nsx_heal
nsx_invariants "$confirmed_total"

# 6. A replica and a gateway added from the inventory, as docs/OPERATIONS.md says.
printf '%s\n' "$NSX_INVENTORY" "replica 0 l4" "gateway gw2" >"$X/inventory"
"$S/ops/deploy" render --inventory "$X/inventory" --out "$X/deploy" --in-place --build "$B" \
  >"$X/render2.log" 2>&1 || { cat "$X/render2.log" >&2; fail "re-render"; }
cat "$X/render2.log" >&2
grep -q 'join = true' "$(E l4)/ledger-0-4.conf" || fail "the new replica does not join"
add=$(sed -n 's/.*then: qcctl --config [^ ]* \(shard add-replica .*\)$/\1/p' "$X/deploy/changes.txt")
[ -n "$add" ] || fail "the render printed no add-replica command"
# the others learn the new replica's key and address (SIGHUP re-reads replicas_file)
for id in 1 2 3; do kill -HUP "${NSX_PID[ledger-0-$id]}"; done
nsx_start ledger-0-4
wait_until 30 "ledger-0-4 healthy" nsx_healthy ledger-0-4
t0=$(now_s)
eval "q --timeout-ms 20000 $add" || fail "qcctl $add"
four_caught_up() {
  local st
  st=$(q --json shard status --shard 0) &&
    [ "$(jq '[.shards[0].replicas[] | select(.reachable and .lag == 0)] | length' <<<"$st")" == 4 ] &&
    [ "$(jq '[.shards[0].configuration[]? | select(.voter)] | length' <<<"$st")" == 4 ]
}
wait_until 60 "4 voters, none lagging" four_caught_up
nsx_log "FIGURE add-replica: voter with lag 0 in $(since "$t0") s"
# gateway-0's ledger list changed (restart), gateway-1 starts; audit restarts for its list
for n in gateway-0 audit; do nsx_kill "$n"; nsx_start "$n"; wait_until 30 "$n healthy" nsx_healthy "$n"; done
nsx_start gateway-1
wait_until 30 "gateway-1 healthy" nsx_healthy gateway-1
rm -rf "$X/loadgen"
nsx_loadgen_dir
nsx_loadgen grown "$LOADS" "$DEVICES" "$CONC" || fail "qc-loadgen after growing: $(tail -3 "$X/grown.err")"
LG=0
assert_eq "loads CONFIRMED through two gateways and four replicas" "$LOADS" "$(lg grown '.outcomes.CONFIRMED // 0')"
confirmed_total=$((confirmed_total + LOADS))
nsx_log "FIGURE grown (2 gateways, 4 replicas): $(lg grown .loads_per_s) loads/s"
nsx_invariants "$confirmed_total"
nsx_log "PASS"
