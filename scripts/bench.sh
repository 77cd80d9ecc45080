#!/usr/bin/env bash
# Rough throughput of one LVS mode in the namespace lab: iperf3 from the client to a real server, through the
# VIP (nfqlb) and directly (the same hosts, kernel forwarding only, no nfqlb), alternating in one run so that
# both see the same machine load. Prints each run and the medians.
#   nat, fullnat: the NAT lab (lib.sh lab_nat_up); "direct" goes through the balancer's kernel forwarding.
#   dr, tun:      the direct-return lab (lab_dr_up); "direct" goes through the router, as the replies do.
#
# Usage (root): NFQLB=/path/to/nfqlb [LAB_FAMILY=6] [LAB_CROSS=1] [OFFLOAD=1] scripts/bench.sh [MODE=nat] [ROUNDS=3] [SECONDS=5]
#   IPERF_ARGS=-R measures the other direction (server to client). OFFLOAD=1: the service has
#   `offload: conntrack` (nat, fullnat, dr). Without NFQLB it builds the release binary.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/Tests/e2e/lib.sh"
lab_unmask_signals "$@"
mode=${1:-nat}
rounds=${2:-3}
seconds=${3:-5}
case "$mode" in nat|fullnat|dr|tun) ;; *) fail "MODE is nat, fullnat, dr or tun" ;; esac
[ "$rounds" -ge 1 ] && [ "$rounds" -le 10 ] && [ "$seconds" -ge 1 ] && [ "$seconds" -le 30 ] || fail "ROUNDS 1..10, SECONDS 1..30"
command -v iperf3 >/dev/null || fail "iperf3 not found (apt-get install iperf3)"
if [ -z "${NFQLB:-}" ]; then
    (cd "$root" && swift build -c release --product nfqlb >/dev/null)
    NFQLB=$(cd "$root" && swift build -c release --show-bin-path)/nfqlb
fi
export NFQLB
vip=$LAB_VIP          # LAB_FAMILY=6 in the environment: the lab's IPv6 addresses (Tests/e2e/lib.sh)
rip=${LAB_RIP[0]}
if [ "${LAB_CROSS:-0}" = 1 ]; then     # TUN between families: the real server in the other family
    [ "$mode" = tun ] || fail "LAB_CROSS=1 is for tun only"
    if [ "$LAB_FAMILY" = 6 ]; then rip=198.51.100.11; else rip=2001:db8:5::11; fi
fi
if [ "$LAB_FAMILY" = 6 ]; then servers=2001:db8:5::/64; via_balancer=2001:db8:c::1; via_router=2001:db8:c::fe
else servers=198.51.100.0/24; via_balancer=192.0.2.1; via_router=192.0.2.254; fi

lab_init "nqb$$"
decap=""
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    [ -e "/run/netns/${P}b" ] && in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null 2>&1
    return 0
}
extra=""
[ -n "${OFFLOAD:-}" ] && extra="offload: conntrack, "
case "$mode" in
    nat|fullnat)
        lab_nat_up
        ip -n "${P}c" route add "$servers" via "$via_balancer"     # direct: kernel forwarding on the balancer
        [ "$mode" = fullnat ] && extra="${extra}local-addresses: [\"$LAB_LIP\"], " ;;
    dr|tun)
        lab_dr_up
        ip -n "${P}c" route add "$servers" via "$via_router"       # direct: through the router
        if [ "${LAB_CROSS:-0}" = 1 ]; then                           # and to the real server's own family
            if [ "$LAB_FAMILY" = 6 ]; then ip -n "${P}c" route add 198.51.100.0/24 via 192.0.2.254
            else ip -n "${P}c" route add 2001:db8:5::/64 via 2001:db8:c::fe; fi
        fi
        in_ns "${P}r1" "$NFQLB" real-server setup --vip "$vip" --mode "$mode" >/dev/null
        if [ "$mode" = tun ]; then
            lab_spawn "${P}r1" "$LAB_TMP/decap.log" "$NFQLB" decap --queue 0 --vip "$vip" --allow-source 198.51.100.1 --allow-source 2001:db8:5::1
            for _ in $(seq 100); do queue_bound "${P}r1" 0 && break; sleep 0.1; done
        fi ;;
esac
lab_spawn "${P}r1" "$LAB_TMP/iperf.log" iperf3 -s     # all addresses: the RIP (direct) and, in DR/TUN, the VIP
sleep 0.5
cat > "$LAB_TMP/bench.yaml" <<YAML
queues: [0]
services:
  - { vip: "$vip", port: 5201, protocol: tcp, mode: $mode, ${extra}reals: [ { address: "$rip" } ] }
YAML

# mbps TARGET: one bounded iperf3 run; prints Mbit/s received.
mbps() {
    in_ns "${P}c" timeout $((seconds + 20)) iperf3 -c "$1" -t "$seconds" ${IPERF_ARGS:-} -J 2>/dev/null \
        | "$LAB_PYTHON" -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}

direct=(); balanced=()
for round in $(seq "$rounds"); do
    d=$(mbps "$rip") || fail "direct iperf3 failed"
    nfqlb_start "$LAB_TMP/bench.yaml" >/dev/null
    n=$(mbps "$vip") || fail "iperf3 through the VIP failed"
    nfqlb_stop
    echo "nfqlb stats: $(grep -E '^(received|offloaded|batches|tunnel_too_big|kernel_user_dropped|kernel_queue_dropped|receive_overruns) ' "$NFQLB_STATS" | tr '\n' ' ')"
    in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null
    echo "round $round: direct $d Mbit/s, through the VIP (nfqlb $mode) $n Mbit/s"
    direct+=("$d"); balanced+=("$n")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
md=$(median "${direct[@]}"); mb=$(median "${balanced[@]}")
echo "median ($mode IPv$LAB_FAMILY${LAB_CROSS:+ cross=$LAB_CROSS}${OFFLOAD:+ offload}${IPERF_ARGS:+ $IPERF_ARGS}): direct $md Mbit/s, nfqlb $mb Mbit/s, ratio $(awk -v a="$mb" -v b="$md" 'BEGIN{printf "%.2f", a/b}')"
