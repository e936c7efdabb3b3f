# shellcheck shell=bash
# netns_lib.sh - a quancun deployment across "hosts" that are network namespaces on this
# machine. The harness makes its own namespaces, a bridge and one veth pair per host (each host
# gets the address of its inventory line, a private 10.77.x.y), renders the inventory with
# ops/deploy --in-place, runs the real services inside their host's namespace (ip netns exec),
# and cuts, delays, slows or drops links with iptables, tc and qc-netdelay (a delay without
# sch_netem: nsx_delay). Everything it made is removed by an EXIT
# trap, on success and on failure. Names carry a per-run tag (pid and random bits), so two runs
# can overlap. Only the inventory's addresses are ever used: the bridge has no address and no
# route, so no packet leaves the namespaces.
#
# A test sets NSX_NAME and NSX_INVENTORY (text), sources this file, then calls nsx_begin,
# nsx_up and its steps. Environment: QC_SOURCE_DIR, QC_BINARY_DIR (CTest sets them; the build
# holds qc-netdelay); root and ip, iptables, tc (ops/bootstrap installs iproute2 and iptables).
set -euo pipefail

: "${QC_SOURCE_DIR:?set by CTest}" "${QC_BINARY_DIR:?set by CTest}" "${NSX_NAME:?}" "${NSX_INVENTORY:?}"
readonly NSX_SKIP=77 # CTest's SKIP_RETURN_CODE: no privileges for namespaces here
readonly NSX_WAIT_STEP_S=0.2
readonly NSX_WATCHDOG_S=${NSX_WATCHDOG_S:-85}

S=$QC_SOURCE_DIR
B=$QC_BINARY_DIR
X=""             # the run's directory
NSX_TAG=""       # 6 hex digits, unique per run
NSX_FAILED=0
declare -A NSX_ADDR=() NSX_PID=()
NSX_HOSTS=()
NSX_ADMIN=""     # the host where qcctl and qc-loadgen run

nsx_log() { echo "[$(date +%H:%M:%S.%N | cut -c1-12)] $NSX_NAME: $*" >&2; }
fail() { NSX_FAILED=1; echo "FAIL $NSX_NAME: $*" >&2; exit 1; }
assert_eq() { [ "$2" == "$3" ] || fail "$1: expected '$2', saw '$3'"; nsx_log "ok: $1 = '$3'"; }
assert_ge() {
  if ! [[ $3 =~ ^-?[0-9]+$ ]] || [ "$3" -lt "$2" ]; then fail "$1: expected at least $2, saw '$3'"; fi
  nsx_log "ok: $1 = $3 >= $2"
}
# wait_until SECONDS WHAT COMMAND...
wait_until() {
  local limit=$1 what=$2 i n
  shift 2
  n=$(awk -v s="$limit" -v d="$NSX_WAIT_STEP_S" 'BEGIN { print int(s / d) }')
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep "$NSX_WAIT_STEP_S"
  done
  fail "$what: not true after ${limit}s"
}
now_s() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.2f", b - a }'; }

ns() { echo "qc-$NSX_TAG-$1"; }            # a host's namespace
nsx_exec() { local h=$1; shift; ip netns exec "$(ns "$h")" "$@"; }
veth() { echo "qv$NSX_TAG$2"; }            # the bridge side of host number $2 (<= 15 chars)
bridge() { echo "qb$NSX_TAG"; }

nsx_cleanup() {
  local rc=$? h p i=0
  set +e
  for p in "${NSX_PID[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${NSX_PID[@]}"; do wait "$p" 2>/dev/null; done
  for p in $(jobs -p); do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for h in "${NSX_HOSTS[@]}"; do
    ip netns del "$(ns "$h")" 2>/dev/null
    ip link del "$(veth "$h" "$i")" 2>/dev/null
    i=$((i + 1))
  done
  [ "${NSX_FORWARD_RULE:-0}" = 0 ] || iptables -D FORWARD -i "$(bridge)" -o "$(bridge)" -j ACCEPT 2>/dev/null
  ip link del "$(bridge)" 2>/dev/null
  if [ -n "$X" ] && grep -l -E 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|Assertion .* failed' \
    "$X"/logs/*.log 2>/dev/null; then
    echo "FAIL $NSX_NAME: a service reported a sanitizer error or an assertion" >&2
    grep -h -B2 -A20 -E 'ERROR: AddressSanitizer|runtime error:|Assertion .* failed' "$X"/logs/*.log | head -60 >&2
    rc=1
  fi
  if [ "$rc" -eq 0 ] && [ "$NSX_FAILED" -eq 0 ]; then
    rm -rf "$X"
  elif [ -n "$X" ]; then
    echo "$NSX_NAME: kept $X for inspection" >&2
    for f in "$X"/logs/*.log; do [ -f "$f" ] && { echo "--- tail $f" >&2; tail -8 "$f" >&2; }; done
  fi
  exit "$rc"
}

# nsx_begin: privileges, the run's tag and directory, the cleanup trap and a watchdog.
nsx_begin() {
  if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! command -v iptables >/dev/null; then
    echo "$NSX_NAME: SKIP: needs root, ip and iptables (network namespaces)" >&2
    exit $NSX_SKIP
  fi
  NSX_TAG=$(printf '%06x' $(((($$ & 0xfff) << 12 | (RANDOM & 0xfff)) & 0xffffff)))
  # Root without CAP_SYS_ADMIN or CAP_NET_ADMIN (an unprivileged container) cannot either.
  if ! ip netns add "qc-$NSX_TAG-probe" 2>/dev/null; then
    echo "$NSX_NAME: SKIP: 'ip netns add' is not permitted here (no CAP_SYS_ADMIN)" >&2
    exit $NSX_SKIP
  fi
  ip netns del "qc-$NSX_TAG-probe"
  X=$(mktemp -d "${TMPDIR:-/tmp}/qc-netns-$NSX_NAME.XXXXXX")
  mkdir -p "$X/logs"
  trap nsx_cleanup EXIT
  trap 'echo "$NSX_NAME: stopped by a signal" >&2; exit 130' INT TERM
  mkfifo "$X/watchdog.fifo"
  (
    read -r -t "$NSX_WATCHDOG_S" _ <>"$X/watchdog.fifo" || true
    echo "$NSX_NAME: over ${NSX_WATCHDOG_S}s, stopping" >&2
    kill -TERM $$
  ) &
  NSX_PID[watchdog]=$!
  printf '%s\n' "$NSX_INVENTORY" >"$X/inventory"
  nsx_log "directory $X, namespaces qc-$NSX_TAG-*"
}

# nsx_network: one namespace per inventory host, its veth on the run's bridge, its address.
nsx_network() {
  local h a i=0
  while read -r w h a _; do
    [ "$w" = host ] || continue
    NSX_HOSTS+=("$h")
    NSX_ADDR[$h]=$a
  done <"$X/inventory"
  [[ -z $(ip netns list | grep "^qc-$NSX_TAG-") ]] || fail "namespaces qc-$NSX_TAG-* exist already"
  ip link add "$(bridge)" type bridge
  ip link set "$(bridge)" up
  # With br_netfilter loaded (Docker hosts), bridged frames cross this namespace's FORWARD
  # chain, whose policy may be DROP: let frames between this run's hosts through, nothing else.
  if [ "$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null)" = 1 ]; then
    iptables -I FORWARD -i "$(bridge)" -o "$(bridge)" -j ACCEPT
    NSX_FORWARD_RULE=1
  fi
  for h in "${NSX_HOSTS[@]}"; do
    ip netns add "$(ns "$h")"
    ip link add "$(veth "$h" $i)" type veth peer name "qe$NSX_TAG$i"
    ip link set "$(veth "$h" $i)" master "$(bridge)"
    ip link set "$(veth "$h" $i)" up
    ip link set "qe$NSX_TAG$i" netns "$(ns "$h")"
    ip -n "$(ns "$h")" link set "qe$NSX_TAG$i" name eth0
    ip -n "$(ns "$h")" addr add "${NSX_ADDR[$h]}/16" dev eth0
    ip -n "$(ns "$h")" link set lo up
    ip -n "$(ns "$h")" link set eth0 up
    i=$((i + 1))
  done
  nsx_log "network: ${#NSX_HOSTS[@]} namespaces on bridge $(bridge): $(for h in "${NSX_HOSTS[@]}"; do printf '%s=%s ' "$h" "${NSX_ADDR[$h]}"; done)"
}

# Which binary and environment a unit runs with; its config in the host's tree. An audit
# witness's unit is one per host (quancun-audit, audit.conf): it is named by its `consumer`
# (audit-0, audit-1 ... when there are several), or "audit" when it is the only one.
E() { echo "$X/deploy/hosts/$1/etc/quancun"; }
audit_name() { local c; c=$(sed -n 's/^consumer = //p' "$1"); echo "${c:-audit}"; } # audit.conf
svc_of_unit() { # HOST UNIT -> NAME (gateway-0, signer-0, ledger-0-1, audit or audit-W)
  local u=${2%.service}
  case "$u" in quancun-audit) audit_name "$(E "$1")/audit.conf" ;; *) u=${u#quancun-}; echo "${u%@*}-${u#*@}" ;; esac
}
binary_of() {
  case "$1" in
    gateway-*) echo "$B/gateway/qc-gateway" ;; signer-*) echo "$B/signer/qc-signer" ;;
    ledger-*) echo "$B/ledger/qc-ledger" ;; audit | audit-*) echo "$B/audit/qc-audit" ;;
  esac
}
conf_name() { case "$1" in audit | audit-*) echo audit ;; *) echo "$1" ;; esac; } # its file
host_of() {
  local h f
  for h in "${NSX_HOSTS[@]}"; do
    f=$(E "$h")/$(conf_name "$1").conf
    [ -f "$f" ] || continue
    case "$1" in audit | audit-*) [ "$(audit_name "$f")" = "$1" ] || continue ;; esac
    echo "$h"
    return
  done
}
conf_of() { echo "$(E "$(host_of "$1")")/$(conf_name "$1").conf"; }
http_of() { sed -n 's/^http_port = //p' "$(conf_of "$1")"; }

# nsx_start NAME: runs the service in its host's namespace, as its unit would.
nsx_start() {
  local n=$1 h env=()
  h=$(host_of "$n")
  [ -n "$h" ] || fail "no host runs $n"
  case "$n" in signer-*) env=(SOFTHSM2_CONF="$(E "$h")/softhsm2-${n#signer-}.conf") ;; esac
  # A store is made once, by init, as install.sh does on a new host.
  case "$n" in
    ledger-* | audit | audit-*)
      local d
      d=$(sed -n 's/^data_dir = //p' "$(conf_of "$n")")
      [ -e "$d/data.mdb" ] || "$(binary_of "$n")" init --config "$(conf_of "$n")" \
        >>"$X/logs/$n.log" 2>&1 || fail "$n: init failed"
      ;;
  esac
  ip netns exec "$(ns "$h")" env "${env[@]}" "$(binary_of "$n")" --config "$(conf_of "$n")" \
    >>"$X/logs/$n.log" 2>&1 </dev/null &
  NSX_PID[$n]=$!
}
nsx_kill() { local p=${NSX_PID[$1]:-}; [ -n "$p" ] && { kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; }; unset "NSX_PID[$1]"; true; }
nsx_healthy() { nsx_exec "$(host_of "$1")" curl -sf --max-time 1 "http://127.0.0.1:$(http_of "$1")/healthz" >/dev/null; }
nsx_services() {
  local h u
  for h in "${NSX_HOSTS[@]}"; do while read -r u; do svc_of_unit "$h" "$u"; done <"$X/deploy/hosts/$h/UNITS"; done
}

q() { nsx_exec "$NSX_ADMIN" "$B/ops/qcctl/qcctl" --config "$(E "$NSX_ADMIN")/qcctl.conf" "$@"; }

# nsx_up: network, render, every service started and healthy, every shard with a leader.
nsx_up() {
  local n t0
  nsx_network
  "$S/ops/deploy" render --inventory "$X/inventory" --out "$X/deploy" --in-place --build "$B" \
    >"$X/render.log" 2>&1 || { cat "$X/render.log" >&2; fail "ops/deploy render"; }
  NSX_ADMIN=$(awk '$1 == "admin" { print $2; exit }' "$X/inventory")
  t0=$(now_s)
  # Ledgers first (a Raft group elects while the others start), then signers, gateways, audit.
  for n in $(nsx_services | sort -t- -k1,1r); do nsx_start "$n"; done
  for n in $(nsx_services); do
    wait_until 30 "$n healthy" nsx_healthy "$n"
    [ -e "/proc/${NSX_PID[$n]}" ] || fail "$n exited during start"
  done
  wait_until 30 "every shard has a leader" q --timeout-ms 1000 shard status
  nsx_log "FIGURE up in $(since "$t0") s: $(nsx_services | tr '\n' ' ')"
  nsx_loadgen_dir
}

# qc-loadgen reads an ops/cluster directory: one is assembled from the render (the gateways'
# endpoints and key, qcctl's config, the dev CA that issues its devices' certificates and the
# bank's certificates). It runs on the admin host.
nsx_loadgen_dir() {
  local L=$X/loadgen f n
  # pids/ is where it looks for the services to measure their CPU: none are local here.
  mkdir -p "$L/conf" "$L/keys" "$L/hsm" "$L/pids"
  for f in "$X"/deploy/hosts/*/etc/quancun/gateway-*.conf; do
    n=$(basename "$f" .conf)
    cp "$f" "$L/conf/"
    cp "$X/deploy/secrets/keys/gateway.key.pub" "$L/keys/$n.key.pub"
  done
  cp "$(E "$NSX_ADMIN")/qcctl.conf" "$L/conf/"
  ln -s "$X/deploy/secrets/ca" "$L/ca"
  ln -s "$X/deploy/secrets/hsm/keys" "$L/hsm/keys"
}

# nsx_loadgen OUT LOADS DEVICES [CONCURRENCY]: a bounded closed-loop run from the admin host;
# the JSON result in $X/OUT.json. Returns qc-loadgen's status.
nsx_loadgen() {
  local out=$1 loads=$2 devices=$3 conc=${4:-4}
  nsx_exec "$NSX_ADMIN" timeout 120 "$B/client/loadgen/qc-loadgen" --dir "$X/loadgen" --devices "$devices" \
    --mode closed --concurrency "$conc" --loads "$loads" --floor-ms 0 --progress false \
    --timeout-ms "${NSX_LOADGEN_TIMEOUT_MS:-10000}" --json "$X/$out.json" >"$X/$out.out" 2>"$X/$out.err"
}
lg() { jq -r "$2" "$X/$1.json"; } # lg OUT JQ

# Partitions and link faults. iptables rules live in each host's own namespace.
nsx_cut() { # A B: no packet between hosts A and B, either way
  nsx_exec "$1" iptables -I INPUT -s "${NSX_ADDR[$2]}" -j DROP
  nsx_exec "$1" iptables -I OUTPUT -d "${NSX_ADDR[$2]}" -j DROP
  nsx_exec "$2" iptables -I INPUT -s "${NSX_ADDR[$1]}" -j DROP
  nsx_exec "$2" iptables -I OUTPUT -d "${NSX_ADDR[$1]}" -j DROP
  nsx_log "cut $1 <-> $2"
}
nsx_heal() { # every rule, qdisc and delayer removed, every link up
  local h
  for h in "${NSX_HOSTS[@]}"; do
    nsx_exec "$h" iptables -F
    nsx_exec "$h" tc qdisc del dev eth0 root 2>/dev/null || true
    nsx_exec "$h" ip link set eth0 up
    # Its rule gone, a delayer lets what it still holds go at once when told to stop.
    if [ -n "${NSX_PID[netdelay-$h]:-}" ]; then
      kill -TERM "${NSX_PID[netdelay-$h]}" 2>/dev/null
      wait "${NSX_PID[netdelay-$h]}" 2>/dev/null || true
      unset "NSX_PID[netdelay-$h]"
      nsx_log "$h: $(tail -1 "$X/logs/netdelay-$h.log")"
    fi
  done
  nsx_log "healed every link"
}
nsx_link_down() { nsx_exec "$1" ip link set eth0 down; nsx_log "link of $1 down"; }

# nsx_delay HOST MS: every packet HOST sends on its link waits MS ms more, so every round trip
# through HOST takes MS ms longer. tc netem when the kernel has it; else qc-netdelay
# (deploy_delay.c) in HOST's namespace holds each packet of an NFQUEUE queue for MS ms and then
# lets it go unchanged: the kernel of the test machine has no sch_netem (nor fq, etf or cake,
# which would honour a departure time set by BPF), but it has nfnetlink_queue. The iptables
# rule has --queue-bypass: should the delayer die, packets pass undelayed rather than drop (a
# test that delays asserts the delay it measures). nsx_heal removes both. Prints which it used.
nsx_delay() {
  local h=$1 ms=$2 out=$X/netdelay-$1.out
  if nsx_exec "$h" tc qdisc add dev eth0 root netem delay "${ms}ms" 2>/dev/null; then
    nsx_log "delay $h: tc netem delay ${ms}ms"
    return
  fi
  [ -x "$B/tests/deploy/qc-netdelay" ] ||
    fail "delay $h: no sch_netem in this kernel and no qc-netdelay in the build (it needs libnetfilter_queue and libmnl: ops/bootstrap; a test checks nsx_can_delay first)"
  # Not through nsx_exec: a function put in the background is a subshell, and its pid would
  # not be the delayer's (ip netns exec execs the command in its own process).
  ip netns exec "$(ns "$h")" "$B/tests/deploy/qc-netdelay" --queue 0 --delay-ms "$ms" \
    --seconds "$NSX_WATCHDOG_S" >"$out" 2>>"$X/logs/netdelay-$h.log" </dev/null &
  NSX_PID[netdelay-$h]=$!
  wait_until 5 "qc-netdelay on $h bound its queue" grep -q '^ready' "$out"
  nsx_exec "$h" iptables -I OUTPUT -o eth0 -j NFQUEUE --queue-num 0 --queue-bypass
  nsx_log "delay $h: no sch_netem in this kernel: qc-netdelay holds every packet $h sends for ${ms} ms (NFQUEUE)"
}

# nsx_can_delay HOST: true when nsx_delay can delay HOST's link (netem in the kernel, or
# qc-netdelay in the build: CMake builds it only with libnetfilter_queue and libmnl); else it
# logs SKIP and is false, so a test skips its delay step and says so rather than fail.
nsx_can_delay() {
  [ -x "$B/tests/deploy/qc-netdelay" ] && return 0
  if nsx_exec "$1" tc qdisc add dev eth0 root netem delay 1ms 2>/dev/null; then
    nsx_exec "$1" tc qdisc del dev eth0 root
    return 0
  fi
  nsx_log "SKIP delay on $1: no sch_netem in this kernel and no qc-netdelay in the build (CMake said why: libnetfilter_queue or libmnl missing; ops/bootstrap installs them)"
  return 1
}

# tcp_rtt_ms FROM ADDRESS PORT: the time of a TCP handshake from host FROM (one round trip), ms.
tcp_rtt_ms() {
  nsx_exec "$1" bash -c 't0=$(date +%s%N); exec 3<>"/dev/tcp/$0/$1" || exit 1; t1=$(date +%s%N); exec 3>&-; echo $(((t1 - t0) / 1000000))' "$2" "$3"
}

# nsx_degrade HOST LOSS_PCT DELAY_MS RATE: delay, loss and a rate limit on HOST's link. tc netem
# when the kernel has it; else nsx_delay for the delay, iptables' statistic match for the loss
# (random DROP, each way) and tc tbf for the rate. Prints which was used.
nsx_degrade() {
  local h=$1 loss=$2 delay=$3 rate=$4
  if nsx_exec "$h" tc qdisc add dev eth0 root netem delay "${delay}ms" loss "${loss}%" rate "$rate" 2>/dev/null; then
    nsx_log "degrade $h: tc netem delay ${delay}ms loss ${loss}% rate $rate"
    return
  fi
  local p
  p=$(awk -v l="$loss" 'BEGIN { printf "%.4f", l / 100 }')
  # The delay's NFQUEUE rule first: the DROP rules go above it (a packet the queue accepts
  # leaves the chain), so a dropped packet is never delayed first.
  [ "$delay" -eq 0 ] || ! nsx_can_delay "$h" || nsx_delay "$h" "$delay"
  nsx_exec "$h" iptables -I INPUT -i eth0 -m statistic --mode random --probability "$p" -j DROP
  nsx_exec "$h" iptables -I OUTPUT -o eth0 -m statistic --mode random --probability "$p" -j DROP
  nsx_exec "$h" tc qdisc add dev eth0 root tbf rate "$rate" burst 32kbit latency 400ms
  nsx_log "degrade $h: no sch_netem in this kernel: iptables statistic DROP p=$p each way, tc tbf rate $rate, delay ${delay} ms by qc-netdelay"
}

# Raft helpers (shard 0 unless told).
leader_id() { { q --json --timeout-ms 1000 shard status --shard "${2:-0}" 2>/dev/null || true; } | jq -r '.shards[0].leader_id // empty'; }
# role_of ID [SHARD]: what replica ID says of itself.
role_of() {
  { q --json --timeout-ms 1000 shard status --shard "${2:-0}" 2>/dev/null || true; } |
    jq -r --argjson id "$1" '.shards[0].replicas[] | select(.id == $id) | .role // "unreachable"'
}
replica_host() { host_of "ledger-${2:-0}-$1"; }

# nsx_invariants LOADS_CONFIRMED_AT_LEAST: every replica checks ok and agrees, none RESERVED,
# money conserved (per currency the balances sum to zero: qcctl check's invariant 1; FLOAT is
# what the CONFIRMED loads moved).
nsx_invariants() {
  local c floats
  replicas_agree() {
    c=$(q check --replicas) || return 1
    [ "$(jq '[.shards[] | select(.ok)] | length' <<<"$c")" == "$(jq '.shards | length' <<<"$c")" ] &&
      [ "$(jq -c '[.shards[] | {shard, loads, reserved, transfers, currencies}] | unique_by(.shard) | length' <<<"$c")" == \
        "$(jq -c '[.shards[] | {shard, loads, reserved, transfers, currencies}] | unique | length' <<<"$c")" ] &&
      [ "$(jq '[.shards[].reserved] | add' <<<"$c")" == 0 ]
  }
  wait_until 40 "every replica checks ok, agrees with its shard, holds nothing RESERVED" replicas_agree
  c=$(q check --replicas)
  nsx_log "check on every replica: $(jq -c '[.shards[] | {shard, endpoint, ok, loads, reserved}]' <<<"$c")"
  assert_eq "qcctl check --replicas ok" true "$(jq -r .ok <<<"$c")"
  c=$(q check) || fail "qcctl check: $c"
  assert_eq "qcctl check ok" true "$(jq -r .ok <<<"$c")"
  floats=$(jq '[.shards[].currencies[] | select(.currency == 156) | .float] | add // 0' <<<"$c")
  assert_ge "FLOAT (fen) covers the CONFIRMED loads seen by the devices" "$(($1 * 100))" "$floats"
}
