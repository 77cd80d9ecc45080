#!/usr/bin/env bash
# Installs the Debian packages nfqlb's build, tests and labs need, only those missing.
# Usage: bash scripts/ensure-packages.sh [EXTRA...]   (root) — EXTRA: more packages, e.g. the
# benchmark suite's peers (wrk haproxy nginx-light).
set -euo pipefail
packages=(libnetfilter-queue-dev libmnl-dev libnfnetlink-dev libssl-dev openssl pkg-config iptables iproute2 curl python3 iperf3 gcc jq socat util-linux systemd "$@")
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "packages present: ${packages[*]}"
fi
