#!/usr/bin/env bash
# Checks that nfqlb's per-packet path allocates nothing: runs nfqlb-bench (the PacketHandler over synthetic
# traffic, one new connection every five packets) with an LD_PRELOAD malloc counter, for two packet counts,
# and prints the allocations per packet from the difference. Both traffic mixes: checksums complete (a queue
# without GSO), and as a GSO queue delivers them (unfinished checksums, a 16 KB super-packet). Exits 1 if any
# is not 0.
#
# Usage: scripts/check-allocations.sh [debug|release]   (default release; builds nfqlb-bench)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
configuration=${1:-release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -shared -fPIC -o "$work/malloc-count.so" "$root/scripts/malloc-count.c"
(cd "$root" && swift build -c "$configuration" --product nfqlb-bench >"$work/build.log" 2>&1) ||
    { grep -E "error|warning: " "$work/build.log" | head -20 >&2; echo "FAIL: nfqlb-bench did not build ($configuration)" >&2; exit 1; }
bench=$(cd "$root" && swift build -c "$configuration" --show-bin-path)/nfqlb-bench

# count N MIX: the allocations during nfqlb-bench's packet loop of N packets (it marks the loop for the
# counter), then the whole run's, start-up and result formatting included.
count() { LD_PRELOAD="$work/malloc-count.so" "$bench" "$1" "$2" 2>&1 >/dev/null | awk '$1=="allocations_marked"{m=$2} $1=="allocations"{t=$2} END{print m, t}'; }
small=20000; large=220000
for mix in plain gso; do
    read -r a total_a <<<"$(count $small $mix)"; read -r b total_b <<<"$(count $large $mix)"
    [[ $a =~ ^[0-9]+$ && $b =~ ^[0-9]+$ ]] || { echo "FAIL: the malloc counter reported no marked loop (a='$a' b='$b')" >&2; exit 1; }
    per=$(awk -v a="$a" -v b="$b" -v n=$((large - small)) 'BEGIN{printf "%.4f", (b-a)/n}')
    echo "allocations in the packet loop ($mix): $a for $small packets, $b for $large packets: $per per packet ($configuration; whole runs $total_a and $total_b)"
    [ "$a" = "$b" ] || { echo "FAIL: the packet path allocates ($mix)" >&2; exit 1; }
done
