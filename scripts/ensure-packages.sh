#!/usr/bin/env bash
# Installs the Debian packages nfqlb's build, tests and labs need, only those missing.
# Usage: bash scripts/ensure-packages.sh [EXTRA...]   (root) — EXTRA: more packages, e.g. the
# benchmark suite's peers (wrk haproxy nginx-light).
set -euo pipefail
packages=(libnetfilter-queue-dev libmnl-dev libnfnetlink-dev libssl-dev openssl pkg-config iptables iproute2 curl python3 iperf3 gcc jq socat util-linux systemd bird2 frr "$@")
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The routing daemons (bird2, frr) run only inside the cluster lab's namespaces: keep their packages from
    # starting them on the host (policy-rc.d 101: no service starts during this install).
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    trap 'if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "packages present: ${packages[*]}"
fi
