#!/usr/bin/env bash
# End-to-end test of nfqlb's live operations through the control socket, in the NAT lab of lib.sh: a running
# nfqlb is looked at and changed with `nfqlb list`, `real edit`, `service add|delete`, `reload`, `save`, and
# scraped on /metrics when it has a metrics listener.
#
# Usage: NFQLB=/abs/path/to/nfqlb Tests/e2e/control.sh   (root)
#
#   stats      12 requests (rr 1:1:1) after `nfqlb zero`: `nfqlb list -n --stats --exact` shows 4 connections
#              per real server, and its InPkts/OutPkts/InBytes/OutBytes equal what each real server's own
#              iptables counters saw on port 8080 (INPUT and OUTPUT)
#   quiesce    a rate-limited 5 MiB download; `nfqlb real edit -w 0` of its real server while it runs: the
#              download completes byte-identical, the next 10 requests all avoid that server, list says quiescent
#   service    `nfqlb service add` of 203.0.113.20:80: its rules appear and it answers without a restart;
#              `nfqlb service delete`: its rules go and it no longer answers
#   reload     a broken file: exit 2 with file:line, the running config keeps serving; the good file again:
#              applied, a live-added real server kept (the file does not define it)
#   save       `nfqlb save` of the running config is accepted by `nfqlb check`
#   access     as another user: refused by the socket's mode (0600), and, with the mode opened, by SO_PEERCRED
#
# Prints "ok: ..." lines and, for Tests/QueueBalancerTests/EndToEndTests.swift:
#   stats match: r1 conns=4 r2 conns=4 r3 conns=4 | quiesce: download intact, 10 new connections avoided rN
#   service add/delete: reachable, then gone with its rules | reload: broken file refused, good file applied
#   access: non-root refused | checksum errors: client +0 r1 +0 r2 +0 r3 +0 | cleanup: no rules left
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
lab_unmask_signals "$@"

[ -n "${NFQLB:-}" ] || fail "set NFQLB to the absolute path of the nfqlb binary"
[[ $NFQLB == /* ]] && [ -x "$NFQLB" ] || fail "NFQLB=$NFQLB is not an executable absolute path"
export NFQLB
setup=$LAB_ROOT/scripts/iptables-setup.sh
command -v setpriv >/dev/null || fail "setpriv not found (apt-get install util-linux)"
command -v jq >/dev/null || fail "jq not found (apt-get install jq)"

lab_init "ct$$x"

lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ "$LAB_EXIT_STATUS" != 0 ] && [ -n "$LAB_TMP" ]; then
        { echo "--- nfqlb log (last 30 lines)"; tail -n 30 "$LAB_TMP/nfqlb.out" 2>/dev/null; } >&2
    fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$setup" down >/dev/null 2>&1; fi
}

lab_nat_up
lab_start_http_servers
pass "lab up: client ${P}c, balancer ${P}b, real servers ${P}r1..3"

config=$LAB_TMP/lb.yaml
write_config() {
    cat > "$1" <<YAML
queues: [0]
metrics-listen: 127.0.0.1:9469
services:
  - vip: $LAB_VIP
    port: 80
    protocol: tcp
    mode: nat
    scheduler: rr
    reals:
      - { address: ${LAB_RIP[0]}, port: 8080 }
      - { address: ${LAB_RIP[1]}, port: 8080 }
      - { address: ${LAB_RIP[2]}, port: 8080 }
YAML
}
write_config "$config"

# nfqlb_ctl ARGS...: the nfqlb CLI in the balancer's namespace (the control socket's default path there).
nfqlb_ctl() { in_ns "${P}b" "$NFQLB" "$@"; }

# whoami HOST: one request through HOST; prints r1, r2 or r3 (empty on failure).
whoami() { in_ns "${P}c" curl -s --max-time 3 "http://$1/whoami" || true; }

csum_snapshot
sock_dir=/run/nfqlb/netns-$(in_ns "${P}b" stat -L -c %i /proc/self/ns/net)
# A read-only socket for monitoring, usable by the group nogroup.
NFQLB_ARGS="--read-only-socket $sock_dir/nfqlb-ro.sock --read-only-group nogroup" nfqlb_start "$config"
for _ in $(seq 30); do [ -S "$sock_dir/nfqlb.sock" ] && break; sleep 0.1; done   # opened once the queue is bound
[ -S "$sock_dir/nfqlb.sock" ] || fail "no control socket at $sock_dir/nfqlb.sock"
[ "$(stat -c %a "$sock_dir/nfqlb.sock")" = 600 ] || fail "control socket mode $(stat -c %a "$sock_dir/nfqlb.sock"), want 600"
pass "control socket at $sock_dir/nfqlb.sock, mode 0600"

# --- stats: nfqlb's per-real-server counters against each real server's own iptables counters
for i in 1 2 3; do
    in_ns "${P}r$i" iptables -w -A INPUT -p tcp --dport 8080 -i eth0
    in_ns "${P}r$i" iptables -w -A OUTPUT -p tcp --sport 8080 -o eth0
done
nfqlb_ctl zero >/dev/null
for _ in $(seq 12); do [ -n "$(whoami "$LAB_URL_HOST")" ] || fail "stats: a request through the VIP failed"; done
sleep 1   # the last ACKs and FINs of the closing connections
stats=$(nfqlb_ctl list -n --stats --exact --json)
nfqlb_ctl list -n --stats --exact
line="stats match:"
for i in 1 2 3; do
    real=$(jq -c --arg a "${LAB_RIP[i - 1]}" '.services[0].reals[] | select(.address == $a) | .stats' <<<"$stats")
    read -r in_pkts in_bytes < <(in_ns "${P}r$i" iptables -w -L INPUT -v -x -n | awk '/dpt:8080/ { print $1, $2 }')
    read -r out_pkts out_bytes < <(in_ns "${P}r$i" iptables -w -L OUTPUT -v -x -n | awk '/spt:8080/ { print $1, $2 }')
    want="{\"conns\":4,\"inbytes\":$in_bytes,\"inpkts\":$in_pkts,\"outbytes\":$out_bytes,\"outpkts\":$out_pkts}"
    [ "$real" = "$want" ] || fail "stats of r$i: nfqlb says $real, the real server counted $want"
    line="$line r$i conns=4"
done
echo "$line"
total=$(jq -c '.services[0].stats.conns' <<<"$stats")
[ "$total" = 12 ] || fail "stats: the service counts $total connections, want 12"
pass "list --stats: per real server exactly the connections, packets and bytes the real servers saw"

# --- metrics: /metrics scraped with curl says the same (no traffic before the zero: lifetime = since zero)
metrics=$(in_ns "${P}b" curl -s --fail --max-time 5 http://127.0.0.1:9469/metrics) || fail "metrics: GET /metrics failed"
# metric NAME REAL: the value of NAME for real server REAL:8080 of the port 80 service.
metric() {
    awk -v m="$1" -v r="remote_address=\"$2\"" 'index($0, m "{") == 1 && index($0, r) && index($0, "local_port=\"80\"") { print $NF }' <<<"$metrics"
}
for i in 1 2 3; do
    rip=${LAB_RIP[i - 1]}
    real=$(jq -c --arg a "$rip" '.services[0].reals[] | select(.address == $a) | .stats' <<<"$stats")
    scraped="{\"conns\":$(metric nfqlb_backend_connections_total "$rip"),\"inbytes\":$(metric nfqlb_backend_incoming_bytes_total "$rip"),\"inpkts\":$(metric nfqlb_backend_incoming_packets_total "$rip"),\"outbytes\":$(metric nfqlb_backend_outgoing_bytes_total "$rip"),\"outpkts\":$(metric nfqlb_backend_outgoing_packets_total "$rip")}"
    [ "$scraped" = "$real" ] || fail "metrics of r$i: /metrics says $scraped, nfqlb list $real"
    [ "$(metric nfqlb_ipvs_backend_weight "$rip")" = 1.0 ] || fail "metrics: weight of r$i is not 1.0"
done
total=$(awk '$1 == "nfqlb_ipvs_connections_total" { print $2 }' <<<"$metrics")
received=$(awk 'index($0, "nfqlb_queue_received_packets_total{queue=\"0\"}") == 1 { print $2 }' <<<"$metrics")
[ "$total" = 12 ] && [ "${received:-0}" -gt 0 ] || fail "metrics: nfqlb_ipvs_connections_total=$total (want 12), received=$received"
grep -q '^nfqlb_build_info{version=' <<<"$metrics" || fail "metrics: no nfqlb_build_info"
echo "metrics match: 12 connections, per real server as listed"
pass "/metrics: node_exporter's IPVS names with nfqlb_, per real server the traffic nfqlb list shows"

# --- quiesce: weight 0 under a long download (a small receive buffer keeps it on the wire while curl's rate
# limit reads it, instead of all of it landing in the client's socket buffer at once)
in_ns "${P}c" sysctl -qw net.ipv4.tcp_rmem="4096 32768 65536" net.ipv4.tcp_moderate_rcvbuf=0
rm -f "$LAB_TMP/download.bin"
in_ns "${P}c" curl -s --fail --max-time 60 --limit-rate 1M -o "$LAB_TMP/download.bin" "http://$LAB_URL_HOST/big.bin" &
download=$!
server=""
for _ in $(seq 50); do
    server=$(nfqlb_ctl list -c -n --json | jq -r '.connections[] | select(.state == "ESTABLISHED") | .destination' | head -n1)
    [ -n "$server" ] && break
    sleep 0.1
done
[ -n "$server" ] || fail "quiesce: the download's connection did not show in nfqlb list --connections"
rip=${server%:*}
nfqlb_ctl real edit -t "$LAB_VIP:80" -r "$rip:8080" -w 0 >/dev/null
state=$(nfqlb_ctl list -n --json | jq -r --arg a "$rip" '.services[0].reals[] | select(.address == $a) | .state')
[ "$state" = quiescent ] || fail "quiesce: $rip is '$state' after real edit -w 0, want quiescent"
for i in 1 2 3; do [ "${LAB_RIP[i - 1]}" = "$rip" ] && quiet=r$i; done
for _ in $(seq 10); do
    answer=$(whoami "$LAB_URL_HOST")
    [ -n "$answer" ] || fail "quiesce: a new request failed"
    [ "$answer" != "$quiet" ] || fail "quiesce: a new connection went to the quiesced $quiet"
done
if ! kill -0 "$download" 2>/dev/null; then
    status=0; wait "$download" || status=$?
    fail "quiesce: the download ended (status $status, $(stat -c %s "$LAB_TMP/download.bin" 2>/dev/null) bytes) before the new connections were made"
fi
wait "$download" || fail "quiesce: the download failed"
cmp -s "$LAB_TMP/download.bin" "$LAB_TMP/big.bin" || fail "quiesce: the download differs from the original"
echo "quiesce: download intact, 10 new connections avoided $quiet"
nfqlb_ctl real edit -t "$LAB_VIP:80" -r "$rip:8080" -w 1 >/dev/null
pass "real edit -w 0: the running download completed byte-identical, new connections went elsewhere"

# --- service add / delete, rules included
vip2=203.0.113.20
nfqlb_ctl service add -t "$vip2:80" -s rr -r "${LAB_RIP[0]}:8080" -r "${LAB_RIP[1]}:8080" >/dev/null
rules=$(in_ns "${P}b" iptables -w -t raw -S NFQLB-PREROUTING)
grep -q -- "-d $vip2/32" <<<"$rules" || fail "service add: no rule for $vip2"
answer=$(whoami "$vip2")
[[ $answer =~ ^r[12]$ ]] || fail "service add: $vip2 answered '$answer'"
nfqlb_ctl list -n -t "$vip2:80"
nfqlb_ctl service delete -t "$vip2:80" >/dev/null
# The rules go once the deleted service's real servers are forgotten (drain 0: at the next housekeeping second).
gone=""
for _ in $(seq 50); do
    rules=$(in_ns "${P}b" iptables -w -t raw -S NFQLB-PREROUTING)
    if ! grep -q -- "-d $vip2/32" <<<"$rules"; then gone=1; break; fi
    sleep 0.1
done
[ -n "$gone" ] || fail "service delete: the rules of $vip2 stayed for 5 s"
[ -z "$(whoami "$vip2")" ] || fail "service delete: $vip2 still answers"
[ -n "$(whoami "$LAB_URL_HOST")" ] || fail "service delete: the first service stopped answering"
echo "service add/delete: reachable, then gone with its rules"
pass "service add and delete: rules installed and removed with the service, no restart"

# --- reload: a broken file refused with its line, the good one applied with a live change kept
nfqlb_ctl real add -t "$LAB_VIP:80" -r "198.51.100.14:8080" -w 0 >/dev/null
cp "$config" "$LAB_TMP/good.yaml"
printf '    bogus: 1\n' >> "$config"
status=0
message=$(nfqlb_ctl reload 2>&1) || status=$?
[ "$status" = 2 ] || fail "reload of a broken file: exit status $status, want 2 ($message)"
[[ $message == "nfqlb: $config:"[0-9]*": unknown key 'bogus'"* ]] || fail "reload of a broken file said: $message"
[ -n "$(whoami "$LAB_URL_HOST")" ] || fail "reload: the service stopped answering after a refused reload"
cp "$LAB_TMP/good.yaml" "$config"
nfqlb_ctl reload >/dev/null || fail "reload of the good file failed"
nfqlb_ctl list -n -t "$LAB_VIP:80" --json | jq -e '.services[0].reals[] | select(.address == "198.51.100.14")' >/dev/null ||
    fail "reload: the live-added real server 198.51.100.14 was not kept"
echo "reload: broken file refused, good file applied"
pass "reload: '$message' for the broken file, the good one applied, live additions kept"

# --- save: the running configuration is a valid config file
nfqlb_ctl save > "$LAB_TMP/saved.yaml"
"$NFQLB" check --config "$LAB_TMP/saved.yaml" >/dev/null || fail "save: nfqlb check refused the saved config: $(cat "$LAB_TMP/saved.yaml")"
grep -q "198.51.100.14" "$LAB_TMP/saved.yaml" || fail "save: the live-added real server is missing"
pass "save: the running configuration, live changes included, passes nfqlb check"

# --- access: root only
as_nobody() { in_ns "${P}b" setpriv --reuid=65534 --regid=65534 --clear-groups "$NFQLB" "$@"; }
message=$(as_nobody list -n --control-socket "$sock_dir/nfqlb.sock" 2>&1) && fail "a non-root caller listed: $message"
[[ $message == *"Permission denied"* ]] || fail "non-root, mode 0600: $message"
chmod 0666 "$sock_dir/nfqlb.sock"
chmod 0755 "$sock_dir"
message=$(as_nobody list -n --control-socket "$sock_dir/nfqlb.sock" 2>&1) && fail "a non-root caller listed: $message"
chmod 0600 "$sock_dir/nfqlb.sock"
[[ $message == *"only root may use the control socket (caller uid 65534)"* ]] || fail "non-root, socket opened: $message"
# The read-only socket: mode 0660 for nogroup; its members may list, not change.
[ "$(stat -c '%a %G' "$sock_dir/nfqlb-ro.sock")" = "660 nogroup" ] || fail "read-only socket: $(stat -c '%a %G' "$sock_dir/nfqlb-ro.sock")"
as_nobody list -n --control-socket "$sock_dir/nfqlb-ro.sock" | grep -q "^TCP  $LAB_VIP:80 rr" || fail "read-only socket: nogroup could not list"
message=$(as_nobody real edit -t "$LAB_VIP:80" -r "${LAB_RIP[0]}:8080" -w 0 --control-socket "$sock_dir/nfqlb-ro.sock" 2>&1) &&
    fail "read-only socket: a change went through: $message"
[[ $message == *"this socket is read-only"* ]] || fail "read-only socket, change: $message"
echo "access: non-root refused"
pass "a non-root caller is refused by the socket's mode and by SO_PEERCRED"

nfqlb_stop
[ ! -e "$sock_dir/nfqlb.sock" ] || fail "the control socket file stayed after nfqlb stopped"
csum_check
rules_cleanup_check
