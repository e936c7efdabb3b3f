#!/usr/bin/env bash
# A gateway under floods of connections (issue 21): with max_connections = 50, two floods of
# FLOOD_CONNECTIONS connections each (idle ones, cut-short ZMTP greetings, bytes that are no
# ZMTP, and real CURVE clients making a call; tests/bench/gateway_flood) while a wallet loads.
#  - Every CURVE call is answered: those on connections within the bound with their own
#    refusal (their "load" is empty), those over it with QC_EBUSY; none goes unanswered.
#  - Clients connected before the flood (within the bound) are served during it, never busy.
#  - A wallet that meets the full gateway gets the connection-limit refusal, not a time-out.
#  - After the floods the gateway gives its memory back: it trimmed the heap, and (when not
#    built with a sanitizer, whose allocator keeps freed memory in quarantine) its RSS is
#    within RSS_GROWTH_MAX_KB of what it was before (the code before the fix kept ~40 MB).
#  - A load works after the floods, and nothing was lost (qcctl check, FLOAT == wallets).
. "$(dirname "$0")/lib.sh"
readonly MAX_CONNECTIONS=50 FLOOD_CONNECTIONS=3000 CURVE_EVERY=20 EARLY=5 HOLD_MS=4000 SETTLE_MS=3000
readonly CALL_TIMEOUT_MS=3500 RSS_GROWTH_MAX_KB=10240
FLOOD=$B/tests/bench/gateway_flood
e2e_begin gateway_flood
cluster_up --deadline-ms 5000
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((FLOOD_CONNECTIONS + 512)) ] || fail "descriptor limit $(ulimit -n) too low"
"$S/ops/cluster" stop gateway-0 --dir "$X" >/dev/null || fail "stop gateway-0"
echo "max_connections = $MAX_CONNECTIONS" >>"$X/conf/gateway-0.conf"
"$S/ops/cluster" start gateway-0 --dir "$X" >/dev/null || fail "start gateway-0"
pid=$(cat "$X/pids/gateway-0.pid")
http=$(sed -n 's/^http_port *= *//p' "$X/conf/gateway-0.conf")
metric() { curl -s "http://127.0.0.1:$http/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status"; }

account_new ALICE-001 100000
wallet_new w1 ALICE-001
wallet_new w2 ALICE-001
wallet_load w1 ALICE-001 1.00 || fail "load before the flood: $(cat "$X/w1.out")"
base=$(rss_kb)
e2e_log "gateway RSS before the floods: $base kB"

"$FLOOD" --endpoint "$GW_ENDPOINT" --server-key "$GW_KEY" --pid "$pid" \
  --connections $FLOOD_CONNECTIONS --rounds 2 --hold-ms $HOLD_MS --settle-ms $SETTLE_MS \
  --call-timeout-ms $CALL_TIMEOUT_MS --curve-every $CURVE_EVERY --early $EARLY >"$X/flood.out" 2>"$X/flood.log" &
flood_pid=$!
E2E_PIDS+=("$flood_pid")
# The wallet meets the gateway in the first flood, while the flood's connections fill it.
sleep 2
rc=0
wallet_load w2 ALICE-001 2.00 || rc=$?
wait "$flood_pid" || fail "gateway_flood failed: $(tail -3 "$X/flood.log")"
cat "$X/flood.out" >&2
if [ "$rc" -ne 0 ]; then
  assert_match "a wallet over the bound is told so" 'connection limit' "$(cat "$X/w2.out")"
else
  e2e_log "the wallet's load went through during the flood (it found a free place)"
fi
for round in 1 2; do
  line=$(grep "^round=$round " "$X/flood.out") || fail "no line for round $round"
  field() { sed -n "s/.* $1=\([0-9-]*\).*/\1/p" <<<"$line"; }
  assert_eq "round $round: CURVE calls without an answer" 0 "$(field noreply)"
  assert_ge "round $round: calls answered QC_EBUSY (over the bound)" 1 "$(field busy)"
  assert_eq "round $round: calls of clients connected before the flood" $EARLY "$(field early_calls)"
  assert_eq "round $round: ... all answered during the flood" $EARLY "$(field early_answered)"
  assert_eq "round $round: ... none of them busy (they are within the bound)" 0 "$(field early_busy)"
done
assert_ge "connections refused" $((FLOOD_CONNECTIONS / 4)) "$(metric qc_gateway_connections_refused_total)"
# A few connections may still be in their CURVE handshake when the flood ends: libzmq's
# handshake time-out (30 s) ends them.
connections_closed() { [ "$(metric qc_gateway_connections)" -eq 0 ]; }
wait_until 35 "the flood's connections are closed (qc_gateway_connections 0)" connections_closed
e2e_log "ok: qc_gateway_connections = 0 after the floods"
assert_ge "heap trims after the floods" 1 "$(metric qc_gateway_memory_trims_total)"
log_has "$X/logs/gateway-0.log" '"event":"gateway.connection_limit"' ||
  fail "no gateway.connection_limit line in the gateway's log"
lines=$(grep -c '"event":"gateway.connection_limit"' "$X/logs/gateway-0.log")
[ "$lines" -le 100 ] || fail "gateway.connection_limit is not rate limited: $lines lines"
e2e_log "ok: $lines gateway.connection_limit lines for $(metric qc_gateway_connections_refused_total) refused"

after=$(rss_kb)
e2e_log "gateway RSS: before $base kB, after the floods $after kB"
if ldd "$B/gateway/qc-gateway" | grep -q libasan; then
  e2e_log "RSS bound not checked: the gateway is built with AddressSanitizer"
else
  [ "$after" -le $((base + RSS_GROWTH_MAX_KB)) ] ||
    fail "RSS after the floods $after kB > before $base kB + $RSS_GROWTH_MAX_KB kB"
fi

wallet_load w1 ALICE-001 3.00 || fail "load after the flood: $(cat "$X/w1.out")"
assert_match "load after the flood" 'Bank outcome: CONFIRMED' "$(cat "$X/w1.out")"
e2e_end
