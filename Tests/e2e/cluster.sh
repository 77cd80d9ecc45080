#!/usr/bin/env bash
# Several balancers behind BGP and ECMP (README "Several balancers"): a router running FRR (zebra, bgpd, bfdd),
# three DR balancers each running BIRD and nfqlb with the same Maglev table and adopt-midstream, three real
# servers with a line echo on the VIP, and a client holding long connections open while balancers fail and
# come back.
#
#   ${P}c client 192.0.2.2 ── ${P}g router: FRR AS 65000, 192.0.2.1 / br 198.51.100.254, ECMP (hash policy L4)
#                                   ├─ ${P}b1..3  balancers 198.51.100.1-3: BIRD AS 65001 (BFD 100 ms x 3), nfqlb dr mh
#                                   └─ ${P}r1..3  real servers 198.51.100.11-13: VIP on lo, echo on :7000,
#                                                 replies straight to the router
#
# Usage: NFQLB=.build/debug/nfqlb bash Tests/e2e/cluster.sh [SCENARIO]   (root)
#   dr (default)  kill one balancer's nfqlb (SIGKILL), then bring it back; then take another's link down and
#                 up again; then stop a third with SIGTERM; with CONNS (default 300) long connections open
#   tun           the same with TUN: the real servers decapsulate with `nfqlb decap`
#   fullnat       the same with FULLNAT: each balancer has its own local address (203.0.113.21-23 on lo, announced
#                 over BGP; the others' announced with a longer AS path), and connection sync (cluster.sync)
#                 between them; the flows' moves are not counted (replies keep a copy alive on the balancer
#                 whose local address they go to), the surviving fraction is (SYNC=off: without
#                 cluster.sync and takeover, for comparison: reported, not checked)
#   demo          the dr scenario, with the explanations of scripts/demo.sh cluster
# Prints (checked by EndToEndTests.clusterKeepsConnectionsAcrossBalancerFailures):
#   ecmp: 3 next hops | table: same digest on 3 balancers
#   process: detection N ms | process: broken 0 of 300 | process: moved N flows: N off b1, N between the survivors
#   process back: moved N flows: N to b1, N between the others (limit 15), broken 0
#   link: the same for b2's link (BFD) | stop: broken 0 of 300 (withdrawal-ms=N) | cleanup: no rules left
#   (ECMP=plain: the router's own hash-threshold groups, collateral moves reported, not limited)
#   stop: broken 0 of 300 (withdrawal-ms=N) | cleanup: no rules left
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lab_unmask_signals "$@"

SCENARIO=${1:-dr}
# ECMP=resilient (default): the router's flows follow `nfqlb cluster router-ecmp` (resilient next-hop groups);
# ECMP=plain: the kernel's hash-threshold groups FRR installs.
ECMP=${ECMP:-resilient}
case "$SCENARIO" in dr|demo) MODE=dr ;; tun) MODE=tun ;; fullnat) MODE=fullnat ;; *) fail "usage: $0 [dr|tun|fullnat|demo]" ;; esac
CONNS=${CONNS:-300}
VIP=203.0.113.10
[ -n "${NFQLB:-}" ] && [ -x "$NFQLB" ] || fail "NFQLB must name the nfqlb binary"
for tool in bird birdc vtysh /usr/lib/frr/zebra /usr/lib/frr/bgpd /usr/lib/frr/bfdd; do
    command -v "$tool" >/dev/null || fail "$tool not found (bash scripts/ensure-packages.sh installs bird2 and frr)"
done
explain() { [ "$SCENARIO" = demo ] && echo "-- $*" || true; }

lab_init "c${MODE:0:1}$$x"
G=${P}g
BALANCERS=(1 2 3)
NFQLB_PIDS=("" "" "" "")
BIRD_PIDS=("" "" "" "")

# --- topology
lab_router_lan "$G"
in_ns "$G" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
# ECMP by the 5-tuple (policy 3, the fields given) so one client's connections spread over the balancers.
in_ns "$G" sysctl -qw net.ipv4.fib_multipath_hash_policy=3 net.ipv4.fib_multipath_hash_fields=0x37
lan_port() { lab_lan_port "$G" "$1" "$2" "$3" 198.51.100.254; }
for i in "${BALANCERS[@]}"; do
    lab_add_ns "${P}b$i"
    lan_port "${P}b$i" "b$i" "198.51.100.$i"
    in_ns "${P}b$i" sysctl -qw net.ipv4.ip_forward=1
    # FULLNAT: the balancer's own local address (its real servers' replies come back to it by BGP).
    if [ "$MODE" = fullnat ]; then ip -n "${P}b$i" addr add "203.0.113.2$i/32" dev lo; fi
done
for i in 1 2 3; do
    r=${P}r$i
    lab_add_ns "$r"
    lan_port "$r" "r$i" "198.51.100.1$i"
    # The LVS recipe: the VIP on lo, not answered to ARP (and for TUN, decapsulation by nfqlb decap); FULLNAT
    # real servers need nothing (they answer the local addresses, through the router).
    if [ "$MODE" != fullnat ]; then
        in_ns "$r" "$NFQLB" real-server setup --vip "$VIP" --mode "$MODE" >/dev/null || fail "real-server setup on r$i"
    fi
    if [ "$MODE" = tun ]; then
        lab_spawn "$r" "$LAB_TMP/decap$i.log" "$NFQLB" decap --queue 0 --vip "$VIP" --allow-source 198.51.100.1 \
            --allow-source 198.51.100.2 --allow-source 198.51.100.3
        for _ in $(seq 100); do queue_bound "$r" 0 && break; sleep 0.1; done
        queue_bound "$r" 0 || fail "nfqlb decap did not bind its queue on r$i: $(cat "$LAB_TMP/decap$i.log")"
    fi
done

# --- real servers: a line echo on every address, port 7000, answering "rX:<line>"
for i in 1 2 3; do lab_spawn "${P}r$i" "$LAB_TMP/echo$i.log" "$LAB_PYTHON" "$LAB_ROOT/Tests/e2e/line-echo.py" "r$i"; done

# --- balancers: one config each (only the BIRD socket differs; FULLNAT: the local addresses and sync
# endpoints), BIRD's config from nfqlb cluster config
openssl rand -hex 32 > "$LAB_TMP/sync.key"
for i in "${BALANCERS[@]}"; do
    mkdir -p "$LAB_TMP/b$i"
    fullnat=""
    if [ "$MODE" = fullnat ]; then
        others=() peers=()
        for j in "${BALANCERS[@]}"; do
            [ "$j" = "$i" ] && continue
            others+=("203.0.113.2$j"); peers+=("198.51.100.$j:8848")
        done
        fullnat="    local-addresses: [203.0.113.2$i]"
    fi
    cat > "$LAB_TMP/b$i/lb.yaml" <<EOF
queues: [0]
cluster:
  local-as: 65001
  router-id: 198.51.100.$i
  peers: [{ address: 198.51.100.254, as: 65000 }]
  bfd: { interval: 100ms, multiplier: 3 }
  bird-socket: $LAB_TMP/b$i/bird.ctl
  withdraw-grace: 300ms
EOF
    if [ "$MODE" = fullnat ] && [ "${SYNC:-on}" != off ]; then
        cat >> "$LAB_TMP/b$i/lb.yaml" <<EOF
  sync: { listen: 198.51.100.$i:8848, peers: [$(IFS=,; echo "${peers[*]}")], key-file: $LAB_TMP/sync.key }
  takeover-local-addresses: [$(IFS=,; echo "${others[*]}")]
EOF
    fi
    cat >> "$LAB_TMP/b$i/lb.yaml" <<EOF
services:
  - vip: $VIP
    port: 7000
    protocol: tcp
    mode: $MODE
    scheduler: mh
    scheduler-flags: [mh-port]
    reals: [{ address: 198.51.100.11 }, { address: 198.51.100.12 }, { address: 198.51.100.13 }]
$fullnat
EOF
    "$NFQLB" cluster config --config "$LAB_TMP/b$i/lb.yaml" > "$LAB_TMP/b$i/bird.conf"
    in_ns "${P}b$i" bird -p -c "$LAB_TMP/b$i/bird.conf" || fail "bird -p refused the generated configuration"
done
digests=$(for i in "${BALANCERS[@]}"; do "$NFQLB" check --config "$LAB_TMP/b$i/lb.yaml" --show-table | awk '/sha256/ { print $NF }'; done | sort -u)
[ "$(wc -l <<<"$digests")" = 1 ] || fail "table: the balancers' Maglev digests differ: $digests"
echo "table: same digest on 3 balancers ($digests)"

# --- the router: FRR's daemons on private sockets, the configuration from nfqlb cluster config --router frr
F=$LAB_TMP/frr
mkdir -p "$F"
"$NFQLB" cluster config --config "$LAB_TMP/b1/lb.yaml" --router frr > "$F/frr.conf"
in_ns "$G" vtysh --dryrun -f "$F/frr.conf" >/dev/null || fail "vtysh --dryrun refused the generated configuration"
# One file per daemon (bgpd ignores a combined file given with -f).
awk -v dir="$F" '/^bfd$/ { bfd = 1 } { print > (dir (bfd ? "/bfdd.conf" : "/bgpd.conf")) }' "$F/frr.conf"
sed -i '1i frr defaults datacenter' "$F/bfdd.conf"
: > "$F/zebra.conf"
chown -R frr:frr "$F"
chmod o+x "$LAB_TMP"      # FRR runs as user frr: it must reach its directory
for daemon in zebra bfdd bgpd; do
    extra=()
    [ "$daemon" = bfdd ] && extra=(--bfdctl "$F/bfdd.sock")
    lab_spawn "$G" "$F/$daemon.log" "/usr/lib/frr/$daemon" -f "$F/$daemon.conf" -i "$F/$daemon.pid" -z "$F/zserv.api" \
        --vty_socket "$F" -u frr -g frr "${extra[@]}"
    for _ in $(seq 50); do [ -S "$F/$daemon.vty" ] && break; sleep 0.1; done
done
vty() { in_ns "$G" vtysh --vty_socket "$F" -c "$1"; }
if [ "$ECMP" = resilient ]; then
    lab_spawn "$G" "$LAB_TMP/router-ecmp.log" "$NFQLB" cluster router-ecmp --config "$LAB_TMP/b1/lb.yaml"
fi
# next_hops: how many next hops the router's route to the VIP has (0 when there is none).
next_hops() {
    if [ "$ECMP" = resilient ]; then
        # The mirrored route (table 4242) and its resilient group's members: what the router forwards by.
        local group
        group=$(in_ns "$G" ip -4 route show "$VIP/32" table 4242 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "nhid") print $(i + 1) }')
        [ -n "$group" ] || { echo 0; return; }
        in_ns "$G" ip nexthop show id "$group" | awk '{ for (i = 1; i < NF; i++) if ($i == "group") print split($(i + 1), m, "/") }'
        return
    fi
    in_ns "$G" ip -4 route show "$VIP/32" | awk '/nexthop via/ { n++ } /^[0-9].* via / { n = 1 } END { print n + 0 }'
}

# start_balancer I: BIRD (if not running) and nfqlb in balancer I.
start_balancer() {
    local i=$1 ns=${P}b$1 _
    if [ -z "${BIRD_PIDS[$i]}" ]; then
        lab_spawn "$ns" "$LAB_TMP/b$i/bird.log" bird -f -c "$LAB_TMP/b$i/bird.conf" -s "$LAB_TMP/b$i/bird.ctl"
        BIRD_PIDS[$i]=$LAB_LAST_PID
    fi
    in_ns "$ns" "$LAB_ROOT/scripts/iptables-setup.sh" up "$LAB_TMP/b$i/lb.yaml" >/dev/null || fail "iptables-setup.sh up failed in b$i"
    lab_spawn "$ns" "$LAB_TMP/b$i/nfqlb.log" "$NFQLB" run --config "$LAB_TMP/b$i/lb.yaml" \
        --stats-file "$LAB_TMP/b$i/stats" --no-state-file --metrics-listen 127.0.0.1:9469
    NFQLB_PIDS[$i]=$LAB_LAST_PID
    for _ in $(seq 100); do queue_bound "$ns" 0 && return 0; sleep 0.1; done
    fail "nfqlb in b$i did not bind its queue; log: $(cat "$LAB_TMP/b$i/nfqlb.log")"
}

# carriers FILE: "CLIENT_ENDPOINT bI" for every connection balancer I carries now (its timeout was refreshed
# in the last 3 s: the client sends on each every 200 ms), from every running nfqlb's `list -c --json`.
carriers() {
    local i
    for i in "${BALANCERS[@]}"; do
        [ -n "${NFQLB_PIDS[$i]}" ] || continue
        in_ns "${P}b$i" "$NFQLB" list -c --json --limit 100000 2>/dev/null \
            | jq -r --arg b "b$i" '.connections[] | select(.expires >= 898 and .synced != true) | "\(.source) \($b)"' || true
    done | sort > "$1"
}

# adopted I: connections_adopted in balancer I's stats file (written every second).
adopted() { awk '$1 == "connections_adopted" { print $2 }' "$LAB_TMP/b$1/stats" 2>/dev/null || echo 0; }

# wait_next_hops N LIMIT_MS: polls the router's route until it has N next hops; prints the ms it took.
wait_next_hops() {
    local want=$1 limit=$2 start now
    start=$(date +%s%N)
    while true; do
        [ "$(next_hops)" = "$want" ] && break
        now=$(date +%s%N)
        [ $(((now - start) / 1000000)) -lt "$limit" ] || fail "the router's route to $VIP did not reach $want next hops within $limit ms (now $(next_hops)): $(in_ns "$G" ip route show "$VIP/32")"
        sleep 0.01
    done
    now=$(date +%s%N)
    echo $(((now - start) / 1000000))
}

lab_extra_teardown() {
    # To stderr: a failure inside `wait_next_hops ... >/dev/null` runs this with stdout discarded.
    if [ "$LAB_EXIT_STATUS" != 0 ]; then
        exec 1>&2
        echo "--- router: $(in_ns "$G" ip route show "$VIP/32" 2>/dev/null | tr '\n' ' ')"
        vty "show bgp summary" 2>&1 | tail -n 8
        for d in zebra bgpd bfdd; do echo "--- $d log"; tail -n 5 "$F/$d.log" 2>/dev/null; done
        echo "--- router-ecmp log"; tail -n 8 "$LAB_TMP/router-ecmp.log" 2>/dev/null
        in_ns "$G" ip -j route show "$VIP/32" 2>&1 | head -c 600; echo
        echo "--- b1 BIRD"; in_ns "${P}b1" birdc -s "$LAB_TMP/b1/bird.ctl" show protocols all router1 2>&1 | head -n 20
        in_ns "${P}b1" birdc -s "$LAB_TMP/b1/bird.ctl" show route 2>&1 | head
        tail -n 5 "$LAB_TMP/b1/bird.log"
        for i in "${BALANCERS[@]}"; do
            echo "--- b$i nfqlb log"
            # A crash report from its start (Swift's backtracer), else the last lines.
            if grep -q "Program crashed" "$LAB_TMP/b$i/nfqlb.log" 2>/dev/null; then
                sed -n '/Program crashed/,$p' "$LAB_TMP/b$i/nfqlb.log" | head -n 80
            else
                tail -n 15 "$LAB_TMP/b$i/nfqlb.log" 2>/dev/null
            fi
        done
    fi
}

explain "three balancers start; each announces $VIP to the router over BGP once nfqlb serves it"
for i in "${BALANCERS[@]}"; do start_balancer "$i"; done
wait_next_hops 3 30000 >/dev/null
echo "ecmp: 3 next hops"
explain "the router's route: $(in_ns "$G" ip route show "$VIP/32" | tr '\n' ' ')"

# --- the operator's switch: b3 withdrawn for maintenance, then announced again
explain "nfqlb cluster withdraw on b3: BIRD withdraws the VIP, the router drops b3's next hop"
in_ns "${P}b3" "$NFQLB" cluster withdraw >/dev/null || fail "nfqlb cluster withdraw failed"
wait_next_hops 2 5000 >/dev/null
in_ns "${P}b3" "$NFQLB" cluster status | grep -q "^  $VIP withdrawn" || fail "cluster status: $(in_ns "${P}b3" "$NFQLB" cluster status)"
metrics=$(in_ns "${P}b3" curl -s --max-time 2 http://127.0.0.1:9469/metrics)
grep -q "^nfqlb_cluster_withdrawn 1" <<<"$metrics" || fail "metrics: nfqlb_cluster_withdrawn is not 1"
in_ns "${P}b3" "$NFQLB" cluster announce >/dev/null || fail "nfqlb cluster announce failed"
wait_next_hops 3 15000 >/dev/null
sleep 1.2
metrics=$(in_ns "${P}b3" curl -s --max-time 2 http://127.0.0.1:9469/metrics)
grep -q "^nfqlb_cluster_vip_announced{vip=\"$VIP\"} 1" <<<"$metrics" || fail "metrics: $VIP not announced: $(grep cluster <<<"$metrics")"
echo "operator: withdraw and announce followed by the router; status and metrics agree"

# --- the client: CONNS connections held open, a line on each every 200 ms (Tests/e2e/long-client.py)
long_client_start "$VIP" 7000 "$CONNS"
sleep 1
[ "$(long_client_report)" = 0 ] || fail "connections broke before any failure"
echo "client: $CONNS connections open through 3 balancers"

# How many flows change balancer is the router's doing. With resilient groups (ECMP=resilient) a balancer that
# leaves moves only its own flows and one that comes back takes only flows to itself: at most 5% of the flows
# may move between the others (collateral). The kernel's plain ECMP groups rehash up to half of all flows.
collateral_limit=$(( CONNS * 5 / 100 ))
# moved_detail BEFORE AFTER BALANCER: "MOVED TOUCHING COLLATERAL": flows that changed balancer, of them those
# from or to BALANCER, and the others.
moved_detail() {
    join "$1" "$2" | awk -v b="$3" '$2 != $3 { n++; if ($2 == b || $3 == b) t++ } END { print n + 0, t + 0, n - t }'
}
check_collateral() {
    if [ "$2" -gt "$collateral_limit" ] && [ "$ECMP" = resilient ]; then
        fail "$1: $2 flows moved between the other balancers (limit $collateral_limit)"
    fi
    return 0
}

# came_back LABEL BALANCER BEFORE LIMIT_MS: BALANCER is back: the route has 3 next hops again (within LIMIT_MS);
# after 6 s (the groups' unbalanced timer is 3 s), which flows changed balancer since BEFORE, and none broke.
came_back() {
    wait_next_hops 3 "$4" >/dev/null
    sleep 6
    local detail broken
    if [ "$MODE" = fullnat ]; then
        broken=$(long_client_report)
        echo "$1: broken $broken"
        check_broken "$1" "$broken"
        return 0
    fi
    carriers "$3.after"
    read -r -a detail <<<"$(moved_detail "$3" "$3.after" "$2")"
    broken=$(long_client_report)
    echo "$1: moved ${detail[0]} flows: ${detail[1]} to $2, ${detail[2]} between the others (limit $collateral_limit), broken $broken"
    check_collateral "$1" "${detail[2]}"
    check_broken "$1" "$broken"
}

# check_broken LABEL BROKEN: DR and TUN must lose no connection; FULLNAT (connection sync) at most 1% (the
# issue's target), and the surviving fraction is printed.
check_broken() {
    if [ "$MODE" = fullnat ]; then
        echo "$1: survived $((CONNS - $2)) of $CONNS ($(awk -v s=$((CONNS - $2)) -v n="$CONNS" 'BEGIN { printf "%.1f", 100 * s / n }')%)"
        [ "${SYNC:-on}" = off ] || [ "$2" -le $((CONNS / 100)) ] || fail "$1: $2 connections broke (more than 1%)"
        return 0
    fi
    [ "$2" = 0 ] || fail "$1: $2 connections broke"
}

# sync_counts I: balancer I's connection sync counters, one line.
sync_counts() {
    in_ns "${P}b$1" "$NFQLB" cluster status 2>/dev/null | awk '/^connection sync:/ { on = 1; next } on && NF == 2 && $2 != 0 { printf "%s=%s ", $1, $2 }'
}

# --- a balancer's process dies (SIGKILL: no withdrawal by nfqlb; its live device vanishes, BIRD withdraws)
explain "b1's nfqlb is killed (SIGKILL): its live device vanishes with it and BIRD withdraws the route"
carriers "$LAB_TMP/carriers.0"
[ "$(wc -l < "$LAB_TMP/carriers.0")" = "$CONNS" ] || fail "the balancers carry $(wc -l < "$LAB_TMP/carriers.0") connections, not $CONNS"
echo "carried: $(awk '{ print $2 }' "$LAB_TMP/carriers.0" | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')"
kill -KILL "${NFQLB_PIDS[1]}"
ms=$(wait_next_hops 2 5000)
{ wait "${NFQLB_PIDS[1]}"; } 2>/dev/null || true
lab_forget_pid "${NFQLB_PIDS[1]}"
NFQLB_PIDS[1]=""
echo "process: detection $ms ms"
sleep 3   # the client calls a connection broken after 2 s without its echo
broken=$(long_client_report)
echo "process: broken $broken of $CONNS"
check_broken process "$broken"
if [ "$MODE" = fullnat ]; then
    echo "process: sync b2: $(sync_counts 2)"
    echo "process: sync b3: $(sync_counts 3)"
else
    explain "b2 and b3 picked up b1's connections midway: adopted $(adopted 2) and $(adopted 3)"
    carriers "$LAB_TMP/carriers.1"
    read -r -a detail <<<"$(moved_detail "$LAB_TMP/carriers.0" "$LAB_TMP/carriers.1" b1)"
    echo "process: moved ${detail[0]} flows: ${detail[1]} off b1, ${detail[2]} between the survivors (limit $collateral_limit)"
    check_collateral "process" "${detail[2]}"
fi
start_balancer 1
came_back "process back" b1 "$LAB_TMP/carriers.1" 15000

# --- a balancer's link goes down (silent: BFD detects it)
explain "b2's link goes down: the router's BFD notices within 3 x 100 ms"
carriers "$LAB_TMP/carriers.2"
ip -n "${P}b2" link set eth0 down
ms=$(wait_next_hops 2 5000)
echo "link: detection $ms ms"
sleep 3   # the client calls a connection broken after 2 s without its echo
broken=$(long_client_report)
echo "link: broken $broken of $CONNS"
check_broken link "$broken"
carriers "$LAB_TMP/carriers.3"
if [ "$MODE" != fullnat ]; then
    read -r -a detail <<<"$(moved_detail "$LAB_TMP/carriers.2" "$LAB_TMP/carriers.3" b2)"
    echo "link: moved ${detail[0]} flows: ${detail[1]} off b2, ${detail[2]} between the survivors (limit $collateral_limit)"
    check_collateral "link" "${detail[2]}"
fi
ip -n "${P}b2" link set eth0 up
ip -n "${P}b2" route add default via 198.51.100.254 2>/dev/null || true
came_back "link back" b2 "$LAB_TMP/carriers.3" 30000

# --- a clean stop withdraws first, with the connections still flowing
explain "b3's nfqlb stops (SIGTERM): it withdraws the VIP and waits before its workers stop"
lab_stop_pid "${NFQLB_PIDS[3]}" 100 || fail "nfqlb in b3 did not stop cleanly"
NFQLB_PIDS[3]=""
grep -q "cluster: VIPs withdrawn before stopping" "$LAB_TMP/b3/nfqlb.log" || fail "b3 did not withdraw before stopping: $(tail -n 5 "$LAB_TMP/b3/nfqlb.log")"
[ "$(next_hops)" = 2 ] || fail "after b3 stopped the router still has $(next_hops) next hops"
sleep 3   # the client calls a connection broken after 2 s without its echo
broken=$(long_client_report)
echo "stop: broken $broken of $CONNS ($(grep -o 'withdrawal-ms=[0-9]*' "$LAB_TMP/b3/nfqlb.log" | tail -n 1))"
check_broken stop "$broken"

long_client_stop
if [ "$MODE" = fullnat ] && [ "${SYNC:-on}" = off ]; then
    pass "cluster: FULLNAT without connection sync, for comparison (survival above, not checked)"
else
    pass "cluster: connections survive a killed balancer and a dead link; a balancer back takes its share"
fi

# --- cleanup: the other balancers stop, every balancer's rules and routes go
for i in 1 2; do lab_stop_pid "${NFQLB_PIDS[$i]}" 100 || fail "nfqlb in b$i did not stop cleanly"; done
for i in "${BALANCERS[@]}"; do
    in_ns "${P}b$i" "$LAB_ROOT/scripts/iptables-setup.sh" down >/dev/null || fail "iptables-setup.sh down failed in b$i"
    if in_ns "${P}b$i" iptables-save | grep -q NFQLB; then fail "rules left behind in b$i"; fi
done
echo "cleanup: no rules left"
