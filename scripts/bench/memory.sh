#!/usr/bin/env bash
# Memory of a running nfqlb with many tracked connections: the resident size of `nfqlb run` (NAT, one queue,
# max-connections 1,048,576) before and after a client sends N SYNs from distinct endpoints (192.0.2.0/24,
# ports 1024 and up) to the VIP. The real server 198.51.100.99 does not exist, so nothing answers and every
# connection stays tracked (SYN_RECV, 60 s) while the size is read. Also the table's own figure from
# `nfqlb-bench memory`.
#
# Usage (root): scripts/bench/memory.sh [N=1000000]   (NFQLB=binary, else the release build; bounded: 120 s
# of sending at most)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export LAB_FAMILY=4
source "$root/Tests/e2e/lib.sh"
lab_unmask_signals "$@"
count=${1:-1000000}
[ "$count" -ge 1 ] && [ "$count" -le 1048576 ] || fail "N 1..1048576"
if [ -z "${NFQLB:-}" ]; then
    (cd "$root" && swift build -c release --product nfqlb >/dev/null)
    NFQLB=$(cd "$root" && swift build -c release --show-bin-path)/nfqlb
fi
export NFQLB
lab_init "nqm$$"
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    [ -e "/run/netns/${P}b" ] && in_ns "${P}b" "$LAB_ROOT/scripts/iptables-setup.sh" down >/dev/null 2>&1
    return 0
}
lab_nat_up
cat > "$LAB_TMP/memory.yaml" <<YAML
queues: [0]
max-connections: 1048576
queue-length: 65536
services:
  - { vip: $LAB_VIP, port: 80, protocol: tcp, mode: nat, scheduler: rr, reals: [ { address: 198.51.100.99 } ] }
YAML
nfqlb_start "$LAB_TMP/memory.yaml" >/dev/null
rss() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$NFQLB_PID/status"; }
sleep 1
before=$(rss)
# SYNs through a raw socket, paced in bursts; stops when N are sent or after 120 s.
in_ns "${P}c" timeout 130 "$LAB_PYTHON" - "$count" "$LAB_VIP" <<'PY'
import socket, struct, sys, time
count, vip = int(sys.argv[1]), socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
start = time.time()
for n in range(count):
    source = bytes([192, 0, 2, n // 4000 % 256])
    port = 1024 + n % 4000
    tcp = struct.pack("!HHIIBBHHH", port, 80, n, 0, 0x50, 0x02, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, source, vip)
    s.sendto(ip + tcp, (sys.argv[2], 0))
    if n % 2000 == 1999:
        time.sleep(0.01)            # let the queue drain: about 150,000 SYNs a second at most
    if time.time() - start > 120:
        break
print("sent %d SYNs in %.1f s" % (n + 1, time.time() - start))
PY
sleep 2
after=$(rss)
tracked=$(stat_value connections_active)
echo "nfqlb run: resident $((before / 1048576)) MiB before, $((after / 1048576)) MiB with ${tracked:-?} tracked connections: $(( (after - before) / ${tracked:-1} )) bytes per connection beyond the start"
echo "nfqlb stats: $(grep -E '^(received|forwarded|connections_created|dropped_table_full|kernel_queue_dropped|kernel_user_dropped) ' "$NFQLB_STATS" | tr '\n' ' ')"
nfqlb_stop
bench=$(dirname "$NFQLB")/nfqlb-bench
if [ -x "$bench" ]; then "$bench" memory "$count"; fi
