#!/usr/bin/env bash
# Runs every nfqlb test on a fresh Debian machine, as root: installs the packages the build and the
# namespace labs need, builds, then runs `swift test` (unit tests, and the end-to-end tests in network
# namespaces, which need root), then checks that the release build's packet path allocates nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(libnetfilter-queue-dev libmnl-dev libnfnetlink-dev pkg-config iptables iproute2 curl python3 iperf3 gcc)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

swift build
export NFQLB="$PWD/.build/debug/nfqlb"
swift test "$@"

# The shipped (release) packet path must not allocate: counted with an LD_PRELOAD malloc counter.
scripts/check-allocations.sh release
