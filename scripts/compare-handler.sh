#!/usr/bin/env bash
# Compares nfqlb's packet handler in this tree with the one at git revision REV, on the same machine in the
# same run: instructions per packet under callgrind (repeatable whatever else the machine does; needs
# valgrind) and nanoseconds per packet from alternating runs of nfqlb-bench (medians; noisy on a shared VM).
#
# Usage: scripts/compare-handler.sh REV [ROUNDS=6] [PACKETS=1000000]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rev=${1:?usage: scripts/compare-handler.sh REV [ROUNDS] [PACKETS]}
rounds=${2:-6}
packets=${3:-1000000}
work=$(mktemp -d)
cleanup() { git -C "$root" worktree remove --force "$work/tree" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

git -C "$root" worktree add --detach "$work/tree" "$rev" >/dev/null 2>&1
echo "building nfqlb-bench at $rev and at the working tree (release)"
build() { (cd "$1" && swift build -c release --product nfqlb-bench >"$work/build.log" 2>&1) || { cat "$work/build.log" >&2; exit 1; }; }
build "$work/tree"
build "$root"
install -m 755 "$work/tree/.build/release/nfqlb-bench" "$work/before"
install -m 755 "$(cd "$root" && swift build -c release --show-bin-path)/nfqlb-bench" "$work/after"

if command -v valgrind >/dev/null; then
    # Instructions per packet: the difference between two packet counts, so start-up cancels out.
    instructions() {
        local binary=$1 a b
        strip -o "$work/stripped" "$binary"   # valgrind cannot read the debug information of some builds
        a=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$work/stripped" 100000 2>&1 | awk '/Collected/ {print $4}')
        b=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$work/stripped" 300000 2>&1 | awk '/Collected/ {print $4}')
        awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", (b - a) / 200000 }'
    }
    echo "instructions per packet: before $(instructions "$work/before"), after $(instructions "$work/after")"
else
    echo "instructions per packet: valgrind not installed, skipped"
fi

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
: >"$work/before.ns"; : >"$work/after.ns"
for i in $(seq "$rounds"); do
    for side in before after; do
        "$work/$side" "$packets" | awk '$1 == "ns/packet" { print $2 }' >>"$work/$side.ns"
    done
done
echo "ns per packet, $rounds alternating runs of $packets packets:"
echo "  before: $(paste -sd' ' "$work/before.ns")  median $(median <"$work/before.ns")"
echo "  after:  $(paste -sd' ' "$work/after.ns")  median $(median <"$work/after.ns")"
