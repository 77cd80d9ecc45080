/// The routing daemons' configuration for a cluster (`nfqlb cluster config`): BIRD 2 on each balancer, and a
/// snippet for the router (FRR, or BIRD) that spreads the VIPs' flows over the balancers with ECMP.
///
/// The balancer's BIRD holds one static protocol per VIP, `nfqlb_vip_…`, with a route through ``liveDevice``:
/// nfqlb enables the protocol (announces) only while it serves the VIP and disables it (withdraws) before it
/// stops; the route is valid only while that device exists, and the device is a TUN device nfqlb holds open,
/// so the kernel removes it when nfqlb dies in any way, and BIRD withdraws at once (docs/ARCHITECTURE.md,
/// "Several balancers").
public enum RoutingConfig {
    /// The device whose presence says nfqlb runs (a non-persistent TUN device: gone with the process).
    public static let liveDevice = "nfqlb-live"

    /// The VIPs the cluster announces: every service's, each once, in the config's order.
    public static func vips(_ config: BalancerConfig) -> [IPAddress] {
        var seen: [IPAddress] = []
        for service in config.services where !seen.contains(service.vip) { seen.append(service.vip) }
        return seen
    }

    /// The FULLNAT local addresses of every service, each once.
    public static func localAddresses(_ config: BalancerConfig) -> [IPAddress] {
        var seen: [IPAddress] = []
        for service in config.services { for local in service.localAddresses where !seen.contains(local) { seen.append(local) } }
        return seen
    }

    /// BIRD 2's configuration for this balancer.
    public static func bird(_ config: BalancerConfig, cluster: ClusterConfig) -> String {
        let vips = vips(config)
        var out = """
        # BIRD 2 configuration for an nfqlb balancer (nfqlb cluster config). Every balancer of the cluster runs
        # the same, with its own router id; nfqlb enables a VIP's protocol while it serves the VIP.
        log syslog all;

        """
        if let id = cluster.routerID { out += "router id \(id);\n" }
        out += """

        # Interfaces, for the routes through \(liveDevice) (present while nfqlb runs).
        protocol device {
            scan time 1;
        }

        """
        for vip in vips {
            let prefix = vip.isIPv4 ? "\(vip)/32" : "\(vip)/128"
            out += """

            protocol static \(ClusterConfig.protocolName(for: vip)) {
                \(vip.isIPv4 ? "ipv4" : "ipv6");
                disabled;                        # nfqlb enables it while it serves \(vip)
                check link on;                   # and the route lives only while \(liveDevice) is up
                route \(prefix) via "\(liveDevice)";
            }

            """
        }
        // FULLNAT: this balancer's local addresses while nfqlb runs (the real servers' replies come back to the
        // balancer holding the connection), and the others' with a longer AS path (taken only when theirs is gone).
        let locals = localAddresses(config)
        var localProtocols: [(name: String, ipv4: Bool, takeover: Bool)] = []
        for (takeover, addresses) in [(false, locals), (true, cluster.takeoverLocalAddresses)] {
            for ipv4 in [true, false] {
                let family = addresses.filter { $0.isIPv4 == ipv4 }
                guard !family.isEmpty else { continue }
                let name = "nfqlb_\(takeover ? "takeover" : "local")\(ipv4 ? 4 : 6)"
                localProtocols.append((name, ipv4, takeover))
                out += """

                protocol static \(name) {
                    \(ipv4 ? "ipv4" : "ipv6");
                    check link on;                   # \(takeover ? "the other balancers' FULLNAT local addresses, announced with a longer AS path" : "this balancer's FULLNAT local addresses, while nfqlb runs")

                """
                for address in family { out += "    route \(address)/\(ipv4 ? 32 : 128) via \"\(liveDevice)\";\n" }
                out += "}\n"
            }
        }
        out += birdBFD(cluster)
        let hold = cluster.holdTime / 1000
        for (index, peer) in cluster.peers.enumerated() {
            let family = peer.address.isIPv4 ? "ipv4" : "ipv6"
            let exported = vips.filter { $0.isIPv4 == peer.address.isIPv4 }.map { ClusterConfig.protocolName(for: $0) }
                + localProtocols.filter { $0.ipv4 == peer.address.isIPv4 && !$0.takeover }.map(\.name)
            let takeover = localProtocols.filter { $0.ipv4 == peer.address.isIPv4 && $0.takeover }.map(\.name)
            var filter = exported.isEmpty ? "none" : "where " + exported.map { "proto = \"\($0)\"" }.joined(separator: " || ")
            if !takeover.isEmpty {
                let prepend = "bgp_path.prepend(\(cluster.localAS)); bgp_path.prepend(\(cluster.localAS));"
                filter = "filter {\n"
                    + (exported.isEmpty ? "" : "            if " + exported.map { "proto = \"\($0)\"" }.joined(separator: " || ") + " then accept;\n")
                    + "            if " + takeover.map { "proto = \"\($0)\"" }.joined(separator: " || ") + " then { \(prepend) accept; }\n"
                    + "            reject;\n        }"
            }
            out += """

            protocol bgp router\(index + 1) {
                local as \(cluster.localAS);
                neighbor \(peer.address)\(peer.interface.map { "%'\($0)'" } ?? "") as \(peer.remoteAS);
                hold time \(hold);
                keepalive time \(max(1, hold / 3));
                error wait time 1, 10;           # come back within seconds after a restart (default: up to 300)
            \(cluster.bfd == nil ? "" : "    bfd on;\n")    \(family) {
                    import none;
                    export \(filter);
                };
            }

            """
        }
        return out
    }

    /// FRR's `bgpd`/`bfdd` configuration for the router in front of the balancers, accepting any balancer from
    /// `balancers` (dynamic neighbors) and installing one ECMP route per VIP.
    public static func frr(_ config: BalancerConfig, cluster: ClusterConfig, balancers: [String]) -> String {
        let routerAS = cluster.peers.first?.remoteAS ?? 65000
        let hold = cluster.holdTime / 1000
        var out = """
        ! FRR configuration for the router in front of nfqlb balancers (nfqlb cluster config --router frr).
        ! Also set: sysctl net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1
        ! (spread by ports too, so one client's connections use every balancer).
        frr defaults datacenter
        !
        router bgp \(routerAS)
         no bgp ebgp-requires-policy
         timers bgp \(max(1, hold / 3)) \(hold)
         neighbor nfqlb peer-group
         neighbor nfqlb remote-as \(cluster.localAS)

        """
        if cluster.bfd != nil { out += " neighbor nfqlb bfd profile nfqlb\n" }
        for range in balancers { out += " bgp listen range \(range) peer-group nfqlb\n" }
        for family in ["ipv4", "ipv6"] where balancers.contains(where: { $0.contains(":") == (family == "ipv6") }) {
            out += """
             !
             address-family \(family) unicast
              neighbor nfqlb activate
              maximum-paths 16
             exit-address-family

            """
        }
        out += "exit\n!\n"
        if let bfd = cluster.bfd {
            out += """
            bfd
             profile nfqlb
              receive-interval \(bfd.interval)
              transmit-interval \(bfd.interval)
              detect-multiplier \(bfd.multiplier)
             exit
            exit
            !

            """
        }
        return out
    }

    /// The same for a BIRD 2 router: dynamic BGP neighbors from `balancers`, paths merged into ECMP routes.
    public static func birdRouter(_ config: BalancerConfig, cluster: ClusterConfig, balancers: [String]) -> String {
        let routerAS = cluster.peers.first?.remoteAS ?? 65000
        let hold = cluster.holdTime / 1000
        var out = """
        # BIRD 2 configuration for the router in front of nfqlb balancers (nfqlb cluster config --router bird).
        # Also set: sysctl net.ipv4.fib_multipath_hash_policy=1 net.ipv6.fib_multipath_hash_policy=1
        log syslog all;
        protocol device { }

        """
        for family in ["ipv4", "ipv6"] where balancers.contains(where: { $0.contains(":") == (family == "ipv6") }) {
            out += """

            protocol kernel kernel_\(family) {
                \(family) { import none; export all; };
                merge paths on;                  # one route with a next hop per balancer (ECMP)
            }

            """
        }
        out += birdBFD(cluster)
        for (index, range) in balancers.enumerated() {
            let family = range.contains(":") ? "ipv6" : "ipv4"
            out += """

            protocol bgp nfqlb\(index + 1) {
                local as \(routerAS);
                neighbor range \(range) as \(cluster.localAS);
                dynamic name "nfqlb_";
                hold time \(hold);
                keepalive time \(max(1, hold / 3));
            \(cluster.bfd == nil ? "" : "    bfd on;\n")    \(family) { import all; export none; add paths off; };
            }

            """
        }
        return out
    }

    /// BIRD's BFD protocol with the cluster's timers on every interface; empty without BFD.
    static func birdBFD(_ cluster: ClusterConfig) -> String {
        guard let bfd = cluster.bfd else { return "" }
        return """

        protocol bfd {
            interface "*" {
                min rx interval \(bfd.interval) ms;
                min tx interval \(bfd.interval) ms;
                multiplier \(bfd.multiplier);
            };
        }

        """
    }

    /// The prefixes the balancers peer from: `balancers` as given, else each peer's /24 (IPv4) or /64 (IPv6).
    public static func balancerRanges(_ cluster: ClusterConfig) -> [String] {
        if !cluster.balancers.isEmpty { return cluster.balancers }
        var ranges: [String] = []
        for peer in cluster.peers {
            let range: String
            if let v4 = peer.address.ipv4 {
                range = "\(IPAddress(ipv4: v4 & 0xFFFF_FF00))/24"
            } else {
                range = "\(IPAddress(high: peer.address.high, low: 0))/64"
            }
            if !ranges.contains(range) { ranges.append(range) }
        }
        return ranges
    }
}
