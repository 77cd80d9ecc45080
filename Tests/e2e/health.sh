#!/usr/bin/env bash
# End-to-end test of nfqlb's health checks in the NAT lab of lib.sh: HTTP checks (interval 1 s, timeout 500 ms,
# rise 2, fall 2) on three real servers, a client making a connection every 100 ms, and a notify program
# recording the transitions.
#
# Usage: NFQLB=/abs/path/to/nfqlb Tests/e2e/health.sh   (root)
#
#   down     r2's HTTP server stops: within fall x interval + interval (+ jitter) no new connection reaches it;
#            the only failed requests are those sent to r2 before it was detected; nfqlb list shows it down
#   up       r2's server starts again: it takes connections again within rise x interval + interval
#   quiesce  a rate-limited 5 MiB download; its server's check starts failing (its /whoami changes) while the
#            server keeps serving: it goes down (quiesced) and the download completes byte-identical
#   sorry    all three stop: the sorry server (198.51.100.11:8081) answers; one comes back: it answers again
#   notify   the notify program saw the transitions in order
#   udp      a UDP service checked by a udp probe: r3's echo server stops, r3 goes down (ICMP port unreachable)
#   exec     a TCP service whose real servers are checked by a command: the command fails for r1, r1 goes down
#
# Prints "ok: ..." lines and, for Tests/QueueBalancerTests/EndToEndTests.swift:
#   detection: r2 down after N ms (limit M ms) | recovery: r2 up after N ms | quiesce: download intact | sorry: answered while all down
#   notify: in order | udp: r3 down | exec: r1 down | checksum errors: client +0 r1 +0 r2 +0 r3 +0 | cleanup: no rules left
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
lab_unmask_signals "$@"

[ -n "${NFQLB:-}" ] || fail "set NFQLB to the absolute path of the nfqlb binary"
[[ $NFQLB == /* ]] && [ -x "$NFQLB" ] || fail "NFQLB=$NFQLB is not an executable absolute path"
export NFQLB
setup=$LAB_ROOT/scripts/iptables-setup.sh

lab_init "hc$$x"
lab_extra_teardown() {
    if [ -n "$NFQLB_PID" ]; then lab_stop_pid "$NFQLB_PID" 50; NFQLB_PID=""; fi
    if [ "$LAB_EXIT_STATUS" != 0 ] && [ -n "$LAB_TMP" ]; then
        { echo "--- nfqlb log (last 30 lines)"; tail -n 30 "$LAB_TMP/nfqlb.out" 2>/dev/null; } >&2
    fi
    if [ -e "/run/netns/${P}b" ]; then in_ns "${P}b" "$setup" down >/dev/null 2>&1; fi
}

lab_nat_up
declare -A server_pid
# start_server I: r$I's HTTP server on RIP:8080, answering /whoami with "rI".
head -c 5242880 /dev/urandom > "$LAB_TMP/big.bin"
start_server() {
    local i=$1 dir=$LAB_TMP/www$1 _
    mkdir -p "$dir"; echo "r$i" > "$dir/whoami"; ln -f "$LAB_TMP/big.bin" "$dir/big.bin"
    lab_spawn "${P}r$i" "$LAB_TMP/http$i.log" "$LAB_PYTHON" -m http.server 8080 --bind "${LAB_RIP[i - 1]}" --directory "$dir"
    server_pid[$i]=$LAB_LAST_PID
    for _ in $(seq 50); do
        [ "$(in_ns "${P}r$i" curl -s --max-time 1 "http://${LAB_RIP[i - 1]}:8080/whoami")" = "r$i" ] && return 0
        sleep 0.1
    done
    fail "HTTP server r$i did not start"
}
stop_server() { lab_stop_pid "${server_pid[$1]}" 20 || true; }
for i in 1 2 3; do start_server "$i"; done
mkdir -p "$LAB_TMP/sorry"; echo sorry > "$LAB_TMP/sorry/whoami"
lab_spawn "${P}r1" "$LAB_TMP/sorry.log" "$LAB_PYTHON" -m http.server 8081 --bind "${LAB_RIP[0]}" --directory "$LAB_TMP/sorry"
lab_start_udp_echo
# The exec probe's command: succeeds while $LAB_TMP/ok-NAME exists.
cat > "$LAB_TMP/check.sh" <<EOF2
#!/bin/sh
test -e $LAB_TMP/ok-\$1
EOF2
chmod +x "$LAB_TMP/check.sh"
touch "$LAB_TMP/ok-r1" "$LAB_TMP/ok-r2"
pass "lab up: client ${P}c, balancer ${P}b, real servers ${P}r1..3 (HTTP on :8080, UDP echo on :5353), a sorry server on r1:8081"

cat > "$LAB_TMP/notify.sh" <<EOF2
#!/bin/sh
echo "\$1 \$2 \$3" >> $LAB_TMP/notify.log
EOF2
chmod +x "$LAB_TMP/notify.sh"
interval_ms=1000 rise=2 fall=2
config=$LAB_TMP/lb.yaml
cat > "$config" <<YAML
queues: [0]
services:
  - vip: $LAB_VIP
    port: 80
    protocol: tcp
    mode: nat
    scheduler: rr
    health:
      http: { path: /whoami, expect-status: ["200"], body-regex: "^r[123]" }
      interval: ${interval_ms}ms
      timeout: 500ms
      rise: $rise
      fall: $fall
    sorry-server: { address: ${LAB_RIP[0]}, port: 8081 }
    quorum: { min-weight: 2, hysteresis: 1 }
    notify: [$LAB_TMP/notify.sh]
    reals:
      - { address: ${LAB_RIP[0]}, port: 8080 }
      - { address: ${LAB_RIP[1]}, port: 8080 }
      - { address: ${LAB_RIP[2]}, port: 8080 }
  - vip: $LAB_VIP
    port: 53
    protocol: udp
    mode: nat
    scheduler: rr
    health: { udp: { payload: ping, expect: "r" }, interval: ${interval_ms}ms, timeout: 500ms, rise: $rise, fall: $fall }
    reals:
      - { address: ${LAB_RIP[0]}, port: 5353 }
      - { address: ${LAB_RIP[1]}, port: 5353 }
      - { address: ${LAB_RIP[2]}, port: 5353 }
  - vip: $LAB_VIP
    port: 9000
    protocol: tcp
    mode: nat
    health: { interval: ${interval_ms}ms, timeout: 500ms, rise: $rise, fall: $fall }
    reals:
      - { address: ${LAB_RIP[0]}, port: 8080, health: { exec: [$LAB_TMP/check.sh, r1] } }
      - { address: ${LAB_RIP[1]}, port: 8080, health: { exec: [$LAB_TMP/check.sh, r2] } }
YAML
csum_snapshot
nfqlb_start "$config"
nfqlb_ctl() { in_ns "${P}b" "$NFQLB" "$@"; }
sleep 1

# The client: a request every 100 ms, one line per request: "MILLISECONDS ANSWER" (ANSWER "-" on failure).
client() {
    local end=$(( $(date +%s%3N) + $1 )) now answer
    while now=$(date +%s%3N); [ "$now" -lt "$end" ]; do
        answer=$(in_ns "${P}c" curl -s --max-time 1 "http://$LAB_URL_HOST/whoami" 2>/dev/null) || answer=""
        echo "$now ${answer:--}"
        sleep 0.1
    done
}

# --- down: stop r2 under the client
client 8000 > "$LAB_TMP/down.log" &
client_pid=$!
sleep 2
stopped=$(date +%s%3N)
stop_server 2
wait "$client_pid"
last_r2=$(awk '$2 == "r2" { t = $1 } END { printf "%.0f\n", t }' "$LAB_TMP/down.log")
limit=$(( fall * interval_ms + interval_ms + (fall + 1) * interval_ms / 10 ))
# Requests that reached r2 after it stopped fail (connection refused); they end at detection.
last_failure=$(awk '$2 == "-" { t = $1 } END { printf "%.0f\n", t }' "$LAB_TMP/down.log")
detected=$(( (last_failure > stopped ? last_failure : stopped) - stopped ))
[ "$last_r2" -lt "$stopped" ] || fail "down: r2 answered after it was stopped"
[ "$detected" -le "$limit" ] || fail "down: requests still failed ${detected} ms after r2 stopped (limit ${limit} ms)"
after=$(awk -v t="$((stopped + limit))" '$1 > t' "$LAB_TMP/down.log")
grep -q -- " -$" <<<"$after" && fail "down: requests failed after the detection limit: $(grep -c -- ' -$' <<<"$after")"
grep -Eq " r[13]$" <<<"$after" || fail "down: no request answered after detection"
state=$(nfqlb_ctl list -n --json | jq -r --arg a "${LAB_RIP[1]}" '.services[0].reals[] | select(.address == $a) | .state')
[ "$state" = down ] || fail "down: nfqlb list says r2 is '$state'"
nfqlb_ctl list -n
awk -v s="$stopped" '$2 == "-" { printf "  failed request at %+.0f ms from the stop\n", $1 - s }' "$LAB_TMP/down.log"
echo "detection: r2 down after ${detected} ms (limit ${limit} ms), $(grep -c -- ' -$' "$LAB_TMP/down.log") requests failed before"
pass "down: r2 left the rotation within fall x interval + interval"

# --- up: start r2 again
started=$(date +%s%3N)
start_server 2
client 6000 > "$LAB_TMP/up.log"
first_r2=$(awk '$2 == "r2" { print $1; exit }' "$LAB_TMP/up.log")
[ -n "$first_r2" ] || fail "up: r2 took no connection within 6 s of starting again"
recovered=$(( first_r2 - started ))
up_limit=$(( rise * interval_ms + interval_ms + (rise + 1) * interval_ms / 10 + 1000 ))
[ "$recovered" -le "$up_limit" ] || fail "up: r2 took its first connection ${recovered} ms after starting (limit ${up_limit} ms)"
grep -q -- " -$" "$LAB_TMP/up.log" && fail "up: requests failed while r2 came back"
echo "recovery: r2 up after ${recovered} ms (limit ${up_limit} ms)"
pass "up: r2 back in the rotation after rise successes"

# --- quiesce: a download from a server whose check starts failing (the server itself keeps serving)
in_ns "${P}c" sysctl -qw net.ipv4.tcp_rmem="4096 32768 65536" net.ipv4.tcp_moderate_rcvbuf=0
in_ns "${P}c" curl -s --fail --max-time 60 --limit-rate 1M -o "$LAB_TMP/download.bin" "http://$LAB_URL_HOST/big.bin" &
download=$!
server=""
for _ in $(seq 50); do
    server=$(nfqlb_ctl list -c -n -t "$LAB_VIP:80" --json | jq -r '.connections[] | select(.state == "ESTABLISHED") | .destination' | head -n1)
    [ -n "$server" ] && break
    sleep 0.1
done
[ -n "$server" ] || fail "quiesce: the download's connection did not show"
rip=${server%:*}
for i in 1 2 3; do [ "${LAB_RIP[i - 1]}" = "$rip" ] && quiet=$i; done
echo "failing" > "$LAB_TMP/www$quiet/whoami"      # its check's body-regex no longer matches
since=$(date +%s%3N)
for _ in $(seq 60); do
    state=$(nfqlb_ctl list -n -t "$LAB_VIP:80" --json | jq -r --arg a "$rip" '.services[0].reals[] | select(.address == $a) | .state')
    [ "$state" = down ] && break
    sleep 0.1
done
[ "$state" = down ] || fail "quiesce: r$quiet is '$state' after its check started failing"
took=$(( $(date +%s%3N) - since ))
kill -0 "$download" 2>/dev/null || fail "quiesce: the download ended before r$quiet was taken out (not a test of quiescing)"
wait "$download" || fail "quiesce: the download from r$quiet failed after its check took it out"
cmp -s "$LAB_TMP/download.bin" "$LAB_TMP/big.bin" || fail "quiesce: the download differs from the original"
echo "r$quiet" > "$LAB_TMP/www$quiet/whoami"
echo "quiesce: download intact (r$quiet down ${took} ms after its check started failing, the download went on)"
for _ in $(seq 60); do
    state=$(nfqlb_ctl list -n -t "$LAB_VIP:80" --json | jq -r --arg a "$rip" '.services[0].reals[] | select(.address == $a) | .state')
    [ "$state" = active ] && break
    sleep 0.1
done
[ "$state" = active ] || fail "quiesce: r$quiet did not come back"
pass "quiesce: a server taken out by its check finishes the download it was serving"

# --- sorry: all three down, then one back
for i in 1 2 3; do stop_server "$i"; done
answer=""
for _ in $(seq 60); do
    answer=$(in_ns "${P}c" curl -s --max-time 1 "http://$LAB_URL_HOST/whoami" 2>/dev/null) || answer=""
    [ "$answer" = sorry ] && break
    sleep 0.1
done
[ "$answer" = sorry ] || fail "sorry: the sorry server did not answer with every real server down (last: '$answer')"
start_server 3
answer=""
for _ in $(seq 60); do
    answer=$(in_ns "${P}c" curl -s --max-time 1 "http://$LAB_URL_HOST/whoami" 2>/dev/null) || answer=""
    [ "$answer" = r3 ] && break
    sleep 0.1
done
[ "$answer" = r3 ] || fail "sorry: r3 did not take over from the sorry server once up (last: '$answer')"
echo "sorry: answered while all down"
pass "sorry server: used while no real server is up, left as soon as one is"

# --- notify: the transitions in order
sleep 0.5
cat "$LAB_TMP/notify.log"
name="tcp/$LAB_VIP:80"
want="real-server $name/${LAB_RIP[1]}:8080 down
real-server $name/${LAB_RIP[1]}:8080 up"
[ "$(head -n 2 "$LAB_TMP/notify.log")" = "$want" ] || fail "notify: first transitions were: $(head -n 2 "$LAB_TMP/notify.log")"
tail -n 1 "$LAB_TMP/notify.log" | grep -q "^real-server $name/${LAB_RIP[2]}:8080 up$" || fail "notify: last transition: $(tail -n 1 "$LAB_TMP/notify.log")"
# The quorum (min-weight 2, hysteresis 1): lost once, when the last two servers went down (weight 1 < 2), not
# regained with r3 alone (weight 1 < 2 + 1).
[ "$(grep -c "^service $name " "$LAB_TMP/notify.log")" = 1 ] || fail "quorum: expected one service transition: $(grep "^service" "$LAB_TMP/notify.log")"
before=$(grep -B 2 "^service $name down$" "$LAB_TMP/notify.log" | head -n 2)
[ "$(grep -c '^real-server .* down$' <<<"$before")" = 2 ] || fail "quorum: lost at the wrong moment; before it: $before"
echo "notify: in order"
pass "notify: every transition, in order; the quorum lost once with two servers down, not regained by one"

# state_after SERVICE ADDRESS WANT LIMIT_MS: waits for nfqlb list to show ADDRESS of SERVICE (-t/-u VIP:PORT) in state
# WANT; prints the milliseconds it took, fails after LIMIT_MS.
state_after() {
    local since now state
    since=$(date +%s%3N)
    while now=$(date +%s%3N); [ $((now - since)) -le "$4" ]; do
        state=$(nfqlb_ctl list -n $1 --json | jq -r --arg a "$2" '.services[0].reals[] | select(.address == $a) | .state')
        [ "$state" = "$3" ] && { echo $((now - since)); return 0; }
        sleep 0.1
    done
    fail "$1 $2 is '$state', not '$3', $4 ms later"
}

# --- udp: r3's echo server stops
lab_stop_pid "${LAB_UDP_PIDS[3]}" 20 || true
took=$(state_after "-u $LAB_VIP:53" "${LAB_RIP[2]}" down "$limit")
reason=$(nfqlb_ctl list -n -u "$LAB_VIP:53" --json | jq -r --arg a "${LAB_RIP[2]}" '.services[0].reals[] | select(.address == $a) | ."health-reason"')
[ "$reason" = "ICMP port unreachable" ] || fail "udp: r3's reason is '$reason'"
echo "udp: r3 down after ${took} ms ($reason)"
pass "udp probe: a stopped UDP server is detected by its ICMP port unreachable"

# --- exec: the check command fails for r1
rm -f "$LAB_TMP/ok-r1"
took=$(state_after "-t $LAB_VIP:9000" "${LAB_RIP[0]}" down "$limit")
echo "exec: r1 down after ${took} ms"
touch "$LAB_TMP/ok-r1"
took=$(state_after "-t $LAB_VIP:9000" "${LAB_RIP[0]}" active "$up_limit")
pass "exec probe: a failing command takes r1 down, succeeding again brings it back (${took} ms)"

nfqlb_stop
csum_check
rules_cleanup_check
