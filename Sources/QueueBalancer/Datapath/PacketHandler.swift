import Synchronization

/// What the kernel is told to do with a queued packet.
public enum Verdict: Equatable, Sendable {
    /// NF_ACCEPT, packet unchanged.
    case accept
    /// NF_DROP.
    case drop
    /// NF_ACCEPT with the packet as rewritten in the buffer (the verdict carries the payload, and the worker
    /// sets ``IptablesRules/translatedMark``).
    case acceptRewritten
    /// NF_ACCEPT, packet unchanged, with this fwmark set (DR: policy routing steers it to the real server).
    case acceptMarked(UInt32)
    /// NF_ACCEPT with the packet wrapped in an outer header of its family (IPv4 protocol 4, IPv6 next header
    /// 41) from `source` to `destination` (TUN); the worker writes the header in front of the packet in the verdict.
    case acceptEncapsulated(source: IPAddress, destination: IPAddress)
    /// NF_ACCEPT with the packet replaced by `length` bytes of the buffer from `offset` (an ICMP error built in
    /// place, or the inner packet of a tunnel).
    case acceptReplaced(offset: Int, length: Int)
    /// NF_DROP for the queued packet, which leaves instead through a raw socket, wrapped in an outer header of the
    /// other family from `source` to `destination` (TUN between families: a verdict cannot change the family).
    case sendEncapsulated(source: IPAddress, destination: IPAddress)
    /// NF_DROP for the queued packet; instead `length` bytes of the buffer from `offset`, a packet of the other
    /// family (a decapsulated inner packet), go through a raw socket to their own destination.
    case sendReplaced(offset: Int, length: Int)
}

/// Decides verdicts for one kind of queue: the balancer's ``PacketHandler`` or the real server's
/// ``Decapsulator``. Called by a queue worker for each packet; must not allocate, log or block.
public protocol PacketProcessor: Sendable {
    func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict
    /// Queue worker number `worker` starts handling a batch (see ``PacketHandler`` on config changes).
    func enterBatch(worker: Int)
    /// Queue worker number `worker` has finished its batch.
    func leaveBatch(worker: Int)
}

extension PacketProcessor {
    public func enterBatch(worker: Int) {}
    public func leaveBatch(worker: Int) {}
}

/// The per-packet pipeline, independent of the kernel queue: parse -> classify (virtual service or reply)
/// -> track and schedule -> forward (NAT: rewrite the destination; FULLNAT: both ends; DR: fwmark; TUN:
/// encapsulate) -> verdict. Tests feed it byte arrays; workers feed it the kernel's buffer.
///
/// Allocation-free, no logging, one tracker stripe lock per packet (ICMP errors included).
///
/// Config changes (``update(to:now:tunnelPaths:)``): what the packet path reads about the virtual services
/// is one immutable ``ServiceTable``, replaced as a whole by an atomic pointer swap; real servers keep their
/// ``RealServerRegistry`` number, so connections, counts and templates of servers that stay are untouched.
/// A replaced table is released once no queue worker can still be reading it: each worker announces the
/// table generation it may use for the length of a batch (``enterBatch(worker:)``/``leaveBatch(worker:)``),
/// and the table is released when every worker is idle or past it. Callers outside the workers (tests,
/// benchmarks) must not call ``handle(_:now:counters:)`` while another thread updates.
public final class PacketHandler: PacketProcessor {
    public let tracker: ConnectionTracker
    /// The real servers' numbers, weights, lifecycle and counts.
    public let registry: RealServerRegistry
    /// True when every service is DR: nfqlb then reads headers only, and the queue copies only
    /// ``headerCopyRange`` bytes of each packet to user space (DESIGN.md: -23% CPU per packet). Fixed for the
    /// handler's life (the queues are bound with it).
    public let headersOnly: Bool
    /// Bytes copied per packet when ``headersOnly``: the largest IPv4 header (60), or the IPv6 header with
    /// 100 bytes of extension headers, and the TCP header up to the flags.
    public static let headerCopyRange: UInt32 = 160

    /// The current table, as the bits of a retained `Unmanaged<ServiceTable>`.
    private let current: Atomic<UInt>
    /// The generation of the current table.
    private let generation = Atomic<UInt64>(0)
    /// Per queue worker: the oldest table generation it may be reading, or `.max` between batches.
    private let readers: [ReaderSlot]
    private let control: Mutex<ControlState>

    final class ReaderSlot: Sendable {
        let generation = Atomic<UInt64>(.max)
    }

    struct ControlState {
        var config: BalancerConfig
        /// Tables replaced but maybe still read, with the generation each was current in.
        var retired: [(generation: UInt64, table: Unmanaged<ServiceTable>)] = []
    }

    /// - Parameters:
    ///   - registry: the real servers' state; by default one over the tracker's ``ConnectionTracker/Configuration/loads``
    ///     (or fresh, when the tracker counts nothing: then the tracker sees every server as active, so the
    ///     lifecycle is not enforced on existing connections; only tests and benchmarks build handlers that way,
    ///     ``Balancer`` shares the registry's loads with its tracker).
    ///   - tunnelPaths: TUN: the outer source and path MTU towards each real server (see
    ///     ``TunnelPath/resolve(to:)``); a service's `tunnel-source` overrides the source.
    ///   - workers: how many queue workers will call ``enterBatch(worker:)``.
    public init(config: BalancerConfig, tracker: ConnectionTracker, registry: RealServerRegistry? = nil,
                tunnelPaths: [IPAddress: TunnelPath] = [:], workers: Int = 1, now: UInt64 = monotonicMilliseconds()) {
        self.tracker = tracker
        let registry = registry ?? RealServerRegistry(loads: tracker.configuration.loads.isEmpty
                                                      ? nil : tracker.configuration.loads)
        self.registry = registry
        headersOnly = !config.services.isEmpty && config.services.allSatisfy { $0.mode == .dr }
        readers = (0..<max(1, workers)).map { _ in ReaderSlot() }
        // A config that passed ConfigLoader fits an empty registry; if not, serve nothing rather than crash.
        let table = (try? ServiceTable(config: config, previous: nil, tracker: tracker, registry: registry,
                                       tunnelPaths: tunnelPaths, now: now))
            ?? ServiceTable.empty(capacity: registry.capacity)
        current = Atomic(UInt(bitPattern: Unmanaged.passRetained(table).toOpaque()))
        control = Mutex(ControlState(config: config))
    }

    deinit {
        Unmanaged<ServiceTable>.fromOpaque(UnsafeRawPointer(bitPattern: current.load(ordering: .acquiring))!).release()
        control.withLock { state in state.retired.forEach { $0.table.release() } }
    }

    /// The config being served.
    public var config: BalancerConfig { control.withLock { $0.config } }

    /// Serves `config` from now on (ms of the monotonic clock): new connections are scheduled by it at once;
    /// connections to real servers that stay continue as they were; real servers left out drain or go as
    /// their service's `drain` says (``RealServerRegistry``). Nothing changes when it throws.
    public func update(to config: BalancerConfig, now: UInt64 = monotonicMilliseconds(),
                       tunnelPaths: [IPAddress: TunnelPath] = [:]) throws(ConfigUpdateError) {
        try control.withLock { state throws(ConfigUpdateError) in
            try ConfigUpdateError.check(from: state.config, to: config, headersOnly: headersOnly)
            let old = Unmanaged<ServiceTable>.fromOpaque(UnsafeRawPointer(bitPattern: current.load(ordering: .acquiring))!)
            let table = try ServiceTable(config: config, previous: old.takeUnretainedValue(), tracker: tracker,
                                         registry: registry, tunnelPaths: tunnelPaths, now: now)
            let retiring = generation.load(ordering: .sequentiallyConsistent)
            current.store(UInt(bitPattern: Unmanaged.passRetained(table).toOpaque()), ordering: .sequentiallyConsistent)
            generation.store(retiring + 1, ordering: .sequentiallyConsistent)
            state.retired.append((retiring, old))
            state.config = config
            reclaim(&state)
        }
    }

    /// Releases the replaced tables no worker can still read (the housekeeping thread calls it every second).
    public func reclaimRetiredTables() {
        control.withLock { reclaim(&$0) }
    }

    /// How many replaced tables are still held.
    public var retiredTables: Int { control.withLock { $0.retired.count } }

    private func reclaim(_ state: inout ControlState) {
        guard !state.retired.isEmpty else { return }
        let oldest = readers.map { $0.generation.load(ordering: .sequentiallyConsistent) }.min() ?? .max
        state.retired.removeAll { entry in
            guard entry.generation < oldest else { return false }
            entry.table.release()
            return true
        }
    }

    /// Worker `worker` starts a batch: the tables it may read from now on are not released under it.
    public func enterBatch(worker: Int) {
        readers[worker].generation.store(generation.load(ordering: .sequentiallyConsistent),
                                         ordering: .sequentiallyConsistent)
    }

    /// Worker `worker` finished its batch and holds no table.
    public func leaveBatch(worker: Int) {
        readers[worker].generation.store(.max, ordering: .releasing)
    }

    /// Decides the verdict of one packet, rewriting `bytes` in place when the verdict is ``Verdict/acceptRewritten``.
    public func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict {
        // No reference counting on the shared table: it lives while this batch's generation is announced.
        // Sequentially consistent, like the worker's announcement before it (a store then a load: acquire
        // alone would let this load pass the store on weakly ordered CPUs, and reclaim a table in use).
        Unmanaged<ServiceTable>.fromOpaque(UnsafeRawPointer(bitPattern: current.load(ordering: .sequentiallyConsistent))!)
            ._withUnsafeGuaranteedRef { table in handle(bytes, now: now, table: table, counters: &counters) }
    }

    private func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, table: ServiceTable,
                        counters: inout CounterBatch) -> Verdict {
        let services = table.services
        let packet: IPPacket
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
        let key = FlowKey(
            source: Endpoint(address: packet.source, port: packet.sourcePort),
            destination: Endpoint(address: packet.destination, port: packet.destinationPort),
            transport: packet.transport)

        if let serviceIndex = table.matchService(packet) {
            if services[serviceIndex].onePacket {
                return onePacket(bytes, packet, key, services[serviceIndex], table, now, &counters)
            }
            let outcome = tracker.inbound(key, flags: packet.tcpFlags, now: now) { flow in
                let service = services[serviceIndex]
                // A live persistence template wins while its server is in this service and takes new connections.
                var chosen: Int?
                if let templates = service.templates, let bound = templates.lookup(flow.source.address, now: now),
                   let index = service.numbers.firstIndex(of: bound), service.loads[index].isAvailable {
                    chosen = index
                } else {
                    chosen = service.scheduler.pick(for: flow)
                }
                guard let real = chosen else { return nil }
                guard service.mode == .fullnat else {
                    return ConnectionTracker.Assignment(realServer: service.reals[real], real: service.numbers[real])
                }
                // Spread clients over the local addresses (IPVS FULLNAT rotates through its pool).
                let local = Int(flow.source.port) % service.locals.count
                return ConnectionTracker.Assignment(
                    realServer: service.reals[real], real: service.numbers[real],
                    localAddress: service.locals[local], allocator: service.allocators[local * service.reals.count + real])
            }
            switch outcome {
            case .forward(let real, let number, let created):
                if created { counters.count(.connectionsCreated) }
                let service = services[serviceIndex]
                refreshTemplate(service, client: key.source.address, real: number, now: now)
                let route = table.routes[Int(number)]
                if service.mode == .tun { return tunnel(bytes, packet, route.tunnel, to: real, &counters) }
                counters.count(.forwarded)
                if service.mode == .dr { return .acceptMarked(route.mark) }
                NATRewrite.rewriteDestination(bytes, packet, address: real.address, port: real.port)
                return .acceptRewritten
            case .forwardTranslated(let real, let local, let number, let created):
                if created { counters.count(.connectionsCreated) }
                refreshTemplate(services[serviceIndex], client: key.source.address, real: number, now: now)
                counters.count(.forwarded)
                NATRewrite.rewriteDestination(bytes, packet, address: real.address, port: real.port)
                NATRewrite.rewriteSource(bytes, packet, address: local.address, port: local.port)
                return .acceptRewritten
            case .portsExhausted: counters.count(.droppedPortsExhausted); return .drop
            case .realServerRemoved: counters.count(.droppedRealServerRemoved); return .drop
            case .noConnection: counters.count(.droppedNoConnection); return .drop
            case .noRealServer: counters.count(.droppedNoRealServer); return .drop
            case .full: counters.count(.droppedTableFull); return .drop
            case .conflict: counters.count(.droppedConflict); return .drop
            }
        }
        if let inbound = tracker.reply(key, flags: packet.tcpFlags, now: now) {
            // NAT: from RIP:rport to VIP:vport. FULLNAT also: to LIP:lport back to CIP:cport.
            NATRewrite.rewriteSource(bytes, packet, address: inbound.destination.address, port: inbound.destination.port)
            counters.count(.replied)
            if inbound.source != key.destination {
                NATRewrite.rewriteDestination(bytes, packet, address: inbound.source.address, port: inbound.source.port)
            }
            return .acceptRewritten
        }
        // Not for a virtual service and not a tracked reply: e.g. a real server answering a health check sent
        // from the balancer itself. Passing it unchanged is what the kernel would have done without nfqlb.
        counters.count(.passedUnmatched)
        return .accept
    }

    /// Every client packet keeps its network's template alive (IPVS: while the template controls connections),
    /// unless its server no longer takes new connections: then the template must be free to move.
    private func refreshTemplate(_ service: ServiceTable.Service, client: IPAddress, real: UInt32, now: UInt64) {
        guard let templates = service.templates, registry.loads[Int(real)].isAvailable else { return }
        templates.bind(client, to: real, now: now)
    }

    /// An ICMP error quoting a packet of a tracked connection goes where the connection goes, translated as its
    /// packets are (IPVS does this for both families): from the client side (quoting a reply VIP -> client) to
    /// the real server; from the real server (quoting client -> real server) to the client, from the VIP.
    /// Errors about nothing nfqlb tracks pass unchanged.
    private func icmpError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError, _ table: ServiceTable,
                           _ now: UInt64, _ counters: inout CounterBatch) -> Verdict {
        let key = error.connectionKey
        // Rewriting needs the whole message; it is there unless the queue copies headers only (all DR).
        let whole = !headersOnly && error.totalLength <= bytes.count
        // The quoted packet comes from a VIP: the client side reports on a reply. One tracker lookup either way.
        if let index = table.matchService(address: error.innerSource.address, port: error.innerSource.port,
                                          transport: error.transport) {
            guard let connection = tracker.connection(inbound: key, now: now) else {
                counters.count(.passedICMP)
                return .accept
            }
            let real = connection.reply.source
            let route = table.routes[Int(connection.real)]
            switch table.services[index].mode {
            case .dr:
                counters.count(.icmpForwarded)
                return .acceptMarked(route.mark)
            case .tun:
                counters.count(.icmpForwarded)
                return real.address.isIPv4 == (error.family == .v4)
                    ? .acceptEncapsulated(source: route.tunnel.source, destination: real.address)
                    : .sendEncapsulated(source: route.tunnel.source, destination: real.address)
            case .nat where whole:
                error.rewrite(bytes, outerDestination: real.address, innerSource: real)
            case .fullnat where whole:
                let local = connection.reply.destination
                error.rewrite(bytes, outerSource: local.address, outerDestination: real.address,
                              innerSource: real, innerDestination: local)
            case .nat, .fullnat:
                counters.count(.passedICMP)
                return .accept
            }
            counters.count(.icmpForwarded)
            return .acceptRewritten
        }
        // Otherwise a real server may report on a client's packet (NAT, FULLNAT: DR and TUN servers answer the
        // client directly, not through the balancer).
        guard whole, let inbound = tracker.connection(reply: key, now: now),
              let index = table.matchService(address: inbound.destination.address, port: inbound.destination.port,
                                             transport: error.transport),
              table.services[index].mode == .nat || table.services[index].mode == .fullnat else {
            counters.count(.passedICMP)
            return .accept
        }
        // NAT: from the VIP, quoting client -> VIP. FULLNAT: also to the client, quoting its own endpoint.
        let translated = inbound.source != error.innerSource
        error.rewrite(bytes, outerSource: inbound.destination.address,
                      outerDestination: translated ? inbound.source.address : nil,
                      innerSource: translated ? inbound.source : nil, innerDestination: inbound.destination)
        counters.count(.icmpReplied)
        return .acceptRewritten
    }

    /// `ops`: schedule this datagram alone. NAT keeps a reply-keyed entry so the server's answer is mapped back;
    /// DR and TUN need none (the answer goes straight to the client).
    private func onePacket(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, _ key: FlowKey,
                           _ service: ServiceTable.Service, _ table: ServiceTable, _ now: UInt64,
                           _ counters: inout CounterBatch) -> Verdict {
        guard let realIndex = service.scheduler.pick(for: key) else { counters.count(.droppedNoRealServer); return .drop }
        let real = service.reals[realIndex]
        switch service.mode {
        case .dr:
            counters.count(.forwarded)
            return .acceptMarked(table.routes[Int(service.numbers[realIndex])].mark)
        case .tun:
            return tunnel(bytes, packet, table.routes[Int(service.numbers[realIndex])].tunnel, to: real, &counters)
        case .nat, .fullnat:
            let assignment = ConnectionTracker.Assignment(realServer: real, real: service.numbers[realIndex])
            guard tracker.oneShot(key, assignment: assignment, now: now) else {
                counters.count(.droppedTableFull)
                return .drop
            }
            counters.count(.forwarded)
            NATRewrite.rewriteDestination(bytes, packet, address: real.address, port: real.port)
            return .acceptRewritten
        }
    }

    /// TUN: encapsulate towards the real server, or, when the result would exceed the path MTU (and an IPv4
    /// client forbade fragmentation; IPv6 routers never fragment), answer the client from the VIP in place of the
    /// packet with ICMP "fragmentation needed" (MTU - 20) or ICMPv6 "packet too big" (MTU - 40): routed back to
    /// the client, it lowers the client's path MTU (DESIGN.md: otherwise the kernel's own ICMP would go to the
    /// outer source, the balancer, and the flow would black-hole).
    private func tunnel(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, _ path: TunnelPath,
                        to real: Endpoint, _ counters: inout CounterBatch) -> Verdict {
        let outer: IPFamily = real.address.isIPv4 ? .v4 : .v6
        let overhead = TunnelEncapsulation.overhead(outer)
        // Only an IPv4 packet without DF in an IPv4 tunnel may be fragmented on the way.
        let mayFragment = outer == .v4 && packet.family == .v4 && bytes.loadBigEndianUInt16(at: 6) & 0x4000 == 0
        if packet.totalLength + overhead > path.mtu && !mayFragment {
            counters.count(.tunnelTooBig)
            // IPv6 hosts ignore a "packet too big" below the minimum MTU of 1280.
            let mtu = packet.family == .v6 ? max(path.mtu - overhead, TunnelEncapsulation.minimumIPv6MTU) : path.mtu - overhead
            let length = TunnelEncapsulation.replaceWithTooBig(bytes, packet, mtu: mtu, vip: packet.destination)
            return length > 0 ? .acceptReplaced(offset: 0, length: length) : .drop
        }
        counters.count(.forwarded)
        return outer == packet.family ? .acceptEncapsulated(source: path.source, destination: real.address)
                                      : .sendEncapsulated(source: path.source, destination: real.address)
    }
}
