#!/usr/bin/env bash
# One-command demo of nfqlb for a fresh Debian machine, as root:
#   - installs the packages it needs (only the missing ones),
#   - builds nfqlb in release mode (skipped when NFQLB names an existing binary),
#   - brings up a lab of network namespaces (Tests/e2e/lib.sh), runs nfqlb in LVS NAT mode with
#     round robin over three real servers, sends a few HTTP requests through the virtual IP,
#   - shows nfqlb's counters and tears everything down (also on Ctrl-C or error).
# Nothing outside the lab's own namespaces is configured.
#
# Usage: sudo scripts/demo.sh            (env: NFQLB=/path/to/nfqlb to skip the build; DEMO_REQUESTS=6)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=../Tests/e2e/lib.sh
source "$root/Tests/e2e/lib.sh"
lab_unmask_signals "$@"
requests=${DEMO_REQUESTS:-6}

[ "$(id -u)" = 0 ] || fail "run me as root (the demo creates network namespaces): sudo $0"

say() { printf '\n== %s\n' "$*"; }

cat <<'TEXT'
nfqlb demo: a layer-4 load balancer (like LVS/IPVS in NAT mode) whose datapath is Linux NFQUEUE.

   client 192.0.2.2                balancer                                   real servers
   curl http://203.0.113.10/ ──►  raw PREROUTING: NFQUEUE ──► nfqlb           ┌─► r1 198.51.100.11:8080
   (the VIP 203.0.113.10 is        nfqlb picks a real server (round robin)  ├─► r2 198.51.100.12:8080
    routed to the balancer)        and rewrites dst VIP:80 -> RIP:8080 ─────┴─► r3 198.51.100.13:8080
                                   replies: src RIP:8080 -> VIP:80  ◄──── (servers route via the balancer)

Each box is a network namespace created for this demo and deleted at the end.
TEXT

say "Checking packages"
bash "$root/scripts/ensure-packages.sh"

if [ -n "${NFQLB:-}" ]; then
    [ -x "$NFQLB" ] || fail "NFQLB=$NFQLB is not executable"
    say "Using the nfqlb binary $NFQLB (build skipped)"
else
    command -v swift >/dev/null ||
        fail "the Swift toolchain is not installed (see https://www.swift.org/install/linux/), or set NFQLB"
    say "Building nfqlb (swift build -c release; the first build takes a few minutes)"
    (cd "$root" && swift build -c release)
    NFQLB=$(cd "$root" && swift build -c release --show-bin-path)/nfqlb
    [ -x "$NFQLB" ] || fail "build finished but $NFQLB is missing"
fi
export NFQLB

say "Bringing up the lab (namespaces nqdemo$$c, nqdemo$$b, nqdemo$$r1..3)"
LAB_BIG_BYTES=65536     # the demo does not need the e2e test's 5 MB file
lab_init "nqdemo$$"
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null 2>&1; fi
    echo "Lab torn down: namespaces deleted, processes stopped."
}
lab_nat_up
lab_start_http_servers
echo "three real servers answer GET /whoami with their name"

config=$LAB_TMP/demo.yaml
cat > "$config" <<'YAML'
queues: [0]
services:
  - name: web
    vip: 203.0.113.10
    port: 80
    protocol: tcp
    mode: nat
    scheduler: rr
    reals:
      - { address: 198.51.100.11, port: 8080, weight: 1 }
      - { address: 198.51.100.12, port: 8080, weight: 1 }
      - { address: 198.51.100.13, port: 8080, weight: 1 }
YAML
say "nfqlb configuration ($config)"
cat "$config"

say "Starting nfqlb in the balancer (iptables-setup.sh up, then nfqlb run)"
nfqlb_start "$config"
echo "rules in the balancer's raw table (packets for the VIP and the servers' replies go to queue 0):"
in_ns "${P}b" iptables -t raw -S NFQLB-PREROUTING | sed -e 's/ -m comment --comment "[^"]*"//' -e 's/^/    /'
echo "    (and PREROUTING jumps to NFQLB-PREROUTING first; CT --notrack keeps conntrack out of the way)"
echo "queue 0 is bound by nfqlb (PID $NFQLB_PID)"

say "Sending $requests requests from the client to http://203.0.113.10/whoami"
for i in $(seq "$requests"); do
    answer=$(in_ns "${P}c" curl -s --max-time 5 http://203.0.113.10/whoami) || answer="(no answer)"
    echo "request $i: answered by ${answer:-(empty)}"
done

say "Stopping nfqlb (SIGTERM) and showing its counters"
nfqlb_stop
cat <<'TEXT'
received = packets nfqlb got from the queue, forwarded = client->VIP packets rewritten to a real server,
replied = real-server replies rewritten back to come from the VIP, connections_created = scheduled connections.
TEXT
sed 's/^/    /' "$NFQLB_STATS"

say "Done"
