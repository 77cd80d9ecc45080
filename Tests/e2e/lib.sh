#!/usr/bin/env bash
# Helpers for nfqlb's namespace labs (sourced by Tests/e2e/*.sh, scripts/demo.sh and scripts/bench-nat.sh).
#
# Topology (DESIGN.md lab conventions; documentation addresses only, nothing joined to the root namespace):
#
#   ${P}c client 192.0.2.2 ── veth ── 192.0.2.1 ${P}b balancer 198.51.100.1 (bridge br0) ──┬── ${P}r1 198.51.100.11
#        route 203.0.113.0/24 via 192.0.2.1                                                 ├── ${P}r2 198.51.100.12
#        (the VIP is routed to the balancer, not configured on it)                          └── ${P}r3 198.51.100.13
#                                                                   real servers: default via 198.51.100.1
#
# lab_init PREFIX installs a trap that tears everything down (own PIDs by PID, namespaces by name) on exit.
set -euo pipefail

LAB_PIDS=()
LAB_NS=()
LAB_TMP=""
P=""

lab_init() {
    P=$1
    LAB_TMP=$(mktemp -d "/tmp/nfqlb-lab-$P.XXXXXX")
    trap lab_teardown EXIT
    trap 'exit 130' INT TERM
}

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

# lab_spawn NS LOGFILE CMD...: starts CMD in NS in the background and records its PID.
lab_spawn() {
    local ns=$1 log=$2; shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 &
    LAB_PIDS+=($!)
    LAB_LAST_PID=$!
}

lab_teardown() {
    set +e
    if declare -F lab_extra_teardown >/dev/null; then lab_extra_teardown; fi
    local pid
    for pid in "${LAB_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${LAB_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    LAB_PIDS=()
    local ns
    for ns in "${LAB_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    LAB_NS=()
    [ -n "$LAB_TMP" ] && rm -rf "$LAB_TMP"
    LAB_TMP=""
}

lab_add_ns() { ip netns add "$1"; LAB_NS+=("$1"); ip -n "$1" link set lo up; }

lab_nat_up() {
    local c=${P}c b=${P}b i r
    lab_add_ns "$c"; lab_add_ns "$b"
    ip link add "${P}c0" type veth peer name "${P}b0"
    ip link set "${P}c0" netns "$c"; ip link set "${P}b0" netns "$b"
    ip -n "$c" addr add 192.0.2.2/24 dev "${P}c0"; ip -n "$c" link set "${P}c0" up
    ip -n "$c" route add 203.0.113.0/24 via 192.0.2.1
    ip -n "$c" route add 198.51.100.0/24 via 192.0.2.1
    ip -n "$b" addr add 192.0.2.1/24 dev "${P}b0"; ip -n "$b" link set "${P}b0" up
    ip -n "$b" link add br0 type bridge; ip -n "$b" addr add 198.51.100.1/24 dev br0; ip -n "$b" link set br0 up
    in_ns "$b" sysctl -qw net.ipv4.ip_forward=1
    for i in 1 2 3; do
        r=${P}r$i
        lab_add_ns "$r"
        ip link add "${P}r${i}a" type veth peer name "${P}r${i}b"
        ip link set "${P}r${i}a" netns "$r"; ip link set "${P}r${i}b" netns "$b"
        ip -n "$b" link set "${P}r${i}b" master br0; ip -n "$b" link set "${P}r${i}b" up
        ip -n "$r" addr add "198.51.100.1$i/24" dev "${P}r${i}a"; ip -n "$r" link set "${P}r${i}a" up
        ip -n "$r" route add default via 198.51.100.1
    done
}

# A 5 MB file, the same on every server, and a whoami file naming each server.
lab_start_http_servers() {
    local i dir
    head -c 5242880 /dev/urandom > "$LAB_TMP/big.bin"
    for i in 1 2 3; do
        dir=$LAB_TMP/www$i; mkdir -p "$dir"
        echo "r$i" > "$dir/whoami"
        ln -s "$LAB_TMP/big.bin" "$dir/big.bin"
        lab_spawn "${P}r$i" "$LAB_TMP/http$i.log" python3 -m http.server 8080 --bind "198.51.100.1$i" --directory "$dir"
    done
    for i in 1 2 3; do
        for _ in $(seq 50); do
            in_ns "${P}r$i" curl -s --max-time 1 -o /dev/null "http://198.51.100.1$i:8080/whoami" && continue 2
            sleep 0.1
        done
        fail "HTTP server r$i did not start: $(cat "$LAB_TMP/http$i.log")"
    done
}

# UDP echo on 198.51.100.1x:5353 answering "r<i>:<payload>" from the address it was sent to.
lab_start_udp_echo() {
    local i
    cat > "$LAB_TMP/udp_echo.py" <<'PY'
import socket, sys
name, address = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((address, 5353))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(name.encode() + b":" + data, peer)
PY
    for i in 1 2 3; do
        lab_spawn "${P}r$i" "$LAB_TMP/udp$i.log" python3 "$LAB_TMP/udp_echo.py" "r$i" "198.51.100.1$i"
    done
}

# csum_errors NS: TCP + UDP checksum errors counted by the namespace's stack.
csum_errors() {
    in_ns "$1" nstat -asz 2>/dev/null | awk '$1=="TcpInCsumErrors"||$1=="UdpInCsumErrors"||$1=="Udp6InCsumErrors"{s+=$2} END{print s+0}'
}

# nfqlb_start CONFIG: installs the rules and starts nfqlb in the balancer; waits until its queue is bound.
nfqlb_start() {
    local config=$1 root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    in_ns "${P}b" env NFQLB="$NFQLB" "$root/scripts/iptables-setup.sh" up "$config" >/dev/null
    lab_spawn "${P}b" "$LAB_TMP/nfqlb.log" "$NFQLB" run --config "$config" --stats-file "$LAB_TMP/stats"
    NFQLB_PID=$LAB_LAST_PID
    for _ in $(seq 100); do
        kill -0 "$NFQLB_PID" 2>/dev/null || fail "nfqlb exited: $(cat "$LAB_TMP/nfqlb.log")"
        [ -s "$LAB_TMP/stats" ] && in_ns "${P}b" grep -qE '^ *0 +[1-9]' /proc/net/netfilter/nfnetlink_queue && return 0
        sleep 0.1
    done
    fail "nfqlb did not bind its queue within 10 s: $(cat "$LAB_TMP/nfqlb.log")"
}

# nfqlb_stop: SIGTERM, requires exit status 0 and the queue unbound.
nfqlb_stop() {
    local status=0
    kill -TERM "$NFQLB_PID"
    wait "$NFQLB_PID" || status=$?
    LAB_PIDS=("${LAB_PIDS[@]/$NFQLB_PID}")
    [ "$status" = 0 ] || fail "nfqlb exited with status $status: $(cat "$LAB_TMP/nfqlb.log")"
    if in_ns "${P}b" grep -qE '^ *0 +[1-9]' /proc/net/netfilter/nfnetlink_queue; then fail "queue 0 still bound after nfqlb stopped"; fi
}

# stat_value NAME: a counter from nfqlb's stats file.
stat_value() { awk -v n="$1" '$1==n{print $2}' "$LAB_TMP/stats"; }
