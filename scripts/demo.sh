#!/usr/bin/env bash
# One-command demo of nfqlb for a fresh Debian machine, as root:
#   - installs the packages it needs (only the missing ones),
#   - builds nfqlb in release mode (skipped when NFQLB names an existing binary),
#   - brings up a lab of network namespaces (Tests/e2e/lib.sh), runs nfqlb in LVS NAT mode with
#     round robin over three real servers, sends a few HTTP requests through the virtual IP,
#   - shows nfqlb's counters and tears everything down (also on Ctrl-C or error).
# Nothing outside the lab's own namespaces is configured.
#
# Usage: sudo scripts/demo.sh [nat|fullnat|dr|tun|cluster]   (default nat; env: NFQLB=/path/to/nfqlb to skip the
#        build; DEMO_REQUESTS=6). Each mode builds its own lab, shows the packets' path through the balancer's
#        netfilter hooks and which hosts carried the replies.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../Tests/e2e/lib.sh
source "$root/Tests/e2e/lib.sh"
lab_unmask_signals "$@"
requests=${DEMO_REQUESTS:-6}
mode=${1:-nat}
case "$mode" in nat|fullnat|dr|tun|cluster) ;; *) echo "usage: $0 [nat|fullnat|dr|tun|cluster]" >&2; exit 2 ;; esac

[ "$(id -u)" = 0 ] || fail "run me as root (the demo creates network namespaces): sudo $0"

say() { printf '\n== %s\n' "$*"; }

echo "nfqlb demo, mode $mode: a layer-4 load balancer (like LVS/IPVS) whose datapath is Linux NFQUEUE."
case "$mode" in
    nat|fullnat) cat <<'TEXT'

   client 192.0.2.2                balancer                                   real servers
   curl http://203.0.113.10/ ──►  raw PREROUTING: NFQUEUE ──► nfqlb           ┌─► r1 198.51.100.11:8080
   (the VIP 203.0.113.10 is        picks a real server (round robin)        ├─► r2 198.51.100.12:8080
    routed to the balancer)        and rewrites the headers ────────────────┴─► r3 198.51.100.13:8080
                                   replies come back through the balancer and are rewritten again
TEXT
    ;;
    dr|tun) cat <<'TEXT'

   client 192.0.2.2                balancer                                   real servers (VIP on lo)
   curl http://203.0.113.10/ ──►  raw PREROUTING: NFQUEUE ──► nfqlb           ┌─► r1 198.51.100.11
   (the VIP 203.0.113.10 is        picks a real server (round robin),       ├─► r2 198.51.100.12
    routed to the balancer)        marks (DR) or tunnels (TUN) the packet ──┴─► r3 198.51.100.13
   client ◄──────────────────────── router 192.0.2.254 / 198.51.100.254 ◄──────── replies, direct
TEXT
    ;;
    cluster) cat <<'TEXT'

   client 192.0.2.2 ──► router (FRR): one ECMP route to 203.0.113.10 ─┬─► balancer b1 (BIRD + nfqlb dr mh) ─┐
     300 long connections   learnt over BGP from each balancer,      ├─► balancer b2                      ├─► r1..r3
                            BFD 100 ms x 3                           └─► balancer b3                      ┘ (VIP on lo)
   client ◄─────────────────── router ◄─────────────────────────────────────────────────── replies, direct
   One balancer's nfqlb is killed, another's link goes down, both come back: the same Maglev table on every
   balancer and adopt-midstream keep every connection on its real server.
TEXT
    ;;
esac
echo "Each box is a network namespace created for this demo and deleted at the end."

say "Checking packages"
bash "$root/scripts/ensure-packages.sh"

if [ -n "${NFQLB:-}" ]; then
    [ -x "$NFQLB" ] || fail "NFQLB=$NFQLB is not executable"
    say "Using the nfqlb binary $NFQLB (build skipped)"
else
    command -v swift >/dev/null ||
        fail "the Swift toolchain is not installed (see https://www.swift.org/install/linux/), or set NFQLB"
    say "Building nfqlb (swift build -c release --product nfqlb; the first build takes a few minutes)"
    (cd "$root" && swift build -c release --product nfqlb)
    NFQLB=$(cd "$root" && swift build -c release --show-bin-path)/nfqlb
    [ -x "$NFQLB" ] || fail "build finished but $NFQLB is missing"
fi
export NFQLB

if [ "$mode" = cluster ]; then
    say "Three balancers behind a BGP router (Tests/e2e/cluster.sh demo; about a minute)"
    exec bash "$root/Tests/e2e/cluster.sh" demo
fi

case "$mode" in
    nat) explain="NAT: nfqlb rewrites the destination VIP:80 -> RIP:8080 on the way in and the source back on the way out.
The real servers see the client's address but must route their replies through the balancer, which carries
both directions (source notes: port mapping and client address kept, at the cost of two-way traffic)." ;;
    fullnat) explain="FULLNAT: nfqlb also rewrites the source CIP:cport -> LIP:lport (a local address of the balancer and
a port from its pool). The real servers need no route back through the balancer (this lab removes theirs) and
see only the balancer's address; both directions still pass the balancer." ;;
    dr) explain="DR: nfqlb rewrites nothing: it picks the real server and returns the packet with a fwmark; policy
routing sends the unchanged frame to that server's MAC. The server holds the VIP on lo and answers the client
directly through the router: the balancer carries one direction only (fastest; same L2 network needed)." ;;
    tun) explain="TUN: nfqlb wraps the packet in IPIP to the real server, which may sit anywhere routable; the server
decapsulates (here with nfqlb decap: this kernel has no ipip), holds the VIP on lo and answers directly." ;;
esac

say "Bringing up the $mode lab (namespaces nqdemo$$*)"
lab_init "nqdemo$$"
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null 2>&1; fi
    echo "Lab torn down: namespaces deleted, processes stopped."
}
vip=203.0.113.10
case "$mode" in
    nat|fullnat)
        lab_nat_up
        LAB_BIG_BYTES=65536 lab_start_http_servers
        rport=8080
        if [ "$mode" = fullnat ]; then
            for i in 1 2 3; do ip -n "${P}r$i" route del default; done
            echo "real servers: no default route (FULLNAT does not need one)"
        fi ;;
    dr|tun)
        lab_dr_up
        rport=80
        for i in 1 2 3; do
            echo "r$i: nfqlb real-server setup --vip $vip --mode $mode"
            in_ns "${P}r$i" "$NFQLB" real-server setup --vip "$vip" --mode "$mode" | sed 's/^/    /'
            if [ "$mode" = tun ]; then lab_spawn "${P}r$i" "$LAB_TMP/decap$i.log" "$NFQLB" decap --queue 0 --vip "$vip" --allow-source 198.51.100.1 --allow-source 2001:db8:5::1; fi
            mkdir -p "$LAB_TMP/www$i"; echo "r$i" > "$LAB_TMP/www$i/whoami"
            lab_spawn "${P}r$i" "$LAB_TMP/http$i.log" "$LAB_PYTHON" -m http.server 80 --bind "$vip" --directory "$LAB_TMP/www$i"
        done
        for i in 1 2 3; do
            for _ in $(seq 50); do in_ns "${P}r$i" curl -s --max-time 1 -o /dev/null "http://$vip/whoami" && continue 2; sleep 0.1; done
            fail "HTTP server on r$i did not start"
        done ;;
esac
echo "three real servers answer GET /whoami with their name"

config=$LAB_TMP/demo.yaml
locals=""
[ "$mode" = fullnat ] && locals="
    local-addresses: [198.51.100.1]"
cat > "$config" <<YAML
queues: [0]
services:
  - name: web
    vip: $vip
    port: 80
    protocol: tcp
    mode: $mode$locals
    scheduler: rr
    reals:
      - { address: 198.51.100.11, port: $rport }
      - { address: 198.51.100.12, port: $rport }
      - { address: 198.51.100.13, port: $rport }
YAML
say "nfqlb configuration ($config)"
cat "$config"

say "Starting nfqlb in the balancer (iptables-setup.sh up, then nfqlb run)"
nfqlb_start "$config" >/dev/null
echo "rules in the balancer's raw table (PREROUTING jumps here first):"
in_ns "${P}b" iptables -t raw -S NFQLB-PREROUTING | sed -e 's/ -m comment --comment "[^"]*"//' -e 's/^/    /'
if [ "$mode" = dr ]; then
    echo "policy routing (one fwmark rule and table per real server):"
    in_ns "${P}b" ip rule | grep fwmark | sed 's/^/    /'
fi

# Counting rules: IPv4 packets at each of the balancer's five hooks (mangle table: after nfqlb's raw
# PREROUTING verdict; the demo's traffic is all there is), and replies from the VIP at the client, the
# balancer and (DR/TUN) the router.
for hook in PREROUTING INPUT FORWARD OUTPUT POSTROUTING; do in_ns "${P}b" iptables -w -t mangle -A "$hook"; done
in_ns "${P}c" iptables -w -A INPUT -s "$vip" -p tcp
in_ns "${P}b" iptables -w -A FORWARD -s "$vip" -p tcp
[ -e "/run/netns/${P}g" ] && in_ns "${P}g" iptables -w -A FORWARD -s "$vip" -p tcp

say "Sending $requests requests from the client to http://$vip/whoami"
for i in $(seq "$requests"); do
    answer=$(in_ns "${P}c" curl -s --max-time 5 "http://$vip/whoami") || answer="(no answer)"
    echo "request $i: answered by ${answer:-(empty)}"
done

count() { in_ns "$1" iptables -w ${3:+-t $3} -L "$2" -v -x -n | awk 'NR == 3 { print $1 }'; }   # each chain holds one counting rule
say "The path through the balancer's netfilter hooks (IPv4 packets counted at each hook)"
for hook in PREROUTING INPUT FORWARD OUTPUT POSTROUTING; do
    printf '    %-12s %6s packets\n' "$hook" "$(count "${P}b" "$hook" mangle)"
done
echo "    (raw PREROUTING is where nfqlb sees them: ${mode^^} verdicts, before routing; INPUT and OUTPUT stay"
echo "     at 0 because nothing is delivered to or sent by the balancer itself)"
[ "$mode" = tun ] && echo "    (in TUN the packets leave PREROUTING as IPIP, protocol 4, 20 bytes longer)"
say "Who carried the replies from $vip"
printf '    %-28s %6s packets\n' "client received" "$(count "${P}c" INPUT)"
printf '    %-28s %6s packets\n' "balancer forwarded" "$(count "${P}b" FORWARD)"
[ -e "/run/netns/${P}g" ] && printf '    %-28s %6s packets\n' "router forwarded" "$(count "${P}g" FORWARD)"
echo
echo "$explain"

say "What nfqlb says about it, like ipvsadm -Ln --stats (nfqlb list, through its control socket)"
in_ns "${P}b" "$NFQLB" list -n --stats --exact | sed 's/^/    /'

say "Stopping nfqlb (SIGTERM) and showing its counters"
nfqlb_stop
grep -v ' 0$' "$NFQLB_STATS" | sed 's/^/    /'

say "Done"
