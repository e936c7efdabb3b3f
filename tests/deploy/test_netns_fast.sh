#!/usr/bin/env bash
# test_netns_fast.sh - five hosts in network namespaces, rendered by ops/deploy from one
# inventory: a gateway host that is also the operator's (qcctl, qc-loadgen), a host with the
# signer and audit, and three ledger hosts, one replica of shard 0 each. Loads cross hosts;
# then the shard's leader is cut from its two followers with iptables: the followers elect a
# new leader, the old one refuses a write, and loads go on through the gateway, which follows
# the new leader. Healed, every replica catches up and checks ok, money conserved.
# Bounded: a CTest TIMEOUT, a watchdog and qc-loadgen runs of a fixed count.
NSX_NAME=netns_fast
NSX_INVENTORY="
host front 10.77.1.1
host back 10.77.1.2
host l1 10.77.1.11
host l2 10.77.1.12
host l3 10.77.1.13
gateway front
admin front
signer back
audit back
replica 0 l1
replica 0 l2
replica 0 l3
set deadline_ms 5000
set log_level warn"
source "$(dirname "$0")/netns_lib.sh"
readonly LOADS=40 DEVICES=8 ELECTION_S=20

nsx_begin
nsx_up

# 1. Loads across hosts: devices on front, the ledger on l1..l3, the signer on back.
nsx_loadgen before $LOADS $DEVICES || fail "qc-loadgen before the partition: $(tail -3 "$X/before.err")"
assert_eq "loads CONFIRMED across hosts" $LOADS "$(lg before '.outcomes.CONFIRMED // 0')"
nsx_log "FIGURE loads/s across hosts (ASan build): $(lg before .loads_per_s)"

# 2. The leader cut from its followers (the operator's host still reaches every replica).
old=$(leader_id)
[ -n "$old" ] || fail "no leader"
oh=$(replica_host "$old")
followers=()
for id in 1 2 3; do [ "$id" = "$old" ] || followers+=("$id"); done
for id in "${followers[@]}"; do nsx_cut "$oh" "$(replica_host "$id")"; done
t0=$(now_s)
new_leader() { local l; l=$(leader_id); [ -n "$l" ] && [ "$l" != "$old" ] && [ "$(role_of "$l")" = leader ]; }
wait_until $ELECTION_S "a new leader on the majority side" new_leader
new=$(leader_id)
nsx_log "FIGURE seconds to a new leader after the cut: $(since "$t0") (ledger-0-$old -> ledger-0-$new)"
old_not_leader() { [ "$(role_of "$old")" != leader ]; }
wait_until $ELECTION_S "ledger-0-$old no longer leads" old_not_leader
nsx_log "ledger-0-$old (cut off) is now: $(role_of "$old")"

# The old leader refuses a write: qcctl pointed at it alone (it never dials another replica).
ep=$(awk -v id="$old" '$1 == id { print $3 }' "$(E "$oh")/ledger-0.replicas")
set +e
out=$(q --ledger-endpoints "$ep" --timeout-ms 3000 account open CUT-OFF-1 2>&1)
rc=$?
set -e
nsx_log "write to the cut-off replica: exit $rc: $out"
[ "$rc" -ne 0 ] || fail "the cut-off replica accepted a write"
[[ $out =~ NOTLEADER|NOQUORUM|not\ the\ leader|no\ quorum|leader ]] || fail "refusal does not say leadership: $out"

# Loads go on through the same gateway: it follows the new leader.
nsx_loadgen during $LOADS $DEVICES || fail "qc-loadgen during the partition: $(tail -3 "$X/during.err")"
assert_eq "loads CONFIRMED while the old leader is cut off" $LOADS "$(lg during '.outcomes.CONFIRMED // 0')"

# 3. Healed: the old leader catches up and follows; the write it refused never happened.
nsx_heal
caught_up() {
  local st
  st=$(q --json shard status --shard 0) &&
    [ "$(jq '[.shards[0].replicas[] | select(.reachable and .lag == 0)] | length' <<<"$st")" == 3 ]
}
wait_until 30 "3 replicas reachable, none lagging" caught_up
set +e
q account show CUT-OFF-1 >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "the write refused by the cut-off replica exists after healing"
nsx_invariants $((2 * LOADS))
nsx_log "PASS"
