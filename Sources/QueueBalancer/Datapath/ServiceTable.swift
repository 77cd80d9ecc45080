/// Everything the packet path reads about the virtual services of one config: built by the control path,
/// never changed afterwards, replaced as a whole on a config change (``PacketHandler/update(to:now:tunnelPaths:)``).
final class ServiceTable: Sendable {
    /// One virtual service as the packet path needs it.
    struct Service: Sendable {
        let key: Key
        let mode: ForwardingMode
        /// The real servers in config order, their registry numbers (which index ``routes``: DR marks, TUN
        /// paths) and live state.
        let reals: [Endpoint]
        let numbers: [UInt32]
        let loads: [RealServerLoad]
        /// FULLNAT: the local addresses, and the port allocator of each (local, real) at
        /// `localIndex * reals.count + realIndex`.
        let locals: [IPAddress]
        let allocators: [Int32]
        let scheduler: any Scheduler
        /// Persistence templates, when the service has `persistence` (kept across config changes).
        let templates: PersistenceTemplates?
        /// `ops`: every datagram scheduled on its own.
        let onePacket: Bool
    }

    /// How to forward to one real server number, for connections tracked to it, also after it left the config.
    struct Route: Sendable {
        var mark: UInt32 = 0
        var tunnel = TunnelPath(source: IPAddress(ipv4: 0), mtu: 1500)
    }

    /// The match fields of `services`, same order: plain values, so matching a packet retains nothing.
    struct Key: Sendable, Equatable {
        let vip: IPAddress
        let port: UInt16
        let transport: TransportProtocol
    }

    let services: [Service]
    let keys: [Key]
    /// By registry number.
    let routes: [Route]

    private init(services: [Service], routes: [Route]) {
        self.services = services
        keys = services.map(\.key)
        self.routes = routes
    }

    static func empty(capacity: Int) -> ServiceTable {
        ServiceTable(services: [], routes: Array(repeating: Route(), count: capacity))
    }

    /// The table for `config`: registers its real servers (``RealServerRegistry/apply(_:now:)``), keeps the
    /// routes of servers that left but may still carry connections and the persistence templates of services
    /// that stay, and builds fresh schedulers.
    convenience init(config: BalancerConfig, previous: ServiceTable?, tracker: ConnectionTracker, registry: RealServerRegistry,
         tunnelPaths: [IPAddress: TunnelPath], now: UInt64) throws(ConfigUpdateError) {
        let directRoutes = config.directRoutes
        // The steps that can fail, before anything changes: room in the registry, then the port allocators (an
        // allocator created for a refused config stays, unused, until a restart).
        do {
            try registry.check(config)
        } catch {
            throw ConfigUpdateError(reason: error.description)
        }
        if let previous {
            // DR: a server that left earlier and still drains keeps its fwmark; no other server may take it.
            for entry in registry.servers() where entry.lifecycle == .draining || entry.lifecycle == .removed {
                let mark = previous.routes[Int(entry.number)].mark
                guard mark != 0, let taker = directRoutes.first(where: { $0.mark == mark }),
                      taker.realServer != entry.key.real.address else { continue }
                throw ConfigUpdateError(reason: "fwmark 0x\(String(mark, radix: 16)) of DR real server \(entry.key.real.address), still draining, would go to \(taker.realServer): wait until it has drained, or restart")
            }
        }
        var allocatorsByService: [[Int32]] = []
        for service in config.services {
            var list: [Int32] = []
            for local in service.localAddresses {
                for real in service.reals {
                    let key = ConnectionTracker.PortAllocatorKey(local: local, real: real.endpoint, transport: service.transport)
                    guard let index = tracker.portAllocator(for: key) else {
                        throw ConfigUpdateError(reason: "too many FULLNAT (local address, real server) pairs for this run: restart nfqlb")
                    }
                    list.append(index)
                }
            }
            allocatorsByService.append(list)
        }
        let numbers: [[UInt32]]
        do {
            numbers = try registry.apply(config, now: now)     // cannot fail after the check above
        } catch {
            throw ConfigUpdateError(reason: error.description)
        }
        var routes = previous?.routes ?? Array(repeating: Route(), count: registry.capacity)
        var services: [Service] = []
        for (index, service) in config.services.enumerated() {
            let marks = service.reals.map { real in directRoutes.first { $0.realServer == real.address }?.mark ?? 0 }
            let tunnels = service.reals.map { real in
                var path = tunnelPaths[real.address] ?? TunnelPath(source: IPAddress(ipv4: 0), mtu: 1500)
                if let source = service.tunnelSource { path.source = source }
                return path
            }
            for (i, number) in numbers[index].enumerated() {
                routes[Int(number)] = Route(mark: marks[i], tunnel: tunnels[i])
            }
            let loads = numbers[index].map { registry.loads[Int($0)] }
            let key = Key(vip: service.vip, port: service.port, transport: service.transport)
            // Templates survive a change that keeps the service and its persistence settings.
            var templates: PersistenceTemplates?
            if service.persistence > 0 {
                if let old = previous?.services.first(where: { $0.key == key }), let kept = old.templates, kept.timeout == service.persistence * 1000,
                   kept.prefixLength == service.persistencePrefix {
                    templates = kept
                } else {
                    templates = PersistenceTemplates(timeoutSeconds: service.persistence, prefixLength: service.persistencePrefix)
                }
            }
            services.append(Service(
                key: key, mode: service.mode,
                reals: service.reals.map(\.endpoint), numbers: numbers[index], loads: loads,
                locals: service.localAddresses, allocators: allocatorsByService[index],
                scheduler: service.scheduler.makeScheduler(loads: loads, options: service.schedulerOptions,
                                                           names: service.reals.map(\.endpoint)),
                templates: templates, onePacket: service.onePacket))
        }
        self.init(services: services, routes: routes)
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
    static func check(from old: BalancerConfig, to new: BalancerConfig, headersOnly: Bool) throws(ConfigUpdateError) {
        func fixed(_ name: String, _ same: Bool) throws(ConfigUpdateError) {
            guard same else { throw ConfigUpdateError(reason: "\(name) cannot change while nfqlb runs: restart it") }
        }
        try fixed("queues", old.queues == new.queues)
        try fixed("max-connections", old.maxConnections == new.maxConnections)
        try fixed("queue-length", old.queueLength == new.queueLength)
        try fixed("socket-buffer-mb", old.socketBufferMiB == new.socketBufferMiB)
        try fixed("timeouts", old.timeouts == new.timeouts)
        try fixed("fwmark-base", old.fwmarkBase == new.fwmarkBase)
        try fixed("fullnat-ports", old.fullnatPorts == new.fullnatPorts)
        if headersOnly && !new.services.allSatisfy({ $0.mode == .dr }) {
            throw ConfigUpdateError(reason: "the queues copy packet headers only (every service was DR): a \(new.services.first { $0.mode != .dr }!.mode) service needs a restart")
        }
        // DR: a real server's fwmark is its policy route, installed by the setup script in config order. A
        // server that stays must keep its mark, and a leaving one's mark must not go to another server while
        // its connections drain.
        let before = Dictionary(old.directRoutes.map { ($0.realServer, $0.mark) }, uniquingKeysWith: { a, _ in a })
        for route in new.directRoutes {
            if let mark = before[route.realServer], mark != route.mark {
                throw ConfigUpdateError(reason: "DR real server \(route.realServer) would move from fwmark 0x\(String(mark, radix: 16)) to 0x\(String(route.mark, radix: 16)): keep the DR real servers in their order (leave a removed one listed with weight 0 until it has drained) or restart")
            }
            if let owner = before.first(where: { $0.value == route.mark && $0.key != route.realServer })?.key {
                throw ConfigUpdateError(reason: "fwmark 0x\(String(route.mark, radix: 16)) of DR real server \(owner) would go to \(route.realServer): keep the DR real servers in their order (leave a removed one listed with weight 0 until it has drained) or restart")
            }
        }
    }
}
