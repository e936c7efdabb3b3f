#!/usr/bin/env bash
# layering.sh - every #include "..." in the tree's .c/.h files stays inside the layer table.
#
#   layering.sh --root DIR --table FILE [--exceptions FILE]
#
# The table is read from FILE (docs/DESIGN.md, section "Layers"): the markdown rows between
# the lines `<!-- layering:begin -->` and `<!-- layering:end -->`. In each row the first cell
# names one folder in backticks (`signer`, or `tests/*` for every folder directly under
# tests/), the second cell lists in backticks what that folder may include:
#   `dir`          the headers of that folder (the folder's own headers are always allowed);
#   `dir/name.h`   that one header only;
#   `*`            every folder outside tests/.
# Rows without a backticked folder (the header, the separator) are skipped. A file belongs to
# the row whose folder is the longest prefix of its path; a header is found in the tree (the
# includer's own folder first, then by name anywhere), and a generated NAME.pb-c.h belongs to
# the folder of NAME.proto.
#
# The scan covers every .c and .h under DIR except .git, directories holding a CMakeCache.txt
# (build trees, wherever they are), DIR/build, DIR/run and generated *.pb-c.[ch].
#
# Fails (exit 1), printing one line per problem as file:line, on: an include that crosses the
# table, an include of a header not in the tree or found twice, a source file in a folder the
# table does not name, and an exception (--exceptions, lines `file header  reason`) that no
# longer occurs, so that the exception list only ever shrinks. Exit 2 on bad usage.
set -euo pipefail

usage() {
    echo "usage: $0 --root DIR --table FILE [--exceptions FILE]" >&2
    exit 2
}

root='' table='' exceptions=''
while [ $# -gt 0 ]; do
    case "$1" in
    --root) root=${2:-}; shift 2 || usage ;;
    --table) table=${2:-}; shift 2 || usage ;;
    --exceptions) exceptions=${2:-}; shift 2 || usage ;;
    *) usage ;;
    esac
done
if [ -z "$root" ] || [ ! -d "$root" ] || [ -z "$table" ] || [ ! -f "$table" ]; then
    usage
fi
if [ -n "$exceptions" ] && [ ! -f "$exceptions" ]; then
    usage
fi
root=$(cd "$root" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The table rows, one per line: folder, then the allowed tokens, space-separated.
awk '
    /<!-- layering:begin -->/ { inside = 1; next }
    /<!-- layering:end -->/ { inside = 0; next }
    !inside || !/^[ \t]*\|/ { next }
    {
        n = split($0, cell, "|")
        if (n < 4 || !match(cell[2], /`[^`]+`/))
            next
        line = substr(cell[2], RSTART + 1, RLENGTH - 2)
        rest = cell[3]
        while (match(rest, /`[^`]+`/)) {
            line = line " " substr(rest, RSTART + 1, RLENGTH - 2)
            rest = substr(rest, RSTART + RLENGTH)
        }
        print line
    }' "$table" >"$work/table"
if [ ! -s "$work/table" ]; then
    echo "$table: no layer table between <!-- layering:begin --> and <!-- layering:end -->" >&2
    exit 1
fi

# The tree's own files, relative to root: sources to scan, and .proto schemas (owners of the
# generated headers).
(cd "$root" && find . \
    \( -type d \( -name .git -o -path ./build -o -path ./run -o -exec test -e '{}/CMakeCache.txt' \; \) -prune \) \
    -o -type f \( -name '*.c' -o -name '*.h' -o -name '*.proto' \) ! -name '*.pb-c.[ch]' -print) |
    sed 's|^\./||' | LC_ALL=C sort >"$work/files"

# Every #include "..." of the sources: path, line, included name.
grep -v '\.proto$' "$work/files" | tr '\n' '\0' |
    (cd "$root" && xargs -0 -r awk '
        /^[ \t]*#[ \t]*include[ \t]*"[^"]*"/ {
            match($0, /"[^"]*"/)
            print FILENAME "\t" FNR "\t" substr($0, RSTART + 1, RLENGTH - 2)
        }') >"$work/includes"

: >"$work/exceptions"
if [ -n "$exceptions" ]; then
    # file, header and the reason (required): blank lines and # comments skipped.
    awk -v name="$exceptions" '
        /^[ \t]*(#|$)/ { next }
        NF < 3 { print name ":" FNR ": an exception is `file header reason`" > "/dev/stderr"; bad = 1; next }
        { print $1 "\t" $2 }
        END { exit bad }' "$exceptions" >"$work/exceptions"
fi

awk -F'\t' -v table_name="$table" -v exceptions_name="${exceptions:-}" '
    function dirname(p) { return p ~ /\// ? substr(p, 1, match(p, /\/[^\/]*$/) - 1) : "" }
    function basename(p) { return p ~ /\// ? substr(p, match(p, /\/[^\/]*$/) + 1) : p }
    # The row a path belongs to (the longest matching folder) and, through unit_of, the
    # concrete folder it stands for (tests/* makes one folder of each tests/<name>).
    function row_of(p,    i, best, best_len, pat, pre, len) {
        best = 0; best_len = -1
        for (i = 1; i <= rows; i++) {
            pat = row_dir[i]
            if (pat ~ /\/\*$/) {
                pre = substr(pat, 1, length(pat) - 1)
                len = length(pre) - 1
                if (index(p, pre) != 1 || index(substr(p, length(pre) + 1), "/") == 0)
                    continue
            } else {
                len = length(pat)
                if (index(p, pat "/") != 1)
                    continue
            }
            if (len > best_len) { best = i; best_len = len }
        }
        return best
    }
    function unit_of(p, r,    pre, tail) {
        if (row_dir[r] !~ /\/\*$/)
            return row_dir[r]
        pre = substr(row_dir[r], 1, length(row_dir[r]) - 1)
        tail = substr(p, length(pre) + 1)
        return pre substr(tail, 1, index(tail, "/") - 1)
    }
    function allowed(r, from_unit, to_unit, header,    i, n, tok) {
        if (to_unit == from_unit)
            return 1
        n = split(row_allow[r], tok, " ")
        for (i = 1; i <= n; i++) {
            if (tok[i] == "*" && to_unit !~ /^tests(\/|$)/)
                return 1
            if ((tok[i] ~ /\.h$/) ? (tok[i] == header) : (tok[i] == to_unit))
                return 1
        }
        return 0
    }
    # Which file of the tree an include names: "" when none, "?" when more than one.
    function resolve(from, inc,    d, cand, stem) {
        d = dirname(from)
        cand = (d == "" ? "" : d "/") inc
        if (cand in is_file)
            return cand
        if (index(inc, "/") && (inc in is_file))
            return inc
        if (inc ~ /\.pb-c\.h$/) {
            stem = substr(basename(inc), 1, length(basename(inc)) - length(".pb-c.h"))
            return (stem ".proto") in by_name ? by_name[stem ".proto"] : ""
        }
        return basename(inc) in by_name ? by_name[basename(inc)] : ""
    }
    function fail(msg) { print msg; failed++ }

    FILENAME == ARGV[1] {
        rows++
        row_dir[rows] = $0
        sub(/ .*/, "", row_dir[rows])
        row_allow[rows] = substr($0, length(row_dir[rows]) + 2)
        row_text[rows] = ""
        n = split(row_allow[rows], tok, " ")
        for (i = 1; i <= n; i++)
            row_text[rows] = row_text[rows] (i > 1 ? ", " : "") (tok[i] == "*" ? "every folder outside tests/" : tok[i])
        if (n == 0)
            row_text[rows] = "nothing of ours"
        next
    }
    FILENAME == ARGV[2] {
        is_file[$1] = 1
        b = basename($1)
        if (b in by_name)
            by_name[b] = "?"
        else
            by_name[b] = $1
        if ($1 !~ /\.proto$/ && !row_of($1))
            fail($1 ": in no folder of the layer table (" table_name ", \"Layers\"): add its row")
        next
    }
    FILENAME == ARGV[3] {
        excepted[$1 "\t" $2] = $0
        next
    }
    {
        from = $1; line = $2; inc = $3
        r = row_of(from)
        if (!r)
            next
        h = resolve(from, inc)
        if (h == "") {
            fail(from ":" line ": includes \"" inc "\", which is not in the tree")
            next
        }
        if (h == "?") {
            fail(from ":" line ": includes \"" inc "\", a name the tree holds twice")
            next
        }
        hr = row_of(h)
        if (!hr) {
            next
        }
        fu = unit_of(from, r); hu = unit_of(h, hr)
        if (allowed(r, fu, hu, h))
            next
        key = from "\t" inc
        if (key in excepted) {
            seen[key] = 1
            next
        }
        fail(from ":" line ": includes \"" inc "\" (" h ", of " hu "): " fu \
             " may include only " row_text[r])
    }
    END {
        for (key in excepted)
            if (!(key in seen)) {
                split(key, k, "\t")
                fail(exceptions_name ": exception \"" k[1] " includes " k[2] "\" no longer occurs: delete it")
            }
        if (failed)
            print failed " problem(s) with the layer table of " table_name " (\"Layers\")"
        exit failed != 0
    }' "$work/table" "$work/files" "$work/exceptions" "$work/includes"
