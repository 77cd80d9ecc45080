import Synchronization

/// The balancer's per-packet pipeline, independent of the kernel queue: parse -> classify (virtual service,
/// reply, ICMP error) -> track and schedule -> the real server's ``Forwarder`` -> ``Verdict``. Tests feed it
/// byte arrays; queue workers feed it the kernel's buffer. See docs/ARCHITECTURE.md, "The packet's walk".
///
/// Allocation-free, no logging, one tracker stripe lock per packet (ICMP errors included).
///
/// Config changes (``update(to:now:tunnelPaths:)``): what the packet path reads about the virtual services
/// is one immutable ``ServiceTable``, published through a ``TableSwap``; real servers keep their
/// ``RealServerID``, so connections, counts and templates of servers that stay are untouched. Callers outside
/// the queue workers (tests, benchmarks) must not call ``handle(_:now:counters:)`` while another thread
/// updates.
public final class PacketHandler: PacketProcessor {
    public let tracker: ConnectionTracker
    /// The real servers' numbers, weights, lifecycle and counts (the tracker's).
    public var registry: RealServerRegistry { tracker.registry }
    /// What the queues deliver, fixed for the handler's life (they are bound with it): headers only when every
    /// service is DR or offloaded, GSO super-packets when every service's method can take them (not TUN).
    let queueNeeds: QueueNeeds
    /// Whether the queues copy headers only (``copyRange`` is ``headerCopyRange``).
    public var headersOnly: Bool { !queueNeeds.wholePackets }
    /// Bytes copied per packet when only headers are read: the largest IPv4 header (60), or the IPv6 header
    /// with 100 bytes of extension headers, and the TCP header up to the flags.
    public static let headerCopyRange: UInt32 = 160

    public var copyRange: UInt32 { queueNeeds.wholePackets ? QueueSocket.wholePackets : PacketHandler.headerCopyRange }

    public var queueFlags: QueueSocket.Flags { queueNeeds.gsoSuperPackets ? .gso : [] }

    /// DR on the conntrack fast path creates the kernel's connection at the SYN (a reload may add such a
    /// service, so every worker is ready for it).
    public var createsKernelConnections: Bool { true }

    private let tables: TableSwap<ServiceTable>
    /// The config being served; the lock also serialises config changes.
    private let control: Lock<BalancerConfig>

    /// - Parameters:
    ///   - tracker: the connection table, and through it the real-server registry.
    ///   - tunnelPaths: TUN: the outer source and path MTU towards each real server (see
    ///     ``TunnelPath/resolve(to:)``); a service's `tunnel-source` overrides the source.
    ///   - workers: how many queue workers will call ``enterBatch(worker:)``.
    public init(config: BalancerConfig, tracker: ConnectionTracker, tunnelPaths: [IPAddress: TunnelPath] = [:],
                workers: Int = 1, now: UInt64 = monotonicMilliseconds()) {
        self.tracker = tracker
        queueNeeds = QueueNeeds(for: config)
        // A config that passed ConfigLoader fits an empty registry; if not, serve nothing rather than crash.
        let table = (try? ServiceTable(config: config, previous: nil, tracker: tracker, tunnelPaths: tunnelPaths, now: now))
            ?? ServiceTable.empty(capacity: tracker.registry.capacity)
        tables = TableSwap(table, readers: workers)
        control = Lock(config)
    }

    /// The config being served.
    public var config: BalancerConfig { control.withLock { $0 } }

    /// Serves `config` from now on (ms of the monotonic clock): new connections are scheduled by it at once;
    /// connections to real servers that stay continue as they were; real servers left out drain or go as
    /// their service's `drain` says (``RealServerRegistry``). Nothing changes when it throws.
    public func update(to config: BalancerConfig, now: UInt64 = monotonicMilliseconds(),
                       tunnelPaths: [IPAddress: TunnelPath] = [:]) throws(ConfigUpdateError) {
        try control.withLock { current throws(ConfigUpdateError) in
            try ConfigUpdateError.check(from: current, to: config, queues: queueNeeds)
            let table = try ServiceTable(config: config, previous: tables.table, tracker: tracker,
                                         tunnelPaths: tunnelPaths, now: now)
            tables.replace(with: table)
            current = config
        }
    }

    /// The real server of each kernel connection on the conntrack fast path, for the current config.
    var offloadOwners: [OffloadOwner: RealServerID] { control.withLock { _ in tables.table.offloadOwners } }

    /// How many replaced tables are still held.
    public var retiredTables: Int { tables.retiredCount }

    /// Releases the replaced tables no worker can still read.
    public func reclaimRetiredTables() { tables.reclaim() }

    public func enterBatch(worker: Int) { tables.enter(reader: worker) }

    public func counterBatch(worker: Int) -> CounterBatch { CounterBatch(traffic: registry.traffic.block(worker: worker)) }

    public func leaveBatch(worker: Int) { tables.leave(reader: worker) }

    /// Expires connections, moves real servers along their lifecycle (forgetting the connections of removed
    /// ones) and releases replaced tables.
    public func housekeeping(now: UInt64, counters: DatapathCounters) {
        let expired = tracker.expire(now: now)
        if expired > 0 { counters.add(.connectionsExpired, UInt64(expired)) }
        if registry.advance(now: now) {
            let forgotten = tracker.forgetRemovedServers()
            if forgotten > 0 { counters.add(.connectionsForgotten, UInt64(forgotten)) }
        }
        tables.reclaim()
    }

    /// The state to keep across a restart (``BalancerState``): the Swift path's live connections, the live
    /// persistence templates, and the identity of each real server they name. Call after the workers stopped.
    func savedState(now: UInt64) -> BalancerState {
        var index: [RealServerID: UInt32] = [:]
        var servers: [RealServerRegistry.Key] = []
        let keys = Dictionary(registry.servers().map { ($0.number, $0.key) }, uniquingKeysWith: { first, _ in first })
        func reference(_ number: RealServerID) -> UInt32? {
            if let known = index[number] { return known }
            guard let key = keys[number] else { return nil }
            index[number] = UInt32(servers.count)
            servers.append(key)
            return UInt32(servers.count - 1)
        }
        var connections: [(saved: ConnectionTracker.Saved, server: UInt32)] = []
        for var saved in tracker.saved() where saved.expires > now {
            guard let server = reference(saved.real) else { continue }
            saved.real = RealServerID(rawValue: 0)       // this process's number: the server index says who
            connections.append((saved, server))
        }
        var templates: [BalancerState.Template] = []
        for service in tables.table.services {
            guard let saved = service.templates?.saved(now: now) else { continue }
            for (slot, real, word) in saved {
                guard let server = reference(real) else { continue }
                templates.append(BalancerState.Template(vip: service.key.vip, port: service.key.port,
                                                        transport: service.key.transport, slot: UInt32(slot),
                                                        server: server, word: word))
            }
        }
        return BalancerState(generation: BalancerState.generation(of: config), bootID: BalancerState.currentBootID(),
                             hashSeed: tracker.configuration.hashSeed, servers: servers, connections: connections,
                             templates: templates)
    }

    /// The live persistence templates per real server (ipvsadm's PersistConn), at `now` (ms). Control path.
    public func persistentConnections(now: UInt64) -> [RealServerID: Int] {
        var counts: [RealServerID: Int] = [:]
        let services = control.withLock { _ in tables.table.services }
        for service in services {
            for (_, real, _) in service.templates?.saved(now: now) ?? [] { counts[real, default: 0] += 1 }
        }
        return counts
    }

    /// What ``restore(_:now:)`` put back and what it could not.
    struct RestoreReport: Equatable {
        var connections = 0
        var templates = 0
        /// Connections and templates of real servers the configuration no longer has.
        var orphaned = 0
        /// Connections that could not be put back (expired, no room, their FULLNAT port taken).
        var failed = 0
    }

    /// Puts saved connections and templates back, mapping each saved real server to this process's number
    /// for the same server of the same service. The tracker must hash with the saved seed. Before the queues
    /// are bound.
    func restore(_ state: BalancerState, now: UInt64) -> RestoreReport {
        var report = RestoreReport()
        let numbers = state.servers.map { registry.number(of: $0) }
        for (saved, server) in state.connections {
            guard let number = numbers[Int(server)] else { report.orphaned += 1; continue }
            if saved.expires > now && tracker.restore(saved, real: number) { report.connections += 1 } else { report.failed += 1 }
        }
        let services = tables.table.services
        for template in state.templates {
            guard let number = numbers[Int(template.server)] else { report.orphaned += 1; continue }
            guard let service = services.first(where: {
                $0.key.vip == template.vip && $0.key.port == template.port && $0.key.transport == template.transport
            }), let templates = service.templates else { report.orphaned += 1; continue }
            templates.restore(slot: Int(template.slot), real: number, word: template.word)
            report.templates += 1
        }
        return report
    }

    /// Kernel connections on the conntrack fast path, as ``OffloadMonitor`` last counted them.
    let offloadedConnections = Atomic<Int>(0)

    /// `connections_active`: the tracker's connections; `offload_connections`: the kernel's on the fast path;
    /// then per real server (live or leaving) its ActiveConn and InActConn, and the fast path's traffic of its
    /// finished connections when there is some.
    public var gauges: [(name: String, value: UInt64)] {
        var gauges: [(name: String, value: UInt64)] = [
            ("connections_active", UInt64(tracker.count)),
            ("connections_evicted", tracker.evictions.load(ordering: .relaxed)),
            ("offload_connections", UInt64(max(0, offloadedConnections.load(ordering: .relaxed)))),
        ]
        for server in registry.servers() {
            let key = server.key
            let labels = "{service=\"\(key.transport)/\(Endpoint(address: key.vip, port: key.port))\",real=\"\(key.real)\",mode=\"\(key.mode)\"}"
            gauges.append(("real_server_active\(labels)", UInt64(max(0, server.active))))
            gauges.append(("real_server_inactive\(labels)", UInt64(max(0, server.inactive))))
            let traffic = registry[server.number].offloaded
            if traffic != RealServerLoad.Traffic() {
                gauges.append(("real_server_offload_packets_in\(labels)", traffic.packetsIn))
                gauges.append(("real_server_offload_bytes_in\(labels)", traffic.bytesIn))
                gauges.append(("real_server_offload_packets_out\(labels)", traffic.packetsOut))
                gauges.append(("real_server_offload_bytes_out\(labels)", traffic.bytesOut))
            }
        }
        return gauges
    }

    /// The verdict of one packet, rewriting `bytes` in place when the verdict says so.
    public func handle(_ bytes: UnsafeMutableRawBufferPointer, info: PacketInfo, now: UInt64,
                       counters: inout CounterBatch) -> Verdict {
        // No reference counting on the shared table: it lives while this batch's generation is announced.
        let verdict = tables.withCurrent { table in handle(bytes, info: info, now: now, table: table, counters: &counters) }
        // Headers-only copies (every service DR or offloaded): no verdict may send the copy on as the packet.
        // The rules queue nothing that would need it, but a packet that gets here anyway (a reply of an
        // offloaded NAT connection whose kernel entry was deleted, stale rules) is dropped, not cut short.
        if headersOnly && verdict.carriesPacketBytes {
            counters.count(.droppedHeaderCopy)
            return .drop
        }
        return verdict
    }

    private func handle(_ bytes: UnsafeMutableRawBufferPointer, info: PacketInfo, now: UInt64, table: ServiceTable,
                        counters: inout CounterBatch) -> Verdict {
        var packet: IPPacket
        switch IPPacket.parse(UnsafeRawBufferPointer(bytes), headersOnly: headersOnly) {
        case .transport(let parsed): packet = parsed
        case .malformed: counters.count(.droppedMalformed); return .drop
        case .fragment: counters.count(.droppedFragment); return .drop
        case .unsupportedHeaders: counters.count(.droppedUnsupportedHeaders); return .drop
        case .icmp(let error?): return icmpError(bytes, error, table, now, &counters)
        case .icmp(nil): counters.count(.passedICMP); return .accept
        case .otherProtocol: counters.count(.passedOtherProtocol); return .accept
        }
        if packet.hasOptions { counters.count(.withIPOptions) }
        if info.contains(.gso) { counters.count(.gsoPackets) }
        packet.checksum = TransportChecksum(info)
        let key = packet.flowKey
        if let index = table.matchService(packet) {
            return inbound(bytes, packet, key, table.services[index], table, now, &counters)
        }
        if let connection = tracker.reply(key, flags: packet.tcpFlags, now: now) {
            counters.traffic?.countOut(connection.real.index, bytes: packet.totalLength)
            return table.forwarders[connection.real.index].reply(bytes, packet, of: connection, counters: &counters)
        }
        return unmatched(key, table, &counters)
    }

    /// A packet for no virtual service and no tracked connection. Out of line: the common paths stay small
    /// enough for the compiler to inline their forwarders.
    @inline(never)
    private func unmatched(_ key: FlowKey, _ table: ServiceTable, _ counters: inout CounterBatch) -> Verdict {
        // A reply to a FULLNAT local port with no connection: no local socket has that port (the ephemeral
        // range is kept apart), so the kernel would answer with a reset and end a connection that another
        // balancer holds or whose synced copy is on its way (docs/ARCHITECTURE.md, "Several balancers").
        if table.isLocalReply(key) {
            counters.count(.droppedNoConnection)
            return .drop
        }
        // E.g. a real server answering a health check sent from the balancer itself. Passing it unchanged is
        // what the kernel would have done without nfqlb.
        counters.count(.passedUnmatched)
        return .accept
    }

    /// Client -> VIP: the packet's connection (a new one scheduled), forwarded by its real server's method.
    private func inbound(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, _ key: FlowKey,
                         _ service: ServiceTable.Service, _ table: ServiceTable, _ now: UInt64,
                         _ counters: inout CounterBatch) -> Verdict {
        if service.onePacket { return onePacket(bytes, packet, key, service, table, now, &counters) }
        let outcome = tracker.inbound(key, flags: packet.tcpFlags, now: now, adoptMidstream: service.adoptMidstream) { flow in
            schedule(flow, service, table, now)
        }
        let real: Endpoint, source: Endpoint, number: RealServerID, isNew: Bool
        switch outcome {
        case .forward(let endpoint, let id, let created):
            (real, source, number, isNew) = (endpoint, key.source, id, created)
        case .forwardTranslated(let endpoint, let local, let id, let created):
            (real, source, number, isNew) = (endpoint, local, id, created)
        case .portsExhausted: counters.count(.droppedPortsExhausted); return .drop
        case .realServerRemoved: counters.count(.droppedRealServerRemoved); return .drop
        case .noConnection: counters.count(.droppedNoConnection); return .drop
        case .noRealServer: counters.count(.droppedNoRealServer); return .drop
        case .full: counters.count(.droppedTableFull); return .drop
        case .conflict: counters.count(.droppedConflict); return .drop
        }
        if isNew {
            counters.count(.connectionsCreated)
            if key.transport == .tcp && !packet.tcpFlags.isInitialSYN { counters.count(.connectionsAdopted) }
        }
        counters.traffic?.countIn(number.index, bytes: packet.totalLength, connection: isNew)
        refreshTemplate(service, client: key.source.address, real: number, now: now)
        let connection = ConnectionTracker.Connection(
            inbound: key, reply: FlowKey(source: real, destination: source, transport: key.transport), real: number)
        return table.forwarders[number.index].forward(bytes, packet, of: connection, counters: &counters)
    }

    /// The real server of a new connection (under the tracker's stripe lock): a live persistence template
    /// wins while its server is in this service and takes new connections; else the service's scheduler.
    private func schedule(_ flow: FlowKey, _ service: ServiceTable.Service, _ table: ServiceTable,
                          _ now: UInt64) -> ConnectionTracker.Assignment? {
        var chosen: Int?
        if let templates = service.templates, let bound = templates.lookup(flow.source.address, now: now),
           let index = service.numbers.firstIndex(of: bound), service.loads[index].isAvailable {
            chosen = index
        } else {
            chosen = service.scheduler.pick(for: flow)
        }
        guard let index = chosen else { return nil }
        let number = service.numbers[index]
        let forwarder = table.forwarders[number.index]
        return ConnectionTracker.Assignment(realServer: service.reals[index], real: number,
                                            local: forwarder.localAddress(for: flow),
                                            offloaded: service.offloaded, inputOnly: !forwarder.seesReplies)
    }

    /// Every client packet keeps its network's template alive (IPVS: while the template controls connections),
    /// unless its server no longer takes new connections: then the template must be free to move.
    private func refreshTemplate(_ service: ServiceTable.Service, client: IPAddress, real: RealServerID, now: UInt64) {
        guard let templates = service.templates, registry[real].isAvailable else { return }
        templates.bind(client, to: real, now: now)
    }

    /// `ops`: schedule this datagram alone. Where the real server answers through the balancer (NAT), a
    /// reply-keyed entry maps the answer back; DR and TUN need none.
    private func onePacket(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, _ key: FlowKey,
                           _ service: ServiceTable.Service, _ table: ServiceTable, _ now: UInt64,
                           _ counters: inout CounterBatch) -> Verdict {
        guard let index = service.scheduler.pick(for: key) else { counters.count(.droppedNoRealServer); return .drop }
        let real = service.reals[index], number = service.numbers[index]
        let forwarder = table.forwarders[number.index]
        if forwarder.seesReplies {
            let assignment = ConnectionTracker.Assignment(realServer: real, real: number)
            guard tracker.oneShot(key, assignment: assignment, now: now) else {
                counters.count(.droppedTableFull)
                return .drop
            }
        }
        counters.traffic?.countIn(number.index, bytes: packet.totalLength, connection: true)
        let connection = ConnectionTracker.Connection(
            inbound: key, reply: FlowKey(source: real, destination: key.source, transport: key.transport), real: number)
        return forwarder.forward(bytes, packet, of: connection, counters: &counters)
    }

    /// An ICMP error quoting a packet of a tracked connection goes where the connection goes, translated as its
    /// packets are (IPVS does this for both families): from the client side (quoting a reply VIP -> client) to
    /// the real server; from the real server (quoting client -> real server) to the client, from the VIP.
    /// Errors about nothing nfqlb tracks pass unchanged. One tracker lookup either way.
    private func icmpError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError, _ table: ServiceTable,
                           _ now: UInt64, _ counters: inout CounterBatch) -> Verdict {
        let key = error.connectionKey
        // The quoted packet comes from a VIP: the client side reports on a reply.
        if table.matchService(address: error.innerSource.address, port: error.innerSource.port,
                              transport: error.transport) != nil {
            guard let connection = tracker.connection(inbound: key, now: now) else {
                counters.count(.passedICMP)
                return .accept
            }
            return table.forwarders[connection.real.index].forwardError(bytes, error, of: connection, counters: &counters)
        }
        // Otherwise a real server may report on a packet forwarded to it (while its service is served).
        guard let connection = tracker.connection(reply: key, now: now),
              table.matchService(address: connection.inbound.destination.address,
                                 port: connection.inbound.destination.port, transport: error.transport) != nil else {
            counters.count(.passedICMP)
            return .accept
        }
        return table.forwarders[connection.real.index].returnError(bytes, error, of: connection, counters: &counters)
    }
}
