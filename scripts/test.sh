#!/usr/bin/env bash
# Runs every nfqlb test on a fresh Debian machine, as root: installs the packages the build and the
# namespace labs need, builds, then runs `swift test` (unit tests, and the end-to-end tests in network
# namespaces, which need root), then checks that the release build's packet path allocates nothing, runs the
# concurrency tests under ThreadSanitizer, runs the demo, and fuzzes the packet, netlink, config, control, probe and sync
# parsers (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-packages.sh

swift build
export NFQLB="$PWD/.build/debug/nfqlb"
swift test "$@"

# The shipped (release) packet path must not allocate: counted with an LD_PRELOAD malloc counter.
scripts/check-allocations.sh release

# An upgrade keeps connections: the debug build's nfqlb saves them, the release build takes them back.
swift build -c release --product nfqlb
NFQLB="$PWD/.build/debug/nfqlb" NFQLB_NEXT="$PWD/.build/release/nfqlb" MODE=nat bash Tests/e2e/nat.sh restart

# The README's other command, as a new user runs it (it builds its own release binary, here already built).
(unset NFQLB; bash scripts/demo.sh)

# The code shared between threads under ThreadSanitizer (its own build directory; -DTSAN swaps nfqlb's
# `Lock` for a pthread mutex TSan can see). Any report fails the run.
swift build --build-tests --sanitize=thread --scratch-path .build-tsan -Xswiftc -DTSAN
TSAN_OPTIONS="halt_on_error=1 ${TSAN_OPTIONS:-}" swift test --sanitize=thread --scratch-path .build-tsan -Xswiftc -DTSAN \
    --skip-build --filter 'ConcurrencyTests|TableSwapTests|ConnectionTrackerTests|QueueSocketTests|LifecycleTests|ConntrackOffloadTests|RuntimeTests|ControlServerTests|ControlPlaneTests|MetricsExporterTests|HealthCheckerTests|ProbeTests'

# Each fuzz target for FUZZ_SECONDS (default 60) under AddressSanitizer; a crash fails the run.
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
