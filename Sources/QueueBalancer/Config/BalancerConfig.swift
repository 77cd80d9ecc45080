/// The whole configuration of one balancer: which NFQUEUEs it serves and which virtual services it balances.
/// Built by ``ConfigLoader`` from YAML; every value here has already been validated.
public struct BalancerConfig: Sendable, Equatable {
    /// NFQUEUE numbers, consecutive (iptables' `--queue-balance FIRST:LAST`); one worker thread each.
    public var queues: [UInt16]
    public var services: [VirtualService]
    /// Bound on tracked connections (`max-connections`).
    public var maxConnections: Int = 262_144
    /// Kernel queue length per queue (`queue-length`, NFQA_CFG_QUEUE_MAXLEN).
    public var queueLength: UInt32 = 8192
    /// Netlink socket receive and send buffer per queue, in MiB (`socket-buffer-mb`).
    public var socketBufferMiB: Int = 16
    public var timeouts: ConnectionTimeouts = .ipvsDefaults
    /// First fwmark (and routing table) of the DR real servers (`fwmark-base`).
    public var fwmarkBase: Fwmark = 0x1000
    /// FULLNAT local ports (`fullnat-ports`); must not overlap the kernel's `ip_local_port_range`.
    public var fullnatPorts: ClosedRange<UInt16> = 61000...65535
    /// `syn-queue`: an NFQUEUE of its own (not one of ``queues``) for the TCP SYNs that open connections on
    /// the Swift path, with one more worker; their later packets stay on ``queues``. A SYN flood then fills
    /// this queue only, and the established connections' packets keep their own.
    public var synQueue: UInt16?
    /// `metrics-listen`: where `nfqlb run` serves Prometheus metrics on `/metrics` (off when nil).
    public var metricsListen: Endpoint?
    /// `cluster`: several balancers share the VIPs behind ECMP (``ClusterConfig``); nil: this one alone.
    public var cluster: ClusterConfig?

    /// Every queue nfqlb binds: ``queues``, then ``synQueue``.
    public var allQueues: [UInt16] { queues + (synQueue.map { [$0] } ?? []) }

    /// Whether `service` forwards TCP packets of connections it does not know (``VirtualService/adoptMidstream``):
    /// as written, else on for DR and TUN services with a hashing scheduler (mh, sh) when balancers share the
    /// flows (a `cluster:` section).
    public func adoptsMidstream(_ service: VirtualService) -> Bool {
        service.adoptMidstream ?? (cluster != nil && service.canAdoptMidstream)
    }

    public init(queues: [UInt16], services: [VirtualService]) {
        self.queues = queues
        self.services = services
    }
}

/// How packets reach the real server, as LVS names its forwarding methods. Each has its forwarder, the
/// method's one home (``ForwardingMode/method``): ``NATForwarder``, ``FullNATForwarder``,
/// ``DirectRoutingForwarder``, ``TunnelForwarder``.
public enum ForwardingMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Destination rewritten to the real server; replies come back through the balancer and are rewritten.
    case nat
    /// Source and destination rewritten: the client's address becomes a local address of the balancer.
    case fullnat
    /// Unchanged packet steered to the real server's MAC: the verdict sets a fwmark, policy routing does the rest.
    case dr
    /// IPIP-encapsulated to the real server, which decapsulates (`nfqlb decap`) and answers directly.
    case tun

    public var description: String { rawValue }
}

/// A virtual service: `VIP:port/protocol`, like one `ipvsadm -A` line with its `-a` lines.
public struct VirtualService: Sendable, Equatable, CustomStringConvertible {
    public var name: String?
    public var vip: IPAddress
    public var port: UInt16
    public var transport: TransportProtocol
    public var mode: ForwardingMode
    public var scheduler: SchedulerKind
    public var reals: [RealServer]
    /// FULLNAT: the balancer's addresses on the server side that connections to the real servers leave from.
    public var localAddresses: [IPAddress]
    /// TUN: the outer source address, instead of the balancer's address on the route to each real server.
    public var tunnelSource: IPAddress?
    /// `scheduler-flags` (sh-fallback, sh-port, mh-fallback, mh-port) and `mh-table-size`.
    public var schedulerOptions = SchedulerOptions()
    /// `ops`: one-packet scheduling, every UDP datagram scheduled on its own (NAT, DR, TUN).
    public var onePacket = false
    /// `persistence`: seconds a client network keeps its real server after its last packet; 0 = off.
    public var persistence: UInt64 = 0
    /// `persistence-netmask` as a prefix length (IPv4 default 32, IPv6 default 128).
    public var persistencePrefix: Int = 128
    /// `drain`: seconds a real server left out of a new config keeps its established TCP connections
    /// (``RealServerLifecycle/draining``); 0 = removed at once.
    public var drain: UInt64 = 0
    /// `offload`: who carries a connection after its first packet (``Offload``).
    public var offload = Offload.none
    /// `health`: the default health check of the real servers (``HealthCheck``).
    public var health: HealthSettings?
    /// `sorry-server`: where new connections go while no real server is up.
    public var sorryServer: Endpoint?
    /// `quorum`: the weight of up real servers below which the service reports down.
    public var quorum: Quorum?
    /// `notify`: programs run on every health transition, with arguments KIND NAME STATE.
    public var notify: [String] = []
    /// `adopt-midstream` as written: a TCP packet other than a SYN with no connection here is scheduled by the
    /// table instead of dropped (DR/TUN with a hashing scheduler: another balancer's flow after ECMP moved it).
    /// nil: on when the config has a `cluster:` section and the service can (``BalancerConfig/adoptsMidstream(_:)``).
    public var adoptMidstream: Bool?

    public init(name: String? = nil, vip: IPAddress, port: UInt16, transport: TransportProtocol,
                mode: ForwardingMode = .nat, scheduler: SchedulerKind = .wlc, reals: [RealServer],
                localAddresses: [IPAddress] = []) {
        self.localAddresses = localAddresses
        self.name = name
        self.vip = vip
        self.port = port
        self.transport = transport
        self.mode = mode
        self.scheduler = scheduler
        self.reals = reals
    }

    /// The endpoint clients connect to.
    public var endpoint: Endpoint { Endpoint(address: vip, port: port) }

    /// TCP in DR or TUN with a scheduler that gives every balancer the same answer for a flow: a connection
    /// picked up midway goes to the real server that holds it.
    public var canAdoptMidstream: Bool {
        transport == .tcp && (mode == .dr || mode == .tun) && (scheduler == .mh || scheduler == .sh)
    }

    /// The health check of `real`: its own, else the service's; nil when neither has one.
    public func healthCheck(of real: RealServer) -> HealthCheck? { real.health?.check ?? health?.check }

    public var description: String { "\(endpoint)/\(transport)" }
}

/// Who carries a connection after nfqlb has scheduled it (`offload` in the config).
public enum Offload: String, Sendable, CaseIterable, CustomStringConvertible {
    /// nfqlb handles every packet of the connection in user space (the Swift path).
    case none
    /// nfqlb schedules the first packet and marks it; the kernel's conntrack (and NAT) carries the rest of the
    /// connection, in both directions (``ConntrackOffload``).
    case conntrack

    public var description: String { rawValue }
}

/// A real server behind a virtual service, like one `ipvsadm -a -r RIP:port -w weight` line.
public struct RealServer: Sendable, Equatable {
    public var address: IPAddress
    public var port: UInt16
    /// 0...65535; 0 means quiescent: no new connections.
    public var weight: UInt32
    /// Connection thresholds (`ipvsadm -x`/`-y`): at `upper` connections no new ones until back to `lower`
    /// (0: 3/4 of upper). 0 = no threshold.
    public var upper: Int = 0
    public var lower: Int = 0
    /// `health`: this server's own health settings over its service's.
    public var health: HealthSettings?

    public init(address: IPAddress, port: UInt16, weight: UInt32 = 1) {
        self.address = address
        self.port = port
        self.weight = weight
    }

    public var endpoint: Endpoint { Endpoint(address: address, port: port) }
}
