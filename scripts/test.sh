#!/usr/bin/env bash
# Runs every nfqlb test on a fresh Debian machine, as root: installs the packages the build and the
# namespace labs need, builds, then runs `swift test` (unit tests, and the end-to-end tests in network
# namespaces, which need root), then checks that the release build's packet path allocates nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/ensure-packages.sh

swift build
export NFQLB="$PWD/.build/debug/nfqlb"
swift test "$@"

# The shipped (release) packet path must not allocate: counted with an LD_PRELOAD malloc counter.
scripts/check-allocations.sh release
