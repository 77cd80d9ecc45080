#!/usr/bin/env bash
# Fuzzes nfqlb's input parsers with libFuzzer (Sources/nfqlb-fuzz; docs/ARCHITECTURE.md, "Fuzzing"): each target
# for SECONDS, starting from its seed corpus (Fuzz/corpus/TARGET), with AddressSanitizer. Fails on any crash,
# trap, leak or sanitizer report; the input that caused it is kept as Fuzz/crashes/TARGET-crash-*, ready to
# become a unit test. Saved crash inputs (Fuzz/crashes/TARGET-*) are replayed first.
#
# Usage: scripts/fuzz.sh [SECONDS=60] [TARGET...]   (targets: packet netlink config control probe sync; default all)
#   FUZZ_CORPUS=DIR keeps the corpus grown (default: a temporary directory, removed on exit).
#   A long run: scripts/fuzz.sh 3600 packet   (or libFuzzer directly:
#   NFQLB_FUZZ_TARGET=packet .build-fuzz/debug/nfqlb-fuzz -jobs=2 -max_total_time=3600 DIR Fuzz/corpus/packet)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(packet netlink config control probe sync)
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -ge 1 ] || { echo "fuzz.sh: SECONDS must be a positive number" >&2; exit 2; }

echo "fuzz: building the libFuzzer binary (.build-fuzz)"
swift build --scratch-path .build-fuzz --product nfqlb-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING 2>&1 | grep -E "error|Compiling nfqlb_fuzz|Build complete" || true
binary=$root/.build-fuzz/debug/nfqlb-fuzz
[ -x "$binary" ] || { echo "fuzz.sh: the build failed" >&2; exit 1; }

work=${FUZZ_CORPUS:-}
cleanup=""
if [ -z "$work" ]; then work=$(mktemp -d "${TMPDIR:-/tmp}/nfqlb-fuzz.XXXXXX"); cleanup=$work; fi
trap '[ -n "$cleanup" ] && rm -rf "$cleanup"' EXIT
mkdir -p Fuzz/crashes

# Swift's own crash handler would run inside the sanitizer's report; let libFuzzer report the trap itself.
export SWIFT_BACKTRACE=enable=no
status=0
for target in "${targets[@]}"; do
    [ -d "Fuzz/corpus/$target" ] || { echo "fuzz.sh: no target '$target' (packet netlink config control probe sync)" >&2; exit 2; }
    mkdir -p "$work/$target"
    saved=(Fuzz/crashes/"$target"-*)
    if [ -e "${saved[0]}" ]; then
        echo "fuzz $target: replaying ${#saved[@]} saved crash inputs"
        NFQLB_FUZZ_TARGET=$target "$binary" "${saved[@]}" >/dev/null 2>&1 || { echo "fuzz $target: a saved crash input still fails" >&2; status=1; }
    fi
    log=$work/$target.log
    # -timeout: an input slower than 10 s is a finding too (a loop); -rss_limit_mb: the config target builds
    # tables. libFuzzer exits non-zero on any finding.
    if NFQLB_FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="Fuzz/crashes/$target-" "$work/$target" "Fuzz/corpus/$target" > "$log" 2>&1; then
        done_line=$(grep -E "^#[0-9]+\s+DONE" "$log" | tail -1)
        echo "fuzz $target: no crash in ${seconds} s: $(sed -E 's/^#([0-9]+)\s+DONE\s+/\1 runs, /; s/ lim:.*//' <<<"$done_line")"
    else
        echo "fuzz $target: FOUND A CRASH (input kept in Fuzz/crashes/):" >&2
        grep -E "ERROR|SUMMARY|Fatal error|Test unit written|deadly" "$log" | head -20 >&2
        status=1
    fi
done
exit $status
