#!/usr/bin/env bash
# End-to-end: nfqlb (NAT, topology: see lib.sh) under a SYN flood from spoofed sources while a legitimate client
# goes on working, then a mix of malformed packets beside normal traffic.
#
#   flood     a raw-socket sender in the client namespace sends SYNs to the VIP from random sources in
#             192.0.2.10-250 and random ports, as fast as it can, for FLOOD_SECONDS (default 10; at most 5
#             million). nfqlb's table holds max-connections 65,536. Meanwhile the client keeps 5 established
#             connections to the line echo (a line every 100 ms each, every echo checked) and opens a new
#             connection every 20 ms (connect, one line, its echo, close; 3 s at most each), from 5 s before the
#             flood to 10 s after it. The config has `syn-queue: 1`: the flood fills the SYN queue, and the
#             established connections' packets keep queue 0 to themselves.
#   malformed for MALFORMED_SECONDS (default 30): packets written straight onto the client's link (AF_PACKET,
#             so the client's own stack fixes nothing), at the VIPs: the parser's kinds of bad packets that get
#             past the balancer's IP input checks (IPv4; IPv6: a routing header with segments left, AH, nine
#             extension headers, hop-by-hop not first, a first fragment), random bytes after a valid IP
#             header, and random TCP/UDP headers with valid checksums; the legitimate client goes on as above.
#
# Prints (EndToEndTests looks for the "ok:" lines; the figures go to the README):
#   flood: N SYNs in S s (R/s); table full: N; ...
#   legit during flood: OK of N (P%); after the flood: first success after T s, OK of N
#   long connections: 5 intact
#   nfqlb resident: A MiB before, B MiB after
#   malformed: N sent, nfqlb received R, every one counted (received = the sum of verdict counters)
# Usage: NFQLB=/abs/path/to/nfqlb Tests/e2e/flood.sh [flood|malformed|all]   (root; default all)
#   FLOOD_SYN_QUEUE=none leaves `syn-queue` out (SYNs share queue 0 with everything else).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
lab_unmask_signals "$@"
scenario=${1:-all}
flood_seconds=${FLOOD_SECONDS:-10}
malformed_seconds=${MALFORMED_SECONDS:-30}

[ -n "${NFQLB:-}" ] || fail "set NFQLB to the absolute path of the nfqlb binary"
[[ $NFQLB == /* ]] && [ -x "$NFQLB" ] || fail "NFQLB=$NFQLB is not an executable absolute path"
export NFQLB

lab_init "nf$$x"
lab_extra_teardown() {
    if [ "$LAB_EXIT_STATUS" != 0 ] && [ -n "$LAB_TMP" ]; then
        {
            echo "--- nfqlb log (last 30 lines)"; tail -n 30 "$LAB_TMP/nfqlb.out" 2>/dev/null
            echo "--- nfqlb stats (non-zero)"; grep -v ' 0$' "$NFQLB_STATS" 2>/dev/null || echo "(no stats file)"
        } >&2
    fi
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$LAB_ROOT/scripts/iptables-setup.sh" down >/dev/null 2>&1; fi
}

lab_nat_up
lab_start_line_echo
# The real servers answer the flood's SYNs too (SYN cookies keep their backlog open for the real client).
for i in 1 2 3; do in_ns "${P}r$i" sysctl -qw net.ipv4.tcp_syncookies=1 net.ipv4.tcp_max_syn_backlog=4096; done
cat > "$LAB_TMP/nfqlb.yaml" <<YAML
queues: [0]
$([ "${FLOOD_SYN_QUEUE:-1}" = none ] || echo "syn-queue: ${FLOOD_SYN_QUEUE:-1}")
max-connections: 65536
services:
  - { vip: 203.0.113.10, port: 7000, protocol: tcp, mode: nat, scheduler: wlc,
      reals: [ { address: 198.51.100.11, port: 7000 }, { address: 198.51.100.12, port: 7000 }, { address: 198.51.100.13, port: 7000 } ] }
  - { vip: 203.0.113.10, port: 53, protocol: udp, mode: nat, reals: [ { address: 198.51.100.11, port: 5353 } ] }
  - { vip: "2001:db8:f::10", port: 7000, protocol: tcp, mode: nat, reals: [ { address: "2001:db8:5::11", port: 7000 } ] }
YAML
nfqlb_start "$LAB_TMP/nfqlb.yaml"
rss() { awk '/^VmRSS/ { printf "%d", $2 / 1024 }' "/proc/$NFQLB_PID/status"; }

# The legitimate client: 5 long connections and a new connection every 20 ms for DURATION seconds; one JSON
# line per new connection (start time, ok, seconds), then a summary of the long connections.
cat > "$LAB_TMP/legit.py" <<'PY'
import json, socket, sys, threading, time
duration, out = float(sys.argv[1]), sys.argv[2]
vip = ("203.0.113.10", 7000)
end = time.time() + duration
broken = []
def long_connection(n):
    try:
        s = socket.create_connection(vip, 3)
        s.settimeout(3)
        f = s.makefile("rb")
        i = 0
        while time.time() < end:
            line = b"long%d-%d\n" % (n, i)
            s.sendall(line)
            answer = f.readline()
            if not answer.endswith(b":" + line):
                raise OSError("echo %r for %r" % (answer, line))
            i += 1
            time.sleep(0.1)
        s.close()
    except OSError as e:
        broken.append("%d: %s" % (n, e))
threads = [threading.Thread(target=long_connection, args=(n,)) for n in range(5)]
for t in threads: t.start()
with open(out, "w") as log:
    n = 0
    while time.time() < end:
        start = time.time()
        ok = False
        try:
            s = socket.create_connection(vip, 3)
            s.settimeout(3)
            s.sendall(b"short%d\n" % n)
            ok = s.makefile("rb").readline().endswith(b":short%d\n" % n)
            s.close()
        except OSError:
            pass
        log.write(json.dumps({"t": start, "ok": ok, "s": time.time() - start}) + "\n")
        n += 1
        time.sleep(max(0, 0.02 - (time.time() - start)))
for t in threads: t.join()
print("long connections: %d intact%s" % (5 - len(broken), "; broken: " + "; ".join(broken) if broken else ""))
PY

# flood: SYNs from random spoofed sources through a raw socket; prints the first and last send times.
cat > "$LAB_TMP/flood.py" <<'PY'
import random, socket, struct, sys, time
delay, seconds, limit = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
time.sleep(delay)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
vip = socket.inet_aton("203.0.113.10")
rnd = random.Random(7)
# Pre-built packets (the checksums do not matter to nfqlb's tracker; the real servers drop bad ones).
packets = []
for i in range(4096):
    source = bytes([192, 0, 2, rnd.randint(10, 250)])
    tcp = struct.pack("!HHIIBBHHH", rnd.randint(1024, 65535), 7000, rnd.getrandbits(32), 0, 0x50, 0x02, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, source, vip)
    packets.append(ip + tcp)
sent, start = 0, time.time()
stop = start + seconds
while sent < limit:
    for p in packets:
        # A new source port each round keeps every SYN a new tuple.
        p = p[:20] + struct.pack("!H", (struct.unpack("!H", p[20:22])[0] + sent // 4096) % 64512 + 1024) + p[22:]
        try:
            s.sendto(p, ("203.0.113.10", 0))
        except OSError:
            time.sleep(0.0005)
        sent += 1
    if time.time() >= stop:
        break
print("%f %f %d" % (start, time.time(), sent))
PY

flood_scenario() {
    local before after legit_pid flood_out
    before=$(rss)
    lab_spawn "${P}c" "$LAB_TMP/legit.out" timeout $((flood_seconds + 30)) "$LAB_PYTHON" "$LAB_TMP/legit.py" \
        $((flood_seconds + 15)) "$LAB_TMP/legit.jsonl"
    legit_pid=$LAB_LAST_PID
    flood_out=$(in_ns "${P}c" timeout $((flood_seconds + 20)) "$LAB_PYTHON" "$LAB_TMP/flood.py" 5 "$flood_seconds" 5000000)
    sleep 1.2
    local full active
    full=$(stat_value dropped_table_full); active=$(stat_value connections_active)
    wait "$legit_pid" || fail "the legitimate client failed: $(cat "$LAB_TMP/legit.out")"
    lab_forget_pid "$legit_pid"
    after=$(rss)
    kill -0 "$NFQLB_PID" 2>/dev/null || fail "nfqlb died during the flood"
    read -r flood_start flood_end flood_sent <<<"$flood_out"
    echo "flood: $(awk -v a="$flood_start" -v b="$flood_end" -v n="$flood_sent" 'BEGIN { printf "%d SYNs in %.1f s (%d/s)", n, b - a, n / (b - a) }'); table full (refused SYNs): ${full:-0}; tracked 1 s after: ${active:-?}; half-open evicted: $(stat_value connections_evicted || echo 0)"
    "$LAB_PYTHON" - "$LAB_TMP/legit.jsonl" "$flood_start" "$flood_end" <<'PY' | tee "$LAB_TMP/legit.summary"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
start, end = float(sys.argv[2]), float(sys.argv[3])
before = [r for r in rows if r["t"] < start]
during = [r for r in rows if start <= r["t"] < end]
after = [r for r in rows if r["t"] >= end]
first = next((r["t"] + r["s"] - end for r in after if r["ok"]), None)
late_fail = [r for r in after if not r["ok"] and r["t"] >= end + 2]
def pct(ok, n): return "%d of %d (%.0f%%)" % (ok, n, 100.0 * ok / n if n else 0)
print("legit before the flood: %s" % pct(sum(r["ok"] for r in before), len(before)))
print("legit during flood: %s; %d of them within 1 s (no SYN retransmission); slowest %.2f s"
      % (pct(sum(r["ok"] for r in during), len(during)), sum(r["ok"] and r["s"] < 1 for r in during), max([r["s"] for r in during] or [0])))
print("legit after the flood: first success %s after it ended; %s; failures from 2 s after: %d"
      % ("%.2f s" % first if first is not None else "never", pct(sum(r["ok"] for r in after), len(after)), len(late_fail)))
PY
    cat "$LAB_TMP/legit.out"
    echo "nfqlb resident: $before MiB before, $after MiB after"
    grep -q "long connections: 5 intact" "$LAB_TMP/legit.out" || fail "long connections broke during the flood"
    grep -q "legit before the flood: \([0-9]*\) of \1 " "$LAB_TMP/legit.summary" || fail "legitimate connections failed before the flood"
    grep -q "failures from 2 s after: 0$" "$LAB_TMP/legit.summary" || fail "legitimate connections still failed 2 s after the flood"
    [ $((after - before)) -lt 64 ] || fail "nfqlb grew by $((after - before)) MiB during the flood"
    pass "flood: nfqlb up, 5 long connections intact, new connections succeed again within 2 s, resident +$((after - before)) MiB"
}

# malformed: frames straight onto the client's link (AF_PACKET: the client's stack fixes nothing), at a bounded
# rate; prints how many were sent.
cat > "$LAB_TMP/malformed.py" <<'PY'
import random, socket, struct, sys, time
seconds, rate, dst_mac, src_mac = float(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
rnd = random.Random(11)
vip = socket.inet_aton("203.0.113.10")
def csum(data):
    if len(data) % 2: data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def ip(proto, body, options=b"", source=None, length=None):
    source = source or bytes([192, 0, 2, rnd.randint(10, 250)])
    ihl = 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, length or 4 * ihl + len(body), rnd.getrandbits(16), 0x4000, 64, proto, 0, source, vip) + options
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + body
def tcp(source, flags, options=b"", payload=b"", dport=7000):
    off = 5 + len(options) // 4
    seg = struct.pack("!HHIIBBHHH", rnd.randint(1024, 65535), dport, rnd.getrandbits(32), rnd.getrandbits(32),
                      off << 4, flags, rnd.getrandbits(16), 0, 0) + options + payload
    pseudo = source + vip + struct.pack("!BBH", 0, 6, len(seg))
    return seg[:16] + struct.pack("!H", csum(pseudo + seg)) + seg[18:]
def kinds():
    source = bytes([192, 0, 2, rnd.randint(10, 250)])
    k = rnd.randrange(9)
    if k == 0:   # UDP length beyond the packet
        return ip(17, struct.pack("!HHHH", rnd.randint(1024, 65535), 53, 200, 0) + b"x" * 10, source=source)
    if k == 1:   # UDP length below its own header
        return ip(17, struct.pack("!HHHH", rnd.randint(1024, 65535), 53, rnd.randint(0, 7), 0) + b"x" * 4, source=source)
    if k == 2:   # TCP: random flags, random options, valid checksum
        opts = bytes(rnd.getrandbits(8) for _ in range(4 * rnd.randint(0, 10)))
        return ip(6, tcp(source, rnd.getrandbits(8), opts, bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 64)))), source=source)
    if k == 3:   # ICMP "unreachable" to the VIP quoting random bytes
        quoted = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 80)))
        body = struct.pack("!BBHI", 3, rnd.randint(0, 15), 0, 0) + quoted
        body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
        return ip(1, body, source=source)
    if k == 4:   # ICMP error quoting a reply from the VIP, cut at random
        quoted = ip(6, tcp(vip, 0x12, dport=40000))[: rnd.randint(0, 40)]
        body = struct.pack("!BBHI", 3, 4, 0, 1400) + quoted
        body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
        return ip(1, body, source=source)
    if k == 5:   # IPv4 options (NOPs and an end), then TCP
        return ip(6, tcp(source, 0x02), options=b"\x01" * 3 + b"\x00", source=source)
    if k == 6:   # random bytes after the UDP ports of the DNS service
        return ip(17, struct.pack("!HH", rnd.randint(1024, 65535), 53) + bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 100))), source=source)
    if k == 7:   # an IPv4 fragment (not the first) of a TCP packet to the service
        p = bytearray(ip(6, tcp(source, 0x18, payload=b"y" * 40), source=source))
        p[6:8] = struct.pack("!H", 0x2000 | rnd.randint(1, 100)); p[10:12] = b"\0\0"; p[10:12] = struct.pack("!H", csum(bytes(p[:20])))
        return bytes(p)
    return bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 100)))   # not even an IP header
vip6 = socket.inet_pton(socket.AF_INET6, "2001:db8:f::10")
def tcp6(source, flags=0x02):
    seg = struct.pack("!HHIIBBHHH", rnd.randint(1024, 65535), 7000, rnd.getrandbits(32), 0, 0x50, flags, 65535, 0, 0)
    pseudo = source + vip6 + struct.pack("!IxxxB", len(seg), 6)
    return seg[:16] + struct.pack("!H", csum(pseudo + seg)) + seg[18:]
def ext(next_header, body):   # an extension header padded to 8 bytes
    raw = bytes([next_header, 0]) + body
    raw += b"\0" * (-len(raw) % 8)
    return bytes([raw[0], len(raw) // 8 - 1]) + raw[2:]
def kinds6():
    source = socket.inet_pton(socket.AF_INET6, "2001:db8:c::%x" % rnd.randint(0x10, 0xfff0))
    k = rnd.randrange(6)
    if k == 0:   # a routing header with segments left (nfqlb does not follow source routes)
        first, headers = 43, bytes([6, 2, 0, 1, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, "2001:db8:f::10")
    elif k == 1: # AH in front of TCP
        first, headers = 51, bytes([6, 4, 0, 0]) + b"\0" * 20
    elif k == 2: # nine destination-options headers
        first, headers = 60, b"".join(ext(60 if i < 8 else 6, b"\x01\x04\0\0\0\0") for i in range(9))
    elif k == 3: # hop-by-hop after another header (it must come first)
        first, headers = 60, ext(0, b"\x01\x04\0\0\0\0") + ext(6, b"\x01\x04\0\0\0\0")
    elif k == 4: # a first fragment that is not the whole packet
        first, headers = 44, bytes([6, 0, 0, 1]) + struct.pack("!I", rnd.getrandbits(32))
    else:        # TCP, random flags, valid checksum
        return struct.pack("!IHBB16s16s", 0x60000000, 20, 6, 64, source, vip6) + tcp6(source, rnd.getrandbits(8))
    body = headers + tcp6(source)
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), first, 64, source, vip6) + body
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
sent, start = 0, time.time()
while time.time() - start < seconds:
    for _ in range(rate // 100):
        if rnd.randrange(4) == 0:
            s.send(dst_mac + src_mac + b"\x86\xdd" + kinds6())
        else:
            s.send(dst_mac + src_mac + b"\x08\x00" + kinds())
        sent += 1
    time.sleep(max(0, start + sent / rate - time.time()))
print(sent)
PY

malformed_scenario() {
    local legit_pid sent dst src
    dst=$(ip -n "${P}b" -j link show client0 | "$LAB_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[0]["address"].replace(":", ""))')
    src=$(ip -n "${P}c" -j link show eth0 | "$LAB_PYTHON" -c 'import json,sys; print(json.load(sys.stdin)[0]["address"].replace(":", ""))')
    lab_spawn "${P}c" "$LAB_TMP/legit-m.out" timeout $((malformed_seconds + 20)) "$LAB_PYTHON" "$LAB_TMP/legit.py" \
        $((malformed_seconds + 2)) "$LAB_TMP/legit-m.jsonl"
    legit_pid=$LAB_LAST_PID
    sent=$(in_ns "${P}c" timeout $((malformed_seconds + 10)) "$LAB_PYTHON" "$LAB_TMP/malformed.py" "$malformed_seconds" 20000 "$dst" "$src")
    wait "$legit_pid" || fail "the legitimate client failed: $(cat "$LAB_TMP/legit-m.out")"
    lab_forget_pid "$legit_pid"
    kill -0 "$NFQLB_PID" 2>/dev/null || fail "nfqlb died under malformed packets"
    cat "$LAB_TMP/legit-m.out"
    grep -q "long connections: 5 intact" "$LAB_TMP/legit-m.out" || fail "long connections broke under malformed packets"
    local ok total
    read -r ok total <<<"$("$LAB_PYTHON" -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(sum(x["ok"] for x in r), len(r))' "$LAB_TMP/legit-m.jsonl")"
    echo "legit beside malformed packets: $ok of $total new connections"
    [ "$ok" = "$total" ] && [ "$total" -gt 100 ] || fail "legitimate connections failed beside malformed packets"
    echo "malformed: $sent frames sent in $malformed_seconds s"
}

# Every packet nfqlb received has exactly one verdict counter (the README's table); read after nfqlb stopped,
# from the final stats.
verdict_check() {
    local received sum
    received=$(stat_value received)
    sum=$(awk '$1 ~ /^(forwarded|replied|offloaded|dropped_(malformed|fragment|unsupported_headers|no_connection|no_real_server|table_full|conflict|ports_exhausted|real_server_removed|tunnel_header|tunnel_source|tunnel_spoofed)|tunnel_too_big|decapsulated|icmp_forwarded|icmp_replied|passed_(icmp|other_protocol|unmatched))$/ { s += $2 } END { print s + 0 }' "$NFQLB_STATS")
    echo "nfqlb received $received packets, verdict counters sum to $sum: $(grep -E '^(dropped_malformed|dropped_fragment|dropped_unsupported_headers|dropped_no_connection|passed_icmp|passed_unmatched|icmp_forwarded|dropped_table_full) ' "$NFQLB_STATS" | tr '\n' ' ')"
    [ "$received" = "$sum" ] && [ "$received" -gt 0 ] || fail "received $received but the verdict counters sum to $sum"
    [ "$(stat_value dropped_malformed)" -gt 0 ] && [ "$(stat_value dropped_unsupported_headers)" -gt 0 ] ||
        fail "no malformed packet (or no IPv6 one) reached nfqlb: the test sent nothing it could count"
    pass "every packet counted once; nfqlb stopped cleanly"
}

case $scenario in
    flood) flood_scenario ;;
    malformed) malformed_scenario ;;
    all) flood_scenario; malformed_scenario ;;
    *) fail "unknown scenario '$scenario' (flood|malformed|all)" ;;
esac
nfqlb_stop
[ "$scenario" = flood ] || verdict_check
rules_cleanup_check
