#!/usr/bin/env bash
# selftest.sh - layering.sh can fail: it runs on small trees built here, one clean and others
# each with one deliberate fault, and asserts the exit code and the line that names the fault.
#
#   selftest.sh LAYERING_SH SCRATCH_DIR
set -euo pipefail

layering=$1
scratch=$2
rm -rf "$scratch"
mkdir -p "$scratch"
failures=0

# A tree of three layers, two services that must not see each other, a generated header, a
# header-only permission and tests folders, with a table in the same shape as docs/DESIGN.md.
make_tree() {
    local t=$1
    rm -rf "$t"
    mkdir -p "$t"/{base,wire,svc_a,svc_b,tool,tests/lib,tests/one,tests/two,build/asan,out/rel}
    cat >"$t/table.md" <<'EOF'
# Layers
Prose before the table is not read.
| `not_a_row` | `svc_a` | outside the markers |

<!-- layering:begin -->
| folder | may include headers of | what it holds |
|---|---|---|
| `base` | nothing of ours | the ground floor |
| `wire` | `base` | schemas and their generated headers |
| `svc_a` | `wire` `base` | a service |
| `svc_b` | `wire` `base` | another service |
| `tool` | `svc_a/a_lib.h` `wire` `base` | a program that may use one header of svc_a |
| `tests/lib` | `*` | test helpers |
| `tests/*` | `*` `tests/lib` | one folder of tests each |
<!-- layering:end -->
EOF
    printf '#include <stdio.h>\n' >"$t/base/base.h"
    printf '#include "base.h"\n' >"$t/base/base.c"
    printf 'syntax = "proto3";\n' >"$t/wire/msg.proto"
    printf '#include "msg.pb-c.h"\n#include "base.h"\n' >"$t/wire/wire.h"
    printf '#include "wire.h"\n' >"$t/svc_a/a_lib.h"
    printf '#include "base.h"\n' >"$t/svc_a/a_other.h"
    printf '#include "a_lib.h"\n#include "a_other.h"\n  #  include "msg.pb-c.h"\n' >"$t/svc_a/a.c"
    printf '#include "wire.h"\n' >"$t/svc_b/b.h"
    printf '#include "b.h"\n' >"$t/svc_b/b.c"
    printf '#include "a_lib.h"\n#include "wire.h"\n' >"$t/tool/tool.c"
    printf '#include "a_other.h"\n#include "b.h"\n' >"$t/tests/lib/helper.h"
    printf '#include "helper.h"\n#include "b.h"\n#include "one_local.h"\n' >"$t/tests/one/test_one.c"
    printf '#include "base.h"\n' >"$t/tests/one/one_local.h"
    printf '#include "helper.h"\n' >"$t/tests/two/test_two.c"
    # A build tree and generated code are never read.
    printf '#include "b.h"\n' >"$t/build/asan/gen.c"
    touch "$t/out/rel/CMakeCache.txt"
    printf '#include "b.h"\n' >"$t/out/rel/gen.c"
    printf '#include "b.h"\n' >"$t/wire/msg.pb-c.h"
}

# expect NAME WANT_RC PATTERN [layering args...]: runs layering.sh; asserts its exit code and
# that its output holds PATTERN (a fixed string; empty = output must be empty).
expect() {
    local name=$1 want=$2 pattern=$3
    shift 3
    local out rc=0
    out=$(bash "$layering" "$@" 2>&1) || rc=$?
    if [ "$rc" != "$want" ]; then
        echo "FAIL $name: exit $rc, expected $want"
        printf '%s\n' "$out" | sed 's/^/    /'
        failures=$((failures + 1))
        return
    fi
    if [ -z "$pattern" ] && [ -n "$out" ]; then
        echo "FAIL $name: expected no output"
        printf '%s\n' "$out" | sed 's/^/    /'
        failures=$((failures + 1))
        return
    fi
    if [ -n "$pattern" ] && ! printf '%s\n' "$out" | grep -qF -- "$pattern"; then
        echo "FAIL $name: output lacks: $pattern"
        printf '%s\n' "$out" | sed 's/^/    /'
        failures=$((failures + 1))
        return
    fi
    echo "ok   $name"
}

t=$scratch/tree

make_tree "$t"
expect "clean tree passes" 0 "" --root "$t" --table "$t/table.md"

make_tree "$t"
printf '#include "base.h"\n\n#include "b.h"\n' >"$t/svc_a/cross.c"
expect "a service including another service fails" 1 \
    'svc_a/cross.c:3: includes "b.h" (svc_b/b.h, of svc_b): svc_a may include only wire, base' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
printf '#include "msg.pb-c.h"\n' >"$t/base/up.c"
expect "the ground floor including a generated header of the layer above fails" 1 \
    'base/up.c:1: includes "msg.pb-c.h" (wire/msg.proto, of wire): base may include only nothing of ours' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
printf '#include "a_other.h"\n' >>"$t/tool/tool.c"
expect "a header outside a header-only permission fails" 1 \
    'tool/tool.c:3: includes "a_other.h" (svc_a/a_other.h, of svc_a)' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
printf '#include "one_local.h"\n' >>"$t/tests/two/test_two.c"
expect "one tests folder including another's header fails" 1 \
    'tests/two/test_two.c:2: includes "one_local.h" (tests/one/one_local.h, of tests/one)' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
printf '#include "helper.h"\n' >"$t/svc_b/b2.c"
expect "a service including a test helper fails" 1 \
    'svc_b/b2.c:1: includes "helper.h" (tests/lib/helper.h, of tests/lib)' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
printf '#include "nowhere.h"\n' >"$t/svc_b/b3.c"
expect "a header not in the tree fails" 1 'svc_b/b3.c:1: includes "nowhere.h", which is not in the tree' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
printf '\n' >"$t/svc_a/b.h"
printf '#include "b.h"\n' >"$t/tool/tool2.c"
expect "a header name held twice fails" 1 'tool/tool2.c:1: includes "b.h", a name the tree holds twice' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
mkdir -p "$t/stray"
printf '#include "base.h"\n' >"$t/stray/s.c"
expect "a folder the table does not name fails" 1 'stray/s.c: in no folder of the layer table' \
    --root "$t" --table "$t/table.md"

make_tree "$t"
printf '#include "b.h"\n' >"$t/svc_a/cross.c"
printf '# known, with its issue\nsvc_a/cross.c b.h issue 0: the fixture crosses on purpose\n' >"$t/exceptions"
expect "a listed exception passes" 0 "" --root "$t" --table "$t/table.md" --exceptions "$t/exceptions"

make_tree "$t"
printf 'svc_a/cross.c b.h issue 0: mended since\n' >"$t/exceptions"
expect "an exception that no longer occurs fails" 1 'exception "svc_a/cross.c includes b.h" no longer occurs' \
    --root "$t" --table "$t/table.md" --exceptions "$t/exceptions"

make_tree "$t"
sed -i '/layering:begin/d' "$t/table.md"
expect "a table without its markers fails" 1 'no layer table' --root "$t" --table "$t/table.md"

rm -rf "$scratch"
if [ "$failures" -ne 0 ]; then
    echo "$failures self-test case(s) failed"
    exit 1
fi
echo "layering.sh: every self-test case behaved"
