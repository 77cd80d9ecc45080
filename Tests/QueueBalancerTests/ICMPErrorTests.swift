import Testing
@testable import QueueBalancer

/// ICMP errors about tracked connections go where the connection goes, translated like its packets (IPVS does
/// this for both families). Checked byte for byte against messages built from scratch.
@Suite struct ICMPErrorTests {
    /// A NAT UDP service on the VIP of `family` over one real server, and an opened flow.
    func natWithFlow(_ v6: Bool, mode: ForwardingMode = .nat) -> (PacketHandler, PacketBuilder, [UInt8]) {
        let vip = v6 ? ip("2001:db8:f::10") : ip("203.0.113.10")
        let real = v6 ? ip("2001:db8:5::11") : ip("198.51.100.11")
        let local = v6 ? ip("2001:db8:5::1") : ip("198.51.100.1")
        let config = BalancerConfig(queues: [0], services: [VirtualService(
            vip: vip, port: 53, transport: .udp, mode: mode, scheduler: .rr,
            reals: [RealServer(address: real, port: mode == .nat || mode == .fullnat ? 5353 : 53)],
            localAddresses: mode == .fullnat ? [local] : [])])
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(configuration: .init(
            hashSeed: 3, portAllocators: config.portAllocators, localPorts: config.fullnatPorts)),
            tunnelPaths: [real: TunnelPath(source: local, mtu: 1500)])
        var datagram = v6 ? PacketBuilder.v6() : PacketBuilder()
        datagram.transport = 17
        datagram.destinationPort = 53
        datagram.payload = Array("query".utf8)
        var counters = CounterBatch()
        let (_, forwarded) = handler.run(datagram.build(), counters: &counters)
        return (handler, datagram, forwarded)
    }

    /// The real server's "port unreachable" about the forwarded datagram reaches the client from the VIP,
    /// quoting the datagram as the client sent it.
    @Test(arguments: [false, true])
    func portUnreachableFromTheRealServerReachesTheClientFromTheVIP(v6: Bool) {
        let (handler, datagram, forwarded) = natWithFlow(v6)
        var error = v6 ? PacketBuilder.v6() : PacketBuilder()
        error.transport = v6 ? 58 : 1
        error.source = Array(forwarded[(v6 ? 24 : 16)..<(v6 ? 40 : 20)])      // the real server
        error.destination = datagram.source
        error.icmp = (v6 ? 1 : 3, v6 ? 4 : 3, [0, 0, 0, 0], forwarded)
        var counters = CounterBatch()
        let (verdict, out) = handler.run(error.build(), counters: &counters)
        #expect(verdict == .acceptRewritten)
        #expect(counters[.icmpReplied] == 1)
        var expected = error
        expected.source = datagram.destination
        expected.icmp = (v6 ? 1 : 3, v6 ? 4 : 3, [0, 0, 0, 0], datagram.build())
        #expect(out == expected.build())

        // A damaged message stays damaged: the ICMP checksum is updated, not recomputed.
        var damaged = error.build()
        let checksumAt = v6 ? 42 : 22
        damaged[checksumAt] ^= 0x01
        let (_, damagedOut) = handler.run(damaged, counters: &counters)
        var fixed = damagedOut
        fixed[checksumAt] ^= 0x01
        #expect(fixed == expected.build(), "off by exactly the damage")
    }

    /// "Packet too big" / "fragmentation needed" from a router on the client side, about a reply from the VIP,
    /// reaches the real server about its own packet.
    @Test(arguments: [false, true])
    func tooBigFromTheClientSideReachesTheRealServer(v6: Bool) {
        let (handler, datagram, forwarded) = natWithFlow(v6)
        let real = Array(forwarded[(v6 ? 24 : 16)..<(v6 ? 40 : 20)])
        var reply = v6 ? PacketBuilder.v6() : PacketBuilder()
        reply.transport = 17
        reply.source = datagram.destination          // the reply as the client side saw it: from the VIP
        reply.sourcePort = 53
        reply.destination = datagram.source
        reply.destinationPort = datagram.sourcePort
        reply.payload = Array(repeating: 9, count: 64)
        let router: [UInt8] = v6 ? ip("2001:db8:c::fe").bytes : [192, 0, 2, 254]
        var error = v6 ? PacketBuilder.v6() : PacketBuilder()
        error.transport = v6 ? 58 : 1
        error.source = router
        error.destination = datagram.destination
        error.icmp = (v6 ? 2 : 3, v6 ? 0 : 4, v6 ? [0, 0, 5, 0] : [0, 0, 5, 0], reply.build())
        var counters = CounterBatch()
        let (verdict, out) = handler.run(error.build(), counters: &counters)
        #expect(verdict == .acceptRewritten)
        #expect(counters[.icmpForwarded] == 1)
        var realReply = reply
        realReply.source = real
        realReply.sourcePort = 5353
        var expected = error
        expected.destination = real
        expected.icmp = (error.icmp!.type, error.icmp!.code, error.icmp!.rest, realReply.build())
        #expect(out == expected.build())
    }

    /// FULLNAT: both ends translated in the outer header and in the quote.
    @Test func fullNATTranslatesBothEndsOfTheQuote() {
        let (handler, datagram, forwarded) = natWithFlow(false, mode: .fullnat)
        var error = PacketBuilder()
        error.transport = 1
        error.source = Array(forwarded[16..<20])
        error.destination = Array(forwarded[12..<16])     // the local address
        error.icmp = (3, 3, [0, 0, 0, 0], forwarded)
        var counters = CounterBatch()
        let (verdict, out) = handler.run(error.build(), counters: &counters)
        #expect(verdict == .acceptRewritten && counters[.icmpReplied] == 1)
        var expected = error
        expected.source = datagram.destination
        expected.destination = datagram.source
        expected.icmp = (3, 3, [0, 0, 0, 0], datagram.build())
        #expect(out == expected.build())
    }

    /// DR marks and TUN wraps the error like the connection's packets; errors about nothing tracked pass.
    @Test func directReturnModesAndUntrackedErrors() {
        for (mode, want) in [(ForwardingMode.dr, Tunnelled?.none),
                             (.tun, .verdict(source: ip("198.51.100.1"), destination: ip("198.51.100.11")))] {
            let (handler, datagram, _) = natWithFlow(false, mode: mode)
            var reply = PacketBuilder()
            reply.transport = 17
            reply.source = datagram.destination
            reply.sourcePort = 53
            reply.destination = datagram.source
            reply.destinationPort = datagram.sourcePort
            var error = PacketBuilder()
            error.transport = 1
            error.source = [192, 0, 2, 254]
            error.icmp = (3, 4, [0, 0, 5, 0], reply.build())
            var counters = CounterBatch()
            let forwarded = handler.run(error.build(), counters: &counters).0
            #expect(want == nil ? forwarded == .acceptMarked(0x1000) : forwarded.tunnelled == want)
            #expect(counters[.icmpForwarded] == 1)
            // A quote of the client's own packet (client -> real server) matches the connection's reply key,
            // but DR and TUN servers answer clients directly: not nfqlb's to translate. With DR the queue
            // copies only 160 bytes: nothing may be rewritten in them either way.
            var forward = PacketBuilder()
            forward.transport = 17
            forward.destination = [198, 51, 100, 11]
            forward.sourcePort = datagram.sourcePort
            forward.payload = Array(repeating: 5, count: 300)
            var fromReal = PacketBuilder()
            fromReal.transport = 1
            fromReal.source = [198, 51, 100, 11]
            fromReal.destination = datagram.source
            fromReal.icmp = (3, 3, [0, 0, 0, 0], forward.build())
            let fromRealBytes = fromReal.build()
            let prefix = mode == .dr ? Array(fromRealBytes.prefix(160)) : fromRealBytes
            let (fromRealVerdict, fromRealOut) = handler.run(prefix, counters: &counters)
            #expect(fromRealVerdict == .accept && fromRealOut == prefix && counters[.icmpReplied] == 0)
            counters = CounterBatch()
            // Another client port: not a tracked connection.
            reply.destinationPort = 1
            error.icmp = (3, 4, [0, 0, 5, 0], reply.build())
            let untracked = error.build()
            let (verdict, out) = handler.run(untracked, counters: &counters)
            #expect(verdict == .accept && out == untracked && counters[.passedICMP] == 1)
        }
    }
}
