#!/usr/bin/env bash
# NAT active/backup with connection sync (README "NAT and FULLNAT across balancers"): two balancers run nfqlb
# with the same NAT service and `cluster: { sync: ... }` (no BGP: the cluster announces nothing); the active
# one holds the floating address 198.51.100.250, which is both the router's next hop for the VIP and the real
# servers' gateway. When the active's nfqlb dies, the script does what keepalived's VRRP would: the address
# moves to the backup and the router and real servers learn its new MAC (as from a gratuitous ARP).
#
#   ${P}c client 192.0.2.2 ── ${P}g router 192.0.2.1 / 198.51.100.254 (bridge), VIP 203.0.113.10 via .250
#                                   ├─ ${P}b1, ${P}b2 balancers 198.51.100.1-2 (+ .250 on the active), nfqlb nat
#                                   └─ ${P}r1..3 real servers 198.51.100.11-13, default via .250, echo on :7000
#
# Usage: NFQLB=.build/debug/nfqlb bash Tests/e2e/failover.sh   (root)
#   SYNC=off: without cluster.sync, for comparison (reported, not checked). CONNS (default 300).
# Prints (checked by EndToEndTests.natActiveBackupKeepsConnectionsThroughSync):
#   backup: N synced copies | failover: survived N of 300 (P%) | failback: survived N of 300 (P%) | cleanup: no rules left
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lab_unmask_signals "$@"
CONNS=${CONNS:-300}
VIP=203.0.113.10
FLOAT=198.51.100.250
[ -n "${NFQLB:-}" ] && [ -x "$NFQLB" ] || fail "NFQLB must name the nfqlb binary"

lab_init "fo$$x"
G=${P}g
NFQLB_PIDS=("" "" "")

# --- topology
lab_router_lan "$G"
port() { lab_lan_port "$G" "$@"; }
for i in 1 2; do
    lab_add_ns "${P}b$i"
    port "${P}b$i" "b$i" "198.51.100.$i" 198.51.100.254
    in_ns "${P}b$i" sysctl -qw net.ipv4.ip_forward=1
done
for i in 1 2 3; do
    lab_add_ns "${P}r$i"
    port "${P}r$i" "r$i" "198.51.100.1$i"
done

# take_float I: balancer I holds the floating address; the router and the real servers learn its MAC (what a
# gratuitous ARP from keepalived does).
take_float() {
    local other=$((3 - $1)) mac n
    ip -n "${P}b$other" addr del "$FLOAT/24" dev eth0 2>/dev/null || true
    ip -n "${P}b$1" addr add "$FLOAT/24" dev eth0
    mac=$(ip -n "${P}b$1" -j link show eth0 | jq -r '.[0].address')
    ip -n "$G" neigh replace "$FLOAT" lladdr "$mac" dev brs nud reachable
    for n in r1 r2 r3; do ip -n "${P}$n" neigh replace "$FLOAT" lladdr "$mac" dev eth0 nud reachable; done
}
take_float 1
ip -n "$G" route add "$VIP/32" via "$FLOAT"
for i in 1 2 3; do ip -n "${P}r$i" route add default via "$FLOAT"; done
for i in 1 2 3; do lab_spawn "${P}r$i" "$LAB_TMP/echo$i.log" "$LAB_PYTHON" "$LAB_ROOT/Tests/e2e/line-echo.py" "r$i"; done

# --- balancers: the same NAT service; sync between them (unless SYNC=off)
openssl rand -hex 32 > "$LAB_TMP/sync.key"
for i in 1 2; do
    mkdir -p "$LAB_TMP/b$i"
    {
        echo "queues: [0]"
        if [ "${SYNC:-on}" != off ]; then
            echo "cluster:"
            echo "  sync: { listen: 198.51.100.$i:8848, peers: [198.51.100.$((3 - i)):8848], key-file: $LAB_TMP/sync.key }"
        fi
        echo "services:"
        echo "  - { vip: $VIP, port: 7000, protocol: tcp, mode: nat, scheduler: rr,"
        echo "      reals: [{ address: 198.51.100.11 }, { address: 198.51.100.12 }, { address: 198.51.100.13 }] }"
    } > "$LAB_TMP/b$i/lb.yaml"
    "$NFQLB" check --config "$LAB_TMP/b$i/lb.yaml" >/dev/null || fail "nfqlb check refused b$i's configuration"
done

# start_balancer I: nfqlb in balancer I (rules installed by iptables-setup.sh).
start_balancer() {
    local ns=${P}b$1
    in_ns "$ns" "$LAB_ROOT/scripts/iptables-setup.sh" up "$LAB_TMP/b$1/lb.yaml" >/dev/null || fail "iptables-setup.sh up failed in b$1"
    lab_spawn "$ns" "$LAB_TMP/b$1/nfqlb.log" "$NFQLB" run --config "$LAB_TMP/b$1/lb.yaml" --no-state-file
    NFQLB_PIDS[$1]=$LAB_LAST_PID
    for _ in $(seq 100); do queue_bound "$ns" 0 && return 0; sleep 0.1; done
    fail "nfqlb in b$1 did not bind its queue; log: $(cat "$LAB_TMP/b$1/nfqlb.log")"
}

# kill_balancer I: SIGKILL to balancer I's nfqlb (a crash: nothing saved, nothing withdrawn).
kill_balancer() {
    kill -KILL "${NFQLB_PIDS[$1]}"
    { wait "${NFQLB_PIDS[$1]}"; } 2>/dev/null || true
    lab_forget_pid "${NFQLB_PIDS[$1]}"
    NFQLB_PIDS[$1]=""
}

# copies I: how many connections balancer I holds as copies from the other (waits up to 5 s for CONNS).
copies() {
    local n=0
    for _ in $(seq 50); do
        n=$(in_ns "${P}b$1" "$NFQLB" list -c --json --limit 100000 2>/dev/null | jq '[.connections[] | select(.synced == true)] | length')
        [ "$n" = "$CONNS" ] && break
        sleep 0.1
    done
    echo "${n:-0}"
}

# survived LABEL BROKEN: prints the surviving fraction; with sync, at most 1% may break.
survived() {
    echo "$1: survived $((CONNS - $2)) of $CONNS ($(awk -v s=$((CONNS - $2)) -v n="$CONNS" 'BEGIN { printf "%.1f", 100 * s / n }')%)"
    [ "${SYNC:-on}" = off ] || [ "$2" -le $((CONNS / 100)) ] || fail "$1: $2 connections broke (more than 1%)"
}

lab_extra_teardown() {
    if [ "$LAB_EXIT_STATUS" != 0 ]; then
        exec 1>&2
        for i in 1 2; do
            echo "--- b$i nfqlb log"; tail -n 10 "$LAB_TMP/b$i/nfqlb.log" 2>/dev/null
            in_ns "${P}b$i" "$NFQLB" cluster status 2>&1 | tail -n 16
        done
    fi
    for i in 1 2; do
        [ -e "/run/netns/${P}b$i" ] && in_ns "${P}b$i" "$LAB_ROOT/scripts/iptables-setup.sh" down >/dev/null 2>&1
    done
    return 0
}

start_balancer 1
start_balancer 2
long_client_start "$VIP" 7000 "$CONNS"
sleep 1
[ "$(long_client_report)" = 0 ] || fail "connections broke before any failure"
echo "client: $CONNS connections open through b1 (active)"
[ "${SYNC:-on}" = off ] || echo "backup: $(copies 2) synced copies on b2"

# --- the active's nfqlb dies; the address moves to the backup
kill_balancer 1
take_float 2
sleep 3   # the client calls a connection broken after 2 s without its echo
broken=$(long_client_report)
survived failover "$broken"

# --- b1 comes back as the backup (the active sends it every connection), then b2 dies: back to b1
start_balancer 1
[ "${SYNC:-on}" = off ] || echo "backup again: $(copies 1) synced copies on b1"
sleep 1
kill_balancer 2
take_float 1
sleep 3
broken=$(long_client_report)
survived failback "$broken"

long_client_stop
[ "${SYNC:-on}" = off ] || in_ns "${P}b1" "$NFQLB" cluster status 2>/dev/null | awk '/^connection sync:/ { on = 1; next } on && NF == 2 && $2 != 0 { printf "%s=%s ", $1, $2 } END { print "" }' | sed 's/^/sync b1: /'
lab_stop_pid "${NFQLB_PIDS[1]}" 100 || fail "nfqlb in b1 did not stop cleanly"
NFQLB_PIDS[1]=""
for i in 1 2; do
    in_ns "${P}b$i" "$LAB_ROOT/scripts/iptables-setup.sh" down >/dev/null || fail "iptables-setup.sh down failed in b$i"
    if in_ns "${P}b$i" iptables-save | grep -q NFQLB; then fail "rules left behind in b$i"; fi
done
echo "cleanup: no rules left"
if [ "${SYNC:-on}" = off ]; then
    pass "failover: NAT active/backup without connection sync, for comparison (survival above, not checked)"
else
    pass "failover: NAT connections survive the active balancer's loss, both ways, through connection sync"
fi
