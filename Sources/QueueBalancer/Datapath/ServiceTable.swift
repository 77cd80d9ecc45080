/// Everything the packet path reads about the virtual services of one config: built by the control path,
/// never changed afterwards, replaced as a whole on a config change (``PacketHandler/update(to:now:tunnelPaths:)``,
/// published through a ``TableSwap``).
final class ServiceTable: Sendable {
    /// One virtual service as the packet path needs it.
    struct Service: Sendable {
        let key: Key
        /// The real servers in config order, their numbers (which index ``ServiceTable/forwarders``) and live
        /// state.
        let reals: [Endpoint]
        let numbers: [RealServerID]
        let loads: [RealServerLoad]
        let scheduler: any Scheduler
        /// Persistence templates, when the service has `persistence` (kept across config changes).
        let templates: PersistenceTemplates?
        /// `ops`: every datagram scheduled on its own.
        let onePacket: Bool
        /// `offload: conntrack`: the kernel carries the connection after its first packet.
        let offloaded: Bool
        /// TCP packets of unknown connections are scheduled, not dropped (``BalancerConfig/adoptsMidstream(_:)``).
        var adoptMidstream = false
    }

    /// The match fields of a service: plain values, so matching a packet retains nothing.
    struct Key: Sendable, Equatable {
        let vip: IPAddress
        let port: UInt16
        let transport: TransportProtocol
    }

    let services: [Service]
    /// The match fields of `services`, same order.
    let keys: [Key]
    /// How to forward to each real server number (``RealServerID/index``), for the connections tracked to it,
    /// also after it left the config.
    let forwarders: [Forwarder]
    /// The real server of each kernel connection on the conntrack fast path (``OffloadMonitor``).
    let offloadOwners: [OffloadOwner: RealServerID]

    /// FULLNAT: the local addresses replies come to (this balancer's and, in a cluster, the ones it takes
    /// over) and the ports it allocates there: such a packet with no connection is for no local socket.
    let localReplyAddresses: [IPAddress]
    let localPorts: ClosedRange<UInt16>

    private init(services: [Service], forwarders: [Forwarder], offloadOwners: [OffloadOwner: RealServerID],
                 localReplyAddresses: [IPAddress] = [], localPorts: ClosedRange<UInt16> = 1...0xFFFF) {
        self.services = services
        keys = services.map(\.key)
        self.forwarders = forwarders
        self.offloadOwners = offloadOwners
        self.localReplyAddresses = localReplyAddresses
        self.localPorts = localPorts
    }

    /// Whether `key` goes to a FULLNAT local address and port (a real server's reply, whatever its connection).
    func isLocalReply(_ key: FlowKey) -> Bool {
        localPorts.contains(key.destination.port) && localReplyAddresses.contains(key.destination.address)
    }

    static func empty(capacity: Int) -> ServiceTable {
        ServiceTable(services: [], forwarders: Array(repeating: .unassigned, count: capacity), offloadOwners: [:])
    }

    /// The table for `config`: registers its real servers (``RealServerRegistry/apply(_:now:)``), keeps the
    /// forwarders of servers that left but may still carry connections and the persistence templates of
    /// services that stay, and builds fresh schedulers. Nothing changes when it throws.
    convenience init(config: BalancerConfig, previous: ServiceTable?, tracker: ConnectionTracker,
                     tunnelPaths: [IPAddress: TunnelPath], now: UInt64) throws(ConfigUpdateError) {
        let registry = tracker.registry
        let directRoutes = config.directRoutes
        let offloadMarks = ConntrackOffload.marks(for: config)
        // The steps that can fail, before anything changes: room in the registry, then each real server's
        // forwarder (a FULLNAT port allocator created for a refused config stays, unused, until a restart).
        do {
            try registry.check(config)
        } catch {
            throw ConfigUpdateError(reason: error.description)
        }
        if let previous {
            try DirectRoutingForwarder.checkDrainingMarks(registry, previous: previous.forwarders, routes: directRoutes)
        }
        var forwardersByService: [[Forwarder]] = []
        for service in config.services {
            var list: [Forwarder] = []
            for real in service.reals {
                list.append(try Forwarder(service: service, real: real, tracker: tracker, directRoutes: directRoutes,
                                          offloadMarks: offloadMarks, tunnelPaths: tunnelPaths))
            }
            forwardersByService.append(list)
        }
        let numbers: [[RealServerID]]
        do {
            numbers = try registry.apply(config, now: now)     // cannot fail after the check above
        } catch {
            throw ConfigUpdateError(reason: error.description)
        }
        var forwarders = previous?.forwarders ?? Array(repeating: .unassigned, count: registry.capacity)
        var services: [Service] = []
        for (index, service) in config.services.enumerated() {
            for (number, forwarder) in zip(numbers[index], forwardersByService[index]) {
                forwarders[number.index] = forwarder
            }
            let loads = numbers[index].map { registry[$0] }
            let key = Key(vip: service.vip, port: service.port, transport: service.transport)
            services.append(Service(
                key: key, reals: service.reals.map(\.endpoint), numbers: numbers[index], loads: loads,
                scheduler: service.scheduler.makeScheduler(loads: loads, options: service.schedulerOptions,
                                                           names: service.reals.map(\.endpoint)),
                templates: Self.templates(for: service, key: key, previous: previous), onePacket: service.onePacket,
                offloaded: service.offload == .conntrack, adoptMidstream: config.adoptsMidstream(service)))
        }
        let owners = ConntrackOffload.owners(for: config).mapValues { numbers[$0.service][$0.real] }
        self.init(services: services, forwarders: forwarders, offloadOwners: owners,
                  localReplyAddresses: RoutingConfig.localAddresses(config) + (config.cluster?.takeoverLocalAddresses ?? []),
                  localPorts: config.fullnatPorts)
    }

    /// Templates survive a change that keeps the service and its persistence settings.
    private static func templates(for service: VirtualService, key: Key, previous: ServiceTable?) -> PersistenceTemplates? {
        guard service.persistence > 0 else { return nil }
        if let old = previous?.services.first(where: { $0.key == key }), let kept = old.templates,
           kept.timeout == service.persistence * 1000, kept.prefixLength == service.persistencePrefix {
            return kept
        }
        return PersistenceTemplates(timeoutSeconds: service.persistence, prefixLength: service.persistencePrefix)
    }

    func matchService(_ packet: IPPacket) -> Int? {
        matchService(address: packet.destination, port: packet.destinationPort, transport: packet.transport)
    }

    /// The index of the service VIP:port/transport, if there is one.
    func matchService(address: IPAddress, port: UInt16, transport: TransportProtocol) -> Int? {
        keys.withUnsafeBufferPointer { keys in
            for i in keys.indices where keys[i].vip == address && keys[i].port == port && keys[i].transport == transport {
                return i
            }
            return nil
        }
    }
}

/// Why a running balancer refused a new config: the running one is kept.
public struct ConfigUpdateError: Error, Equatable, CustomStringConvertible {
    public var reason: String

    public init(reason: String) { self.reason = reason }

    public var description: String { reason }

    /// Refuses changes that a running balancer cannot make: those fixed when the queues were bound or the
    /// tracker was sized, and DR fwmarks that would move under connections in flight.
    static func check(from old: BalancerConfig, to new: BalancerConfig, queues: QueueNeeds) throws(ConfigUpdateError) {
        func fixed(_ name: String, _ same: Bool) throws(ConfigUpdateError) {
            guard same else { throw ConfigUpdateError(reason: "\(name) cannot change while nfqlb runs: restart it") }
        }
        try fixed("queues", old.queues == new.queues)
        try fixed("syn-queue", old.synQueue == new.synQueue)
        try fixed("max-connections", old.maxConnections == new.maxConnections)
        try fixed("queue-length", old.queueLength == new.queueLength)
        try fixed("socket-buffer-mb", old.socketBufferMiB == new.socketBufferMiB)
        try fixed("timeouts", old.timeouts == new.timeouts)
        try fixed("fwmark-base", old.fwmarkBase == new.fwmarkBase)
        try fixed("fullnat-ports", old.fullnatPorts == new.fullnatPorts)
        try fixed("metrics-listen", old.metricsListen == new.metricsListen)
        if !queues.wholePackets, let service = new.services.first(where: { QueueNeeds(for: $0).wholePackets }) {
            throw ConfigUpdateError(reason: "the queues copy packet headers only (every service was DR or offloaded): a \(service.mode) service needs a restart")
        }
        if queues.gsoSuperPackets, let service = new.services.first(where: { !QueueNeeds(for: $0).gsoSuperPackets }) {
            throw ConfigUpdateError(reason: "the queues deliver GSO super-packets, which a \(service.mode) service cannot take: restart")
        }
        try DirectRoutingForwarder.checkMarks(from: old, to: new)
        try ConntrackOffload.checkMarks(from: old, to: new)
    }
}
