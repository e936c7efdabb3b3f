#!/usr/bin/env bash
# Operator mistakes with ops/cluster are caught where they are made (issue 19):
#  - a second cluster started on the ports of a running one fails, naming a service, instead
#    of printing "up" because the first cluster's /healthz answered;
#  - `up` without --build on an existing cluster runs the build of the cluster's own record
#    (cluster.env), not build/dev of the checkout.
. "$(dirname "$0")/lib.sh"
e2e_begin cluster_mistakes
cluster_up
pids_before=$(cat "$X"/pids/*.pid | sort | tr '\n' ' ')

# The same ports, another directory: every service of the second cluster dies with "Address
# already in use" while the first cluster answers every /healthz.
second=$X/second
set +e
"$S/ops/cluster" up --dir "$second" --build "$B" --base-port "$E2E_BASE_PORT" --replicas 1 \
  >"$X/second-up.log" 2>&1
status=$?
set -e
"$S/ops/cluster" down --dir "$second" >/dev/null 2>&1 || true
e2e_log "second cluster: exit $status: $(tr '\n' ' ' <"$X/second-up.log" | tail -c 400)"
[ "$status" -ne 0 ] || fail "ops/cluster up on occupied ports exited 0: $(cat "$X/second-up.log")"
if grep -q '^cluster: up:' "$X/second-up.log"; then fail "ops/cluster up on occupied ports said up"; fi
assert_match "the failure names a service" 'cluster: (ledger|signer|gateway|audit)-[0-9]+' \
  "$(cat "$X/second-up.log")"
log_has "$second/logs/ledger-0.log" 'Address already in use|address already in use|EADDRINUSE|bind' ||
  fail "the second ledger's log does not say why it stopped: $(tail -3 "$second/logs/ledger-0.log")"
# The first cluster is untouched.
assert_eq "first cluster's pids" "$pids_before" "$(cat "$X"/pids/*.pid | sort | tr '\n' ' ')"
check_ok

# up without --build, from a directory that has no build/dev: the cluster's record decides.
"$S/ops/cluster" down --dir "$X" >/dev/null || fail "ops/cluster down"
(cd / && "$S/ops/cluster" up --dir "$X") >"$X/up-again.log" 2>&1 ||
  fail "ops/cluster up without --build on an existing cluster: $(cat "$X/up-again.log")"
assert_match "up again" '^cluster: up:' "$(tail -1 "$X/up-again.log")"
ledger_pid=$(cat "$X/pids/ledger-0.pid")
assert_eq "the ledger runs the recorded build" "$B/ledger/qc-ledger" "$(readlink -f "/proc/$ledger_pid/exe")"

account_new MISTAKE-001 1000
assert_eq "a deposit after the restart" 1000 "$(account_balance MISTAKE-001)"
e2e_end
