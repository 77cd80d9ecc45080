#!/usr/bin/env bash
# Rough NAT throughput in the namespace lab: iperf3 upload from the client to a real server, through the VIP
# (nfqlb in NAT mode) and directly (the same path through the balancer, forwarded by the kernel without nfqlb),
# alternating in one run so that both see the same machine load. Prints each run and the medians.
#
# Usage (root): NFQLB=/path/to/nfqlb [MODE=nat|fullnat] scripts/bench-nat.sh [ROUNDS=3] [SECONDS=5]
# Without NFQLB it builds and uses the release binary.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/Tests/e2e/lib.sh"
lab_unmask_signals "$@"
rounds=${1:-3}
seconds=${2:-5}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] && [ "$seconds" -ge 1 ] && [ "$seconds" -le 30 ] || fail "ROUNDS 1..10, SECONDS 1..30"
command -v iperf3 >/dev/null || fail "iperf3 not found (apt-get install iperf3)"
if [ -z "${NFQLB:-}" ]; then
    (cd "$root" && swift build -c release >/dev/null)
    NFQLB=$(cd "$root" && swift build -c release --show-bin-path)/nfqlb
fi
export NFQLB

lab_init "nqb$$"
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    [ -e "/run/netns/${P}b" ] && in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null 2>&1
    return 0
}
lab_nat_up
ip -n "${P}c" route add 198.51.100.0/24 via 192.0.2.1   # the direct path, for the baseline
lab_spawn "${P}r1" "$LAB_TMP/iperf.log" iperf3 -s -B 198.51.100.11
sleep 0.5
locals=""
[ "${MODE:-nat}" = fullnat ] && locals="
    local-addresses: [198.51.100.1]"
cat > "$LAB_TMP/bench.yaml" <<YAML
queues: [0]
services:
  - vip: 203.0.113.10
    port: 5201
    protocol: tcp
    mode: ${MODE:-nat}$locals
    scheduler: rr
    reals:
      - { address: 198.51.100.11, port: 5201 }
YAML

# mbps TARGET: one bounded iperf3 upload; prints Mbit/s received by the server.
mbps() {
    in_ns "${P}c" timeout $((seconds + 20)) iperf3 -c "$1" -t "$seconds" ${IPERF_ARGS:-} -J 2>/dev/null \
        | "$LAB_PYTHON" -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}

direct=(); nat=()
for round in $(seq "$rounds"); do
    d=$(mbps 198.51.100.11) || fail "direct iperf3 failed"
    nfqlb_start "$LAB_TMP/bench.yaml"
    n=$(mbps 203.0.113.10) || fail "iperf3 through the VIP failed"
    nfqlb_stop
    echo "nfqlb stats: $(grep -E '^(received|batches|kernel_user_dropped|kernel_queue_dropped|receive_overruns) ' "$NFQLB_STATS" | tr '\n' ' ')"
    in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null
    echo "round $round: direct (kernel forwarding) $d Mbit/s, through the VIP (nfqlb NAT) $n Mbit/s"
    direct+=("$d"); nat+=("$n")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
md=$(median "${direct[@]}"); mn=$(median "${nat[@]}")
echo "median: direct $md Mbit/s, nfqlb NAT $mn Mbit/s, ratio $(awk -v a="$mn" -v b="$md" 'BEGIN{printf "%.2f", a/b}')"
