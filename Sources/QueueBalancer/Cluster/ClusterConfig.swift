/// The `cluster:` section: this balancer is one of several behind a router that spreads flows with ECMP, and
/// announces its VIPs over BGP through the routing daemon the operator runs (BIRD), only while it serves them.
/// nfqlb speaks no routing protocol itself: it prints the daemon's configuration (`nfqlb cluster config`) and
/// switches the announcement through the daemon's control socket (docs/ARCHITECTURE.md, "Several balancers").
public struct ClusterConfig: Sendable, Equatable {
    /// The keys as written (``ConfigDocument`` writes them back).
    public var document: JSONValue
    /// This balancer's autonomous system number (0 when it does not announce).
    public var localAS: UInt32
    /// BGP router id (an IPv4 address); nil: the routing daemon picks one of the host's addresses.
    public var routerID: IPAddress?
    /// The routers this balancer peers with; none: it announces nothing (active/backup with `sync` only, the
    /// addresses moved by keepalived or the like).
    public var peers: [Peer]

    /// Whether this balancer announces its VIPs over BGP (through BIRD).
    public var announces: Bool { !peers.isEmpty }
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

    /// Connection sync between the balancers (NAT, FULLNAT); nil: none.
    public var sync: Sync?
    /// FULLNAT: the other balancers' local addresses, announced here with a longer AS path so that their real
    /// servers' replies reach this balancer (which holds the synced connections) when their own is gone.
    public var takeoverLocalAddresses: [IPAddress] = []

    /// `cluster.sync`: where this balancer receives the others' connections and where it sends its own.
    public struct Sync: Sendable, Equatable {
        /// The address and UDP port this balancer receives on (and sends from).
        public var listen: Endpoint
        /// The other balancers' `listen` endpoints.
        public var peers: [Endpoint]
        /// Where the shared key was read from, and the key (HMAC-SHA256 of every message).
        public var keyFile: String
        public var key: [UInt8]
        /// How often changes are collected and sent (ms).
        public var interval: UInt64 = 200
        /// Every connection is sent again at least this often (ms), so that copies never expire while the
        /// connection lives, and a balancer that missed messages catches up.
        public var refresh: UInt64 = 30_000
        /// The most this balancer sends, in bytes per second to each peer; what does not fit waits for the next
        /// interval (new connections and removals first).
        public var maxRate: UInt64 = 10_000_000

        /// The tracker's hash seed when connections are synced: the same on every balancer with the same key
        /// (a FULLNAT connection's local port chooses its lock stripe, so a copy must hash as the original), and
        /// secret as the key is.
        public var trackerSeed: UInt64 {
            Digest.sha256(Array("nfqlb tracker seed".utf8) + key).prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
        }
    }

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
        for vip in RoutingConfig.vips(config) where announces && !peers.contains(where: { $0.address.isIPv4 == vip.isIPv4 }) {
            out.append("\(vip) is never announced: no peer of its family")
        }
        for service in config.services {
            switch service.mode {
            case .nat where sync == nil:
                out.append("\(service) (nat): its connections break when its balancer is lost (no cluster sync); and replies return only through the real servers' gateway: run NAT active/backup")
            case .nat:
                out.append("\(service) (nat): replies return only through the real servers' gateway: run NAT active/backup (the backup holds the synced connections)")
            case .fullnat where sync == nil:
                out.append("\(service) (fullnat): its connections break when the router moves them to another balancer (no cluster sync)")
            case .fullnat:
                break
            case .dr, .tun:
                if service.transport == .tcp && !config.adoptsMidstream(service) {
                    out.append("\(service) (\(service.mode) \(service.scheduler)): connections moved to another balancer are dropped (adopt-midstream needs mh or sh)")
                }
            }
        }
        return out
    }
}
