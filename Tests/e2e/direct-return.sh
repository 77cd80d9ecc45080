#!/usr/bin/env bash
# End-to-end test of the LVS modes with direct return, in a lab of network namespaces (lab_dr_up in lib.sh):
#   dr   the balancer only picks the real server and marks the packet; policy routing delivers it unchanged
#        to the real server's MAC;
#   tun  the balancer wraps the packet in IPIP to the real server, which decapsulates with `nfqlb decap`
#        (this kernel has no ipip); packets too big for the tunnel get ICMP "fragmentation needed".
# Either way the real server (prepared by `nfqlb real-server setup`) holds the VIP on lo and answers the
# client directly through the router, never through the balancer.
#
# Usage: NFQLB=/abs/path/to/nfqlb [LAB_FAMILY=6] Tests/e2e/direct-return.sh dr|tun      (root)
#        RESTART=1 also restarts nfqlb under a slow upload and a UDP flow (lib.sh restart_check)
# With LAB_FAMILY=6 the VIP and the real servers are IPv6 (lib.sh): DR by IPv6 policy routing, TUN as
# IPv6-in-IPv6 with ICMPv6 "packet too big" for the upload. With LAB_CROSS=1 (tun only) the real servers are
# addressed in the other family: IPv4 in IPv6 (or IPv6 in IPv4), sent and delivered through raw sockets.
# Checks: 30 HTTP requests spread 10/10/10 (rr); a 5 MiB download and a 3 MiB upload byte-identical; 30 UDP
# datagrams answered from the VIP, 10/10/10; the balancer rewrote nothing and forwarded no reply (its FORWARD
# counter for packets from the VIP stays 0) while the router carried the replies; no checksum errors; after
# stopping: no iptables rule, no fwmark rule, no route table left, and real-server teardown removes the VIP.
# With OFFLOAD=1 (dr only) every service has `offload: conntrack`: the kernel's conntrack keeps each
# connection's mark, and nfqlb sees only a connection's SYN and first ACK (a UDP flow's first datagram).
set -euo pipefail
mode=${1:-dr}
case "$mode" in dr|tun) ;; *) echo "usage: $0 dr|tun" >&2; exit 2 ;; esac
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"
lab_unmask_signals "$@"
[ -n "${NFQLB:-}" ] && [[ $NFQLB == /* ]] && [ -x "$NFQLB" ] || fail "set NFQLB to the absolute path of the nfqlb binary"
export NFQLB
setup=$LAB_ROOT/scripts/iptables-setup.sh
vip=$LAB_VIP
rips=("${LAB_RIP[@]}")
if [ "${LAB_CROSS:-0}" = 1 ]; then
    [ "$mode" = tun ] || fail "LAB_CROSS=1 is for tun only"
    if [ "$LAB_FAMILY" = 6 ]; then rips=(198.51.100.11 198.51.100.12 198.51.100.13); else rips=(2001:db8:5::11 2001:db8:5::12 2001:db8:5::13); fi
fi
iptables=iptables; icmp=icmp
[ "$LAB_FAMILY" = 6 ] && { iptables=ip6tables; icmp=ipv6-icmp; }
declare -a decap_pid
offload=""
if [ -n "${OFFLOAD:-}" ]; then
    [ "$mode" = dr ] || fail "OFFLOAD=1 is for dr only (tun cannot be offloaded on this kernel)"
    offload=", offload: conntrack"
fi

lab_init "n${mode:0:1}$$x"
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ "$LAB_EXIT_STATUS" != 0 ] && [ -n "$NFQLB_LOG" ]; then
        { echo "--- nfqlb log"; tail -n 30 "$LAB_TMP/nfqlb.out" 2>/dev/null; echo "--- stats"; grep -v ' 0$' "$NFQLB_STATS" 2>/dev/null; } >&2
    fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$setup" down >/dev/null 2>&1; fi
    return 0
}
lab_dr_up

# The real servers: the LVS recipe through nfqlb itself, then services bound to the VIP (DR keeps the port).
for i in 1 2 3; do
    in_ns "${P}r$i" "$NFQLB" real-server setup --vip "$vip" --mode "$mode" >/dev/null || fail "real-server setup on r$i"
    if [ "$LAB_FAMILY" = 4 ]; then
        [ "$(in_ns "${P}r$i" sysctl -n net.ipv4.conf.all.arp_ignore)" = 1 ] || fail "arp_ignore not set on r$i"
    fi
done
grep -q "nothing to change" <<<"$(in_ns "${P}r1" "$NFQLB" real-server setup --vip "$vip" --mode "$mode")" || fail "real-server setup is not idempotent"
if [ "$mode" = tun ]; then
    for i in 1 2 3; do
        lab_spawn "${P}r$i" "$LAB_TMP/decap$i.log" "$NFQLB" decap --queue 0 --vip "$vip" --allow-source 198.51.100.1 --allow-source 2001:db8:5::1 --stats-file "$LAB_TMP/decap$i.stats"
        decap_pid[$i]=$LAB_LAST_PID
    done
    for i in 1 2 3; do
        for _ in $(seq 100); do queue_bound "${P}r$i" 0 && continue 2; sleep 0.1; done
        fail "nfqlb decap did not bind its queue on r$i: $(cat "$LAB_TMP/decap$i.log")"
    done
fi
head -c 5242880 /dev/urandom > "$LAB_TMP/big.bin"
cat > "$LAB_TMP/echo.py" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], 53))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(sys.argv[1].encode() + b":" + data, peer)
PY
for i in 1 2 3; do
    mkdir -p "$LAB_TMP/www$i"; echo "r$i" > "$LAB_TMP/www$i/whoami"; ln -f "$LAB_TMP/big.bin" "$LAB_TMP/www$i/big.bin"
    lab_spawn "${P}r$i" "$LAB_TMP/http$i.log" "$LAB_PYTHON" -m http.server 80 --bind "$vip" --directory "$LAB_TMP/www$i"
    lab_spawn "${P}r$i" "$LAB_TMP/echo$i.log" "$LAB_PYTHON" "$LAB_TMP/echo.py" "r$i" "$vip"
done
lab_start_upload_sinks "$vip" "$vip" "$vip"
for i in 1 2 3; do
    for _ in $(seq 50); do
        in_ns "${P}r$i" curl -s --max-time 1 -o /dev/null "http://$LAB_URL_HOST/whoami" && continue 2
        sleep 0.1
    done
    fail "HTTP server on r$i did not start"
done
pass "lab up: client, balancer, router, 3 real servers (${rips[*]}) holding $vip on lo"

# write_config FILE: the services; ONLY_THIRD gives r3 the port 9000 service's only weight, WITHOUT_THIRD
# leaves r3 out of it with a 2-second drain (the conntrack fast path's drain check).
write_config() {
    local w=1 sinks drain=""
    [ -n "${ONLY_THIRD:-}" ] && w=0
    sinks="{ address: ${rips[0]}, weight: $w }, { address: ${rips[1]}, weight: $w }, { address: ${rips[2]} }"
    if [ -n "${WITHOUT_THIRD:-}" ]; then
        sinks="{ address: ${rips[0]} }, { address: ${rips[1]} }"
        drain=", drain: 2"
    fi
    cat > "$1" <<YAML
queues: [0]
services:
  - { vip: $vip, port: 80, protocol: tcp, mode: $mode, scheduler: rr$offload,
      reals: [ { address: ${rips[0]} }, { address: ${rips[1]} }, { address: ${rips[2]} } ] }
  - { vip: $vip, port: 9000, protocol: tcp, mode: $mode, scheduler: rr$offload$drain,
      reals: [ $sinks ] }
  - { vip: $vip, port: 53, protocol: udp, mode: $mode, scheduler: rr$offload,
      reals: [ { address: ${rips[0]} }, { address: ${rips[1]} }, { address: ${rips[2]} } ] }
YAML
}
write_config "$LAB_TMP/lb.yaml"
cp "$LAB_TMP/lb.yaml" "$LAB_TMP/lb-all.yaml"

hosts=(c r1 r2 r3 b g)
declare -A csum_before
for h in "${hosts[@]}"; do csum_before[$h]=$(csum_errors "${P}$h"); done
# Counting rules: replies (source: the VIP) forwarded by the router, and by the balancer (must stay 0; the
# balancer's own ICMP "fragmentation needed" answers in TUN mode also come from the VIP, so ICMP is left out).
in_ns "${P}g" $iptables -w -A FORWARD -s "$vip" -j ACCEPT
in_ns "${P}b" $iptables -w -A FORWARD -s "$vip" ! -p $icmp -j ACCEPT
nfqlb_start "$LAB_TMP/lb.yaml"
if [ "$mode" = dr ]; then
    copy=$(in_ns "${P}b" awk '$1 == 0 { print $5 }' /proc/net/netfilter/nfnetlink_queue)
    [ "$copy" = 160 ] || fail "DR should copy only the headers (copy range $copy, want 160)"
    echo "copy range: $copy bytes"
    grep -q "fwmark 0x1000 lookup 4096" <<<"$(in_ns "${P}b" ip -$LAB_FAMILY rule)" || fail "fwmark rule missing: $(in_ns "${P}b" ip -$LAB_FAMILY rule)"
fi

declare -A count=([r1]=0 [r2]=0 [r3]=0)
answers=""
for i in $(seq 30); do
    # The body, then curl's local port and connect time: on a wrong spread they say which request was odd.
    answer=$(in_ns "${P}c" curl -s --max-time 5 -w ' %{local_port} %{time_connect}' "http://$LAB_URL_HOST/whoami") \
        || fail "request $i through the VIP failed"
    answers+="$i:$answer
"
    answer=${answer%%[[:space:]]*}
    [[ $answer =~ ^r[123]$ ]] || fail "request $i: unexpected answer '$answer'"
    count[$answer]=$((count[$answer] + 1))
done
line="distribution $mode r1=${count[r1]} r2=${count[r2]} r3=${count[r3]}"
echo "$line"
[ "$line" = "distribution $mode r1=10 r2=10 r3=10" ] || fail "$mode: $line; requests (answer, client port, connect s):
$answers; connections:
$(in_ns "${P}b" "$NFQLB" list -c -n 2>&1)"

in_ns "${P}c" curl -s --fail --max-time 60 -o "$LAB_TMP/download.bin" "http://$LAB_URL_HOST/big.bin" || fail "download failed"
cmp -s "$LAB_TMP/big.bin" "$LAB_TMP/download.bin" || fail "download differs"
echo "download 5242880 bytes identical"

upload_check "$vip" 3145728

udp=$(in_ns "${P}c" "$LAB_PYTHON" - "$vip" <<'PY'
import socket, sys
vip = sys.argv[1]
count = {"r1": 0, "r2": 0, "r3": 0}
sockets = []
for i in range(30):
    s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_DGRAM)
    sockets.append(s)
    s.settimeout(2)
    s.sendto(b"ping%d" % i, (vip, 53))
    data, peer = s.recvfrom(2048)
    if peer[:2] != (vip, 53):
        sys.exit("answer from %s" % (peer,))
    name, _, payload = data.decode().partition(":")
    if payload != "ping%d" % i:
        sys.exit("bad answer %r" % data)
    count[name] += 1
print("distribution udp r1=%d r2=%d r3=%d" % (count["r1"], count["r2"], count["r3"]))
PY
) || fail "UDP through the VIP: $udp"
echo "$udp"
[ "$udp" = "distribution udp r1=10 r2=10 r3=10" ] || fail "udp: $udp"

if [ -z "$offload" ] && [ -n "${RESTART:-}" ]; then
    restart_check "$LAB_TMP/lb.yaml" "$vip"
fi
if [ -n "$offload" ]; then
    # 30 HTTP requests, a download, an upload, 30 UDP flows; then a restart and a drain.
    offload_counts_check "$LAB_TMP/lb.yaml" 62 3145728
    offload_restart_check "$LAB_TMP/lb.yaml" "$vip"
    ONLY_THIRD=1 write_config "$LAB_TMP/lb-r3.yaml"
    WITHOUT_THIRD=1 write_config "$LAB_TMP/lb-no-r3.yaml"
    offload_drain_check "$LAB_TMP/lb.yaml" "$LAB_TMP/lb-r3.yaml" "$LAB_TMP/lb-no-r3.yaml" "$vip" "$(url_host "${rips[2]}"):9000"
fi

nfqlb_stop
echo "stats: $(grep -v ' 0$' "$NFQLB_STATS" | tr '\n' ' ')"
[ "$(stat_value replied)" = 0 ] || fail "the balancer handled replies"
if [ -n "$offload" ]; then
    # 30 HTTP requests, a download, an upload, 30 UDP flows. Of a TCP connection nfqlb sees the SYN, the first
    # ACK and what the client sends before that ACK's verdict took effect (its request, often): at most 3.
    offloaded=$(stat_value offloaded)
    [ "$(stat_value forwarded)" = 0 ] && [ "${offloaded:-0}" -gt 0 ] && [ "$offloaded" -le $((3 * 32 + 30)) ] ||
        fail "offload: offloaded=$offloaded forwarded=$(stat_value forwarded): the kernel should carry all but the first packets"
    echo "offloaded first packets: $offloaded of $(stat_value received) queued"
else
    [ "$(stat_total forwarded)" -gt 0 ] || fail "nfqlb forwarded nothing"
fi
for counter in dropped_malformed dropped_no_real_server dropped_verdict_send dropped_raw_send kernel_messages kernel_queue_dropped kernel_user_dropped; do
    [ "$(stat_value $counter)" = 0 ] || fail "$counter = $(stat_value $counter)"
done
# DR's queue takes GSO super-packets (a mark needs no payload: they go on whole); TUN's cannot (an outer header
# in front of a super-packet), so its queue has no GSO and sees single packets only.
gso=$(stat_total gso_packets)
if [ -n "$offload" ]; then
    :   # the kernel carries the bulk: no super-packet need reach nfqlb
elif [ "$mode" = dr ]; then
    [ "${gso:-0}" -gt 0 ] || fail "dr: no GSO super-packet reached nfqlb"
else
    [ "${gso:-0}" = 0 ] || fail "tun: $gso GSO super-packets reached nfqlb, whose TUN queue must not ask for them"
fi
echo "gso super-packets: ${gso:-0}"
# The packet count of the FORWARD rule whose source is the VIP (column positions differ between families).
forward_count() {
    in_ns "$1" $iptables -w -L FORWARD -v -x -n | awk -v v="$vip" '{ for (i = 2; i <= NF; i++) if ($i == v || $i == v "/128") { print $1; next } }'
}
via_router=$(forward_count "${P}g")
via_balancer=$(forward_count "${P}b")
echo "replies from the VIP: via router $via_router packets, via balancer $via_balancer packets"
[ "$via_balancer" = 0 ] && [ "$via_router" -gt 0 ] || fail "replies did not take the direct return path"
echo "direct return: balancer handled no reply"
if [ "$mode" = tun ]; then
    # The upload's full-size segments (1500 bytes with DF) do not fit the 1500-byte path once wrapped: the
    # balancer answered with ICMP "fragmentation needed" and the client went on with smaller segments.
    too_big=$(stat_total tunnel_too_big)
    [ "${too_big:-0}" -gt 0 ] || fail "tun: no packet needed the fragmentation-needed path (tunnel_too_big=$too_big)"
    echo "tunnel too big answered: $too_big"
    for i in 1 2 3; do
        lab_stop_pid "${decap_pid[$i]}" 50 || fail "nfqlb decap on r$i did not stop cleanly"
        lab_forget_pid "${decap_pid[$i]}"
        decapsulated=$(awk '$1 == "decapsulated" { print $2 }' "$LAB_TMP/decap$i.stats")
        dropped=$(awk '$1 ~ /^dropped_/ { s += $2 } END { print s + 0 }' "$LAB_TMP/decap$i.stats")
        [ "${decapsulated:-0}" -gt 0 ] && [ "$dropped" = 0 ] || fail "decap on r$i: decapsulated=$decapsulated dropped=$dropped"
    done
    echo "decapsulated on every real server, none dropped"
fi

line="checksum errors:"
for h in "${hosts[@]}"; do
    case $h in c) label=client ;; b) label=balancer ;; g) label=router ;; *) label=$h ;; esac
    line="$line $label +$(( $(csum_errors "${P}$h") - ${csum_before[$h]} ))"
done
echo "$line"
[ "$line" = "checksum errors: client +0 r1 +0 r2 +0 r3 +0 balancer +0 router +0" ] || fail "checksum errors appeared"

in_ns "${P}b" $iptables -w -D FORWARD -s "$vip" ! -p $icmp -j ACCEPT
in_ns "${P}b" "$setup" down >/dev/null
grep -q NFQLB <<<"$(in_ns "${P}b" iptables-save; in_ns "${P}b" ip6tables-save)" && fail "iptables rules left behind"
[ -n "$offload" ] && offload_cleanup_check "$LAB_TMP/lb-all.yaml"
grep -q fwmark <<<"$(in_ns "${P}b" ip -4 rule; in_ns "${P}b" ip -6 rule)" && fail "fwmark rules left behind: $(in_ns "${P}b" ip -$LAB_FAMILY rule)"
[ -z "$(in_ns "${P}b" ip -$LAB_FAMILY route show table 4096 2>/dev/null)" ] || fail "route table 4096 left behind"
for i in 1 2 3; do
    in_ns "${P}r$i" "$NFQLB" real-server teardown --vip "$vip" >/dev/null
    grep -q "$vip" <<<"$(in_ns "${P}r$i" ip -o addr show dev lo)" && fail "VIP still on lo of r$i"
    grep -q NFQLB <<<"$(in_ns "${P}r$i" iptables-save; in_ns "${P}r$i" ip6tables-save)" && fail "decap rule left on r$i"
    [ "$(in_ns "${P}r$i" sysctl -n net.ipv4.conf.all.arp_ignore)" = 0 ] || fail "arp_ignore not restored on r$i"
done
echo "cleanup: no rules left"
pass "direct-return.sh $mode: all checks passed"
