#!/usr/bin/env bash
# End-to-end test of the real-server lifecycle on a running nfqlb (NAT, topology: see lib.sh): real server r1
# is set to weight 0, then removed from the config with `drain: 30`, each by rewriting the config file and
# sending SIGHUP, while a client keeps
#   - 6 long TCP connections (an echo service on :7000, 2 per server), one line every 100 ms each;
#   - a stream of short TCP connections (HTTP GET /whoami on :80) from a pool of 40 fixed source ports, so
#     that new SYNs keep reusing the tuples of connections the balancer still tracks (TIME_WAIT), also to r1;
#   - 3 UDP flows (one socket each, one per server) on :53, one datagram every 100 ms each.
#
# Usage: NFQLB=/abs/path/to/nfqlb Tests/e2e/drain.sh     (root)
#
# Requires, and prints the lines Tests/QueueBalancerTests/EndToEndTests.swift looks for:
#   long connections: 6 intact, 2 to r1      every echo came back from the connection's own server, in
#                                            order, through weight 0 and removal; all 6 closed cleanly
#   short connections after weight 0: r1=0   no new connection reached r1 once a change was applied
#   connect times: ... max under 900 ms      no connect waited for a SYN retransmission (1 s)
#   udp: the r1 flow moved within 1 datagram the first datagram after the removal was answered by r2/r3
#   reloads applied: 2
# After 2 s, a broken config (an unknown key) is sent first: it must be refused with its file:line and
# reason, and traffic must go on undisturbed.
#   checksum errors: client +0 r1 +0 r2 +0 r3 +0 balancer +0
#   cleanup: no rules left
# and that nfqlb dropped nothing (dropped_* = 0) and its queue drained.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
lab_unmask_signals "$@"

[ -n "${NFQLB:-}" ] || fail "set NFQLB to the absolute path of the nfqlb binary"
[[ $NFQLB == /* ]] && [ -x "$NFQLB" ] || fail "NFQLB=$NFQLB is not an executable absolute path"
export NFQLB

lab_init "nd$$x"

lab_extra_teardown() {
    if [ "$LAB_EXIT_STATUS" != 0 ] && [ -n "$LAB_TMP" ]; then
        {
            echo "--- nfqlb log (last 30 lines)"
            tail -n 30 "$LAB_TMP/nfqlb.out" 2>/dev/null
            echo "--- nfqlb stats (non-zero)"
            grep -v ' 0$' "$NFQLB_STATS" 2>/dev/null || echo "(no stats file)"
        } >&2
    fi
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$LAB_ROOT/scripts/iptables-setup.sh" down >/dev/null 2>&1; fi
}

lab_nat_up
lab_start_http_servers
lab_start_udp_echo

lab_start_line_echo
pass "lab up: client ${P}c, balancer ${P}b, real servers ${P}r1..3 (HTTP :8080, UDP :5353, line echo :7000)"

# write_config FILE R1_LINE: three NAT services over r1..r3; R1_LINE is r1's entry (with its port and weight)
# or empty to leave r1 out.
write_config() {
    local file=$1 r1=$2 port service
    {
        echo "queues: [0]"
        echo "services:"
        for service in "80 tcp 8080" "7000 tcp 7000" "53 udp 5353"; do
            set -- $service
            echo "  - { vip: 203.0.113.10, port: $1, protocol: $2, mode: nat, scheduler: rr, drain: 30,"
            echo "      reals: ["
            [ -n "$r1" ] && echo "        { address: 198.51.100.11, port: $3, weight: $r1 },"
            echo "        { address: 198.51.100.12, port: $3 }, { address: 198.51.100.13, port: $3 } ] }"
        done
    } > "$file"
}
config=$LAB_TMP/nfqlb.yaml
write_config "$config" 1
write_config "$LAB_TMP/weight0.yaml" 0
write_config "$LAB_TMP/removed.yaml" ""
"$NFQLB" check --config "$LAB_TMP/weight0.yaml" >/dev/null || fail "weight-0 config refused by nfqlb check"
"$NFQLB" check --config "$LAB_TMP/removed.yaml" >/dev/null || fail "removal config refused by nfqlb check"

csum_snapshot
nfqlb_start "$config"
pass "nfqlb running (PID $NFQLB_PID)"

# The client: one process doing everything, so that every time is measured on one clock. It changes the
# config itself (copy + SIGHUP) and waits for nfqlb's log to confirm each change before relying on it.
cat > "$LAB_TMP/client.py" <<'PY'
import os, shutil, signal, socket, sys, threading, time

nfqlb_pid, config, weight0, removed, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
VIP = "203.0.113.10"
deadline = time.monotonic() + 60          # the whole run is bounded
problems = []
lock = threading.Lock()
def problem(text):
    with lock:
        problems.append(text)

# Long connections: 6 at the start; rr gives 2 to each server.
class Long(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.create_connection((VIP, 7000), timeout=3)
        self.file = self.sock.makefile("rwb")
        self.file.write(b"hello\n"); self.file.flush()
        self.server = self.file.readline().split(b":")[0].decode()
        self.sent = 1
        self.stop = threading.Event()
        self.ok = True
    def run(self):
        while not self.stop.is_set() and time.monotonic() < deadline:
            line = b"line %d\n" % self.sent
            try:
                self.file.write(line); self.file.flush()
                answer = self.file.readline()
            except OSError as e:
                answer = repr(e).encode()
            self.sent += 1
            if answer != self.server.encode() + b":" + line:
                self.ok = False
                problem("long connection to %s: sent %r, got %r" % (self.server, line, answer))
                return
            time.sleep(0.1)
    def close(self):
        self.stop.set(); self.join(5)
        try:
            self.sock.shutdown(socket.SHUT_WR)
            rest = self.file.read()          # the server closes after our FIN: clean end, nothing left over
            self.sock.close()
            return self.ok and rest == b""
        except OSError as e:
            problem("closing long connection to %s: %r" % (self.server, e))
            return False

longs = [Long() for _ in range(6)]
for l in longs: l.start()

# UDP flows: one socket each, 3 at the start (rr: one per server).
class Flow:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2)
        self.n = 0
        self.server = self.ask()
    def ask(self):
        self.n += 1
        payload = b"d%d" % self.n
        self.sock.sendto(payload, (VIP, 53))
        try:
            data, peer = self.sock.recvfrom(2048)
        except socket.timeout:
            problem("udp datagram %d: no answer within 2 s" % self.n)
            return None
        name, _, echoed = data.partition(b":")
        if echoed != payload or peer != (VIP, 53):
            problem("udp: bad answer %r from %r" % (data, peer))
        return name.decode()
flows = [Flow() for _ in range(3)]

# Short connections from a pool of fixed source ports (SO_REUSEADDR): each port is reused every ~40
# connections, while the balancer still tracks its previous connection (TIME_WAIT, 120 s).
pool = list(range(42000, 42040))
connect_times, short_servers = [], []
def short(phase, index):
    port = pool[index % len(pool)]
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(5)
    try:
        s.bind(("192.0.2.2", port))
        t0 = time.monotonic()
        s.connect((VIP, 80))
        connect_times.append(time.monotonic() - t0)
        s.sendall(b"GET /whoami HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk: break
            data += chunk
        server = data.rsplit(b"\n", 2)[-2].decode() if data.count(b"\n") >= 2 else "?"
        short_servers.append((phase, server))
    except OSError as e:
        problem("short connection %d (port %d, %s): %r" % (index, port, phase, e))
    finally:
        s.close()

def reload(path, applied):
    shutil.copyfile(path, config)
    os.kill(nfqlb_pid, signal.SIGHUP)
    while time.monotonic() < deadline:
        with open(log, errors="replace") as f:
            if f.read().count("configuration changed") >= applied: return
        time.sleep(0.02)
    sys.exit("reload %d not applied within the deadline" % applied)

count = 0
def phase(name, seconds):
    global count
    end = time.monotonic() + seconds
    while time.monotonic() < min(end, deadline):
        short(name, count); count += 1
        for f in flows:
            server = f.ask()
            if name != "removed" and server != f.server:
                problem("udp flow of %s moved to %s during %s" % (f.server, server, name))
        time.sleep(0.02)

phase("all", 2)
# A broken config: refused with its line and reason, the running one kept (traffic goes on below).
with open(config, "a") as f: f.write("bogus-key: 1\n")
os.kill(nfqlb_pid, signal.SIGHUP)
while time.monotonic() < deadline:
    with open(log, errors="replace") as f:
        refusal = [l for l in f if "configuration refused" in l]
    if refusal: break
    time.sleep(0.02)
print("refused: " + (refusal[0].strip() if refusal else "nothing"))
phase("all", 1)
r1_flow = next(f for f in flows if f.server == "r1")
reload(weight0, 1)
phase("weight0", 3)
reload(removed, 2)
# The first datagram of r1's flow after the removal must already be answered by another server.
first = r1_flow.ask()
moved = first in ("r2", "r3")
for f in flows:
    if f is not r1_flow and f.ask() != f.server: problem("udp flow of %s moved at the removal" % f.server)
phase("removed", 3)
intact = [l.close() for l in longs]

times = sorted(connect_times)
print("long connections: %d intact, %d to r1" % (sum(intact), sum(1 for l in longs if l.server == "r1")))
print("long lines echoed: %d" % sum(l.sent for l in longs))
after = [s for p, s in short_servers if p != "all"]
print("short connections: %d, %d after weight 0" % (len(short_servers), len(after)))
print("short connections after weight 0: r1=%d r2=%d r3=%d" % tuple(after.count(r) for r in ("r1", "r2", "r3")))
print("short connections before: r1=%d" % sum(1 for p, s in short_servers if p == "all" and s == "r1"))
print("connect times: n=%d median %.1f ms p99 %.1f ms max %.1f ms" % (
    len(times), 1000 * times[len(times) // 2], 1000 * times[int(len(times) * 0.99)], 1000 * times[-1]))
if times[-1] < 0.9: print("connect times: max under 900 ms")
print("udp: the r1 flow moved within 1 datagram" if moved else "udp: first datagram after removal answered by %s" % first)
for p in problems[:10]: print("problem:", p)
sys.exit(1 if problems else 0)
PY

out=$(in_ns "${P}c" "$LAB_PYTHON" "$LAB_TMP/client.py" "$NFQLB_PID" "$config" "$LAB_TMP/weight0.yaml" \
      "$LAB_TMP/removed.yaml" "$LAB_TMP/nfqlb.out" 2>&1) || { echo "$out"; fail "client reported problems"; }
echo "$out"
grep -q "^long connections: 6 intact, 2 to r1$" <<<"$out" || fail "long connections not all intact"
grep -q "^short connections after weight 0: r1=0 " <<<"$out" || fail "a new connection reached r1 after weight 0"
grep -q "^connect times: max under 900 ms$" <<<"$out" || fail "a connect waited for a SYN retransmission"
grep -q "^udp: the r1 flow moved within 1 datagram$" <<<"$out" || fail "the UDP flow of r1 did not move at once"
applied=$(grep -c "configuration changed" "$LAB_TMP/nfqlb.out" || true)
echo "reloads applied: $applied"
[ "$applied" = 2 ] || fail "nfqlb applied $applied config changes, want 2"
grep -q "^refused: .*nfqlb.yaml:[0-9]*: unknown key 'bogus-key'" <<<"$out" || fail "the broken config was not refused with its line"
refusals=$(grep -c "configuration refused" "$LAB_TMP/nfqlb.out" || true)
[ "$refusals" = 1 ] || fail "nfqlb refused $refusals configs, want only the broken one: $(grep refused "$LAB_TMP/nfqlb.out")"

nfqlb_stop
echo "stats: $(grep -v ' 0$' "$NFQLB_STATS" | tr '\n' ' ')"
for counter in dropped_malformed dropped_no_connection dropped_no_real_server dropped_table_full dropped_conflict \
               dropped_real_server_removed dropped_verdict_send kernel_queue_dropped kernel_user_dropped; do
    value=$(stat_value "$counter")
    [ "$value" = 0 ] || fail "nfqlb counter $counter = '$value' (want 0)"
done
csum_check
rules_cleanup_check
pass "drain: long connections intact, new ones avoid r1, no SYN waits, UDP moved at once, nothing dropped"
