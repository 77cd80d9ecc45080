/// FULLNAT (the out-of-tree IPVS mode of Alibaba's LVS): like NAT, and the client's CIP:cport also becomes one
/// of the balancer's local addresses, LIP:lport, so the real servers answer the balancer without routing
/// through it. Answers arrive addressed to LIP:lport (queued at raw PREROUTING) and leave as VIP:vport ->
/// CIP:cport. Each (local address, real server, protocol) has a port allocator in the tracker.
struct FullNATForwarder: ForwardingMethod {
    static let queueNeeds = QueueNeeds(wholePackets: true, gsoSuperPackets: true)

    /// The service's local addresses and, for each, the port allocator towards this real server.
    let localAddresses: [ConnectionTracker.LocalAddress]
    /// With the conntrack fast path: the mark of each (local address, this real server), same order, which
    /// the kernel's DNAT and SNAT follow (its NAT then picks the local port).
    let offloadMarks: [Fwmark]?

    init(service: VirtualService, real: RealServer, tracker: ConnectionTracker,
         offloadMarks marks: [ConntrackOffload.MarkKey: Fwmark]) throws(ConfigUpdateError) {
        offloadMarks = service.offload == .conntrack
            ? service.localAddresses.compactMap { marks[ConntrackOffload.MarkKey(service: service, real: real, local: $0)] }
            : nil
        var locals: [ConnectionTracker.LocalAddress] = []
        for address in service.localAddresses {
            let key = ConnectionTracker.PortAllocatorKey(local: address, real: real.endpoint, transport: service.transport)
            guard let allocator = tracker.portAllocator(for: key) else {
                throw ConfigUpdateError(reason: "too many FULLNAT (local address, real server) pairs for this run: restart nfqlb")
            }
            locals.append(ConnectionTracker.LocalAddress(address: address, allocator: allocator))
        }
        localAddresses = locals
    }

    /// The local address a new connection leaves from: clients spread over them by source port (IPVS FULLNAT
    /// rotates through its pool). Nil when offloaded: the kernel's SNAT picks the port.
    func localAddress(for flow: FlowKey) -> ConnectionTracker.LocalAddress? {
        offloadMarks == nil ? localAddresses[localIndex(flow)] : nil
    }

    private func localIndex(_ flow: FlowKey) -> Int { Int(flow.source.port) % localAddresses.count }

    /// Offloaded: per (real server, local address) mark, a DNAT to the real server and an SNAT to the local
    /// address, from `fullnat-ports` (outside the kernel's ephemeral ports, as on the Swift path).
    static func offloadRules(for service: VirtualService, marks: [ConntrackOffload.MarkKey: Fwmark],
                             config: BalancerConfig) -> [ChainRule] {
        service.reals.flatMap { real in
            service.localAddresses.compactMap { local -> [ChainRule]? in
                guard let mark = marks[ConntrackOffload.MarkKey(service: service, real: real, local: local)] else { return nil }
                let source = local.isIPv4 ? "\(local)" : "[\(local)]"
                return [destinationNAT(service, to: real, mark: mark),
                        ChainRule(chain: .sourceNAT, rule: "-p \(service.transport) -m mark --mark \(mark)/\(ConntrackOffload.markMask) -m comment --comment \"nfqlb \(service.mode) \(service): offloaded from \(local)\" -j SNAT --to-source \(source):\(config.fullnatPorts.lowerBound)-\(config.fullnatPorts.upperBound)")]
            }.flatMap { $0 }
        }
    }

    /// The answers to each local address: `-s RIP -d LIP --sport rport --dport fullnat-ports`.
    /// The replies to the other balancers' local addresses too (`cluster.takeover-local-addresses`): the router
    /// sends them here when their balancer is gone, and the synced connection translates them.
    static func replyRules(for service: VirtualService, config: BalancerConfig) -> [QueueRule] {
        let families = Set(service.localAddresses.map(\.isIPv4))
        let takeover = (config.cluster?.takeoverLocalAddresses ?? []).filter { families.contains($0.isIPv4) }
        return (service.localAddresses + takeover).flatMap { local in
            service.reals.map { QueueRule.reply(of: service, from: $0, to: (local, config.fullnatPorts)) }
        }
    }

    /// The real servers' errors are addressed to the local addresses.
    static func errorSources(for service: VirtualService) -> [QueueRule] {
        service.localAddresses.map { local in
            QueueRule(match: "-d \(IptablesRules.host(local))", comment: "nfqlb: ICMP errors to local address \(local)")
        }
    }

    /// The VIP and the local addresses become sources, which `accept_local=1` lets the kernel accept: packets
    /// arriving from outside with them are spoofed.
    static func spoofableSources(for service: VirtualService) -> [IPAddress] {
        [service.vip] + service.localAddresses
    }

    /// CIP:cport -> VIP:vport becomes LIP:lport -> RIP:rport: both ends of the connection's reply key, by nfqlb
    /// or (offloaded) by the kernel's DNAT and SNAT.
    func forward(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
                 counters: inout CounterBatch) -> Verdict {
        if let offloadMarks, !offloadMarks.isEmpty {
            counters.count(.offloaded)
            return .repeatMarked(offloadMarks[localIndex(connection.inbound)])
        }
        counters.count(.forwarded)
        NATRewrite.translate(bytes, packet, source: connection.reply.destination, destination: connection.reply.source)
        return .acceptRewritten
    }

    /// RIP:rport -> LIP:lport becomes VIP:vport -> CIP:cport: both ends of the connection's inbound key.
    func reply(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
               counters: inout CounterBatch) -> Verdict {
        NATRewrite.translate(bytes, packet, source: connection.inbound.destination, destination: connection.inbound.source)
        counters.count(.replied)
        return .acceptRewritten
    }

    /// Quoting VIP -> CIP, to the VIP: becomes one from LIP to the real server quoting RIP -> LIP.
    func forwardError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                      of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        let real = connection.reply.source, local = connection.reply.destination
        return error.translate(bytes, counting: .icmpForwarded, &counters, outerSource: local.address,
                               outerDestination: real.address, innerSource: real, innerDestination: local)
    }

    /// From the real server to LIP quoting LIP -> RIP: becomes one from the VIP to the client quoting CIP -> VIP.
    func returnError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                     of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        let client = connection.inbound.source, vip = connection.inbound.destination
        return error.translate(bytes, counting: .icmpReplied, &counters, outerSource: vip.address,
                               outerDestination: client.address, innerSource: client, innerDestination: vip)
    }
}

extension BalancerConfig {
    /// Why the FULLNAT ports clash with the kernel's ephemeral ports (`net.ipv4.ip_local_port_range`), or nil.
    /// A clash would let the balancer's own sockets on a local address collide with translated connections.
    public func fullnatPortConflict(kernelRange: ClosedRange<UInt16>) -> String? {
        guard services.contains(where: { $0.mode == .fullnat }), fullnatPorts.overlaps(kernelRange) else { return nil }
        return "fullnat-ports \(fullnatPorts.lowerBound)-\(fullnatPorts.upperBound) overlap the kernel's ip_local_port_range "
            + "\(kernelRange.lowerBound)-\(kernelRange.upperBound): choose a range outside it "
            + "(or narrow net.ipv4.ip_local_port_range)"
    }

    /// The FULLNAT port allocators: one per (local address, real server, protocol), in config order.
    var portAllocators: [ConnectionTracker.PortAllocatorKey] {
        var keys: [ConnectionTracker.PortAllocatorKey] = []
        for service in services where service.mode == .fullnat {
            for local in service.localAddresses {
                for real in service.reals {
                    let key = ConnectionTracker.PortAllocatorKey(local: local, real: real.endpoint, transport: service.transport)
                    if !keys.contains(key) { keys.append(key) }
                }
            }
        }
        return keys
    }
}
