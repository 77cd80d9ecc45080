/// LVS NAT ("masquerading", `ipvsadm -m`): the destination VIP:vport becomes RIP:rport on the way in; the
/// real server routes its answers back through the balancer, where the source RIP:rport becomes VIP:vport
/// again. Both directions are queued at raw PREROUTING (docs/ARCHITECTURE.md, "Kernel facts").
struct NATForwarder: ForwardingMethod {
    static let queueNeeds = QueueNeeds(wholePackets: true, gsoSuperPackets: true)

    /// With the conntrack fast path: the real server's mark, which the kernel's DNAT follows.
    let offloadMark: Fwmark?

    /// Offloaded: one DNAT per real server, chosen by the mark nfqlb gave the connection's first packet.
    static func offloadRules(for service: VirtualService, marks: [ConntrackOffload.MarkKey: Fwmark],
                             config: BalancerConfig) -> [ChainRule] {
        service.reals.compactMap { real in
            marks[ConntrackOffload.MarkKey(service: service, real: real)].map { destinationNAT(service, to: real, mark: $0) }
        }
    }

    /// The real servers' answers: `-s RIP --sport rport`.
    static func replyRules(for service: VirtualService, config: BalancerConfig) -> [QueueRule] {
        service.reals.map { QueueRule.reply(of: service, from: $0) }
    }

    /// The real servers report on the packets forwarded to them.
    static func errorSources(for service: VirtualService) -> [QueueRule] {
        service.reals.map { real in
            QueueRule(match: "-s \(IptablesRules.host(real.address))", comment: "nfqlb: ICMP errors from real server \(real.address)")
        }
    }

    /// Client -> VIP:vport becomes client -> RIP:rport, by nfqlb or (offloaded) by the kernel's DNAT.
    func forward(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
                 counters: inout CounterBatch) -> Verdict {
        if let offloadMark {
            counters.count(.offloaded)
            return .repeatMarked(offloadMark)
        }
        counters.count(.forwarded)
        NATRewrite.translate(bytes, packet, destination: connection.reply.source)
        return .acceptRewritten
    }

    /// RIP:rport -> client becomes VIP:vport -> client.
    func reply(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
               counters: inout CounterBatch) -> Verdict {
        NATRewrite.translate(bytes, packet, source: connection.inbound.destination)
        counters.count(.replied)
        return .acceptRewritten
    }

    /// Quoting VIP -> client, to the VIP: becomes one to the real server quoting RIP -> client.
    func forwardError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                      of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        let real = connection.reply.source
        return error.translate(bytes, counting: .icmpForwarded, &counters, outerDestination: real.address, innerSource: real)
    }

    /// From the real server quoting client -> RIP: becomes one from the VIP quoting client -> VIP.
    func returnError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                     of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        let vip = connection.inbound.destination
        return error.translate(bytes, counting: .icmpReplied, &counters, outerSource: vip.address, innerDestination: vip)
    }
}
