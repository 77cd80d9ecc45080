#!/usr/bin/env bash
# End-to-end test of nfqlb's LVS NAT mode in a lab of network namespaces (topology: see lib.sh).
#
# Usage: NFQLB=/abs/path/to/nfqlb [LAB_FAMILY=6] Tests/e2e/nat.sh [rr|wrr|download|udp|local-vip|multiqueue|fullnat|offload|restart|all]
#        (root; default: all). With LAB_FAMILY=6 every address below is its IPv6 counterpart (lib.sh): the VIP
#        2001:db8:f::10, the real servers 2001:db8:5::1X, the local address 2001:db8:5::1.
#
#   rr        60 sequential HTTP requests to 203.0.113.10:80, scheduler rr 1:1:1   -> exactly 20/20/20
#   wrr       60 sequential HTTP requests, scheduler wrr 1:2:3                      -> exactly 10/20/30
#   download  5 MiB file through the VIP, sha256 identical to the original
#   udp       30 datagrams to 203.0.113.10:53, each from a new socket (new source port): all answered,
#             from 203.0.113.10:53, rr -> exactly 10/10/10; then one datagram to 203.0.113.10:54, whose real
#             server port has no listener: the real server's ICMP "port unreachable", translated by nfqlb
#             (from the VIP, quoting the client's own datagram), makes the client's connected socket fail
#             with ECONNREFUSED ("icmp: port unreachable reached the client from the VIP")
#   fullnat   rr, download, upload, udp in FULLNAT mode, real servers without a route back; their peers: the LIP
#   multiqueue rr and download with queues [0, 1]: the two directions on different queues, one table
#   local-vip rr and udp with the VIP also configured on the balancer's lo (needs accept_local=1)
#   restart   (MODE=nat|fullnat) a slow upload and a UDP flow while nfqlb is stopped and started again: both
#             go on (the connections saved to the state file and taken back; lib.sh restart_check)
#   all       rr, download, udp with one nfqlb; then nfqlb is stopped and restarted with the wrr config
#
# Every scenario also checks: no new TCP/UDP checksum errors in the client and the real servers; nfqlb stops on
# SIGTERM with status 0 and unbinds queue 0; nfqlb's own drop counters stay 0; `iptables-setup.sh down` leaves
# no NFQLB rule. Prints "ok: ..." lines plus these lines, which Tests/QueueBalancerTests/EndToEndTests.swift
# looks for:
#   distribution rr r1=20 r2=20 r3=20 | distribution wrr r1=.. | distribution udp r1=.. r2=.. r3=..
#   download 5242880 bytes sha256 match
#   checksum errors: client +0 r1 +0 r2 +0 r3 +0
#   cleanup: no rules left
# Exit status 0 only if everything passed; the lab is torn down in every case.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
lab_unmask_signals "$@"

scenario=${1:-all}
case "$scenario" in
    rr|wrr|download|udp|local-vip|multiqueue|fullnat|offload|restart|all) ;;
    *) echo "usage: NFQLB=/path/to/nfqlb $0 [rr|wrr|download|udp|local-vip|multiqueue|fullnat|offload|all]" >&2; exit 2 ;;
esac
[ -n "${NFQLB:-}" ] || fail "set NFQLB to the absolute path of the nfqlb binary"
[[ $NFQLB == /* ]] && [ -x "$NFQLB" ] || fail "NFQLB=$NFQLB is not an executable absolute path"
export NFQLB
setup=$LAB_ROOT/scripts/iptables-setup.sh
[ -x "$setup" ] || fail "$setup not found"

lab_init "nq$$x"

# Runs first in the teardown: stop nfqlb if still running, show why we failed, remove the rules.
lab_extra_teardown() {
    local failed=0
    [ "$LAB_EXIT_STATUS" != 0 ] && [ -n "$LAB_TMP" ] && failed=1
    if [ "$failed" = 1 ] && [ -e "/run/netns/${P}b" ]; then
        echo "--- /proc/net/netfilter/nfnetlink_queue in the balancer (at failure)" >&2
        in_ns "${P}b" cat /proc/net/netfilter/nfnetlink_queue >&2
    fi
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ "$failed" = 1 ]; then
        {
            echo "--- nfqlb log (last 30 lines)"
            cat "$NFQLB_LOG" "$LAB_TMP/nfqlb.out" 2>/dev/null | tail -n 30
            echo "--- nfqlb stats (non-zero)"
            grep -v ' 0$' "$NFQLB_STATS" 2>/dev/null || echo "(no stats file)"
        } >&2
    fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$setup" down >/dev/null 2>&1; fi
}

lab_nat_up
lab_start_http_servers
lab_start_udp_echo
lab_start_upload_sinks "${LAB_RIP[@]}"
pass "lab up: client ${P}c, balancer ${P}b, real servers ${P}r1..3"

# write_config FILE TCP_SCHEDULER W1 W2 W3: TCP 203.0.113.10:80 -> :8080 with that scheduler and weights;
# UDP 203.0.113.10:53 -> :5353, rr 1:1:1.
# MODE (nat or fullnat, default nat), QUEUES (default [0]) and OFFLOAD (set: every service has
# `offload: conntrack`) come from the environment; ONLY_THIRD gives r3 the port 9000 service's only weight,
# WITHOUT_THIRD leaves r3 out of the port 80 and 9000 services, DRAIN sets every service's `drain`. A TCP service on port 9000 (upload sinks) is always there.
write_config() {
    local mode=${MODE:-nat} locals=""
    [ "$mode" = fullnat ] && locals="
    local-addresses: [$LAB_LIP]"
    [ -n "${OFFLOAD:-}" ] && locals="$locals
    offload: conntrack"
    local w=1
    [ -n "${ONLY_THIRD:-}" ] && w=0
    local third="
      - { address: ${LAB_RIP[2]}, port: 8080, weight: $5 }" sinks="
      - { address: ${LAB_RIP[0]}, weight: $w }
      - { address: ${LAB_RIP[1]}, weight: $w }
      - { address: ${LAB_RIP[2]} }"
    if [ -n "${WITHOUT_THIRD:-}" ]; then
        third=""
        sinks="
      - { address: ${LAB_RIP[0]} }
      - { address: ${LAB_RIP[1]} }"
    fi
    [ -n "${DRAIN:-}" ] && locals="$locals
    drain: $DRAIN"
    cat > "$1" <<YAML
queues: ${QUEUES:-[0]}
services:
  - vip: $LAB_VIP
    port: 80
    protocol: tcp
    mode: $mode$locals
    scheduler: $2
    reals:
      - { address: ${LAB_RIP[0]}, port: 8080, weight: $3 }
      - { address: ${LAB_RIP[1]}, port: 8080, weight: $4 }$third
  - vip: $LAB_VIP
    port: 53
    protocol: udp
    mode: $mode$locals
    scheduler: rr
    reals:
      - { address: ${LAB_RIP[0]}, port: 5353, weight: 1 }
      - { address: ${LAB_RIP[1]}, port: 5353, weight: 1 }
      - { address: ${LAB_RIP[2]}, port: 5353, weight: 1 }
  - vip: $LAB_VIP
    port: 9000
    protocol: tcp
    mode: $mode$locals
    scheduler: rr
    reals:$sinks
  - vip: $LAB_VIP
    port: 54
    protocol: udp
    mode: $mode$locals
    scheduler: rr
    reals:
      - { address: ${LAB_RIP[0]}, port: 5454 }
YAML
}

# stop_and_check: SIGTERM nfqlb (status 0, queue unbound: lib.sh), then its final counters.
stop_and_check() {
    nfqlb_stop
    echo "stats: $(grep -v ' 0$' "$NFQLB_STATS" | tr '\n' ' ')"
    local forwarded replied counter value
    forwarded=$(stat_value forwarded); replied=$(stat_value replied)
    if [ -n "${OFFLOAD:-}" ]; then
        # The kernel carries the connections: nfqlb sees about one packet of each, and rewrites none.
        value=$(stat_value offloaded)
        [ "${value:-0}" -gt 0 ] && [ "${forwarded:-0}" = 0 ] && [ "${replied:-0}" = 0 ] ||
            fail "offload: offloaded=${value:-?} forwarded=${forwarded:-?} replied=${replied:-?}"
        echo "offloaded first packets: $value of $(stat_value received) queued"
    else
        [ "${forwarded:-0}" -gt 0 ] && [ "${replied:-0}" -gt 0 ] ||
            fail "nfqlb counted no rewritten packets (forwarded=${forwarded:-?} replied=${replied:-?})"
    fi
    # After a drain ended offloaded connections, their next packets come to nfqlb, which no longer knows them.
    local unknown=dropped_no_connection
    [ -n "${OFFLOAD_DRAINED:-}" ] && unknown=""
    for counter in dropped_malformed dropped_fragment $unknown dropped_no_real_server dropped_table_full \
                   dropped_conflict dropped_ports_exhausted dropped_verdict_send kernel_messages receive_errors \
                   receive_overruns kernel_queue_dropped kernel_user_dropped; do
        value=$(stat_value "$counter")
        [ "$value" = 0 ] || fail "nfqlb counter $counter = '$value' (want 0)"
    done
    if [ -n "${bulk_ran:-}" ] && [ -z "${OFFLOAD:-}" ]; then
        # The queues have NFQA_CFG_F_GSO: the bulk transfer's segments reach nfqlb merged into super-packets.
        value=$(stat_value gso_packets)
        [ "${value:-0}" -gt 0 ] || fail "no GSO super-packet reached nfqlb during the bulk transfer"
        echo "gso super-packets: $value"
        bulk_ran=
    fi
    pass "nfqlb stopped on SIGTERM with status 0, queue 0 unbound, no drops"
}

# http_run NAME N EXPECTED: N sequential GET /whoami through the VIP from the client; prints
# "distribution NAME r1=.. r2=.. r3=.." and requires that line to equal EXPECTED and every request answered.
http_run() {
    local name=$1 n=$2 expected=$3 i answer failed=0 line
    local -A count=([r1]=0 [r2]=0 [r3]=0)
    for i in $(seq "$n"); do
        answer=$(in_ns "${P}c" curl -s --max-time 5 "http://$LAB_URL_HOST/whoami") || answer=""
        if [[ $answer =~ ^r[123]$ ]]; then
            count[$answer]=$((count[$answer] + 1))
        else
            failed=$((failed + 1))
            echo "request $i: no valid answer ('$answer')" >&2
            [ "$failed" -lt 5 ] || break     # bounded: give up after 5 failed requests
        fi
    done
    line="distribution $name r1=${count[r1]} r2=${count[r2]} r3=${count[r3]}"
    echo "$line"
    [ "$failed" = 0 ] || fail "$name: $failed of $n requests through the VIP got no valid answer"
    [ "$line" = "$expected" ] || fail "$name: got '$line', want '$expected'"
    pass "$name: $n requests answered, ${expected#distribution $name }"
}

run_rr() { http_run rr 60 "distribution rr r1=20 r2=20 r3=20"; }
run_wrr() { http_run wrr 60 "distribution wrr r1=10 r2=20 r3=30"; }

run_download() {
    local want got size
    rm -f "$LAB_TMP/download.bin"
    in_ns "${P}c" curl -s --fail --max-time 60 -o "$LAB_TMP/download.bin" "http://$LAB_URL_HOST/big.bin" ||
        fail "download of big.bin through the VIP failed (curl status $?)"
    want=$(sha256sum < "$LAB_TMP/big.bin" | cut -d' ' -f1)
    got=$(sha256sum < "$LAB_TMP/download.bin" | cut -d' ' -f1)
    size=$(stat -c %s "$LAB_TMP/download.bin")
    [ "$size" = "$(stat -c %s "$LAB_TMP/big.bin")" ] || fail "download: $size bytes, want $(stat -c %s "$LAB_TMP/big.bin")"
    [ "$want" = "$got" ] || fail "download: sha256 $got, want $want"
    echo "download $size bytes sha256 match"
    bulk_ran=1
    pass "download: byte-identical through the VIP"
}

run_udp() {
    local out
    # All 30 sockets stay open until the end, so the kernel gives each its own source port: 30 new
    # connections for the balancer, hence exactly 10 per server with rr.
    cat > "$LAB_TMP/udp_client.py" <<'PY'
import socket, sys
vip = sys.argv[1]
family = socket.AF_INET6 if ":" in vip else socket.AF_INET
count = {"r1": 0, "r2": 0, "r3": 0}
sockets, ports = [], set()
for i in range(30):
    s = socket.socket(family, socket.SOCK_DGRAM)
    sockets.append(s)
    s.settimeout(2)
    payload = b"ping%d" % i
    s.sendto(payload, (vip, 53))
    ports.add(s.getsockname()[1])
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        sys.exit("datagram %d: no answer within 2 s" % i)
    if peer[:2] != (vip, 53):
        sys.exit("datagram %d: answer from %s:%d, not from %s:53" % (i, peer[0], peer[1], vip))
    name, _, echoed = data.partition(b":")
    if echoed != payload or name.decode() not in count:
        sys.exit("datagram %d: bad answer %r" % (i, data))
    count[name.decode()] += 1
if len(ports) != 30:
    sys.exit("only %d distinct source ports" % len(ports))
print("distribution udp r1=%d r2=%d r3=%d" % (count["r1"], count["r2"], count["r3"]))
PY
    out=$(in_ns "${P}c" "$LAB_PYTHON" "$LAB_TMP/udp_client.py" "$LAB_VIP" 2>&1) || fail "udp through the VIP: $out"
    echo "$out"
    [[ $out =~ r1=[1-9].*r2=[1-9].*r3=[1-9] ]] || fail "udp: not every real server answered ($out)"
    [ "$out" = "distribution udp r1=10 r2=10 r3=10" ] || fail "udp: rr over 30 new flows gave '$out', want 10 each"
    # Nobody listens on the real server's port 5454: its ICMP error must reach the client as if from the VIP.
    out=$(in_ns "${P}c" "$LAB_PYTHON" - "$LAB_VIP" <<'PY'
import socket, sys
vip = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((vip, 54))
s.send(b"anyone?")
try:
    s.recv(100)
    print("icmp: unexpected answer")
except ConnectionRefusedError:
    print("icmp: port unreachable reached the client from the VIP")
except socket.timeout:
    print("icmp: no error within 3 s")
PY
)
    echo "$out"
    [ "$out" = "icmp: port unreachable reached the client from the VIP" ] || fail "udp: the real server's ICMP error was not translated"
    pass "udp: 30 datagrams from 30 source ports answered from $LAB_VIP:53, every server seen"
}

# fullnat_peers_check: the real servers' HTTP logs name the peer of each accepted connection since the skip
# marks: only the local address.
fullnat_peers_check() {
    local peers
    peers=$(for i in 1 2 3; do tail -n +$((skip[$i] + 1)) "$LAB_TMP/http$i.log"; done | awk '/GET/ { print $1 }' | sort -u | tr '\n' ' ')
    echo "real servers saw peers: $peers"
    [ "$peers" = "$LAB_LIP " ] || fail "fullnat: real servers saw peers '$peers', want only the local address"
    echo "fullnat peer: $LAB_LIP"
    pass "fullnat: no gateway on the real servers, every connection from the local address"
}

# Checksum error counters of the client, the real servers and the balancer before any traffic through the VIP.
declare -a skip
csum_snapshot

rr_config=$LAB_TMP/nat-rr.yaml
wrr_config=$LAB_TMP/nat-wrr.yaml
write_config "$rr_config" rr 1 1 1
write_config "$wrr_config" wrr 1 2 3

case "$scenario" in
    rr)       nfqlb_start "$rr_config";  run_rr ;;
    wrr)      nfqlb_start "$wrr_config"; run_wrr ;;
    download) nfqlb_start "$rr_config";  run_download ;;
    udp)      nfqlb_start "$rr_config";  run_udp ;;
    fullnat)
        # No route back through the balancer on the real servers: FULLNAT does not need one.
        for i in 1 2 3; do ip -n "${P}r$i" -4 route del default; ip -n "${P}r$i" -6 route del default; done
        MODE=fullnat write_config "$LAB_TMP/fullnat.yaml" rr 1 1 1
        # Skip the log lines of the servers' own readiness checks.
        for i in 1 2 3; do skip[$i]=$(wc -l < "$LAB_TMP/http$i.log"); done
        nfqlb_start "$LAB_TMP/fullnat.yaml"
        run_rr
        run_download
        upload_check "$LAB_VIP" 3145728
        run_udp
        fullnat_peers_check ;;
    offload)
        # The conntrack fast path: nfqlb schedules each connection's first packet, the kernel's conntrack and
        # NAT carry the rest (MODE=fullnat: with the real servers' routes back removed, as above).
        if [ "${MODE:-nat}" = fullnat ]; then
            for i in 1 2 3; do ip -n "${P}r$i" -4 route del default; ip -n "${P}r$i" -6 route del default; done
            for i in 1 2 3; do skip[$i]=$(wc -l < "$LAB_TMP/http$i.log"); done
        fi
        export OFFLOAD=1
        OFFLOAD_CONFIG=$LAB_TMP/offload.yaml
        write_config "$OFFLOAD_CONFIG" rr 1 1 1
        cp "$OFFLOAD_CONFIG" "$LAB_TMP/offload-all.yaml"
        nfqlb_start "$OFFLOAD_CONFIG"
        run_rr
        run_download
        upload_check "$LAB_VIP" 3145728
        run_udp
        if [ "${MODE:-nat}" = fullnat ]; then fullnat_peers_check; fi
        # 60 HTTP requests, a download, an upload, 30 UDP flows and the flow to port 54.
        offload_counts_check "$OFFLOAD_CONFIG" 93 3145728
        offload_restart_check "$OFFLOAD_CONFIG" "$LAB_VIP"
        ONLY_THIRD=1 write_config "$LAB_TMP/offload-r3.yaml" rr 1 1 1
        DRAIN=2 WITHOUT_THIRD=1 write_config "$LAB_TMP/offload-no-r3.yaml" rr 1 1 1
        offload_drain_check "$OFFLOAD_CONFIG" "$LAB_TMP/offload-r3.yaml" "$LAB_TMP/offload-no-r3.yaml" \
            "$LAB_VIP" "$(url_host "${LAB_RIP[2]}"):9000" ;;
    restart)
        # The Swift path across a restart: connections saved on SIGTERM, taken back at start (MODE=fullnat:
        # with the real servers' routes back removed).
        if [ "${MODE:-nat}" = fullnat ]; then
            for i in 1 2 3; do ip -n "${P}r$i" -4 route del default; ip -n "${P}r$i" -6 route del default; done
        fi
        write_config "$LAB_TMP/restart.yaml" rr 1 1 1
        nfqlb_start "$LAB_TMP/restart.yaml"
        restart_check "$LAB_TMP/restart.yaml" "$LAB_VIP" ;;
    multiqueue)
        # Two queues with --queue-balance 0:1: the kernel hashes addresses only, so a connection's two
        # directions land on different queues and two workers share one connection table.
        QUEUES="[0, 1]" write_config "$LAB_TMP/nat-mq.yaml" rr 1 1 1
        nfqlb_start "$LAB_TMP/nat-mq.yaml"
        run_rr
        run_download
        used=$(in_ns "${P}b" awk '($1 == 0 || $1 == 1) && $8 > 0 { n++ } END { print n + 0 }' /proc/net/netfilter/nfnetlink_queue)
        [ "$used" = 2 ] || fail "multiqueue: packets went through $used of the 2 queues"
        echo "queues used: 2"
        pass "multiqueue: both queues carried packets, every connection answered" ;;
    local-vip)
        # The VIP is also a local address of the balancer: the rewritten replies then carry a local source
        # address, which the kernel accepts only with accept_local=1 (set by iptables-setup.sh up).
        ip -n "${P}b" addr add "$LAB_VIP/$LAB_HOST_BITS" dev lo
        nfqlb_start "$rr_config"
        run_rr
        run_udp ;;
    all)
        nfqlb_start "$rr_config"
        run_rr
        run_download
        upload_check "$LAB_VIP" 3145728
        run_udp
        stop_and_check
        # Second configuration: setup `up` again (idempotent, replaces the rules), new nfqlb.
        nfqlb_start "$wrr_config"
        run_wrr ;;
esac
stop_and_check

csum_check
rules_cleanup_check
[ -n "${OFFLOAD_CONFIG:-}" ] && offload_cleanup_check "$LAB_TMP/offload-all.yaml"
pass "nat.sh $scenario: all checks passed"
