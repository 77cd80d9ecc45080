#!/usr/bin/env bash
# Installs nfqlb as a service: the release binary, the rules script, an example config and the systemd unit.
#   /usr/local/sbin/nfqlb                      the binary (swift build -c release --product nfqlb first, or NFQLB=path)
#   /usr/local/lib/nfqlb/iptables-setup.sh     rules, routes and sysctls up/down (the unit runs it)
#   /etc/nfqlb/lb.yaml                         the config (the example, only when there is none yet)
#   /etc/systemd/system/nfqlb.service          the unit (dist/nfqlb.service), checked with systemd-analyze verify
#   /usr/local/share/doc/nfqlb/README.md       the documentation the unit points to
# Then: edit /etc/nfqlb/lb.yaml, `systemctl enable --now nfqlb`, `systemctl reload nfqlb` after edits.
#
# Usage: scripts/install.sh [--destdir DIR] [--verify-only]   (root, or any user with --destdir)
#   --destdir DIR   install under DIR instead of / (packaging, tests); no systemctl
#   --verify-only   only run systemd-analyze verify on the unit as it would be installed
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
destdir=""
verify_only=0
while [ $# -gt 0 ]; do
    case $1 in
        --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
        --verify-only) verify_only=1; shift ;;
        *) echo "usage: $0 [--destdir DIR] [--verify-only]" >&2; exit 2 ;;
    esac
done
die() { echo "install: $*" >&2; exit 2; }

# verify_unit BINARY SETUP: systemd-analyze verify on the unit, with its paths pointing at what exists.
verify_unit() {
    local binary=$1 setup=$2 dir
    command -v systemd-analyze >/dev/null || die "systemd-analyze not found (apt-get install systemd)"
    dir=$(mktemp -d)
    sed -e "s|/usr/local/sbin/nfqlb|$binary|g" -e "s|/usr/local/lib/nfqlb/iptables-setup.sh|$setup|g" \
        "$root/dist/nfqlb.service" > "$dir/nfqlb.service"
    if ! systemd-analyze verify --man=no "$dir/nfqlb.service" 2>"$dir/errors"; then
        cat "$dir/errors" >&2
        rm -rf "$dir"
        die "systemd-analyze verify refused dist/nfqlb.service"
    fi
    # It also warns about what it cannot check here (e.g. no running systemd): those lines are fine.
    grep -v -e "^$" "$dir/errors" >&2 || true
    rm -rf "$dir"
    echo "install: dist/nfqlb.service passes systemd-analyze verify"
}

binary=${NFQLB:-$root/.build/release/nfqlb}
if [ "$verify_only" = 1 ]; then
    [ -x "$binary" ] || binary=$root/.build/debug/nfqlb
    [ -x "$binary" ] || die "build nfqlb first (swift build -c release --product nfqlb)"
    verify_unit "$binary" "$root/scripts/iptables-setup.sh"
    exit 0
fi
[ -x "$binary" ] || die "$binary not found: run swift build -c release --product nfqlb first (or set NFQLB)"
[ -n "$destdir" ] || [ "$(id -u)" = 0 ] || die "run as root (or with --destdir)"

install -D -m 0755 "$binary" "$destdir/usr/local/sbin/nfqlb"
install -D -m 0755 "$root/scripts/iptables-setup.sh" "$destdir/usr/local/lib/nfqlb/iptables-setup.sh"
install -D -m 0644 "$root/dist/nfqlb.service" "$destdir/etc/systemd/system/nfqlb.service"
install -D -m 0644 "$root/README.md" "$destdir/usr/local/share/doc/nfqlb/README.md"
if [ ! -e "$destdir/etc/nfqlb/lb.yaml" ]; then
    install -D -m 0644 "$root/examples/nat.yaml" "$destdir/etc/nfqlb/lb.yaml"
    echo "install: /etc/nfqlb/lb.yaml is the NAT example: edit it before starting"
fi
verify_unit "$destdir/usr/local/sbin/nfqlb" "$destdir/usr/local/lib/nfqlb/iptables-setup.sh"
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "install: done; start with: systemctl enable --now nfqlb"
else
    echo "install: done under ${destdir:-/} (systemd not running here: no daemon-reload)"
fi
