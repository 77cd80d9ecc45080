/// One LVS forwarding method in one place: what a packet of a connection becomes in each direction, what
/// becomes of the ICMP errors about its connections, which iptables rules it needs besides client -> VIP, and
/// what it needs from the kernel's queue. ``NATForwarder``, ``FullNATForwarder``, ``DirectRoutingForwarder`` and
/// ``TunnelForwarder`` are the four; ``Forwarder`` holds one per real server and dispatches to it.
///
/// The packet-path requirements allocate nothing, take no lock and log nothing; what happened is counted in
/// `counters`. The connection is given with both of its keys: the inbound key (client -> VIP, as the client
/// sends) and the reply key (real server -> client, or -> the local address under FULLNAT, as the real server
/// answers), so each direction's translation is read off the connection itself. See docs/ARCHITECTURE.md,
/// "Forwarders".
protocol ForwardingMethod: Sendable {
    /// What the method needs from the kernel's queue.
    static var queueNeeds: QueueNeeds { get }

    /// Rules that queue the packets of this method's connections coming back through the balancer (NAT and
    /// FULLNAT replies), for one service; the client -> VIP rule is every method's.
    static func replyRules(for service: VirtualService, config: BalancerConfig) -> [QueueRule]
    /// The sources of ICMP errors about this method's connections other than the client side, as iptables
    /// matches (`-s RIP/32`) with their comments; the type match is added for each error type.
    static func errorSources(for service: VirtualService) -> [QueueRule]
    /// Addresses this method writes as packets' sources, which packets arriving from outside must therefore
    /// never carry (dropped before queueing).
    static func spoofableSources(for service: VirtualService) -> [IPAddress]
    /// With `offload: conntrack`, the rules that make the kernel carry the connection after nfqlb marked its
    /// first packet (NAT: a DNAT per mark; FULLNAT: also an SNAT; DR: a rule that leaves the SYN untracked).
    static func offloadRules(for service: VirtualService, marks: [ConntrackOffload.MarkKey: Fwmark],
                             config: BalancerConfig) -> [ChainRule]

    /// A client -> VIP packet of `connection`.
    func forward(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
                 counters: inout CounterBatch) -> Verdict
    /// A real server -> client packet of `connection`.
    func reply(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
               counters: inout CounterBatch) -> Verdict
    /// An ICMP error from the client side about a reply of `connection` (it quotes VIP -> client): sent on to
    /// the real server, as the connection's packets are.
    func forwardError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                      of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict
    /// An ICMP error from the real server about a forwarded packet of `connection` (it quotes the packet as
    /// the real server received it): sent on to the client, from the VIP.
    func returnError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                     of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict
}

extension ForwardingMethod {
    static func replyRules(for service: VirtualService, config: BalancerConfig) -> [QueueRule] { [] }
    static func errorSources(for service: VirtualService) -> [QueueRule] { [] }
    static func spoofableSources(for service: VirtualService) -> [IPAddress] { [] }
    static func offloadRules(for service: VirtualService, marks: [ConntrackOffload.MarkKey: Fwmark],
                             config: BalancerConfig) -> [ChainRule] { [] }

    /// The DNAT of an offloaded connection to `real`, for packets carrying `mark`.
    static func destinationNAT(_ service: VirtualService, to real: RealServer, mark: Fwmark) -> ChainRule {
        let proto = service.transport.description
        let target = real.address.isIPv4 ? "\(real.address):\(real.port)" : "[\(real.address)]:\(real.port)"
        return ChainRule(chain: .destinationNAT, rule: "-d \(IptablesRules.host(service.vip)) -p \(proto) -m \(proto) --dport \(service.port) -m mark --mark \(mark)/\(ConntrackOffload.markMask) -m comment --comment \"nfqlb \(service.mode) \(service): offloaded to \(real.endpoint)\" -j DNAT --to-destination \(target)")
    }
}

/// The methods whose real servers answer the client directly (DR, TUN): nothing of their connections comes
/// back through the balancer, so no rule queues it.
protocol DirectReturnMethod: ForwardingMethod {}

extension DirectReturnMethod {
    /// A packet from the real server that matches a connection's reply key anyway (queued by another
    /// service's rule) is not this connection's business.
    func reply(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
               counters: inout CounterBatch) -> Verdict {
        counters.count(.passedUnmatched)
        return .accept
    }

    /// The real server's errors go to the client directly, like its answers.
    func returnError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                     of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        counters.count(.passedICMP)
        return .accept
    }
}

/// What a forwarding method needs from the kernel's queue, and so what a configuration needs
/// (``PacketHandler/copyRange``, ``PacketHandler/queueFlags``).
struct QueueNeeds: Sendable, Equatable {
    /// The method rewrites or replaces packets, so every byte must be copied to user space; DR only reads
    /// headers (a short copy range: 23% less CPU per packet).
    var wholePackets: Bool
    /// The method can take GSO super-packets (NFQA_CFG_F_GSO): whole 64 KB packets in one queue event, their
    /// checksums unfinished (``TransportChecksum``). NAT, FULLNAT and DR can; TUN cannot: an outer header in
    /// front of a super-packet leaves the kernel splitting it at the inner packet's offsets, and nfqlb cannot
    /// tell whether each segment fits the tunnel (docs/ARCHITECTURE.md, "Kernel facts").
    var gsoSuperPackets: Bool

    /// What the queues must deliver for `config`: whole packets when any service needs them, GSO super-packets
    /// only when every service can take them.
    init(for config: BalancerConfig) {
        let services = config.services.map(QueueNeeds.init(for:))
        wholePackets = services.isEmpty || services.contains { $0.wholePackets }
        gsoSuperPackets = !services.isEmpty && services.allSatisfy { $0.gsoSuperPackets }
    }

    /// What one service needs: its method's needs, or with the conntrack fast path only the headers of first
    /// packets, whatever their size (the verdict is a mark, no payload).
    init(for service: VirtualService) {
        self = service.offload == .conntrack ? QueueNeeds(wholePackets: false, gsoSuperPackets: true)
                                             : service.mode.method.queueNeeds
    }

    init(wholePackets: Bool, gsoSuperPackets: Bool) {
        self.wholePackets = wholePackets
        self.gsoSuperPackets = gsoSuperPackets
    }
}

/// How the connections of one real server are forwarded: its method and what the method knows about it.
/// The service table keeps one per real-server number (``RealServerID``), so a connection is always forwarded
/// by the method of its own server, also after the server left the config while its connections drain.
/// A small value; dispatch is a switch (no existential, no allocation).
enum Forwarder: Sendable {
    case nat(NATForwarder)
    case fullNAT(FullNATForwarder)
    case directRouting(DirectRoutingForwarder)
    case tunnel(TunnelForwarder)

    /// The forwarder of `real` behind `service` (control path). Throws when what the method needs cannot be
    /// had: a FULLNAT port allocator beyond the tracker's capacity, a TUN path that was not resolved.
    init(service: VirtualService, real: RealServer, tracker: ConnectionTracker, directRoutes: [DirectRoute],
         offloadMarks: [ConntrackOffload.MarkKey: Fwmark], tunnelPaths: [IPAddress: TunnelPath]) throws(ConfigUpdateError) {
        switch service.mode {
        case .nat:
            self = .nat(NATForwarder(offloadMark: offloadMarks[ConntrackOffload.MarkKey(service: service, real: real)]))
        case .fullnat:
            self = .fullNAT(try FullNATForwarder(service: service, real: real, tracker: tracker, offloadMarks: offloadMarks))
        case .dr:
            self = .directRouting(try DirectRoutingForwarder(real: real, routes: directRoutes,
                                                             offloaded: service.offload == .conntrack))
        case .tun:
            self = .tunnel(try TunnelForwarder(service: service, real: real, paths: tunnelPaths))
        }
    }

    /// The forwarder of numbers no real server has had yet. Never used: a connection's number is always that of
    /// a real server of this table or an earlier one. NAT's forwarder is the one that needs no data.
    static let unassigned = Forwarder.nat(NATForwarder(offloadMark: nil))

    func forward(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
                 counters: inout CounterBatch) -> Verdict {
        switch self {
        case .nat(let method): method.forward(bytes, packet, of: connection, counters: &counters)
        case .fullNAT(let method): method.forward(bytes, packet, of: connection, counters: &counters)
        case .directRouting(let method): method.forward(bytes, packet, of: connection, counters: &counters)
        case .tunnel(let method): method.forward(bytes, packet, of: connection, counters: &counters)
        }
    }

    func reply(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
               counters: inout CounterBatch) -> Verdict {
        switch self {
        case .nat(let method): method.reply(bytes, packet, of: connection, counters: &counters)
        case .fullNAT(let method): method.reply(bytes, packet, of: connection, counters: &counters)
        case .directRouting(let method): method.reply(bytes, packet, of: connection, counters: &counters)
        case .tunnel(let method): method.reply(bytes, packet, of: connection, counters: &counters)
        }
    }

    func forwardError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                      of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        switch self {
        case .nat(let method): method.forwardError(bytes, error, of: connection, counters: &counters)
        case .fullNAT(let method): method.forwardError(bytes, error, of: connection, counters: &counters)
        case .directRouting(let method): method.forwardError(bytes, error, of: connection, counters: &counters)
        case .tunnel(let method): method.forwardError(bytes, error, of: connection, counters: &counters)
        }
    }

    func returnError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                     of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        switch self {
        case .nat(let method): method.returnError(bytes, error, of: connection, counters: &counters)
        case .fullNAT(let method): method.returnError(bytes, error, of: connection, counters: &counters)
        case .directRouting(let method): method.returnError(bytes, error, of: connection, counters: &counters)
        case .tunnel(let method): method.returnError(bytes, error, of: connection, counters: &counters)
        }
    }

    /// FULLNAT: the local address a new connection of `flow` leaves from; nil for the other methods, which keep
    /// the client's address.
    func localAddress(for flow: FlowKey) -> ConnectionTracker.LocalAddress? {
        guard case .fullNAT(let method) = self else { return nil }
        return method.localAddress(for: flow)
    }

    /// Whether the real server's answers come back through the balancer (NAT, FULLNAT), so that even a
    /// connectionless (`ops`) datagram needs a tracked entry to map the answer back.
    var seesReplies: Bool {
        switch self {
        case .nat, .fullNAT: true
        case .directRouting, .tunnel: false
        }
    }
}

extension ForwardingMode {
    /// The forwarding method of this mode: its rules and queue needs (control path).
    var method: any ForwardingMethod.Type {
        switch self {
        case .nat: NATForwarder.self
        case .fullnat: FullNATForwarder.self
        case .dr: DirectRoutingForwarder.self
        case .tun: TunnelForwarder.self
        }
    }
}
