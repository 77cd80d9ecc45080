#!/usr/bin/env bash
# Installs (up) or removes (down) what nfqlb needs in the current network namespace:
#   - the iptables rules `nfqlb rules --config FILE` prints (raw table, chain NFQLB-PREROUTING, one jump
#     from PREROUTING; with `offload: conntrack` services also mangle NFQLB-OFFLOAD from PREROUTING and nat
#     NFQLB-DNAT from PREROUTING and NFQLB-SNAT from POSTROUTING), applied with iptables-restore --noflush,
#     and for IPv6 services the ip6tables rules `nfqlb rules --config FILE --family ipv6` prints, applied with
#     ip6tables-restore --noflush;
#   - for DR services, the policy routing `nfqlb rules --config FILE --routes [--family ipv6]` prints (one
#     fwmark rule and one table per real server), applied with ip -4/-6 -batch, and send_redirects=0;
#   - the sysctls of the balancer: ip_forward=1 (NAT forwards), rp_filter=0 (rewritten replies come from the
#     VIP on the server-side interface), accept_local=1 (needed when the VIP is also a local address); with
#     IPv6 services net.ipv6.conf.all.forwarding=1 (which also makes every interface a router: interfaces
#     then ignore router advertisements, so a balancer configured by SLAAC needs a static default route; and
#     `down` writes the saved `all` value back, which resets every interface's own forwarding setting); with
#     offloaded services net.netfilter.nf_conntrack_acct=1 (per-connection counters in conntrack's events)
#     and nf_conntrack_tcp_loose=1 (DR: the fallback when nfqlb cannot create a connection itself: the kernel
#     takes it up at its first ACK).
# With offloaded services `up` also keeps a copy of the config, so that `down` deletes the kernel connections
# of those services (`nfqlb conntrack flush`) after removing the rules: nothing of nfqlb's stays behind.
# `up` is idempotent: running it again (with the same or another config) replaces nfqlb's rules. Changed
# sysctls are saved with their previous value the first time, and `down` restores exactly those.
#
# Usage: scripts/iptables-setup.sh up CONFIG | down
# The nfqlb binary is found through $NFQLB, then PATH, then this package's release or debug build.
set -euo pipefail

# Each chain nfqlb owns: table, chain, the built-in chain that jumps to it.
chains=("raw NFQLB-PREROUTING PREROUTING" "mangle NFQLB-OFFLOAD PREROUTING" "nat NFQLB-DNAT PREROUTING"
        "nat NFQLB-SNAT POSTROUTING")
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
netns_id=$(stat -L -c %i /proc/self/ns/net)
state=/run/nfqlb/netns-$netns_id
saved=$state/sysctl.saved
routes_down=$state/routes.down   # `ip -batch` input that removes the DR policy routes `up` added (IPv4)
routes6_down=$state/routes6.down # the same for IPv6
offload_configs=$state/offload    # copies of the configs with offloaded services that `up` installed

die() { echo "iptables-setup: $*" >&2; exit 2; }

find_nfqlb() {
    if [ -n "${NFQLB:-}" ]; then echo "$NFQLB"; return; fi
    if command -v nfqlb >/dev/null 2>&1; then command -v nfqlb; return; fi
    for build in release debug; do
        if [ -x "$root/.build/$build/nfqlb" ]; then echo "$root/.build/$build/nfqlb"; return; fi
    done
    die "nfqlb not found: set NFQLB, put nfqlb on PATH, or build it (swift build -c release)"
}

# set_sysctl KEY VALUE: records the old value once, then sets the new one.
set_sysctl() {
    local key=$1 value=$2 path old
    path=/proc/sys/${key//.//}
    [ -w "$path" ] || return 0
    old=$(cat "$path")
    [ "$old" = "$value" ] && return 0
    grep -q "^$key " "$saved" 2>/dev/null || echo "$key $old" >> "$saved"
    echo "$value" > "$path"
}

remove_routes() {
    if [ -s "$routes_down" ]; then ip -4 -batch "$routes_down" 2>/dev/null || true; fi
    if [ -s "$routes6_down" ]; then ip -6 -batch "$routes6_down" 2>/dev/null || true; fi
    rm -f "$routes_down" "$routes6_down"
}

remove_rules() {
    local tool entry table chain hook
    for tool in iptables ip6tables; do
        command -v "$tool" >/dev/null || continue
        for entry in "${chains[@]}"; do
            read -r table chain hook <<<"$entry"
            while "$tool" -w -t "$table" -D "$hook" -j "$chain" 2>/dev/null; do :; done
            if "$tool" -w -t "$table" -S "$chain" >/dev/null 2>&1; then
                "$tool" -w -t "$table" -F "$chain"
                "$tool" -w -t "$table" -X "$chain"
            fi
        done
    done
}

# install_routes ROUTES DOWN_FILE FAMILY: applies `ip -FAMILY -batch` input, recording first how to undo it.
install_routes() {
    local routes=$1 down_file=$2 family=$3
    [ -n "$routes" ] || return 0
    # Record how to undo first, so that `down` cleans up even if the batch fails halfway.
    printf '%s\n' "$routes" | awk '$1 == "rule" { sub(/^rule add/, "rule del"); print } $1 == "route" { print "route flush table " $NF }' > "$down_file"
    printf '%s\n' "$routes" | ip "-$family" -batch -
}

up() {
    local config=$1 nfqlb rules rules6 routes routes6 dev
    [ -f "$config" ] || die "no such config file: $config"
    nfqlb=$(find_nfqlb)
    # check says why a config is refused; rules then prints each family (its hints about the other family,
    # on stderr, are for people reading the output, not for this script).
    "$nfqlb" check --config "$config" >/dev/null || die "nfqlb refused $config"
    rules=$("$nfqlb" rules --config "$config" 2>/dev/null) || die "nfqlb refused $config"
    grep -q '^\*raw$' <<<"$rules" || die "$nfqlb rules printed no iptables-restore input"
    rules6=$("$nfqlb" rules --config "$config" --family ipv6 2>/dev/null) || die "nfqlb refused $config"
    command -v iptables-restore >/dev/null || die "iptables is not installed (apt-get install iptables)"
    if [ -n "$rules6" ]; then
        command -v ip6tables-restore >/dev/null || die "ip6tables is not installed (apt-get install iptables): the config has IPv6 services"
    fi
    mkdir -p "$state"
    touch "$saved"
    set_sysctl net.ipv4.ip_forward 1
    for dev in all default $(ls /proc/sys/net/ipv4/conf); do
        set_sysctl "net.ipv4.conf.$dev.rp_filter" 0
    done
    set_sysctl net.ipv4.conf.all.accept_local 1
    [ -n "$rules6" ] && set_sysctl net.ipv6.conf.all.forwarding 1
    if grep -q '^\*mangle$' <<<"$rules$rules6"; then
        set_sysctl net.netfilter.nf_conntrack_acct 1
        set_sysctl net.netfilter.nf_conntrack_tcp_loose 1
        mkdir -p "$offload_configs"
        cp "$config" "$offload_configs/$(date +%s%N).yaml"
    fi
    routes=$("$nfqlb" rules --config "$config" --routes 2>/dev/null) || die "nfqlb refused $config"
    routes6=$("$nfqlb" rules --config "$config" --routes --family ipv6 2>/dev/null) || die "nfqlb refused $config"
    for dev in all default $(ls /proc/sys/net/ipv4/conf); do
        # DR sends packets out towards a real server, possibly on the interface they came in on: no redirects.
        [ -n "$routes" ] && set_sysctl "net.ipv4.conf.$dev.send_redirects" 0
    done
    remove_rules
    remove_routes
    install_routes "$routes" "$routes_down" 4
    install_routes "$routes6" "$routes6_down" 6
    printf '%s\n' "$rules" | iptables-restore -w --noflush
    if [ -n "$rules6" ]; then printf '%s\n' "$rules6" | ip6tables-restore -w --noflush; fi
    echo "iptables-setup: nfqlb rules installed from $config (netns $netns_id)"
}

# flush_connections: deletes the kernel connections of every offloaded config `up` installed.
flush_connections() {
    local copy nfqlb
    [ -d "$offload_configs" ] || return 0
    nfqlb=$(find_nfqlb)
    for copy in "$offload_configs"/*.yaml; do
        [ -f "$copy" ] && { "$nfqlb" conntrack flush --config "$copy" >/dev/null || echo "iptables-setup: could not delete the kernel connections of $copy" >&2; }
    done
    return 0
}

down() {
    local key value
    remove_rules
    remove_routes
    flush_connections
    if [ -f "$saved" ]; then
        # Restore in reverse order of change.
        tac "$saved" | while read -r key value; do
            path=/proc/sys/${key//.//}
            [ -w "$path" ] && echo "$value" > "$path" || true
        done
    fi
    rm -rf "$state"
    echo "iptables-setup: nfqlb rules and sysctls removed (netns $netns_id)"
}

case "${1:-}" in
    up) [ $# -eq 2 ] || die "usage: $0 up CONFIG"; up "$2" ;;
    down) [ $# -eq 1 ] || die "usage: $0 down"; down ;;
    *) die "usage: $0 up CONFIG | down" ;;
esac
