#!/usr/bin/env bash
# start_errors.sh BUILD_DIR WORK_DIR: the CTest test ops_start_errors. Starts each service (and
# qcctl, qc-wallet) with one operator mistake at a time and asserts it refuses to start, with
# the expected exit status, naming the setting and the value at fault (issue 19: "every start
# error names the setting and the value"). Every case fails before anything binds: no port is
# opened (http_port stays 0), so it runs without the port lock.
set -euo pipefail
build=${1:?usage: start_errors.sh BUILD_DIR WORK_DIR}
work=${2:?usage: start_errors.sh BUILD_DIR WORK_DIR}
src=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$work"
mkdir -p "$work"
cd "$work"
gateway=$build/gateway/qc-gateway signer=$build/signer/qc-signer ledger=$build/ledger/qc-ledger
audit=$build/audit/qc-audit qcctl=$build/ops/qcctl/qcctl wallet=$build/client/wallet/qc-wallet
"$build/ops/tools/qc-curve-keygen" gw.key >/dev/null
"$build/ops/tools/qc-curve-keygen" ledger.key >/dev/null
lk=$(cat ledger.key.pub)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem \
  -subj /CN=start-errors-ca -days 2 2>/dev/null
echo "not a certificate" >junk.pem
failures=0 cases=0

# expect WANT_STATUS NEEDLE... -- COMMAND...: COMMAND exits WANT_STATUS and its stderr holds
# every NEEDLE (fixed strings).
expect() {
  local want=$1 needles=() out status
  shift
  while [ "$1" != "--" ]; do needles+=("$1"); shift; done
  shift
  cases=$((cases + 1))
  set +e
  out=$(timeout 20 "$@" 2>&1 >/dev/null)
  status=$?
  set -e
  if [ "$status" -ne "$want" ]; then
    echo "FAIL: exit $status, not $want: ${*##*/}"$'\n'"$out"
    failures=$((failures + 1))
    return
  fi
  for n in "${needles[@]}"; do
    if ! grep -qF -- "$n" <<<"$out"; then
      echo "FAIL: no '$n' in the error of: $*"$'\n'"$out"
      failures=$((failures + 1))
      return
    fi
  done
}

gw=("$gateway" --listen tcp://127.0.0.1:7001 --curve-key gw.key --ledger tcp://127.0.0.1:7200
  --ledger-key "$lk" --ca ca.pem)
# Ports, at parse time (exit 2, before anything starts).
expect 2 "listen: tcp://127.0.0.1:99999: port 99999 is out of range 1..65535" -- \
  "${gw[@]}" --listen tcp://127.0.0.1:99999
expect 2 "listen: tcp://127.0.0.1:0: port 0 is out of range" -- "${gw[@]}" --listen tcp://127.0.0.1:0
expect 2 "ledger: tcp://127.0.0.1:7200,tcp://127.0.0.1:72000: port 72000 is out of range" -- \
  "${gw[@]}" --ledger tcp://127.0.0.1:7200,tcp://127.0.0.1:72000
expect 2 "http_port: 70000 is out of range 0..65535 (flag --http-port)" -- "${gw[@]}" --http-port 70000
printf 'listen = tcp://127.0.0.1:7001\nhttp_port = 70000\n' >gw-bad.conf
expect 2 "http_port: 70000 is out of range 0..65535 (gw-bad.conf line 2)" -- \
  "$gateway" --config gw-bad.conf
expect 2 "ledger_key: ledger.key.pub: a CURVE public key is 40 Z85 characters, not 14" -- \
  "${gw[@]}" --ledger-key ledger.key.pub
expect 2 "rpc_timeout_ms: 0 is out of range" -- "${gw[@]}" --rpc-timeout-ms 0
# Settings the service reads when it starts (exit 1, logged as gateway.config).
expect 1 '"setting":"ca","value":"/nonexistent/ca.pem","error":"cannot read the file"' -- \
  "${gw[@]}" --ca /nonexistent/ca.pem
expect 1 '"setting":"ca","value":"junk.pem","error":"not a PEM CA bundle"' -- "${gw[@]}" --ca junk.pem
expect 1 '"setting":"crl","value":"/nonexistent/crl.pem","error":"cannot read the file"' -- \
  "${gw[@]}" --crl /nonexistent/crl.pem
expect 1 '"setting":"crl","value":"junk.pem"' -- "${gw[@]}" --crl junk.pem
expect 1 '"setting":"curve_key","value":"/nonexistent/gw.key"' -- \
  "${gw[@]}" --curve-key /nonexistent/gw.key
expect 1 '"setting":"ledger_key","value":"(unset)","error":"required"' -- \
  "$gateway" --listen tcp://127.0.0.1:7001 --curve-key gw.key --ledger tcp://127.0.0.1:7200 --ca ca.pem
expect 1 '"setting":"audit_key","value":"(unset)","error":"required when audit is set"' -- \
  "${gw[@]}" --audit tcp://127.0.0.1:7398

# The other services: ports and keys at parse time.
expect 2 "listen: tcp://127.0.0.1:99999: port 99999 is out of range" -- \
  "$signer" --listen tcp://127.0.0.1:99999
expect 2 "audit_key: nonsense: a CURVE public key is 40 Z85 characters" -- \
  "$signer" --audit-key nonsense
expect 2 "http_port: 70000 is out of range" -- "$signer" --http-port 70000
expect 2 "listen: tcp://127.0.0.1:99999: port 99999 is out of range" -- \
  "$ledger" --listen tcp://127.0.0.1:99999
expect 2 "http_port: 65536 is out of range" -- "$ledger" --http-port 65536
expect 2 "signer: tcp://127.0.0.1:99999: port 99999 is out of range" -- \
  "$ledger" --signer tcp://127.0.0.1:99999
expect 2 "ledger: tcp://127.0.0.1:99999: port 99999 is out of range" -- \
  "$audit" --ledger tcp://127.0.0.1:99999
expect 2 "ledger_key: $lk~: a CURVE public key is 40 Z85 characters, not 41" -- \
  "$audit" --ledger-key "$lk~"
expect 2 "signer_key: short: a CURVE public key" -- "$audit" --signer-key short
expect 2 "ledger_public_key: ledger.key.pub: a CURVE public key" -- \
  "$qcctl" --ledger-public-key ledger.key.pub status
expect 2 "gateway_key: gw.key.pub: a CURVE public key" -- \
  "$wallet" sync --home "$work/wallet" --gateway-key gw.key.pub
expect 2 "ledger_endpoints: tcp://127.0.0.1:7200;tcp://127.0.0.1:99999: port 99999 is out of range" -- \
  "$qcctl" --ledger-endpoints "tcp://127.0.0.1:7200;tcp://127.0.0.1:99999" check
expect 2 "raft_address: 127.0.0.1:70000: port 70000 is out of range" -- \
  "$qcctl" --raft-address 127.0.0.1:70000 shard status
expect 2 "gateway: tcp://127.0.0.1:99999: port 99999 is out of range" -- \
  "$wallet" sync --home "$work/wallet" --gateway tcp://127.0.0.1:99999
expect 1 "--base-port 70000 is out of range" -- \
  "$src/ops/cluster" up --dir "$work/cluster" --base-port 70000

echo "ops_start_errors: $cases cases, $failures failed"
[ "$failures" -eq 0 ]
