/// The `cluster:` section: this balancer is one of several behind a router that spreads flows with ECMP, and
/// announces its VIPs over BGP through the routing daemon the operator runs (BIRD), only while it serves them.
/// nfqlb speaks no routing protocol itself: it prints the daemon's configuration (`nfqlb cluster config`) and
/// switches the announcement through the daemon's control socket (docs/ARCHITECTURE.md, "Several balancers").
public struct ClusterConfig: Sendable, Equatable {
    /// The keys as written (``ConfigDocument`` writes them back).
    public var document: JSONValue
    /// This balancer's autonomous system number.
    public var localAS: UInt32
    /// BGP router id (an IPv4 address); nil: the routing daemon picks one of the host's addresses.
    public var routerID: IPAddress?
    /// The routers this balancer peers with.
    public var peers: [Peer]
    /// BFD on every session; nil: off (the BGP hold timer alone then detects a dead balancer: seconds).
    public var bfd: BFD? = BFD()
    /// BGP hold time (ms); keepalives every third of it.
    public var holdTime: UInt64 = 9000
    /// The routing daemon's control socket.
    public var birdSocket = "/run/bird/bird.ctl"
    /// After withdrawing, how long to keep serving so the router's forwarding follows (ms).
    public var withdrawGrace: UInt64 = 500
    /// The prefixes the balancers peer from (the router's dynamic neighbors); empty: each peer's /24 or /64.
    public var balancers: [String] = []

    public struct Peer: Sendable, Equatable {
        public var address: IPAddress
        public var remoteAS: UInt32
        /// The interface the peer is on (for BFD and IPv6 link-local peers); nil: BIRD finds it.
        public var interface: String?
    }

    public struct BFD: Sendable, Equatable {
        /// Transmit and receive interval (ms).
        public var interval: UInt64 = 100
        /// Missed packets before the session is down: detection takes interval × multiplier.
        public var multiplier = 3
    }

    /// The name of BIRD's static protocol that holds `vip` (one per VIP, so each is announced on its own).
    public static func protocolName(for vip: IPAddress) -> String {
        let text = "\(vip)".map { $0.isLetter || $0.isNumber ? $0 : "_" }
        return "nfqlb_vip_" + String(text)
    }

    /// What `nfqlb check` points out about a cluster: VIPs no peer of their family would carry, and services
    /// whose connections need the balancer that holds them (NAT, FULLNAT: no connection sync yet) or a table
    /// that differs between balancers (DR/TUN without mh or sh).
    public func warnings(for config: BalancerConfig) -> [String] {
        var out: [String] = []
        for vip in RoutingConfig.vips(config) where !peers.contains(where: { $0.address.isIPv4 == vip.isIPv4 }) {
            out.append("\(vip) is never announced: no peer of its family")
        }
        for service in config.services {
            switch service.mode {
            case .nat, .fullnat:
                out.append("\(service) (\(service.mode)): its connections break when the router moves them to another balancer (no connection sync yet); run it on one balancer")
            case .dr, .tun:
                if service.transport == .tcp && !config.adoptsMidstream(service) {
                    out.append("\(service) (\(service.mode) \(service.scheduler)): connections moved to another balancer are dropped (adopt-midstream needs mh or sh)")
                }
            }
        }
        return out
    }
}
