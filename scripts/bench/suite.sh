#!/usr/bin/env bash
# The benchmark suite: nfqlb against its peers in one namespace lab, in one run, interleaved.
#
# Lab (Tests/e2e/lib.sh lab_dr_up, IPv4): client, router, balancer, three real servers on one L2 segment, each
# running nginx (port 80, a 3-byte answer) and iperf3 (port 5201, used through r1 only), with the VIP on lo
# (for DR and TUN). Candidates, each set up, measured on every workload, and torn down in turn; the whole
# list again for each round (A B C ... A B C ...), so that every candidate sees the same machine load:
#   direct       client -> r1 through the router: no balancer at all
#   dnat         the kernel's NAT on the balancer: iptables DNAT with `statistic --mode nth` over r1..r3
#                (the in-kernel NAT limit, standing in for IPVS, which this kernel lacks)
#   haproxy      HAProxy (Debian) `mode tcp`, roundrobin, on the balancer, at 203.0.113.11 (no UDP)
#   nat fullnat dr tun              nfqlb on the Swift path (every packet through the queue)
#   nat+offload fullnat+offload dr+offload   nfqlb with `offload: conntrack`
#   nat/2q dr/2q                    the Swift path with two queues (one worker each)
# (In this order by default: fullnat and fullnat+offload use the same local ports, and the real servers'
# TIME_WAIT sockets from one would slow the other's handshakes if it ran right after.)
# NAT candidates (dnat, nat) give the real servers a route back through the balancer; the others do not.
# Workloads, from the client:
#   conn       new TCP connections: wrk -t2 -c32, `Connection: close` (requests/s; latency p50/p99)
#   keepalive  wrk -t2 -c32 on kept-alive connections (requests/s; latency p50/p99)
#   bulk       iperf3 -P 4 (Mbit/s)
#   udp        iperf3 -u -l 64 -b 0 (64-byte datagrams delivered per second, loss); UDP_BITRATE=40M offers a
#              fixed load instead of "as fast as the sender can" (where the loss then says who keeps up)
# For each candidate and workload: the median of the rounds, min-max, the CPU seconds of the balancer's
# processes (nfqlb, haproxy) and of the whole machine, and the ratio to dnat's median.
#
# Usage (root): scripts/bench/suite.sh [ROUNDS=3] [SECONDS=5]
#   CANDIDATES="..." and WORKLOADS="..." choose (default: all, in the order above). VERBOSE=1 prints nfqlb's
#   counters, the balancer's conntrack statistics and r1's UDP receive counters after each measurement. NFQLB=binary, else the
#   release build. OUT=FILE also writes the table there; RESULTS=FILE keeps every measurement (default
#   /tmp/nfqlb-suite-PID.tsv). Installs wrk, haproxy, nginx-light and conntrack
#   if missing.
#   Bounded: every measurement has a timeout; the lab is torn down on exit, also on failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export LAB_FAMILY=4
source "$root/Tests/e2e/lib.sh"
lab_unmask_signals "$@"
rounds=${1:-3}
seconds=${2:-5}
[ "$rounds" -ge 1 ] && [ "$rounds" -le 9 ] && [ "$seconds" -ge 2 ] && [ "$seconds" -le 30 ] || fail "ROUNDS 1..9, SECONDS 2..30"
candidates=(${CANDIDATES:-direct dnat haproxy nat fullnat dr tun nat+offload fullnat+offload dr+offload nat/2q dr/2q})
workloads=(${WORKLOADS:-conn keepalive bulk udp})
bash "$root/scripts/ensure-packages.sh" wrk haproxy nginx-light conntrack >/dev/null
if [ -z "${NFQLB:-}" ]; then
    (cd "$root" && swift build -c release --product nfqlb >/dev/null)
    NFQLB=$(cd "$root" && swift build -c release --show-bin-path)/nfqlb
fi
export NFQLB
vip=$LAB_VIP
haproxy_vip=203.0.113.11
rips=("${LAB_RIP[@]}")
setup=$root/scripts/iptables-setup.sh
echo "suite: ${#candidates[@]} candidates x ${#workloads[@]} workloads x $rounds rounds of ${seconds} s (about $(( ${#candidates[@]} * (${#workloads[@]} * (seconds + 3) + 3) * rounds / 60 + 1 )) min)"

lab_init "nqs$$"
haproxy_pid=""
decap_pids=()
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    [ -e "/run/netns/${P}b" ] && in_ns "${P}b" "$setup" down >/dev/null 2>&1
    return 0
}
lab_dr_up
ip -n "${P}c" route add 198.51.100.0/24 via 192.0.2.254          # direct: through the router
# Many short connections: wide port ranges and TIME_WAIT reuse on the client and the balancer (HAProxy's
# ports below 41000, FULLNAT's above).
in_ns "${P}c" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1
in_ns "${P}b" sysctl -qw net.ipv4.ip_local_port_range="1024 40999" net.ipv4.tcp_tw_reuse=1
for i in 1 2 3; do
    r=${P}r$i
    in_ns "$r" "$NFQLB" real-server setup --vip "$vip" --mode tun >/dev/null   # VIP on lo, ARP; decap rules
    in_ns "$r" sysctl -qw net.core.somaxconn=4096 net.ipv4.tcp_max_syn_backlog=4096
    mkdir -p "$LAB_TMP/nginx$i"
    cat > "$LAB_TMP/nginx$i/nginx.conf" <<NGINX
worker_processes 1;
pid $LAB_TMP/nginx$i/nginx.pid;
error_log $LAB_TMP/nginx$i/error.log;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $LAB_TMP/nginx$i;
    proxy_temp_path $LAB_TMP/nginx$i;
    server { listen 80 backlog=4096; location / { return 200 "r$i\n"; } }
}
NGINX
    lab_spawn "$r" "$LAB_TMP/nginx$i/out.log" nginx -p "$LAB_TMP/nginx$i" -c "$LAB_TMP/nginx$i/nginx.conf" -g "daemon off;"
done
# Two iperf3 servers on r1, each bound to its address: UDP answers must leave from the address the client
# sent to (the RIP for direct and NAT, the VIP for DR and TUN), which an unbound socket would not do.
lab_spawn "${P}r1" "$LAB_TMP/iperf.log" iperf3 -s -B "${rips[0]}"
lab_spawn "${P}r1" "$LAB_TMP/iperf-vip.log" iperf3 -s -B "$vip"
for i in 1 2 3; do
    for _ in $(seq 50); do
        [ "$(in_ns "${P}c" curl -s --max-time 1 "http://${rips[i - 1]}/")" = "r$i" ] && continue 2
        sleep 0.1
    done
    fail "nginx on r$i does not answer: $(cat "$LAB_TMP/nginx$i/out.log" "$LAB_TMP/nginx$i/error.log" 2>/dev/null)"
done

# return_route on|off: the real servers' route to the client network through the balancer (NAT needs it).
return_route() {
    local i
    for i in 1 2 3; do
        if [ "$1" = on ]; then ip -n "${P}r$i" route replace 192.0.2.0/24 via 198.51.100.1
        else ip -n "${P}r$i" route del 192.0.2.0/24 2>/dev/null || true; fi
    done
}

# nfqlb_config MODE OFFLOAD QUEUES: port 80 over r1..r3 (wlc, as ipvsadm's default), 5201 TCP and UDP to r1.
nfqlb_config() {
    local mode=$1 extra="" file=$LAB_TMP/nfqlb.yaml
    [ "$2" = 1 ] && extra=", offload: conntrack"
    [ "$mode" = fullnat ] && extra="$extra, local-addresses: [198.51.100.1]"
    cat > "$file" <<YAML
queues: $3
fullnat-ports: 41000-65535
max-connections: 1048576
services:
  - { vip: $vip, port: 80, protocol: tcp, mode: $mode$extra,
      reals: [ { address: ${rips[0]} }, { address: ${rips[1]} }, { address: ${rips[2]} } ] }
  - { vip: $vip, port: 5201, protocol: tcp, mode: $mode$extra, reals: [ { address: ${rips[0]} } ] }
  - { vip: $vip, port: 5201, protocol: udp, mode: $mode$extra, reals: [ { address: ${rips[0]} } ] }
YAML
    echo "$file"
}

# up CANDIDATE / down CANDIDATE: prepare the balancer; `up` sets `host`, where the client connects, and
# `balancer_pids`, the balancer's processes.
balancer_pids=()
host=""
up() {
    local candidate=$1 mode offload=0 queues="[0]" i
    balancer_pids=()
    host=$vip
    case "$candidate" in
        direct) return_route off; host=${rips[0]} ;;
        dnat)
            return_route on
            in_ns "${P}b" iptables -w -t nat -N BENCH-DNAT
            in_ns "${P}b" iptables -w -t nat -A BENCH-DNAT -p tcp --dport 80 -m statistic --mode nth --every 3 --packet 0 -j DNAT --to-destination "${rips[0]}:80"
            in_ns "${P}b" iptables -w -t nat -A BENCH-DNAT -p tcp --dport 80 -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination "${rips[1]}:80"
            in_ns "${P}b" iptables -w -t nat -A BENCH-DNAT -p tcp --dport 80 -j DNAT --to-destination "${rips[2]}:80"
            in_ns "${P}b" iptables -w -t nat -A BENCH-DNAT -p tcp --dport 5201 -j DNAT --to-destination "${rips[0]}:5201"
            in_ns "${P}b" iptables -w -t nat -A BENCH-DNAT -p udp --dport 5201 -j DNAT --to-destination "${rips[0]}:5201"
            in_ns "${P}b" iptables -w -t nat -A PREROUTING -d "$vip" -j BENCH-DNAT ;;
        haproxy)
            # Its own VIP: the TIME_WAIT sockets HAProxy leaves on the balancer would otherwise catch later
            # candidates' SYNs to the VIP (early demux delivers them locally instead of forwarding them).
            return_route off
            host=$haproxy_vip
            ip -n "${P}b" addr add "$haproxy_vip/32" dev lo
            cat > "$LAB_TMP/haproxy.cfg" <<HAP
global
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind $haproxy_vip:80
    default_backend web
backend web
    balance roundrobin
    server r1 ${rips[0]}:80
    server r2 ${rips[1]}:80
    server r3 ${rips[2]}:80
frontend iperf
    bind $haproxy_vip:5201
    default_backend iperf
backend iperf
    server r1 ${rips[0]}:5201
HAP
            lab_spawn "${P}b" "$LAB_TMP/haproxy.log" haproxy -f "$LAB_TMP/haproxy.cfg" -db
            haproxy_pid=$LAB_LAST_PID
            balancer_pids=("$haproxy_pid")
            for _ in $(seq 50); do in_ns "${P}c" curl -s --max-time 1 -o /dev/null "http://$haproxy_vip/" && break; sleep 0.1; done
            kill -0 "$haproxy_pid" 2>/dev/null || fail "haproxy did not start: $(cat "$LAB_TMP/haproxy.log")" ;;
        *)
            mode=${candidate%%[+/]*}
            [[ $candidate == *+offload ]] && offload=1
            [[ $candidate == */2q ]] && queues="[0, 1]"
            if [ "$mode" = nat ]; then return_route on; else return_route off; fi
            if [ "$mode" = tun ]; then
                decap_pids=()
                for i in 1 2 3; do
                    lab_spawn "${P}r$i" "$LAB_TMP/decap$i.log" "$NFQLB" decap --queue 0 --vip "$vip" --allow-source 198.51.100.1
                    decap_pids+=("$LAB_LAST_PID")
                    for _ in $(seq 100); do queue_bound "${P}r$i" 0 && break; sleep 0.1; done
                done
            fi
            nfqlb_start "$(nfqlb_config "$mode" "$offload" "$queues")" >/dev/null
            balancer_pids=("$NFQLB_PID") ;;
    esac
}
down() {
    local pid
    case "$1" in
        direct) ;;
        dnat)
            in_ns "${P}b" iptables -w -t nat -D PREROUTING -d "$vip" -j BENCH-DNAT
            in_ns "${P}b" iptables -w -t nat -F BENCH-DNAT
            in_ns "${P}b" iptables -w -t nat -X BENCH-DNAT ;;
        haproxy)
            lab_stop_pid "$haproxy_pid" 50 || true
            haproxy_pid=""
            ip -n "${P}b" addr del "$haproxy_vip/32" dev lo ;;
        *)
            nfqlb_stop
            in_ns "${P}b" "$setup" down >/dev/null
            for pid in "${decap_pids[@]}"; do lab_stop_pid "$pid" 50 || true; done
            decap_pids=() ;;
    esac
    in_ns "${P}b" conntrack -F >/dev/null 2>&1 || true     # no candidate inherits another's connections
}

# CPU seconds: of the balancer's processes (utime + stime, all threads), and of the whole machine (busy time
# of every CPU, from /proc/stat).
ticks=$(getconf CLK_TCK)
process_ticks() {
    local pid total=0
    for pid in "$@"; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0))); done
    echo "$total"
}
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# measure WORKLOAD HOST: one run; prints "value p50_ms p99_ms extra" (extra: errors or loss).
measure() {
    local workload=$1 host=$2 out
    case "$workload" in
        conn|keepalive)
            local header=()
            [ "$workload" = conn ] && header=(-H "Connection: close")
            out=$(in_ns "${P}c" timeout $((seconds + 15)) wrk -t2 -c32 -d"${seconds}s" --latency "${header[@]}" "http://$host/" 2>&1) || { echo "0 - - failed"; return; }
            "$LAB_PYTHON" - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", out).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", out).group(1))
errors = re.search(r"Socket errors: (.*)", out)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
extra = (errors.group(1).replace(" ", "") if errors else "") + (("non2xx:" + non2xx.group(1)) if non2xx else "")
print("%.0f %.2f %.2f %s" % (rate, p50, p99, extra or "-"))
PY
            ;;
        bulk)
            out=$(in_ns "${P}c" timeout $((seconds + 20)) iperf3 -c "$host" -P 4 -t "$seconds" -J 2>/dev/null) || { echo "0 - - failed"; return; }
            "$LAB_PYTHON" -c 'import json,sys; print("%.0f - - -" % (json.loads(sys.argv[1])["end"]["sum_received"]["bits_per_second"] / 1e6))' "$out" ;;
        udp)
            out=$(in_ns "${P}c" timeout $((seconds + 20)) iperf3 -c "$host" -u -l 64 -b "${UDP_BITRATE:-0}" -t "$seconds" -J 2>/dev/null) || {
                echo "udp: $("$LAB_PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1]).get("error"))' "$out" 2>/dev/null)" >&2
                echo "0 - - failed"; return; }
            "$LAB_PYTHON" -c '
import json, sys
s = json.loads(sys.argv[1])["end"]["sum"]
print("%.0f - - loss:%.1f%%" % ((s["packets"] - s["lost_packets"]) / s["seconds"], s["lost_percent"]))' "$out" ;;
    esac
}

# Kept after the lab is gone (a failed run still leaves the rounds it measured).
results=${RESULTS:-${TMPDIR:-/tmp}/nfqlb-suite-$$.tsv}
: > "$results"
echo "suite: results in $results"
for round in $(seq "$rounds"); do
    for candidate in "${candidates[@]}"; do
        up "$candidate"
        pids=("${balancer_pids[@]}")
        for workload in "${workloads[@]}"; do
            if [ "$candidate" = haproxy ] && [ "$workload" = udp ]; then continue; fi
            before_lb=$(process_ticks "${pids[@]}"); before_all=$(machine_ticks)
            line=$(measure "$workload" "$host")
            cpu_lb=$(awk -v a="$before_lb" -v b="$(process_ticks "${pids[@]}")" -v t="$ticks" 'BEGIN { printf "%.1f", (b - a) / t }')
            cpu_all=$(awk -v a="$before_all" -v b="$(machine_ticks)" -v t="$ticks" 'BEGIN { printf "%.1f", (b - a) / t }')
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$candidate" "$workload" "$round" "$line" "$cpu_lb" "$cpu_all" >> "$results"
            echo "round $round $candidate $workload: $line cpu balancer ${cpu_lb}s machine ${cpu_all}s"
            if [ -n "${VERBOSE:-}" ]; then
                [ -n "$NFQLB_PID" ] && sleep 1.2 && echo "  nfqlb: $(grep -v ' 0$' "$NFQLB_STATS" | grep -v '{' | tr '\n' ' ')"
                echo "  conntrack: $(in_ns "${P}b" conntrack -S 2>/dev/null | awk '{ for (i = 2; i <= NF; i++) { split($i, kv, "="); s[kv[1]] += kv[2] } } END { for (k in s) if (s[k]) printf "%s=%d ", k, s[k] }')"
                echo "  r1 udp (since the lab started): $(in_ns "${P}r1" nstat -az UdpInDatagrams UdpRcvbufErrors UdpInErrors 2>/dev/null | awk 'NR > 1 { printf "%s=%s ", $1, $2 }')"
            fi
        done
        down "$candidate"
    done
done

"$LAB_PYTHON" - "$results" "$seconds" "$rounds" "${OUT:-}" <<'PY'
import statistics, sys
path, seconds, rounds, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = {}
order_c, order_w = [], []
for line in open(path):
    candidate, workload, _, fields, cpu_lb, cpu_all = line.rstrip("\n").split("\t")
    value, p50, p99, extra = fields.split(" ", 3)
    rows.setdefault((candidate, workload), []).append((float(value), p50, p99, extra, float(cpu_lb), float(cpu_all)))
    if candidate not in order_c: order_c.append(candidate)
    if workload not in order_w: order_w.append(workload)
units = {"conn": "req/s", "keepalive": "req/s", "bulk": "Mbit/s", "udp": "datagrams/s"}
lines = ["| workload | candidate | median | min-max | p50 / p99 ms | balancer CPU s | machine CPU s | vs dnat | notes |",
         "|---|---|---|---|---|---|---|---|---|"]
for w in order_w:
    base = rows.get(("dnat", w))
    base_median = statistics.median(v[0] for v in base) if base else None
    for c in order_c:
        runs = rows.get((c, w))
        if not runs:
            continue
        values = [r[0] for r in runs]
        median = statistics.median(values)
        # The run whose value is the median gives the latency and CPU columns.
        mid = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
        latency = "%s / %s" % (mid[1], mid[2]) if mid[1] != "-" else ""
        ratio = "%.2f" % (median / base_median) if base_median else ""
        notes = ", ".join(sorted({r[3] for r in runs if r[3] != "-"}))
        lines.append("| %s (%s) | %s | %s | %s-%s | %s | %.1f | %.1f | %s | %s |" % (
            w, units[w], c, format(round(median), ","), format(round(min(values)), ","), format(round(max(values)), ","),
            latency, mid[4], mid[5], ratio, notes))
table = "\n".join(lines)
print()
print("medians of %s rounds of %s s, interleaved (scripts/bench/suite.sh %s %s):" % (rounds, seconds, rounds, seconds))
print(table)
if out:
    open(out, "w").write(table + "\n")
PY
