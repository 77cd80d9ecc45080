#!/usr/bin/env bash
# Helpers for nfqlb's network-namespace labs. Sourced by Tests/e2e/*.sh and scripts/demo.sh; not run directly.
#
# Topology built by lab_nat_up (docs/ARCHITECTURE.md "Test labs": documentation addresses only, nothing joined to
# the root namespace, no route out of the lab):
#
#   ${P}c client                 ${P}b balancer                                       real servers
#   eth0 192.0.2.2/24 ── veth ── client0 192.0.2.1/24
#   203.0.113.0/24 via 192.0.2.1 br0 198.51.100.1/24 ─┬─ r1 ── veth ── eth0 198.51.100.11/24  ${P}r1
#   (the VIP 203.0.113.10 is     ip_forward=1         ├─ r2 ── veth ── eth0 198.51.100.12/24  ${P}r2
#    routed to the balancer,                          └─ r3 ── veth ── eth0 198.51.100.13/24  ${P}r3
#    not configured on it)                                      (each: default via 198.51.100.1)
#
# Every link also carries IPv6 (no DAD, no multicast snooping on the bridges): client 2001:db8:c::2, balancer
# 2001:db8:c::1 and 2001:db8:5::1, real servers 2001:db8:5::1X, VIP 2001:db8:f::10 (the router of lab_dr_up:
# 2001:db8:c::fe and 2001:db8:5::fe). LAB_FAMILY=6 in the environment makes the helpers below (servers, the
# LAB_* address variables) use the IPv6 addresses; the IPv4 ones otherwise.
#
# Interfaces are created directly inside their namespaces (ip -n NS link add ... peer ... netns NS2), so their
# names are short, fixed, and never appear in the root namespace, whatever the length of the prefix.
#
# Functions (all expect `set -euo pipefail`, which sourcing this file turns on):
#   lab_unmask_signals "$@"    first thing in a script: re-exec it if started with signals blocked (see below)
#   lab_init PREFIX            unique per-run prefix (e.g. nq$$x); temp dir; teardown trap on EXIT/INT/TERM
#   lab_nat_up                 the namespaces and links above
#   lab_start_http_servers     python3 http.server on 198.51.100.1X:8080 serving whoami (r1|r2|r3) and big.bin
#   lab_start_udp_echo         UDP echo on 198.51.100.1X:5353 answering "rX:<payload>"
#   lab_teardown               stops what this run started, deletes its namespaces and temp dir (idempotent)
#   lab_extra_teardown         optional, defined by the caller: runs first in lab_teardown (must not exit)
#   lab_spawn NS LOG CMD...    CMD in the background in NS, output to LOG; PID recorded (LAB_LAST_PID)
#   in_ns NS CMD...            ip netns exec NS CMD...
#   udp_ask NS HOST PORT DATA  one datagram from NS; prints "SRC_IP SRC_PORT REPLY" (2 s timeout, exit 1)
#   csum_errors NS             TcpInCsumErrors + UdpInCsumErrors + Udp6InCsumErrors of NS
#   csum_snapshot / csum_check  record, then require unchanged, the checksum errors of the client, r1..3 and
#                              the balancer; csum_check prints "checksum errors: client +0 r1 +0 ..."
#   rules_cleanup_check        iptables-setup.sh down in the balancer, then no NFQLB rule and accept_local
#                              restored; prints "cleanup: no rules left"
#   queue_bound NS [QUEUE]     true when NFQUEUE QUEUE (default 0) is bound in NS
#   nfqlb_start CONFIG         iptables-setup.sh up CONFIG, then $NFQLB run in ${P}b; waits for queue 0
#   nfqlb_stop                 SIGTERM; requires exit status 0 and queue 0 unbound
#   stat_value NAME            a counter from the stats file of the last nfqlb run
#   fail MSG / pass MSG        "FAIL: MSG" on stderr and exit 1 / "ok: MSG"
#
# Variables for callers: LAB_VIP, LAB_RIP (array of the 3 real servers' addresses), LAB_LIP (the balancer's
# server-side address), LAB_CLIENT, LAB_URL_HOST (the VIP as a URL host: [v6]), LAB_HOST_BITS (32 or 128),
# P (prefix), LAB_TMP (temp dir), LAB_ROOT (repository root), LAB_PYTHON,
# NFQLB (nfqlb binary, needed by nfqlb_start), NFQLB_PID, NFQLB_LOG, NFQLB_STATS, LAB_EXIT_STATUS (in the hook).
set -euo pipefail

LAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAB_FAMILY=${LAB_FAMILY:-4}
if [ "$LAB_FAMILY" = 6 ]; then
    LAB_VIP=2001:db8:f::10; LAB_RIP=(2001:db8:5::11 2001:db8:5::12 2001:db8:5::13); LAB_LIP=2001:db8:5::1
    LAB_CLIENT=2001:db8:c::2; LAB_URL_HOST="[$LAB_VIP]"; LAB_HOST_BITS=128
else
    LAB_VIP=203.0.113.10; LAB_RIP=(198.51.100.11 198.51.100.12 198.51.100.13); LAB_LIP=198.51.100.1
    LAB_CLIENT=192.0.2.2; LAB_URL_HOST=$LAB_VIP; LAB_HOST_BITS=32
fi
LAB_PIDS=()         # every background process this run started, by PID
LAB_NS=()           # every namespace this run created
LAB_TMP=""
LAB_TORN_DOWN=0
LAB_EXIT_STATUS=0
P=""
NFQLB_PID=""
NFQLB_LOG=""
NFQLB_STATS=""

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# url_host ADDRESS: the address as the host part of a URL ([..] around IPv6).
url_host() { if [[ $1 == *:* ]]; then echo "[$1]"; else echo "$1"; fi; }

# lab_unmask_signals "$@": call it right after sourcing, with the script's arguments. Some launchers start
# processes with most signals blocked: Foundation.Process on Linux passes Dispatch's worker-thread mask on
# (swift-corelibs-foundation#4772), so under `swift test` this script, nfqlb and the servers would all have
# SIGTERM and SIGINT blocked, and `kill -TERM` would never stop them. The mask survives exec and bash cannot
# change it, so re-exec the calling script once through python3 with an empty mask and default dispositions
# (python ignores SIGPIPE itself, which must not leak into the script's pipelines).
lab_unmask_signals() {
    local key value blocked=""
    # Read with the builtin: while bash waits for a child (command substitution, pipeline) it blocks
    # SIGINT/SIGCHLD itself, so the child would see that transient mask, not ours.
    while read -r key value; do [ "$key" = SigBlk: ] && blocked=$value; done < /proc/$$/status
    [[ $blocked =~ ^0+$ ]] && return 0
    if [ -n "${LAB_UNMASKED:-}" ]; then
        echo "lab: warning: signals still blocked after re-exec (SigBlk $blocked)" >&2
        return 0
    fi
    export LAB_UNMASKED=1
    exec python3 -c '
import os, signal, sys
for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
    signal.signal(s, signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_SETMASK, [])
os.execv(sys.argv[1], sys.argv[1:])
' "$BASH" "$0" "$@"
}

# lab_init PREFIX: PREFIX names this run's namespaces (${P}c, ${P}b, ${P}r1..3); make it unique (e.g. nq$$x).
lab_init() {
    [ "$(id -u)" = 0 ] || fail "the lab needs root (network namespaces)"
    [[ ${1:-} =~ ^[a-zA-Z0-9_]{1,40}$ ]] || fail "lab_init: bad prefix '${1:-}' (letters, digits, _)"
    P=$1
    # Refuse to adopt namespaces of another run: teardown deletes by these names.
    local ns
    for ns in "${P}c" "${P}b" "${P}r1" "${P}r2" "${P}r3"; do
        [ ! -e "/run/netns/$ns" ] || fail "lab_init: namespace $ns already exists (prefix not unique)"
    done
    command -v nstat >/dev/null || fail "nstat not found (apt-get install iproute2)"
    # The real interpreter, not a wrapper (pyenv shims), so that recorded PIDs are the servers themselves.
    LAB_PYTHON=$(python3 -c 'import sys; print(sys.executable)') || fail "python3 not found"
    LAB_TMP=$(mktemp -d "/tmp/nfqlb-lab-$P.XXXXXX")
    LAB_TORN_DOWN=0
    # EXIT runs the teardown once; INT/TERM turn into an exit, which runs it.
    trap lab_teardown EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# lab_spawn NS LOG CMD...: starts CMD in namespace NS in the background. `ip netns exec` execs CMD, so the
# recorded PID is CMD itself.
lab_spawn() {
    local ns=$1 log=$2; shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 </dev/null &
    LAB_LAST_PID=$!
    LAB_PIDS+=("$LAB_LAST_PID")
}

# lab_forget_pid PID: drops PID from LAB_PIDS (exact match), once the caller has waited for it.
lab_forget_pid() {
    local keep=() pid
    for pid in "${LAB_PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    LAB_PIDS=("${keep[@]}")
}

# lab_stop_pid PID [TIMEOUT_TENTHS]: SIGTERM, wait up to TIMEOUT (default 50 = 5 s), then SIGKILL.
# Returns the process's exit status (143 = killed by SIGTERM). Only for PIDs this shell started.
lab_stop_pid() {
    local pid=$1 tenths=${2:-50} status=0 _
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq "$tenths"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "lab: PID $pid ignored SIGTERM for $((tenths / 10)) s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || status=$?
    lab_forget_pid "$pid"
    return "$status"
}

lab_teardown() {
    LAB_EXIT_STATUS=$?
    [ "$LAB_TORN_DOWN" = 1 ] && return 0
    LAB_TORN_DOWN=1
    local errexit=0; [[ $- == *e* ]] && errexit=1
    set +e
    trap '' INT TERM            # finish cleaning up even if interrupted again
    if declare -F lab_extra_teardown >/dev/null; then lab_extra_teardown; fi
    local pid ns
    for pid in "${LAB_PIDS[@]}"; do lab_stop_pid "$pid" 30; done
    LAB_PIDS=()
    # Every namespace of this run: those recorded, and the standard names in case setup stopped half-way.
    for ns in "${LAB_NS[@]}" "${P}c" "${P}b" "${P}r1" "${P}r2" "${P}r3"; do
        [ -n "$P" ] && [ -e "/run/netns/$ns" ] || continue
        if [ -n "$(ip netns pids "$ns" 2>/dev/null)" ]; then
            echo "lab: warning: processes not started by this run still in $ns: $(ip netns pids "$ns" | tr '\n' ' ')" >&2
        fi
        # nfqlb's state for this namespace (iptables-setup.sh, real-server setup) dies with it: remove it, so
        # that a later namespace reusing the inode number does not inherit it.
        local inode
        inode=$(stat -L -c %i "/run/netns/$ns" 2>/dev/null) && rm -rf "/run/nfqlb/netns-$inode" "/run/nfqlb/realserver-netns-$inode"
        ip netns del "$ns" 2>/dev/null || echo "lab: warning: could not delete namespace $ns" >&2
    done
    LAB_NS=()
    [ -n "$LAB_TMP" ] && rm -rf "$LAB_TMP"
    LAB_TMP=""
    trap - INT TERM
    [ "$errexit" = 1 ] && set -e
    return 0
}

# lab_add_ns NAME: creates a namespace, records it, brings up its loopback; no IPv6 duplicate address
# detection on the links created afterwards (addresses usable at once).
lab_add_ns() {
    ip netns add "$1"
    LAB_NS+=("$1")
    ip -n "$1" link set lo up
    in_ns "$1" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
}

lab_nat_up() {
    local c=${P}c b=${P}b i r
    [ -n "$P" ] || fail "lab_nat_up: call lab_init first"
    lab_add_ns "$c"
    lab_add_ns "$b"

    # client <-> balancer
    ip -n "$c" link add eth0 type veth peer name client0 netns "$b"
    ip -n "$c" addr add 192.0.2.2/24 dev eth0
    ip -n "$c" link set eth0 up
    ip -n "$c" route add 203.0.113.0/24 via 192.0.2.1     # the VIP range is routed to the balancer
    ip -n "$c" addr add 2001:db8:c::2/64 dev eth0 nodad
    ip -n "$c" route add 2001:db8:f::/64 via 2001:db8:c::1
    ip -n "$b" addr add 192.0.2.1/24 dev client0
    ip -n "$b" addr add 2001:db8:c::1/64 dev client0 nodad
    ip -n "$b" link set client0 up

    # balancer: bridge for the real servers, forwarding on
    ip -n "$b" link add br0 type bridge mcast_snooping 0
    ip -n "$b" addr add 198.51.100.1/24 dev br0
    ip -n "$b" addr add 2001:db8:5::1/64 dev br0 nodad
    ip -n "$b" link set br0 up
    in_ns "$b" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

    # real servers, each on a bridge port of the balancer
    for i in 1 2 3; do
        r=${P}r$i
        lab_add_ns "$r"
        ip -n "$r" link add eth0 type veth peer name "r$i" netns "$b"
        ip -n "$b" link set "r$i" master br0
        ip -n "$b" link set "r$i" up
        ip -n "$r" addr add "198.51.100.1$i/24" dev eth0
        ip -n "$r" addr add "2001:db8:5::1$i/64" dev eth0 nodad
        ip -n "$r" link set eth0 up
        ip -n "$r" route add default via 198.51.100.1
        ip -n "$r" route add default via 2001:db8:5::1
    done
}

# lab_dr_up: the lab for DR (and later TUN): replies must not pass the balancer, so a router ${P}g joins the
# client network (bridge brc, 192.0.2.254) and the server network (bridge brs, 198.51.100.254), and the real
# servers' default route is the router. The client still routes the VIP range to the balancer (192.0.2.1);
# the balancer's server-side address is 198.51.100.1.
#
#   ${P}c 192.0.2.2 ──┐                 ┌── 198.51.100.1  ${P}b balancer ── 192.0.2.1 ──┐
#                     brc (in ${P}g) ───┘                                               │ (also on brc)
#                     192.0.2.254 router 198.51.100.254 ── brs ── ${P}r1..3 198.51.100.1x (default via .254)
lab_dr_up() {
    local c=${P}c b=${P}b g=${P}g i r dev
    [ -n "$P" ] || fail "lab_dr_up: call lab_init first"
    lab_add_ns "$c"; lab_add_ns "$b"; lab_add_ns "$g"
    ip -n "$g" link add brc type bridge mcast_snooping 0
    ip -n "$g" link add brs type bridge mcast_snooping 0
    ip -n "$g" addr add 192.0.2.254/24 dev brc
    ip -n "$g" addr add 198.51.100.254/24 dev brs
    ip -n "$g" addr add 2001:db8:c::fe/64 dev brc nodad
    ip -n "$g" addr add 2001:db8:5::fe/64 dev brs nodad
    ip -n "$g" link set brc up
    ip -n "$g" link set brs up
    # lab_dr_port NS IFNAME BRIDGE PORTNAME: a veth from NS to a port of a router bridge.
    lab_dr_port() {
        ip -n "$1" link add "$2" type veth peer name "$4" netns "$g"
        ip -n "$g" link set "$4" master "$3"
        ip -n "$g" link set "$4" up
        ip -n "$1" link set "$2" up
    }
    lab_dr_port "$c" eth0 brc c0
    ip -n "$c" addr add 192.0.2.2/24 dev eth0
    ip -n "$c" route add 203.0.113.0/24 via 192.0.2.1
    ip -n "$c" addr add 2001:db8:c::2/64 dev eth0 nodad
    ip -n "$c" route add 2001:db8:f::/64 via 2001:db8:c::1
    lab_dr_port "$b" client0 brc b0
    ip -n "$b" addr add 192.0.2.1/24 dev client0
    ip -n "$b" addr add 2001:db8:c::1/64 dev client0 nodad
    lab_dr_port "$b" servers0 brs b1
    ip -n "$b" addr add 198.51.100.1/24 dev servers0
    ip -n "$b" addr add 2001:db8:5::1/64 dev servers0 nodad
    in_ns "$b" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    # The router forwards the real servers' replies (source: the VIP) to the client.
    in_ns "$g" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    ip -n "$g" route add 203.0.113.0/24 via 192.0.2.1
    ip -n "$g" route add 2001:db8:f::/64 via 2001:db8:c::1
    for dev in all default brc brs; do in_ns "$g" sysctl -qw "net.ipv4.conf.$dev.rp_filter=0"; done
    for i in 1 2 3; do
        r=${P}r$i
        lab_add_ns "$r"
        lab_dr_port "$r" eth0 brs "r$i"
        ip -n "$r" addr add "198.51.100.1$i/24" dev eth0
        ip -n "$r" addr add "2001:db8:5::1$i/64" dev eth0 nodad
        ip -n "$r" route add default via 198.51.100.254
        ip -n "$r" route add default via 2001:db8:5::fe
    done
}

# lab_start_upload_sinks ADDRESS1 ADDRESS2 ADDRESS3: in real server i, a TCP sink on ADDRESSi:9000 that reads
# until the client shuts its side down and answers "<bytes> <sha256>".
lab_start_upload_sinks() {
    local i=0 address
    cat > "$LAB_TMP/sink.py" <<'PY'
import hashlib, socket, sys, threading
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
server = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
def serve(conn):
    h, n = hashlib.sha256(), 0
    while True:
        data = conn.recv(65536)
        if not data:
            break
        h.update(data); n += len(data)
    conn.sendall(b"%d %s" % (n, h.hexdigest().encode()))
    conn.close()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
PY
    for address in "$@"; do
        i=$((i + 1))
        lab_spawn "${P}r$i" "$LAB_TMP/sink$i.log" "$LAB_PYTHON" "$LAB_TMP/sink.py" "$address" 9000
    done
}

# upload_check HOST BYTES: sends BYTES random bytes from the client to HOST:9000 (bounded: 60 s) and requires
# the sink's answer to match; prints "upload BYTES bytes identical".
upload_check() {
    local host=$1 bytes=$2 want got
    head -c "$bytes" /dev/urandom > "$LAB_TMP/up.bin"
    want="$bytes $(sha256sum < "$LAB_TMP/up.bin" | cut -d' ' -f1)"
    got=$(in_ns "${P}c" timeout 60 "$LAB_PYTHON" - "$host" "$LAB_TMP/up.bin" <<'PY'
import socket, sys
s = socket.create_connection((sys.argv[1], 9000), timeout=30)
s.sendall(open(sys.argv[2], "rb").read())
s.shutdown(socket.SHUT_WR)
answer = b""
while True:
    data = s.recv(4096)
    if not data:
        break
    answer += data
print(answer.decode())
PY
) || fail "upload of $bytes bytes to $host:9000 failed"
    [ "$got" = "$want" ] || fail "upload: the server saw '$got', want '$want'"
    echo "upload $bytes bytes identical"
}

# lab_start_http_servers: python3 http.server in each real server, serving $LAB_TMP/wwwX/{whoami,big.bin}.
# big.bin: LAB_BIG_BYTES (default 5 MiB) random bytes, the same file (hard links) on every server.
lab_start_http_servers() {
    local i dir _
    [ -f "$LAB_TMP/big.bin" ] || head -c "${LAB_BIG_BYTES:-5242880}" /dev/urandom > "$LAB_TMP/big.bin"
    for i in 1 2 3; do
        dir=$LAB_TMP/www$i
        mkdir -p "$dir"
        echo "r$i" > "$dir/whoami"
        ln -f "$LAB_TMP/big.bin" "$dir/big.bin"
        lab_spawn "${P}r$i" "$LAB_TMP/http$i.log" \
            "$LAB_PYTHON" -m http.server 8080 --bind "${LAB_RIP[i - 1]}" --directory "$dir"
    done
    # Ready when each answers its own whoami (bounded: 50 x 0.1 s + curl time).
    for i in 1 2 3; do
        for _ in $(seq 50); do
            if [ "$(in_ns "${P}r$i" curl -s --max-time 1 "http://$(url_host "${LAB_RIP[i - 1]}"):8080/whoami")" = "r$i" ]; then
                continue 2
            fi
            sleep 0.1
        done
        fail "HTTP server r$i did not answer within 5 s: $(cat "$LAB_TMP/http$i.log")"
    done
}

# udp_ask NS HOST PORT PAYLOAD [TIMEOUT]: one datagram from a new socket in NS; prints
# "SRC_IP SRC_PORT REPLY" of the answer, or fails (status 1) after TIMEOUT seconds (default 2).
udp_ask() {
    in_ns "$1" "$LAB_PYTHON" -c '
import socket, sys
host, port, payload, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout)
s.sendto(payload.encode(), (host, port))
try:
    data, peer = s.recvfrom(65535)
except OSError as e:
    sys.exit("udp_ask %s:%d: %s" % (host, port, e))
print(peer[0], peer[1], data.decode(errors="replace"))
' "$2" "$3" "$4" "${5:-2}"
}

# lab_start_udp_echo: UDP echo on 198.51.100.1X:5353 in each real server, answering "rX:<payload>". Bound to
# the specific address, so replies leave from the address the datagram was sent to.
# (Sets LAB_UDP_PIDS[1..3], each echo server's PID.)
declare -a LAB_UDP_PIDS=()
lab_start_udp_echo() {
    local i _
    cat > "$LAB_TMP/udp_echo.py" <<'PY'
import socket, sys
name, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((address, port))
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(name.encode() + b":" + data, peer)
PY
    for i in 1 2 3; do
        lab_spawn "${P}r$i" "$LAB_TMP/udp$i.log" "$LAB_PYTHON" "$LAB_TMP/udp_echo.py" "r$i" "${LAB_RIP[i - 1]}" 5353
        LAB_UDP_PIDS[$i]=$LAB_LAST_PID
    done
    for i in 1 2 3; do
        for _ in $(seq 50); do
            if [ "$(udp_ask "${P}r$i" "${LAB_RIP[i - 1]}" 5353 ready 0.1 2>/dev/null)" = "${LAB_RIP[i - 1]} 5353 r$i:ready" ]; then
                continue 2
            fi
            sleep 0.1
        done
        fail "UDP echo r$i did not answer within 5 s: $(cat "$LAB_TMP/udp$i.log")"
    done
}

# lab_start_line_echo: a line echo on 198.51.100.1X:7000 in each real server, answering each line with
# "rX:<line>" (one thread per connection).
lab_start_line_echo() {
    local i _
    cat > "$LAB_TMP/line_echo.py" <<'PY'
import socketserver, sys
name, address = sys.argv[1], sys.argv[2]
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(name.encode() + b":" + line)
            self.wfile.flush()
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer.request_queue_size = 512
socketserver.ThreadingTCPServer((address, 7000), Echo).serve_forever()
PY
    for i in 1 2 3; do
        lab_spawn "${P}r$i" "$LAB_TMP/echo$i.log" "$LAB_PYTHON" "$LAB_TMP/line_echo.py" "r$i" "198.51.100.1$i"
    done
    for i in 1 2 3; do
        for _ in $(seq 50); do
            in_ns "${P}r$i" "$LAB_PYTHON" -c "import socket; socket.create_connection(('198.51.100.1$i', 7000), 1).close()" \
                2>/dev/null && continue 2
            sleep 0.1
        done
        fail "line echo r$i did not listen within 5 s"
    done
}

# csum_errors NS: checksum errors counted by NS's stack (absolute values, nstat history untouched).
csum_errors() {
    in_ns "$1" nstat -asz | awk '
        $1 == "TcpInCsumErrors" || $1 == "UdpInCsumErrors" || $1 == "Udp6InCsumErrors" { sum += $2 }
        END { print sum + 0 }'
}

CSUM_HOSTS=(c r1 r2 r3 b)
declare -A CSUM_BEFORE
csum_snapshot() {
    local h
    for h in "${CSUM_HOSTS[@]}"; do CSUM_BEFORE[$h]=$(csum_errors "${P}$h"); done
}

csum_check() {
    local h label line="checksum errors:"
    for h in "${CSUM_HOSTS[@]}"; do
        case $h in c) label=client ;; b) label=balancer ;; *) label=$h ;; esac
        line="$line $label +$(( $(csum_errors "${P}$h") - ${CSUM_BEFORE[$h]} ))"
    done
    echo "$line"
    [ "$line" = "checksum errors: client +0 r1 +0 r2 +0 r3 +0 balancer +0" ] || fail "checksum errors appeared"
}

rules_cleanup_check() {
    in_ns "${P}b" "$LAB_ROOT/scripts/iptables-setup.sh" down >/dev/null || fail "iptables-setup.sh down failed"
    local tool
    for tool in iptables-save ip6tables-save; do
        if grep -q NFQLB <<<"$(in_ns "${P}b" "$tool")"; then
            fail "rules left behind: $(in_ns "${P}b" "$tool" | grep NFQLB | tr '\n' ' ')"
        fi
    done
    [ "$(in_ns "${P}b" sysctl -n net.ipv4.conf.all.accept_local)" = 0 ] || fail "accept_local not restored by down"
    echo "cleanup: no rules left"
}

# queue_bound NS [QUEUE]: the first column of /proc/net/netfilter/nfnetlink_queue lists the bound queues.
queue_bound() {
    in_ns "$1" cat /proc/net/netfilter/nfnetlink_queue | awk -v q="${2:-0}" '$1 == q { found = 1 } END { exit !found }'
}

# lab_router_lan G: the client ${P}c (192.0.2.2) and the router G (192.0.2.1 towards it, forwarding), with a
# bridge brs (198.51.100.254/24) for balancers and real servers (lab_lan_port).
lab_router_lan() {
    local g=$1
    lab_add_ns "${P}c"; lab_add_ns "$g"
    ip -n "$g" link add brs type bridge mcast_snooping 0
    ip -n "$g" addr add 198.51.100.254/24 dev brs
    ip -n "$g" link set brs up
    ip -n "${P}c" link add eth0 type veth peer name c0 netns "$g"
    ip -n "${P}c" addr add 192.0.2.2/24 dev eth0
    ip -n "${P}c" link set eth0 up
    ip -n "${P}c" route add default via 192.0.2.1
    ip -n "$g" addr add 192.0.2.1/24 dev c0
    ip -n "$g" link set c0 up
    in_ns "$g" sysctl -qw net.ipv4.ip_forward=1
}

# lab_lan_port G NS PORTNAME ADDRESS [GATEWAY]: a veth from NS (eth0, ADDRESS/24) to G's bridge brs (PORTNAME),
# with a default route via GATEWAY if given.
lab_lan_port() {
    local g=$1 ns=$2 port=$3
    ip -n "$ns" link add eth0 type veth peer name "$port" netns "$g"
    ip -n "$g" link set "$port" master brs
    ip -n "$g" link set "$port" up
    ip -n "$ns" addr add "$4/24" dev eth0
    ip -n "$ns" link set eth0 up
    if [ -n "${5:-}" ]; then ip -n "$ns" route add default via "$5"; fi
}

# long_client_start VIP PORT COUNT: Tests/e2e/long-client.py in the client namespace (${P}c), COUNT long
# connections to VIP:PORT; its stdin is a fifo on descriptor 7. Fails unless all COUNT open.
long_client_start() {
    mkfifo "$LAB_TMP/client.in"
    # The fifo is the client's stdin: the background shell opens it (waiting for a writer), then execs the client.
    ip netns exec "${P}c" "$LAB_PYTHON" "$LAB_ROOT/Tests/e2e/long-client.py" "$1" "$2" "$3" <"$LAB_TMP/client.in" >"$LAB_TMP/client.out" 2>&1 &
    LONG_CLIENT_PID=$!
    LAB_PIDS+=("$LONG_CLIENT_PID")
    exec 7>"$LAB_TMP/client.in"
    for _ in $(seq 200); do grep -q "^open" "$LAB_TMP/client.out" && break; sleep 0.1; done
    grep -q "^open $3" "$LAB_TMP/client.out" || fail "client: could not open $3 connections: $(cat "$LAB_TMP/client.out")"
}

# long_client_report: prints the long client's count of broken connections so far.
long_client_report() {
    local before
    before=$(grep -c "^broken" "$LAB_TMP/client.out" || true)
    echo report >&7
    for _ in $(seq 50); do [ "$(grep -c "^broken" "$LAB_TMP/client.out" || true)" -gt "$before" ] && break; sleep 0.1; done
    grep "^broken" "$LAB_TMP/client.out" | tail -n 1 | awk '{ print $2 }'
}

# long_client_stop: ends the long client and prints its summary (broken connections, real servers).
long_client_stop() {
    echo stop >&7
    exec 7>&-
    wait "$LONG_CLIENT_PID" 2>/dev/null || true
    lab_forget_pid "$LONG_CLIENT_PID"
    tail -n 3 "$LAB_TMP/client.out"
}

# nfqlb_start CONFIG: installs nfqlb's rules in the balancer (scripts/iptables-setup.sh up, idempotent; not
# with NFQLB_SETUP=keep, which restarts nfqlb under the rules in place) and starts "$NFQLB run" there;
# returns once queue 0 is bound (bounded: 10 s). Sets NFQLB_PID. NFQLB_ARGS adds options to `nfqlb run`.
nfqlb_start() {
    local config=$1 _
    [ -n "${NFQLB:-}" ] && [ -x "$NFQLB" ] || fail "NFQLB must name the nfqlb binary (got '${NFQLB:-}')"
    [ -z "$NFQLB_PID" ] || fail "nfqlb_start: nfqlb already running (PID $NFQLB_PID)"
    export NFQLB
    if [ "${NFQLB_SETUP:-}" != keep ]; then
        in_ns "${P}b" "$LAB_ROOT/scripts/iptables-setup.sh" up "$config" || fail "iptables-setup.sh up $config failed"
    fi
    NFQLB_LOG=$LAB_TMP/nfqlb.log
    NFQLB_STATS=$LAB_TMP/stats
    # A fresh start forgets the previous nfqlb's connections; a restart (NFQLB_SETUP=keep) takes them back.
    [ "${NFQLB_SETUP:-}" = keep ] || rm -f "$LAB_TMP/nfqlb.state"
    rm -f "$NFQLB_STATS"
    echo "=== nfqlb run --config $config" >> "$NFQLB_LOG"
    # shellcheck disable=SC2086
    lab_spawn "${P}b" "$LAB_TMP/nfqlb.out" "$NFQLB" run --config "$config" --stats-file "$NFQLB_STATS" \
        --state-file "$LAB_TMP/nfqlb.state" ${NFQLB_ARGS:-}
    NFQLB_PID=$LAB_LAST_PID
    for _ in $(seq 100); do
        if ! kill -0 "$NFQLB_PID" 2>/dev/null; then
            local status=0
            wait "$NFQLB_PID" || status=$?
            lab_forget_pid "$NFQLB_PID"; NFQLB_PID=""
            cat "$LAB_TMP/nfqlb.out" >> "$NFQLB_LOG"
            fail "nfqlb exited with status $status before binding its queue; log:
$(cat "$LAB_TMP/nfqlb.out")"
        fi
        queue_bound "${P}b" 0 && return 0
        sleep 0.1
    done
    fail "nfqlb did not bind queue 0 within 10 s; log:
$(cat "$LAB_TMP/nfqlb.out")"
}

# nfqlb_stop: SIGTERM to nfqlb; requires exit status 0 and queue 0 unbound afterwards.
nfqlb_stop() {
    local status=0
    [ -n "$NFQLB_PID" ] || fail "nfqlb_stop: nfqlb is not running"
    lab_stop_pid "$NFQLB_PID" 100 || status=$?
    NFQLB_PID=""
    cat "$LAB_TMP/nfqlb.out" >> "$NFQLB_LOG"
    [ "$status" = 0 ] || fail "nfqlb exited with status $status after SIGTERM; log:
$(cat "$LAB_TMP/nfqlb.out")"
    if queue_bound "${P}b" 0; then fail "queue 0 still bound after nfqlb stopped"; fi
}

# stat_value NAME: a counter from the stats file nfqlb writes ("name value" per line); empty when absent.
stat_value() { awk -v n="$1" '$1 == n { print $2 }' "$NFQLB_STATS" 2>/dev/null; }
# stat_total NAME: the counter over both runs when restart_check restarted nfqlb (its first run's final stats).
stat_total() {
    local now before
    now=$(stat_value "$1")
    before=$(awk -v n="$1" '$1 == n { print $2 }' "$LAB_TMP/stats-before-restart" 2>/dev/null || true)
    echo $(( ${now:-0} + ${before:-0} ))
}

# nfqlb_reload RUNNING NEW: copies NEW over the running config file RUNNING, sends SIGHUP and waits (bounded:
# 10 s) for nfqlb's log to say the configuration changed.
nfqlb_reload() {
    local before _
    before=$(grep -c "configuration changed" "$LAB_TMP/nfqlb.out" || true)
    cp "$2" "$1"
    kill -HUP "$NFQLB_PID"
    for _ in $(seq 100); do
        [ "$(grep -c "configuration changed" "$LAB_TMP/nfqlb.out" || true)" -gt "$before" ] && return 0
        sleep 0.1
    done
    fail "nfqlb did not apply $2 within 10 s: $(tail -n 5 "$LAB_TMP/nfqlb.out")"
}

# --- The conntrack fast path (offload: conntrack): checks shared by nat.sh and direct-return.sh ---

# offload_counts_check CONFIG NEW MIN_IN_BYTES, while nfqlb runs: the kernel's events reported exactly NEW
# connections with one of nfqlb's marks (offload_connections_new); the live count (offload_connections)
# equals the real servers' ActiveConn + InActConn in the stats and the lines of `nfqlb conntrack list`; and
# the kernel's accounting shows a connection that carried MIN_IN_BYTES or more client -> server.
offload_counts_check() {
    local config=$1 want=$2 min_in=$3 _ new live per_server list listed biggest
    for _ in $(seq 50); do
        new=$(stat_value offload_connections_new); live=$(stat_value offload_connections)
        per_server=$(awk '$1 ~ /^real_server_(in)?active\{/ { s += $2 } END { print s + 0 }' "$NFQLB_STATS")
        list=$(in_ns "${P}b" "$NFQLB" conntrack list --config "$config") || fail "nfqlb conntrack list failed"
        listed=$(($(wc -l <<<"$list") - 1))
        [ "$new" = "$want" ] && [ "$live" = "$listed" ] && [ "$per_server" = "$live" ] && break
        sleep 0.2
    done
    echo "offload counts: new $new (want $want), live $live, per real server $per_server, listed by the kernel $listed"
    [ "$new" = "$want" ] || fail "offload: the kernel reported $new new connections of nfqlb's, want $want"
    [ "$live" = "$listed" ] && [ "$per_server" = "$live" ] || fail "offload: live $live, per real server $per_server, kernel $listed"
    biggest=$(awk 'NR > 1 { split($7, a, "/"); if (a[2] + 0 > m) m = a[2] + 0 } END { print m + 0 }' <<<"$list")
    [ "$biggest" -ge "$min_in" ] || fail "offload: no kernel connection counted $min_in bytes in (largest: $biggest)"
    echo "kernel accounting: largest connection $biggest bytes client -> server"
    echo "offloaded first packets so far: $(stat_value offloaded) of $(stat_value received) queued"
    pass "offload: counts follow the kernel's connections ($want new)"
}

# lab_slow_upload HOST SECONDS LOG: in the background, a client connection to HOST:9000 (an upload sink) that
# sends 64 KiB every 50 ms for SECONDS, then compares the sink's answer; its status says whether the sink saw
# every byte (1: it did not, or the connection broke: a 3 s socket timeout). Sets LAB_LAST_PID.
lab_slow_upload() {
    cat > "$LAB_TMP/slow_upload.py" <<'PY'
import hashlib, socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
chunk = bytes(range(256)) * 256
h, n = hashlib.sha256(), 0
try:
    s = socket.create_connection((host, 9000), timeout=3)
    end = time.time() + seconds
    while time.time() < end:
        s.sendall(chunk); h.update(chunk); n += len(chunk)
        time.sleep(0.05)
    s.shutdown(socket.SHUT_WR)
    answer = b""
    while True:
        data = s.recv(4096)
        if not data:
            break
        answer += data
except OSError as e:
    print("broken after %d bytes: %r" % (n, e)); sys.exit(1)
print("sent %d bytes, the sink saw %s" % (n, answer.decode()))
sys.exit(0 if answer.decode() == "%d %s" % (n, h.hexdigest()) else 1)
PY
    lab_spawn "${P}c" "$3" timeout $(( ${2%.*} + 20 )) "$LAB_PYTHON" "$LAB_TMP/slow_upload.py" "$1" "$2"
}

# offload_restart_check CONFIG HOST: a 4-second upload to HOST:9000 while nfqlb stops and starts again under
# the same rules: the kernel carries it through, and the new nfqlb counts it among the connections it found.
# restart_check CONFIG HOST: the Swift path across a restart (`--state-file`). A slow upload to HOST:9000 (a
# chunk every 50 ms for 5 s) and a UDP flow to HOST:53 (a datagram every 100 ms, one socket) run while nfqlb is
# stopped (SIGTERM: it saves its connections) and started again with the same config (it takes them back).
# Required: the upload arrives whole, without a reset; the flow's answers all come from one real server and go
# on after the restart; the new nfqlb restored at least 2 connections. Prints the gap (SIGTERM to the new
# queue bound) and what was lost meanwhile. With NFQLB_NEXT=BINARY the restart is an upgrade to that build.
restart_check() {
    local config=$1 host=$2 upload_pid udp_pid status=0 t0 t1 restored
    lab_slow_upload "$host" 5 "$LAB_TMP/restart-upload.log"
    upload_pid=$LAB_LAST_PID
    cat > "$LAB_TMP/udp_flow.py" <<'PY'
import socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, 53))
s.settimeout(0.09)
servers, answered, sent, last = {}, 0, 0, 0.0
end = time.time() + seconds
while time.time() < end:
    s.send(b"flow%d" % sent); sent += 1
    try:
        data = s.recv(2048)
        name = data.decode().partition(":")[0]
        servers[name] = servers.get(name, 0) + 1
        answered += 1; last = time.time()
    except socket.timeout:
        pass
    time.sleep(0.1)
print("udp flow: %d sent, %d answered, servers %s, last answer %.1f s before the end"
      % (sent, answered, ",".join(sorted(servers)), end - last))
sys.exit(0 if len(servers) == 1 and end - last < 1.0 else 1)
PY
    lab_spawn "${P}c" "$LAB_TMP/restart-udp.log" timeout 20 "$LAB_PYTHON" "$LAB_TMP/udp_flow.py" "$host" 6
    udp_pid=$LAB_LAST_PID
    sleep 1.5
    t0=$(date +%s.%N)
    nfqlb_stop
    cp "$NFQLB_STATS" "$LAB_TMP/stats-before-restart"
    if [ -n "${NFQLB_NEXT:-}" ]; then
        # An upgrade: another build of nfqlb takes the connections back.
        NFQLB=$NFQLB_NEXT
        echo "upgrade: restarted as $NFQLB_NEXT"
    fi
    NFQLB_SETUP=keep nfqlb_start "$config"
    t1=$(date +%s.%N)
    wait "$upload_pid" || status=$?
    lab_forget_pid "$upload_pid"
    [ "$status" = 0 ] || fail "restart: the upload through the VIP broke: $(cat "$LAB_TMP/restart-upload.log")"
    wait "$udp_pid" || status=$?
    lab_forget_pid "$udp_pid"
    [ "$status" = 0 ] || fail "restart: the UDP flow moved or stopped: $(cat "$LAB_TMP/restart-udp.log")"
    restored=$(grep 'state restored' "$LAB_TMP/nfqlb.out" | tail -n 1 | grep -o ' connections=[0-9]*' | cut -d= -f2 || true)
    [ "${restored:-0}" -ge 2 ] || fail "restart: the new nfqlb restored no connections: $(grep -i state "$LAB_TMP/nfqlb.out")"
    echo "restart: gap $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s; $(cat "$LAB_TMP/restart-upload.log"); $(cat "$LAB_TMP/restart-udp.log"); $restored connections restored"
    pass "restart: the upload and the UDP flow went on through a restart of nfqlb"
}

offload_restart_check() {
    local config=$1 host=$2 pid status=0 existing
    lab_slow_upload "$host" 4 "$LAB_TMP/slow.log"
    pid=$LAB_LAST_PID
    sleep 1
    nfqlb_stop
    NFQLB_SETUP=keep nfqlb_start "$config"
    wait "$pid" || status=$?
    lab_forget_pid "$pid"
    [ "$status" = 0 ] || fail "restart: the upload through the VIP broke: $(cat "$LAB_TMP/slow.log")"
    existing=$(grep -o 'existing=[0-9]*' "$LAB_TMP/nfqlb.out" | tail -n 1 | cut -d= -f2)
    [ "${existing:-0}" -ge 1 ] || fail "restart: the new nfqlb found no existing connection ($(grep conntrack "$LAB_TMP/nfqlb.out"))"
    echo "restart: $(cat "$LAB_TMP/slow.log"); the new nfqlb found $existing existing connections"
    pass "offload: a restart of nfqlb keeps offloaded connections"
}

# offload_drain_check RUNNING ONLY_THIRD WITHOUT_THIRD HOST THIRD: with ONLY_THIRD applied (r3 the only real
# server of the port 9000 service with weight), a 12-second upload goes to r3 (THIRD: its endpoint as
# `nfqlb conntrack list` prints it); WITHOUT_THIRD removes r3 with a 2-second drain. When the drain ends nfqlb
# deletes r3's kernel connections: the upload breaks, and none of them is listed any more.
offload_drain_check() {
    local running=$1 only_third=$2 without_third=$3 host=$4 third=$5 pid status=0 _ deleted left
    nfqlb_reload "$running" "$only_third"
    lab_slow_upload "$host" 12 "$LAB_TMP/slow.log"
    pid=$LAB_LAST_PID
    sleep 1
    nfqlb_reload "$running" "$without_third"
    wait "$pid" || status=$?
    lab_forget_pid "$pid"
    [ "$status" != 0 ] || fail "drain: the upload to the removed real server went on after its drain: $(cat "$LAB_TMP/slow.log")"
    for _ in $(seq 30); do
        deleted=$(stat_value offload_connections_deleted)
        [ "${deleted:-0}" -ge 1 ] && break
        sleep 0.2
    done
    left=$(in_ns "${P}b" "$NFQLB" conntrack list --config "$only_third" | awk -v r="$third" 'NR > 1 && $5 == r' | wc -l)
    echo "drain: upload to $third $(cat "$LAB_TMP/slow.log"); $deleted kernel connections deleted, $left of $third left"
    [ "${deleted:-0}" -ge 1 ] && [ "$left" = 0 ] || fail "drain: kernel connections of $third not deleted"
    OFFLOAD_DRAINED=1
    pass "offload: the drain's end deleted the removed real server's kernel connections"
}

# offload_cleanup_check CONFIG: after `iptables-setup.sh down`, no kernel connection of CONFIG's services is left.
offload_cleanup_check() {
    local list
    list=$(in_ns "${P}b" "$NFQLB" conntrack list --config "$1") || fail "nfqlb conntrack list failed"
    [ "$(wc -l <<<"$list")" = 1 ] || fail "kernel connections left after down: $list"
    echo "cleanup: no kernel connection of nfqlb's left"
}
