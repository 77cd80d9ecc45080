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
    /// NF_ACCEPT with the packet wrapped in an outer IPv4 header (protocol 4) from `source` to `destination`
    /// (TUN); the worker writes the header in front of the packet in the verdict.
    case acceptEncapsulated(source: UInt32, destination: UInt32)
    /// NF_ACCEPT with the packet replaced by `length` bytes of the buffer from `offset` (an ICMP error built in
    /// place, or the inner packet of a tunnel).
    case acceptReplaced(offset: Int, length: Int)
}

/// Decides verdicts for one kind of queue: the balancer's ``PacketHandler`` or the real server's
/// ``Decapsulator``. Called by a queue worker for each packet; must not allocate, log or block.
public protocol PacketProcessor: Sendable {
    func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict
}

/// The per-packet pipeline, independent of the kernel queue: parse -> classify (virtual service or reply)
/// -> track and schedule -> forward (NAT: rewrite the destination; FULLNAT: both ends; DR: fwmark) -> verdict. Tests feed it byte arrays; workers feed it the kernel's buffer.
///
/// Allocation-free, no logging, one tracker stripe lock per packet.
public final class PacketHandler: PacketProcessor {
    public let tracker: ConnectionTracker
    /// True when every service is DR: nfqlb then reads headers only, and the queue copies only
    /// ``headerCopyRange`` bytes of each packet to user space (DESIGN.md: -23% CPU per packet).
    public let headersOnly: Bool
    /// Bytes copied per packet when ``headersOnly``: the largest IPv4 header (60) and the TCP header up to the
    /// flags, with room to spare.
    public static let headerCopyRange: UInt32 = 128
    private let services: [ServiceEntry]
    /// The match fields of `services`, same order: plain values, so matching a packet retains nothing.
    private let serviceKeys: [ServiceKey]

    struct ServiceKey: Sendable {
        let vip: UInt32
        let port: UInt16
        let transport: TransportProtocol
    }

    /// One virtual service as the packet path needs it.
    struct ServiceEntry: Sendable {
        let vip: UInt32
        let port: UInt16
        let transport: TransportProtocol
        let mode: ForwardingMode
        let reals: [Endpoint]
        /// DR: the fwmark of each real server (its policy route); unused for NAT.
        let marks: [UInt32]
        /// FULLNAT: the local addresses, and the port allocator of each (local, real) at
        /// `localIndex * reals.count + realIndex`.
        let locals: [IPAddress]
        let allocators: [Int32]
        /// TUN: per real server, the outer source address and the path MTU towards it.
        let tunnels: [TunnelPath]
        let scheduler: any Scheduler
        /// The real servers' weights and connection counts (shared with the scheduler and the tracker).
        let loads: [RealServerLoad]
        /// Persistence templates, when the service has `persistence`.
        let templates: PersistenceTemplates?
        /// `ops`: every datagram scheduled on its own.
        let onePacket: Bool
    }

    /// - Parameter tunnelPaths: TUN: the outer source and path MTU towards each real server (see
    ///   ``TunnelPath/resolve(to:)``); a service's `tunnel-source` overrides the source.
    public init(config: BalancerConfig, tracker: ConnectionTracker, tunnelPaths: [IPAddress: TunnelPath] = [:]) {
        self.tracker = tracker
        let routes = config.directRoutes
        let portAllocators = config.portAllocators
        // The tracker's connection counts when it keeps them for this config, else counts nobody updates.
        let loads = tracker.configuration.loads.map(\.count) == config.services.map(\.reals.count)
            ? tracker.configuration.loads : config.makeLoads()
        // One entry per configured service, in config order: the tracker's `service` numbers and the loads are
        // indexed the same way. (An IPv6 VIP, refused by the config today, would match no IPv4 packet.)
        services = config.services.enumerated().map { index, service in
            let vip = service.vip.ipv4 ?? 0
            let marks = service.reals.map { real in routes.first { $0.realServer == real.address }?.mark ?? 0 }
            let allocators = service.localAddresses.flatMap { local in
                service.reals.map { real in
                    Int32(portAllocators.firstIndex(of: .init(local: local, real: real.endpoint, transport: service.transport))!)
                }
            }
            let tunnels = service.reals.map { real in
                var path = tunnelPaths[real.address] ?? TunnelPath(source: IPAddress(ipv4: 0), mtu: 1500)
                if let source = service.tunnelSource { path.source = source }
                return path
            }
            return ServiceEntry(vip: vip, port: service.port, transport: service.transport, mode: service.mode,
                                reals: service.reals.map(\.endpoint), marks: marks,
                                locals: service.localAddresses, allocators: allocators, tunnels: tunnels,
                                scheduler: service.scheduler.makeScheduler(loads: loads[index], options: service.schedulerOptions,
                                                                           names: service.reals.map(\.endpoint)),
                                loads: loads[index],
                                templates: service.persistence > 0
                                    ? PersistenceTemplates(timeoutSeconds: service.persistence, prefixLength: service.persistencePrefix)
                                    : nil,
                                onePacket: service.onePacket)
        }
        serviceKeys = services.map { ServiceKey(vip: $0.vip, port: $0.port, transport: $0.transport) }
        headersOnly = !services.isEmpty && services.allSatisfy { $0.mode == .dr }
    }

    /// Decides the verdict of one packet, rewriting `bytes` in place when the verdict is ``Verdict/acceptRewritten``.
    public func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict {
        let packet: IPv4Packet
        switch IPv4Packet.parse(UnsafeRawBufferPointer(bytes), headersOnly: headersOnly) {
        case .transport(let parsed): packet = parsed
        case .malformed: counters.count(.droppedMalformed); return .drop
        case .fragment: counters.count(.droppedFragment); return .drop
        case .icmp: counters.count(.passedICMP); return .accept
        case .otherProtocol: counters.count(.passedOtherProtocol); return .accept
        case .notIPv4: counters.count(.passedNotIPv4); return .accept
        }
        if packet.hasOptions { counters.count(.withIPOptions) }
        let key = FlowKey(
            source: Endpoint(address: IPAddress(ipv4: packet.source), port: packet.sourcePort),
            destination: Endpoint(address: IPAddress(ipv4: packet.destination), port: packet.destinationPort),
            transport: packet.transport)

        if let serviceIndex = matchService(packet) {
            if services[serviceIndex].onePacket { return onePacket(bytes, packet, key, serviceIndex, now, &counters) }
            let outcome = tracker.inbound(key, flags: packet.tcpFlags, now: now) { flow in
                let service = services[serviceIndex]
                // A live persistence template wins while its server takes new connections (weight > 0).
                var chosen: Int?
                if let templates = service.templates, let bound = templates.lookup(flow.source.address, now: now),
                   bound < service.loads.count, service.loads[bound].isAvailable {
                    chosen = bound
                } else {
                    chosen = service.scheduler.pick(for: flow)
                }
                guard let real = chosen else { return nil }
                guard service.mode == .fullnat else {
                    return ConnectionTracker.Assignment(realServer: service.reals[real], service: UInt32(serviceIndex),
                                                        realIndex: UInt32(real))
                }
                // Spread clients over the local addresses (IPVS FULLNAT rotates through its pool).
                let local = Int(flow.source.port) % service.locals.count
                return ConnectionTracker.Assignment(
                    realServer: service.reals[real], service: UInt32(serviceIndex), realIndex: UInt32(real),
                    localAddress: service.locals[local], allocator: service.allocators[local * service.reals.count + real])
            }
            switch outcome {
            case .forward(let real, let realIndex, let created):
                if created { counters.count(.connectionsCreated) }
                let service = services[serviceIndex]
                // Every client packet keeps the template alive (IPVS: while the template controls connections).
                service.templates?.bind(key.source.address, to: realIndex, now: now)
                if service.mode == .tun { return tunnel(bytes, packet, service.tunnels[realIndex], to: real, &counters) }
                counters.count(.forwarded)
                if service.mode == .dr { return .acceptMarked(service.marks[realIndex]) }
                guard let address = real.address.ipv4 else { counters.count(.droppedMalformed); return .drop }
                NATRewrite.rewriteDestination(bytes, packet, address: address, port: real.port)
                return .acceptRewritten
            case .forwardTranslated(let real, let local, let realIndex, let created):
                if created { counters.count(.connectionsCreated) }
                services[serviceIndex].templates?.bind(key.source.address, to: realIndex, now: now)
                counters.count(.forwarded)
                guard let address = real.address.ipv4, let localAddress = local.address.ipv4 else {
                    counters.count(.droppedMalformed); return .drop
                }
                NATRewrite.rewriteDestination(bytes, packet, address: address, port: real.port)
                NATRewrite.rewriteSource(bytes, packet, address: localAddress, port: local.port)
                return .acceptRewritten
            case .portsExhausted: counters.count(.droppedPortsExhausted); return .drop
            case .noConnection: counters.count(.droppedNoConnection); return .drop
            case .noRealServer: counters.count(.droppedNoRealServer); return .drop
            case .full: counters.count(.droppedTableFull); return .drop
            case .conflict: counters.count(.droppedConflict); return .drop
            }
        }
        if let inbound = tracker.reply(key, flags: packet.tcpFlags, now: now),
           let vip = inbound.destination.address.ipv4, let client = inbound.source.address.ipv4 {
            // NAT: from RIP:rport to VIP:vport. FULLNAT also: to LIP:lport back to CIP:cport.
            NATRewrite.rewriteSource(bytes, packet, address: vip, port: inbound.destination.port)
            counters.count(.replied)
            if inbound.source != key.destination {
                NATRewrite.rewriteDestination(bytes, packet, address: client, port: inbound.source.port)
                return .acceptRewritten
            }
            return .acceptRewritten
        }
        // Not for a virtual service and not a tracked reply: e.g. a real server answering a health check sent
        // from the balancer itself. Passing it unchanged is what the kernel would have done without nfqlb.
        counters.count(.passedUnmatched)
        return .accept
    }

    /// `ops`: schedule this datagram alone. NAT keeps a reply-keyed entry so the server's answer is mapped back;
    /// DR and TUN need none (the answer goes straight to the client).
    private func onePacket(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPv4Packet, _ key: FlowKey,
                           _ serviceIndex: Int, _ now: UInt64, _ counters: inout CounterBatch) -> Verdict {
        let service = services[serviceIndex]
        guard let realIndex = service.scheduler.pick(for: key) else { counters.count(.droppedNoRealServer); return .drop }
        let real = service.reals[realIndex]
        switch service.mode {
        case .dr:
            counters.count(.forwarded)
            return .acceptMarked(service.marks[realIndex])
        case .tun:
            return tunnel(bytes, packet, service.tunnels[realIndex], to: real, &counters)
        case .nat, .fullnat:
            let assignment = ConnectionTracker.Assignment(realServer: real, service: UInt32(serviceIndex),
                                                          realIndex: UInt32(realIndex))
            guard tracker.oneShot(key, assignment: assignment, now: now), let address = real.address.ipv4 else {
                counters.count(.droppedTableFull)
                return .drop
            }
            counters.count(.forwarded)
            NATRewrite.rewriteDestination(bytes, packet, address: address, port: real.port)
            return .acceptRewritten
        }
    }

    /// TUN: encapsulate towards the real server, or, when the result would exceed the path MTU and the client
    /// forbade fragmentation, answer the client with ICMP "fragmentation needed" (MTU - 20) from the VIP in
    /// place of the packet: routed back to the client, it lowers the client's path MTU (DESIGN.md: otherwise
    /// the kernel's own ICMP would go to the outer source, the balancer, and the flow would black-hole).
    private func tunnel(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPv4Packet, _ path: TunnelPath,
                        to real: Endpoint, _ counters: inout CounterBatch) -> Verdict {
        guard let destination = real.address.ipv4, let source = path.source.ipv4 else {
            counters.count(.droppedMalformed); return .drop
        }
        let dontFragment = bytes.loadBigEndianUInt16(at: 6) & 0x4000 != 0
        if packet.totalLength + IPIPEncapsulation.overhead > path.mtu && dontFragment {
            counters.count(.tunnelTooBig)
            let mtu = UInt16(clamping: path.mtu - IPIPEncapsulation.overhead)
            let length = IPIPEncapsulation.replaceWithFragmentationNeeded(bytes, packet, mtu: mtu, vip: packet.destination)
            return length > 0 ? .acceptReplaced(offset: 0, length: length) : .drop
        }
        counters.count(.forwarded)
        return .acceptEncapsulated(source: source, destination: destination)
    }

    private func matchService(_ packet: IPv4Packet) -> Int? {
        serviceKeys.withUnsafeBufferPointer { keys in
            for i in keys.indices where keys[i].vip == packet.destination
                && keys[i].port == packet.destinationPort && keys[i].transport == packet.transport {
                return i
            }
            return nil
        }
    }
}
