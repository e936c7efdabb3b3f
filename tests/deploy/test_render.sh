#!/usr/bin/env bash
# test_render.sh - ops/deploy render: what lands on which host (no private key where it is not
# needed), the errors and warnings of bad inventories, and a re-render after adding a
# gateway, a signer and a replica, and a second audit witness: keys kept, the changes listed
# with the command that applies each. Starts no service and opens no port.
set -euo pipefail
: "${QC_SOURCE_DIR:?set by CTest}" "${QC_BINARY_DIR:?set by CTest}"
S=$QC_SOURCE_DIR
B=$QC_BINARY_DIR
X=$(mktemp -d "${TMPDIR:-/tmp}/qc-deploy-render.XXXXXX")
failed=1
trap '[ $failed -eq 0 ] && rm -rf "$X" || echo "test_render: kept $X" >&2' EXIT
fail() { echo "FAIL test_render: $*" >&2; exit 1; }
ok() { echo "ok: $*" >&2; }
deploy() { "$S/ops/deploy" "$@" --build "$B"; }

base='host gw1 10.0.0.1
host gw2 10.0.0.2
host sig 10.0.0.3
host l1 10.0.0.11
host l2 10.0.0.12
host l3 10.0.0.13
gateway gw1
signer sig
audit sig
admin gw1
replica 0 l1
replica 0 l2
replica 0 l3
replica 1 l1
replica 1 l2
replica 1 l3'
printf '%s\n' "$base" >"$X/inv"
deploy render --inventory "$X/inv" --out "$X/out" >"$X/render1.log" 2>&1 || { cat "$X/render1.log"; fail "render"; }
W=$X/wit
cp -a "$X/out" "$W" # a one-witness render for the witness checks below (a render takes seconds)
H=$X/out/hosts

# --- placement: every private key only where its service runs
has() { [ -e "$H/$1/etc/quancun/keys/$2" ]; }
for h in l1 l2 l3; do
  has $h ledger.key || fail "ledger.key missing on $h"
  for k in gateway.key signer.key audit.key qcctl.key; do ! has $h $k || fail "$k on ledger host $h"; done
  for o in l1 l2 l3; do
    for s in 0 1; do
      r=${o#l}
      if [ $o = $h ]; then has $h ledger-$s-$r.raft.key || fail "ledger-$s-$r.raft.key missing on $h"
      else ! has $h ledger-$s-$r.raft.key || fail "ledger-$s-$r.raft.key (of $o) on $h"; fi
    done
  done
  [ ! -d "$H/$h/var/lib/quancun/signer-0" ] || fail "a signer token on $h"
done
has gw1 gateway.key && has gw1 qcctl.key || fail "gw1 lacks the gateway or qcctl key"
for k in ledger.key signer.key audit.key; do ! has gw1 $k || fail "$k on gw1"; done
[ ! -d "$H/gw2" ] || [ -z "$(ls "$H/gw2/etc/quancun/keys")" ] || fail "gw2 runs nothing but holds keys"
has sig signer.key && has sig audit.key || fail "sig lacks signer.key or audit.key"
! has sig ledger.key || fail "ledger.key on sig"
[ -f "$H/sig/etc/quancun/keys/signer-0.pin" ] && [ -d "$H/sig/var/lib/quancun/signer-0/tokens" ] ||
  fail "the signer's token or PIN is not on sig"
[ -z "$(find "$H" -name ca.key)" ] || fail "the CA's private key is on a host"
[ -z "$(find "$H" -name '*.key' -perm /077)" ] || fail "a private key readable by group or others in the render"
ok "private keys only on the hosts that need them; no CA key anywhere"

# --- configs name the hosts' addresses and the packages' paths
c=$H/l2/etc/quancun/ledger-1-2.conf
grep -qx 'listen = tcp://10.0.0.12:7201' "$c" || fail "ledger-1-2 listen: $(grep listen "$c")"
grep -qx 'data_dir = /var/lib/quancun/ledger-1-2' "$c" || fail "ledger-1-2 data_dir"
grep -qx 'replicas_file = /etc/quancun/ledger-1.replicas' "$c" || fail "ledger-1-2 replicas_file"
grep -qx 'join = false' "$c" || fail "a founding replica with join"
[ "$(grep -c . "$H/l1/etc/quancun/ledger-1.replicas")" = 4 ] || fail "replicas file of shard 1"
grep -q '^2 10.0.0.12:7401 tcp://10.0.0.12:7201 ' "$H/l1/etc/quancun/ledger-1.replicas" || fail "replica 2 of shard 1"
grep -qx 'ledger = tcp://10.0.0.11:7200,tcp://10.0.0.12:7200,tcp://10.0.0.13:7200;tcp://10.0.0.11:7201,tcp://10.0.0.12:7201,tcp://10.0.0.13:7201' \
  "$H/gw1/etc/quancun/gateway-0.conf" || fail "gateway's ledger list"
grep -qx 'quancun-ledger@1-3.service' "$H/l3/UNITS" || fail "l3's units"
grep -qx 'tcp://10.0.0.3:7100' "$H/l1/etc/quancun/signers.endpoints" || fail "signers.endpoints"
ok "configs: addresses, ports, paths under /etc/quancun and /var/lib/quancun, units"

# --- bad inventories: each refused with exit 2 naming the line and the fault
refuse() { # WHAT EXPECTED-REGEX INVENTORY
  local rc=0 out
  printf '%s\n' "$3" >"$X/bad"
  out=$("$S/ops/deploy" check --inventory "$X/bad" 2>&1) || rc=$?
  [ $rc -eq 2 ] || fail "$1: exit $rc, expected 2 ($out)"
  [[ $out =~ $2 ]] || fail "$1: expected /$2/, saw: $out"
  ok "refused, $1: $out"
}
refuse "duplicate port" "bad:14: port 7200 on host l1 is used twice: by ledger-0-1 and by ledger-1-1" \
  "$(printf '%s\n' "$base" | sed '14s/.*/replica 1 l1 port=7200/')"
refuse "a gateway's http_port on a replica's port" "port 7500 on host l1 is used twice" \
  "$base
gateway l1 http_port=7500"
refuse "unknown host" "bad:17: unknown host 'l9'" "$base
replica 1 l9"
refuse "host declared twice" "host l1 declared twice \(first on line 4\)" "$base
host l1 10.0.0.99"
refuse "address twice" "address 10.0.0.11 is both l1's and l4's" "$base
host l4 10.0.0.11"
refuse "bad address" "address '10.0.0.300' of host x is not an IPv4 address" "host x 10.0.0.300"
refuse "port out of range" "port '70000' is not a port" "$base
gateway gw2 port=70000"
refuse "a missing shard" "shard 1 has no replica, but there are 3 shards" \
  "$(printf '%s\n' "$base" | grep -v '^replica 1')
replica 2 l1"
refuse "two audit witnesses on one host" "bad:17: a second audit witness on host sig: one per host" "$base
audit sig"
nine="$base"
for i in $(seq 1 9); do nine="$nine
host w$i 10.0.1.$i
audit w$i"; done
refuse "nine audit witnesses" "more than 8 audit witnesses" "$nine"
refuse "no signer" "no signer" "$(printf '%s\n' "$base" | grep -v '^signer')"
refuse "unknown statement" "unknown statement 'ledger'" "$base
ledger 0 l1"
refuse "unknown option" "unknown option 'raft' \(here: id port raft_port http_port join\)" "$base
replica 1 gw2 raft=7400"
refuse "replica id twice" "shard 0 has replica id 2 twice" "$base
replica 0 gw2 id=2"
long="host a 10.0.0.1
gateway a
signer a
audit a
admin a"
for i in 1 2 3; do long="$long
host r$i 10.0.100.$i"; done
for s in 0 1 2 3; do for i in 1 2 3; do long="$long
replica $s r$i"; done; done
refuse "a ledger list longer than a config line" "does not fit a config line \(198 bytes\)" "$long"

# --- warnings
printf '%s\n' "$base" "replica 0 gw2" >"$X/warn"
out=$("$S/ops/deploy" check --inventory "$X/warn" 2>&1) || fail "4 replicas refused: $out"
[[ $out =~ "warning: shard 0 has 4 replicas" ]] || fail "no warning for an even group: $out"
printf '%s\n' "$base" "replica 1 l1 port=7210 raft_port=7410 http_port=7510 id=4" >"$X/warn"
out=$("$S/ops/deploy" check --inventory "$X/warn" 2>&1) || fail "$out"
[[ $out =~ "ledger-1-1 and ledger-1-4 are both on host l1" ]] || fail "no warning for two replicas on a host: $out"
ok "warnings: even group, two replicas of a shard on one host"

# --- a change of the inventory: a gateway on gw2, a second signer, a replica 4 of shard 0
cp -a "$X/out/secrets" "$X/secrets.before"
printf '%s\n' "$base" "gateway gw2" "signer gw2" "replica 0 gw2" >"$X/inv"
deploy render --inventory "$X/inv" --out "$X/out" >"$X/render2.log" 2>&1 || { cat "$X/render2.log"; fail "re-render"; }
for k in gateway ledger signer audit qcctl ledger-0-1.raft; do
  cmp -s "$X/secrets.before/keys/$k.key" "$X/out/secrets/keys/$k.key" || fail "key $k changed on re-render"
done
cmp -s "$H/gw1/etc/quancun/keys/gateway.key" "$H/gw2/etc/quancun/keys/gateway.key" ||
  fail "the new gateway does not hold the tier's key pair"
grep -qx 'join = true' "$H/gw2/etc/quancun/ledger-0-4.conf" || fail "the added replica does not join"
ch=$X/out/changes.txt
cat "$ch" >&2
grep -q "^gw2: new etc/quancun/ledger-0-4.conf: systemctl enable --now quancun-ledger@0-4, then: qcctl --config /etc/quancun/qcctl.conf shard add-replica --shard 0 --id 4 --raft-address 10.0.0.2:7400 --endpoint tcp://10.0.0.2:7200 --raft-key '" "$ch" ||
  fail "no add-replica command for the new replica"
grep -q "^l1: changed etc/quancun/ledger-0.replicas: systemctl reload every quancun-ledger@0-\* here" "$ch" || fail "no reload of shard 0's replicas"
grep -q "^l1: changed etc/quancun/signers.endpoints: systemctl reload quancun-ledger@\*" "$ch" || fail "no reload for the new signer"
grep -q "^gw1: changed etc/quancun/gateway-0.conf: systemctl restart quancun-gateway@0" "$ch" || fail "no restart of gateway-0 (new ledger endpoint)"
grep -q "^sig: changed etc/quancun/audit.conf: systemctl restart quancun-audit" "$ch" || fail "no audit restart"
! grep -v '^gw2:' "$ch" | grep -q "ledger-1.replicas\|ledger-0-1.conf\|\.key" || fail "an unchanged file listed as changed"
grep -q "^gw2: new etc/quancun/gateway-1.conf: systemctl enable --now quancun-gateway@1" "$ch" || fail "no start of gateway-1"
ok "re-render: keys kept, the change listed with its commands"

# --- the gateway on gw2 removed again: its config goes, the change says to disable it
printf '%s\n' "$base" "signer gw2" "replica 0 gw2" >"$X/inv"
deploy render --inventory "$X/inv" --out "$X/out" >"$X/render3.log" 2>&1 || { cat "$X/render3.log"; fail "third render"; }
[ ! -e "$H/gw2/etc/quancun/gateway-1.conf" ] || fail "gateway-1.conf still on gw2"
grep -q "^gw2: gone etc/quancun/gateway-1.conf: systemctl disable --now quancun-gateway@1" "$ch" ||
  fail "no disable of the removed gateway: $(cat "$ch")"
grep -qx 'join = true' "$H/gw2/etc/quancun/ledger-0-4.conf" || fail "replica 4 lost its join on a later render"
ok "a removed gateway: its config deleted, the disable command listed"
# --- a second audit witness: every config names both, the new one starts from a copy
printf '%s\n' "$base" >"$X/inv1"
! grep -q '^consumer' "$W/hosts/sig/etc/quancun/audit.conf" || fail "a single audit got a consumer name"
! grep -rq '^audit_consumers' "$W/hosts/l1/etc/quancun/" || fail "ledgers list consumers with one audit"
grep -qx 'audit = tcp://10.0.0.3:7398' "$W/hosts/gw1/etc/quancun/gateway-0.conf" || fail "gateway's audit with one witness"
printf '%s\n' "$base" "audit gw2" >"$X/inv2"
out=$("$S/ops/deploy" check --inventory "$X/inv2" 2>&1) || fail "two witnesses refused: $out"
[[ $out =~ "2 audit witnesses" ]] || fail "check does not count 2 witnesses: $out"
deploy render --inventory "$X/inv2" --out "$W" >"$X/wit2.log" 2>&1 || { cat "$X/wit2.log"; fail "render (two witnesses)"; }
WH=$W/hosts
for h in sig gw2; do
  [ -f "$WH/$h/etc/quancun/keys/audit.key" ] && [ -f "$WH/$h/etc/quancun/keys/audit.allow" ] ||
    fail "witness host $h lacks audit.key or audit.allow"
  grep -qx 'quancun-audit.service' "$WH/$h/UNITS" || fail "$h's units lack quancun-audit"
done
grep -qx 'consumer = audit-0' "$WH/sig/etc/quancun/audit.conf" || fail "sig's witness is not audit-0"
grep -qx 'consumer = audit-1' "$WH/gw2/etc/quancun/audit.conf" || fail "gw2's witness is not audit-1"
grep -qx 'listen = tcp://10.0.0.2:7398' "$WH/gw2/etc/quancun/audit.conf" || fail "audit-1's listen"
grep -qx 'instance = 1' "$WH/gw2/etc/quancun/audit.conf" || fail "audit-1's instance"
for c in "$WH"/l{1,2,3}/etc/quancun/ledger-*-*.conf; do
  grep -qx 'audit_consumers = audit-0,audit-1' "$c" || fail "$(basename "$c") lacks audit_consumers"
done
both='audit = tcp://10.0.0.3:7398;tcp://10.0.0.2:7398'
grep -qx "$both" "$WH/gw1/etc/quancun/gateway-0.conf" || fail "the gateway does not send to both witnesses"
grep -qx "$both" "$WH/sig/etc/quancun/signer-0.conf" || fail "the signer does not send to both witnesses"
grep -q '^audit.key  *gw2 sig $' "$W/placement.txt" || fail "placement of audit.key: $(grep audit.key "$W/placement.txt")"
[ ! -e "$WH/l1/etc/quancun/keys/audit.key" ] || fail "audit.key on a ledger host"
ch=$W/changes.txt
cat "$ch" >&2
grep -q "^gw2: new etc/quancun/audit.conf: a new witness: .*seed its data_dir with a copy of a running witness's log.*then systemctl enable --now quancun-audit" "$ch" ||
  fail "no seeding instruction for the new witness"
grep -q "^sig: changed etc/quancun/audit.conf: systemctl restart quancun-audit" "$ch" || fail "no restart of audit-0 (its consumer name)"
grep -q "^l1: changed etc/quancun/ledger-0-1.conf: systemctl restart quancun-ledger@0-1" "$ch" || fail "no restart of the ledgers (audit_consumers)"
grep -q "^gw1: changed etc/quancun/gateway-0.conf" "$ch" || fail "no restart of the gateway (audit list)"
printf '%s\n' "$base" >"$X/inv1"
deploy render --inventory "$X/inv1" --out "$W" >"$X/wit3.log" 2>&1 || { cat "$X/wit3.log"; fail "render (back to one witness)"; }
grep -q "^gw2: gone etc/quancun/audit.conf: systemctl disable --now quancun-audit" "$ch" || fail "no disable of the removed witness: $(cat "$ch")"
! grep -rq '^audit_consumers' "$WH/l1/etc/quancun/" || fail "audit_consumers left after going back to one witness"
ok "two audit witnesses: both in every caller's audit list and the ledgers' audit_consumers, keys on both, the new one seeded"
failed=0
echo "PASS test_render" >&2
