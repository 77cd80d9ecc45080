#!/usr/bin/env bash
# End-to-end test of LVS NAT mode in a namespace lab (see lib.sh for the topology).
# Usage: NFQLB=/path/to/nfqlb Tests/e2e/nat.sh rr|wrr|download|udp|all
# Prints "ok: ..." lines and the figures the Swift wrapper checks; exits non-zero on the first failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$here/lib.sh"
scenario=${1:-all}
: "${NFQLB:?set NFQLB to the nfqlb binary}"

# Short unique prefix: interface names must stay within 15 characters.
lab_init "nq$$$(printf '%s' "$scenario" | head -c 1)"
lab_extra_teardown() {
    [ -n "${NFQLB_PID:-}" ] && kill -TERM "$NFQLB_PID" 2>/dev/null
    in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null 2>&1 || true
}
lab_nat_up
lab_start_http_servers
lab_start_udp_echo

# write_config FILE SCHEDULER W1 W2 W3
write_config() {
    cat > "$1" <<YAML
queues: [0]
services:
  - vip: 203.0.113.10
    port: 80
    protocol: tcp
    mode: nat
    scheduler: $2
    reals:
      - { address: 198.51.100.11, port: 8080, weight: $3 }
      - { address: 198.51.100.12, port: 8080, weight: $4 }
      - { address: 198.51.100.13, port: 8080, weight: $5 }
  - vip: 203.0.113.10
    port: 53
    protocol: udp
    mode: nat
    scheduler: $2
    reals:
      - { address: 198.51.100.11, port: 5353, weight: $3 }
      - { address: 198.51.100.12, port: 5353, weight: $4 }
      - { address: 198.51.100.13, port: 5353, weight: $5 }
YAML
}

declare -A csum_before
hosts=(c r1 r2 r3)
for h in "${hosts[@]}"; do csum_before[$h]=$(csum_errors "${P}$h"); done

# http_distribution NAME N: N sequential requests for /whoami through the VIP; prints the distribution.
http_distribution() {
    local name=$1 n=$2 answer
    declare -A count=([r1]=0 [r2]=0 [r3]=0)
    for i in $(seq "$n"); do
        answer=$(in_ns "${P}c" curl -s --max-time 5 http://203.0.113.10/whoami) || fail "request $i through the VIP failed (stats: $(tr '\n' ' ' < "$LAB_TMP/stats"))"
        [ -n "${count[$answer]+x}" ] || fail "request $i: unexpected answer '$answer'"
        count[$answer]=$((count[$answer] + 1))
    done
    echo "distribution $name r1=${count[r1]} r2=${count[r2]} r3=${count[r3]}"
}

run_rr() {
    write_config "$LAB_TMP/rr.yaml" rr 1 1 1
    nfqlb_start "$LAB_TMP/rr.yaml"
    local line; line=$(http_distribution rr 60); echo "$line"
    [ "$line" = "distribution rr r1=20 r2=20 r3=20" ] || fail "rr distribution: $line"
    pass "rr: 60 requests answered, 20 per real server"
}

run_wrr() {
    write_config "$LAB_TMP/wrr.yaml" wrr 1 2 3
    nfqlb_start "$LAB_TMP/wrr.yaml"
    local line; line=$(http_distribution wrr 60); echo "$line"
    [ "$line" = "distribution wrr r1=10 r2=20 r3=30" ] || fail "wrr distribution: $line"
    pass "wrr: 60 requests answered in proportion 1:2:3"
}

run_download() {
    write_config "$LAB_TMP/dl.yaml" rr 1 1 1
    nfqlb_start "$LAB_TMP/dl.yaml"
    in_ns "${P}c" curl -s --max-time 60 -o "$LAB_TMP/download.bin" http://203.0.113.10/big.bin || fail "download through the VIP failed"
    local want got size
    want=$(sha256sum < "$LAB_TMP/big.bin" | cut -d' ' -f1)
    got=$(sha256sum < "$LAB_TMP/download.bin" | cut -d' ' -f1)
    size=$(stat -c %s "$LAB_TMP/download.bin")
    [ "$want" = "$got" ] || fail "download differs: $size bytes, sha256 $got, want $want"
    echo "download $size bytes sha256 match"
}

run_udp() {
    write_config "$LAB_TMP/udp.yaml" rr 1 1 1
    nfqlb_start "$LAB_TMP/udp.yaml"
    # 30 datagrams, each from a new socket (new source port, so a new connection), 2 s timeout each.
    local line
    line=$(in_ns "${P}c" python3 - <<'PY'
import socket, sys
count = {"r1": 0, "r2": 0, "r3": 0}
for i in range(30):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.sendto(b"ping%d" % i, ("203.0.113.10", 53))
    try:
        data, peer = s.recvfrom(2048)
    except socket.timeout:
        sys.exit("datagram %d: no answer" % i)
    if peer != ("203.0.113.10", 53):
        sys.exit("datagram %d: answer from %s, not from the VIP" % (i, peer))
    name, _, payload = data.decode().partition(":")
    if payload != "ping%d" % i or name not in count:
        sys.exit("datagram %d: bad answer %r" % (i, data))
    count[name] += 1
    s.close()
print("distribution udp r1=%d r2=%d r3=%d" % (count["r1"], count["r2"], count["r3"]))
PY
) || fail "UDP through the VIP: $line"
    echo "$line"
    [ "$line" = "distribution udp r1=10 r2=10 r3=10" ] || fail "udp distribution: $line"
    pass "udp: 30 datagrams answered from the VIP, 10 per real server"
}

case "$scenario" in
    rr) run_rr ;;
    wrr) run_wrr ;;
    download) run_download ;;
    udp) run_udp ;;
    all)
        run_rr; nfqlb_stop
        run_wrr; nfqlb_stop
        run_download; nfqlb_stop
        run_udp ;;
    *) fail "unknown scenario $scenario (rr|wrr|download|udp|all)" ;;
esac

nfqlb_stop   # writes the stats file a last time
echo "stats: $(grep -v ' 0$' "$LAB_TMP/stats" | tr '\n' ' ')"
[ "$(stat_value forwarded)" -gt 0 ] && [ "$(stat_value replied)" -gt 0 ] || fail "nfqlb counted no rewritten packets"
for counter in dropped_malformed dropped_no_real_server dropped_table_full dropped_verdict_send kernel_queue_dropped kernel_user_dropped; do
    [ "$(stat_value $counter)" = 0 ] || fail "$counter = $(stat_value $counter)"
done
line="checksum errors:"
for h in "${hosts[@]}"; do
    delta=$(( $(csum_errors "${P}$h") - ${csum_before[$h]} ))
    label=$h; [ "$h" = c ] && label=client
    line="$line $label +$delta"
done
echo "$line"
[ "$line" = "checksum errors: client +0 r1 +0 r2 +0 r3 +0" ] || fail "checksum errors appeared"

in_ns "${P}b" "$root/scripts/iptables-setup.sh" down >/dev/null
if in_ns "${P}b" iptables-save | grep -q NFQLB; then fail "rules left behind: $(in_ns "${P}b" iptables-save | grep NFQLB)"; fi
[ "$(in_ns "${P}b" sysctl -n net.ipv4.conf.all.accept_local)" = 0 ] || fail "accept_local not restored"
echo "cleanup: no rules left"
