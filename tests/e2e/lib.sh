# shellcheck shell=bash
# lib.sh - the shared harness of the end-to-end tests: a real cluster (ops/cluster) in a
# temporary directory, torn down by a trap whatever happens, helpers for accounts and wallets,
# and assertions that print what was expected and what was seen.
#
# A test sources this file, calls e2e_begin NAME, then cluster_up [ops/cluster options], and
# ends with e2e_end, which checks the invariants (qcctl check, sum of wallets == FLOAT).
# Environment (set by CTest, tests/e2e/CMakeLists.txt): QC_SOURCE_DIR, QC_BINARY_DIR,
# E2E_FORGE (the e2e_forge binary), E2E_BASE_PORT (the cluster's base port, unique per test).
set -euo pipefail

: "${QC_SOURCE_DIR:?set by CTest}" "${QC_BINARY_DIR:?set by CTest}" "${E2E_FORGE:?set by CTest}"
: "${E2E_BASE_PORT:?set by CTest}"

readonly E2E_WAIT_STEP_S=0.1
# The test stops itself (SIGTERM, so the cleanup trap runs) before CTest's TIMEOUT of 120 s
# would kill it with no chance to stop the cluster.
readonly E2E_WATCHDOG_S=${E2E_WATCHDOG_S:-100}
readonly E2E_PIN=1234
export QC_WALLET_PIN=$E2E_PIN

S=$QC_SOURCE_DIR
B=$QC_BINARY_DIR
WALLET=$B/client/wallet/qc-wallet
QCCTL=$B/ops/qcctl/qcctl
FORGE=$E2E_FORGE
X=""            # the test's directory
E2E_NAME=""
E2E_PIDS=()     # background processes the test started (wallets, man in the middle)
E2E_WALLETS=()  # every wallet home of the test: their balances must add up to FLOAT
E2E_FAILED=0

e2e_log() { echo "[$(date +%H:%M:%S.%N | cut -c1-12)] $E2E_NAME: $*" >&2; }

fail() {
  E2E_FAILED=1
  echo "FAIL $E2E_NAME: $*" >&2
  exit 1
}

# assert_eq WHAT EXPECTED SEEN
assert_eq() {
  [ "$2" == "$3" ] || fail "$1: expected '$2', saw '$3'"
  e2e_log "ok: $1 = '$3'"
}

# assert_ge WHAT MIN SEEN: integers
assert_ge() {
  if ! [[ $3 =~ ^-?[0-9]+$ ]] || [ "$3" -lt "$2" ]; then
    fail "$1: expected at least $2, saw '$3'"
  fi
  e2e_log "ok: $1 = $3 >= $2"
}

# assert_match WHAT REGEX SEEN
assert_match() {
  [[ $3 =~ $2 ]] || fail "$1: expected to match /$2/, saw '$3'"
  e2e_log "ok: $1 =~ /$2/"
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds, fails the test after
# SECONDS.
wait_until() {
  local limit=$1 what=$2 i n
  shift 2
  n=$(awk -v s="$limit" -v d="$E2E_WAIT_STEP_S" 'BEGIN { print int(s / d) }')
  for ((i = 0; i < n; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep "$E2E_WAIT_STEP_S"
  done
  fail "$what: not true after ${limit}s"
}

e2e_cleanup() {
  local rc=$? p
  set +e
  for p in "${E2E_PIDS[@]}"; do
    kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  for f in "$X"/run/*.pid; do
    [ -f "$f" ] || continue
    p=$(cat "$f")
    grep -q qc-wallet "/proc/$p/cmdline" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  done
  if [ -n "$X" ] && [ -f "$X/cluster.env" ]; then
    "$S/ops/cluster" down --dir "$X" >/dev/null 2>&1
    # A sanitizer report or an assertion in any service fails the test, even a passing one.
    if grep -l -E 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|Assertion .* failed' \
      "$X"/logs/*.log 2>/dev/null; then
      echo "FAIL $E2E_NAME: a service reported a sanitizer error or an assertion (logs above)" >&2
      grep -h -B2 -A20 -E 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|Assertion .* failed' \
        "$X"/logs/*.log | head -80 >&2
      rc=1
    fi
  fi
  if [ "$rc" -eq 0 ] && [ "$E2E_FAILED" -eq 0 ]; then
    rm -rf "$X"
  else
    echo "$E2E_NAME: kept $X for inspection (logs in $X/logs)" >&2
    for f in "$X"/logs/*.log; do
      [ -f "$f" ] && { echo "--- tail $f" >&2; tail -15 "$f" >&2; }
    done
  fi
  exit "$rc"
}

# e2e_begin NAME: the test's directory and the cleanup trap.
e2e_begin() {
  E2E_NAME=$1
  X=$(mktemp -d "${TMPDIR:-/tmp}/qc-e2e-$1.XXXXXX")
  trap e2e_cleanup EXIT
  trap 'echo "$E2E_NAME: stopped by a signal" >&2; exit 130' INT TERM
  # The watchdog waits with a builtin (read -t on a FIFO nobody writes) so that killing it
  # leaves no child behind.
  mkfifo "$X/watchdog.fifo"
  (
    read -r -t "$E2E_WATCHDOG_S" _ <>"$X/watchdog.fifo" || true
    echo "$E2E_NAME: over ${E2E_WATCHDOG_S}s, stopping" >&2
    kill -TERM $$
  ) &
  E2E_PIDS+=("$!")
  e2e_log "directory $X, base port $E2E_BASE_PORT"
}

# cluster_up [ops/cluster up options]: the whole cluster on this test's ports. Ledger shards
# are single processes (--replicas 1) unless the test asks for replicas.
cluster_up() {
  local replicas=(--replicas 1)
  [[ " $* " == *" --replicas "* ]] && replicas=()
  "$S/ops/cluster" up --dir "$X" --build "$B" --base-port "$E2E_BASE_PORT" "${replicas[@]}" "$@" \
    >"$X/cluster-up.log" 2>&1 ||
    { cat "$X/cluster-up.log" >&2; fail "ops/cluster up failed"; }
  GW_ENDPOINT=$(sed -n 's/^gateway = //p' "$X/conf/wallet.conf" | cut -d, -f1)
  GW_KEY=$(sed -n 's/^gateway_key = //p' "$X/conf/wallet.conf")
  e2e_log "cluster up: $(tr '\n' ' ' <<<"$("$S/ops/cluster" status --dir "$X")")"
}

q() { "$QCCTL" --config "$X/conf/qcctl.conf" "$@"; }

# account_new ID AMOUNT [account open options]: AMOUNT and the options in minor units (fen)
account_new() {
  local id=$1 amount=$2
  shift 2
  q --minor account open "$id" "$@" >/dev/null || fail "qcctl account open $id"
  q --minor account deposit "$id" "$amount" >/dev/null || fail "qcctl account deposit $id $amount"
}

account_balance() { q --json account show "$1" | jq -r .balance; }

load_state() { q --json load show "$1" | jq -r .state; }

# The FLOAT of currency 156 over every shard.
float_total() { q check | jq '[.shards[].currencies[] | select(.currency == 156) | .float] | add // 0'; }

# check_ok: qcctl check passes (exit 0 and "ok": true).
check_ok() {
  local out
  out=$(q check) || fail "qcctl check failed: $out"
  assert_eq "qcctl check ok" true "$(jq -r .ok <<<"$out")"
}

# wallet_new NAME ACCOUNT [--no-enroll] [device enroll options]: a device enrolled on ACCOUNT.
# Prints nothing; the home is $X/NAME.
wallet_new() {
  local name=$1 account=$2 home=$X/$1 enroll=1
  shift 2
  if [ "${1:-}" == --no-enroll ]; then enroll=0; shift; fi
  # --pem-key: the attack tests forge messages with a device's own key (forge_as), which a
  # token wallet never gives out; the token path runs in tests/client and ops/demo.
  "$WALLET" init --pem-key --home "$home" >/dev/null || fail "qc-wallet init $name"
  "$S/ops/devca" issue "$X/ca" "$home/device.csr" "$home/device.pem" >/dev/null ||
    fail "devca issue $name"
  "$WALLET" install-cert --home "$home" "$home/device.pem" >/dev/null || fail "install-cert $name"
  "$WALLET" install-bank --home "$home" --allow "$X/hsm/keys/allow-signing-v1.cert.pem" \
    --outcome "$X/hsm/keys/outcome-signing-v1.cert.pem" >/dev/null || fail "install-bank $name"
  if [ "$enroll" -eq 1 ]; then
    q --minor device enroll "$home/device.pem" --account "$account" "$@" >/dev/null ||
      fail "qcctl device enroll $name"
  fi
  cp "$X/conf/wallet.conf" "$home/"
  E2E_WALLETS+=("$home")
}

wallet_serial() { sed -n 's/^serial //p' "$X/$1/state"; }

# wallet_field NAME FIELD: a line of `qc-wallet status` (balance in minor units).
wallet_field() {
  local v
  v=$("$WALLET" status --home "$X/$1" | sed -n "s/^$2: *//p")
  [ "$2" == balance ] && v=$(tr -d . <<<"$v" | sed 's/^0*\([0-9]\)/\1/')
  echo "$v"
}
wallet_balance() { wallet_field "$1" balance; }
wallet_counter() { wallet_field "$1" counter; }

# wallet_run NAME VERB [args]: runs qc-wallet VERB on wallet NAME, output in $X/NAME.out;
# returns its exit status. Its pid is kept in $X/run/ so that the cleanup kills a wallet
# still running when the test fails (even one started in a background subshell).
wallet_run() {
  local name=$1 verb=$2 pid rc=0
  shift 2
  mkdir -p "$X/run"
  "$WALLET" "$verb" "$@" --home "$X/$name" >"$X/$name.out" 2>&1 &
  pid=$!
  echo "$pid" >"$X/run/$name.pid"
  wait "$pid" || rc=$?
  rm -f "$X/run/$name.pid"
  return "$rc"
}

# wallet_load NAME ACCOUNT AMOUNT [env...]: qc-wallet load; output in $X/NAME.out.
wallet_load() { wallet_run "$1" load "$3" --account "$2" --yes; }

# forge CMD [options]: e2e_forge against the first gateway.
forge() { "$FORGE" "$1" --endpoint "$GW_ENDPOINT" --server-key "$GW_KEY" "${@:2}"; }

# forge_as NAME: the device options of e2e_forge for wallet NAME (its key, cert and serial).
forge_as() { echo "--key $X/$1/device.key --cert $X/$1/device.pem --device $(wallet_serial "$1")"; }

# forge_code LINE: the code name at the start of an e2e_forge line.
forge_code() { awk '{ print $1 }' <<<"$1"; }

# log_has FILE REGEX: the service log contains a line matching REGEX.
log_has() { grep -q -E "$2" "$1"; }

# e2e_end: the invariants after every test: qcctl check passes, and the wallets of this test
# add up to FLOAT.
e2e_end() {
  local sum=0 h b
  check_ok
  for h in "${E2E_WALLETS[@]}"; do
    b=$(wallet_balance "$(basename "$h")")
    sum=$((sum + b))
  done
  assert_eq "sum of ${#E2E_WALLETS[@]} wallets == FLOAT" "$(float_total)" "$sum"
  e2e_log "PASS"
}

# mitm_start NAME MODE [e2e_forge options]: e2e_forge's man in the middle on the base port
# (never used by the cluster, whose ports start at base + 1), altering every allow (MODE
# amount or resign) or nothing (none); wallet NAME is pointed at it. mitm_stop NAME points
# the wallet back at the gateway.
mitm_start() {
  local name=$1 mode=$2
  shift 2
  [ -f "$X/keys/mitm.key" ] || "$B/ops/tools/qc-curve-keygen" "$X/keys/mitm.key" >/dev/null
  "$FORGE" mitm --endpoint "$GW_ENDPOINT" --server-key "$GW_KEY" --curve-keys "$X/keys/mitm.key" \
    --listen "tcp://127.0.0.1:$E2E_BASE_PORT" --tamper "$mode" "$@" >>"$X/logs/mitm.log" 2>&1 &
  MITM_PID=$!
  E2E_PIDS+=("$MITM_PID")
  printf 'gateway = tcp://127.0.0.1:%s\ngateway_key = %s\n' "$E2E_BASE_PORT" \
    "$(tr -d '\n' <"$X/keys/mitm.key.pub")" >"$X/$name/wallet.conf"
}
mitm_stop() {
  kill -TERM "$MITM_PID" 2>/dev/null || true
  wait "$MITM_PID" 2>/dev/null || true
  cp "$X/conf/wallet.conf" "$X/$1/"
}
