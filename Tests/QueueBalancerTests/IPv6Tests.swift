import Testing
@testable import QueueBalancer

/// IPv6 through the same datapath as IPv4: every mode, byte for byte against packets built from scratch.
@Suite struct IPv6Tests {
    static let vip = ip("2001:db8:f::10")
    static let reals = ["2001:db8:5::11", "2001:db8:5::12"]

    static func config(_ mode: ForwardingMode, transport: TransportProtocol = .tcp, port: UInt16 = 80,
                       realPort: UInt16 = 8080) -> BalancerConfig {
        var service = VirtualService(
            vip: vip, port: port, transport: transport, mode: mode, scheduler: .rr,
            reals: reals.map { RealServer(address: ip($0), port: mode == .dr || mode == .tun ? port : realPort) },
            localAddresses: mode == .fullnat ? [ip("2001:db8:5::1")] : [])
        service.persistencePrefix = 128
        return BalancerConfig(queues: [0], services: [service])
    }

    @Test(arguments: [(UInt8(6), [UInt8]()), (UInt8(6), Array("GET / HTTP/1.1\r\n\r\n".utf8)), (UInt8(17), Array("hello".utf8))])
    func natRewritesBothWays(transport: UInt8, payload: [UInt8]) {
        let handler = PacketHandler(config: Self.config(.nat, transport: transport == 6 ? .tcp : .udp), tracker: ConnectionTracker())
        var counters = CounterBatch()
        var client = PacketBuilder.v6()
        client.transport = transport
        client.payload = payload
        let (verdict, out) = handler.run(client.build(), counters: &counters)
        #expect(verdict == .acceptRewritten)
        var expected = client
        expected.destination = ip(Self.reals[0]).bytes
        expected.destinationPort = 8080
        #expect(out == expected.build())

        var reply = PacketBuilder.v6()
        reply.transport = transport
        reply.source = ip(Self.reals[0]).bytes
        reply.sourcePort = 8080
        reply.destination = ip("2001:db8:c::2").bytes
        reply.destinationPort = 40000
        reply.tcpFlags = 0x12
        reply.payload = payload
        let (replyVerdict, replyOut) = handler.run(reply.build(), counters: &counters)
        #expect(replyVerdict == .acceptRewritten)
        var expectedReply = reply
        expectedReply.source = Self.vip.bytes
        expectedReply.sourcePort = 80
        #expect(replyOut == expectedReply.build())
        #expect(counters[.forwarded] == 1 && counters[.replied] == 1)
    }

    /// Extension headers stay in place; the transport header behind them is rewritten.
    @Test func natWithExtensionHeaders() {
        let handler = PacketHandler(config: Self.config(.nat), tracker: ConnectionTracker())
        var counters = CounterBatch()
        var client = PacketBuilder.v6()
        client.extensions = [(0, [1, 4, 0, 0, 0, 0]), (60, [1, 4, 0, 0, 0, 0])]
        let (_, out) = handler.run(client.build(), counters: &counters)
        var expected = client
        expected.destination = ip(Self.reals[0]).bytes
        expected.destinationPort = 8080
        #expect(out == expected.build())
        #expect(counters[.withIPOptions] == 1)
    }

    /// A UDP checksum of 0 is invalid over IPv6 (RFC 8200): nfqlb computes it rather than keep 0.
    @Test func udpZeroChecksumIsComputed() {
        let handler = PacketHandler(config: Self.config(.nat, transport: .udp), tracker: ConnectionTracker())
        var counters = CounterBatch()
        var client = PacketBuilder.v6()
        client.transport = 17
        client.udpChecksumOff = true
        client.payload = [1, 2, 3]
        let (_, out) = handler.run(client.build(), counters: &counters)
        var expected = client
        expected.udpChecksumOff = false
        expected.destination = ip(Self.reals[0]).bytes
        expected.destinationPort = 8080
        #expect(out == expected.build())
    }

    @Test func fullNATTranslatesBothEnds() {
        let config = Self.config(.fullnat)
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(configuration: .init(
            hashSeed: 1, portAllocators: config.portAllocators, localPorts: config.fullnatPorts)))
        var counters = CounterBatch()
        let client = PacketBuilder.v6()
        let (verdict, out) = handler.run(client.build(), counters: &counters)
        #expect(verdict == .acceptRewritten)
        let localPort = UInt16(out[40]) << 8 | UInt16(out[41])
        var expected = client
        expected.source = ip("2001:db8:5::1").bytes
        expected.sourcePort = localPort
        expected.destination = ip(Self.reals[0]).bytes
        expected.destinationPort = 8080
        #expect(out == expected.build())

        var reply = PacketBuilder.v6()
        reply.source = ip(Self.reals[0]).bytes
        reply.sourcePort = 8080
        reply.destination = ip("2001:db8:5::1").bytes
        reply.destinationPort = localPort
        reply.tcpFlags = 0x12
        let (_, replyOut) = handler.run(reply.build(), counters: &counters)
        var expectedReply = reply
        expectedReply.source = Self.vip.bytes
        expectedReply.sourcePort = 80
        expectedReply.destination = ip("2001:db8:c::2").bytes
        expectedReply.destinationPort = 40000
        #expect(replyOut == expectedReply.build())
    }

    @Test func directRoutingMarksAndRoutes() {
        var config = Self.config(.dr)
        config.services.append(VirtualService(vip: ip("203.0.113.10"), port: 80, transport: .tcp, mode: .dr,
                                              reals: [RealServer(address: ip("198.51.100.11"), port: 80)]))
        let handler = PacketHandler(config: config, tracker: ConnectionTracker())
        #expect(handler.headersOnly)
        var counters = CounterBatch()
        let packet = PacketBuilder.v6().build()
        let (verdict, out) = handler.run(packet, counters: &counters)
        #expect(verdict == .acceptMarked(0x1000))
        #expect(out == packet)
        // Only the headers were copied: a prefix parses too.
        #expect(handler.run(Array(packet.prefix(80)), counters: &counters).0 == .acceptMarked(0x1000))
        #expect(IptablesRules.routeCommands(for: config, family: .v6) == """
            rule add fwmark 0x1000 table 4096 pref 100
            route replace default via 2001:db8:5::11 table 4096
            rule add fwmark 0x1001 table 4097 pref 100
            route replace default via 2001:db8:5::12 table 4097

            """)
        #expect(IptablesRules.routeCommands(for: config, family: .v4).contains("via 198.51.100.11 table 4098"))
    }

    @Test func tunnelEncapsulatesInIPv6() {
        let handler = PacketHandler(config: Self.config(.tun), tracker: ConnectionTracker(),
                                    tunnelPaths: Dictionary(uniqueKeysWithValues: Self.reals.map { (ip($0), TunnelPath(source: ip("2001:db8:5::1"), mtu: 1500)) }))
        var counters = CounterBatch()
        var syn = PacketBuilder.v6()
        syn.payload = Array(repeating: 7, count: 100)
        let packet = syn.build()
        let (verdict, out) = handler.run(packet, counters: &counters)
        #expect(verdict.tunnelled == .verdict(source: ip("2001:db8:5::1"), destination: ip(Self.reals[0])))
        #expect(out == packet)
        let writer = VerdictWriter(limit: 4096)
        #expect(verdict.tunnelHeader.map {
            writer.appendEncapsulated(queue: QueueNumber(rawValue: 0), packetID: 1, packet: packet, header: $0)
        } == true)
        let message = Array(UnsafeRawBufferPointer(start: writer.bytes, count: writer.used))
        let outer = Array(message[36..<76])
        #expect(outer[0] >> 4 == 6 && outer[6] == 41 && outer[7] == 64)
        #expect(Int(outer[4]) << 8 | Int(outer[5]) == packet.count, "payload length: the inner packet")
        #expect(Array(outer[8..<24]) == ip("2001:db8:5::1").bytes && Array(outer[24..<40]) == ip(Self.reals[0]).bytes)
        #expect(Array(message[76..<(76 + packet.count)]) == packet)
    }

    /// IPv6 routers never fragment: a packet too big for the tunnel is answered with ICMPv6 "packet too big"
    /// (MTU - 40) from the VIP, quoting as much of it as fits in 1280 bytes.
    @Test func tunnelTooBigIsAnsweredWithPacketTooBig() {
        let handler = PacketHandler(config: Self.config(.tun), tracker: ConnectionTracker(),
                                    tunnelPaths: Dictionary(uniqueKeysWithValues: Self.reals.map { (ip($0), TunnelPath(source: ip("2001:db8:5::1"), mtu: 1500)) }))
        var counters = CounterBatch()
        var big = PacketBuilder.v6()
        _ = handler.run(big.build(), counters: &counters)
        big.tcpFlags = 0x10
        big.payload = Array(repeating: 1, count: 1440)      // 1500 bytes: 1540 encapsulated
        let packet = big.build()
        let (verdict, out) = handler.run(packet, counters: &counters)
        #expect(verdict == .acceptReplaced(offset: 0, length: 1280))
        #expect(counters[.tunnelTooBig] == 1)
        let icmp = Array(out[0..<1280])
        #expect(icmp[6] == 58 && Int(icmp[4]) << 8 | Int(icmp[5]) == 1240)
        #expect(Array(icmp[8..<24]) == Self.vip.bytes && Array(icmp[24..<40]) == ip("2001:db8:c::2").bytes)
        #expect(icmp[40] == 2 && icmp[41] == 0, "ICMPv6 packet too big")
        #expect(Array(icmp[44..<48]) == [0, 0, 0x05, 0xB4], "MTU 1500 - 40 = 1460")
        #expect(Array(icmp[48..<1280]) == Array(packet[0..<1232]))
        let pseudo = Self.vip.bytes + ip("2001:db8:c::2").bytes + [0, 58] + be16(1240)
        #expect(PacketBuilder.referenceChecksum(pseudo + Array(icmp[40..<1280])) == 0, "ICMPv6 checksum valid")
    }

    @Test func decapsulatorReturnsTheInnerIPv6Packet() {
        let inner = PacketBuilder.v6().build()
        let outer: [UInt8] = [0x60, 0, 0, 0] + be16(UInt16(inner.count)) + [41, 64]
            + ip("2001:db8:5::1").bytes + ip(Self.reals[0]).bytes + inner
        let decap = Decapsulator(vips: [Self.vip])
        var counters = CounterBatch()
        var bytes = outer
        #expect(bytes.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) }
            == .acceptReplaced(offset: 40, length: inner.count))
        // An inner packet with extension headers cannot keep the outer's transport offset.
        var withExtension = PacketBuilder.v6()
        withExtension.extensions = [(60, [1, 4, 0, 0, 0, 0])]
        let innerExt = withExtension.build()
        bytes = [0x60, 0, 0, 0] + be16(UInt16(innerExt.count)) + [41, 64] + ip("2001:db8:5::1").bytes
            + ip(Self.reals[0]).bytes + innerExt
        #expect(bytes.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .drop)
        #expect(counters[.droppedTunnelHeader] == 1)
        // Not to a VIP, or from loopback: refused.
        var spoofed = PacketBuilder.v6()
        spoofed.source = ip("::1").bytes
        let innerSpoofed = spoofed.build()
        bytes = [0x60, 0, 0, 0] + be16(UInt16(innerSpoofed.count)) + [41, 64] + ip("2001:db8:5::1").bytes
            + ip(Self.reals[0]).bytes + innerSpoofed
        #expect(bytes.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .drop)
        #expect(counters[.droppedTunnelSpoofed] == 1)
    }

    @Test func ip6tablesRulesForIPv6ServicesOnly() {
        var config = Self.config(.fullnat)
        config.services.append(VirtualService(vip: ip("203.0.113.10"), port: 80, transport: .tcp, mode: .nat,
                                              reals: [RealServer(address: ip("198.51.100.11"), port: 8080)]))
        let v6 = IptablesRules.restoreInput(for: config, family: .v6)
        #expect(v6.contains("-A NFQLB-PREROUTING ! -i lo -s 2001:db8:f::10/128 -m mark ! --mark 0x1000000/0x1000000"))
        #expect(v6.contains("-A NFQLB-PREROUTING -d 2001:db8:f::10/128 -p tcp -m tcp --dport 80"))
        #expect(v6.contains("-A NFQLB-PREROUTING -s 2001:db8:5::11/128 -d 2001:db8:5::1/128 -p tcp -m tcp --sport 8080 --dport 61000:65535"))
        #expect(!v6.contains("203.0.113.10"))
        let v4 = IptablesRules.restoreInput(for: config)
        #expect(v4.contains("-d 203.0.113.10/32") && !v4.contains("2001:db8"))
        #expect(IptablesRules.restoreInput(for: natConfig(), family: .v6) == "", "no IPv6 service, no ip6tables rules")
    }

    /// The tracker, schedulers and persistence work on IPv6 clients with one implementation.
    @Test func persistenceGroupsAnIPv6Prefix() {
        var config = Self.config(.nat)
        config.services[0].persistence = 300
        config.services[0].persistencePrefix = 64
        let handler = PacketHandler(config: config, tracker: ConnectionTracker())
        var counters = CounterBatch()
        var servers = Set<[UInt8]>()
        for (i, client) in ["2001:db8:c::2", "2001:db8:c::99", "2001:db8:c:0:ffff::1"].enumerated() {
            var syn = PacketBuilder.v6()
            syn.source = ip(client).bytes
            syn.sourcePort = UInt16(1000 + i)
            servers.insert(Array(handler.run(syn.build(), counters: &counters).1[24..<40]))
        }
        #expect(servers.count == 1, "one /64, one real server")
    }
}

/// TUN between families (IPVS allows it): IPv4 in IPv6 and IPv6 in IPv4, sent through a raw socket because a
/// verdict cannot change a packet's family.
@Suite struct CrossFamilyTunnelTests {
    func handler(vip: String, real: String, source: String) -> PacketHandler {
        let config = BalancerConfig(queues: [0], services: [VirtualService(
            vip: ip(vip), port: 80, transport: .tcp, mode: .tun, scheduler: .rr, reals: [RealServer(address: ip(real), port: 80)])])
        return PacketHandler(config: config, tracker: ConnectionTracker(),
                             tunnelPaths: [ip(real): TunnelPath(source: ip(source), mtu: 1500)])
    }

    @Test func ipv4InIPv6() {
        let h = handler(vip: "203.0.113.10", real: "2001:db8:5::11", source: "2001:db8:5::1")
        var counters = CounterBatch()
        var syn = PacketBuilder()
        let packet = syn.build()
        #expect(h.run(packet, counters: &counters).0.tunnelled == .rawSend(source: ip("2001:db8:5::1"), destination: ip("2001:db8:5::11")))
        // The outer header the verdict carries: IPv6, next header 4, traffic class from the TOS byte.
        var tos = packet
        tos[1] = 0xB8
        let header = h.run(tos, counters: &counters).0.tunnelHeader?.withUnsafeBytes { Array($0) } ?? []
        #expect(header.count == 40)
        #expect(Array(header[0..<4]) == [0x6B, 0x80, 0, 0], "version 6, traffic class 0xB8")
        #expect(Int(header[4]) << 8 | Int(header[5]) == packet.count && header[6] == 4 && header[7] == 64)
        #expect(Array(header[24..<40]) == ip("2001:db8:5::11").bytes)
        // Too big for the IPv6 path (40 bytes of overhead): "fragmentation needed" with MTU 1460 to the client.
        syn.tcpFlags = 0x10
        syn.payload = Array(repeating: 1, count: 1460)
        let (verdict, out) = h.run(syn.build(), counters: &counters)
        #expect(verdict == .acceptReplaced(offset: 0, length: 56))
        #expect(out[20] == 3 && out[21] == 4 && Int(out[26]) << 8 | Int(out[27]) == 1460)
    }

    @Test func ipv6InIPv4() {
        let h = handler(vip: "2001:db8:f::10", real: "198.51.100.11", source: "198.51.100.1")
        var counters = CounterBatch()
        let packet = PacketBuilder.v6().build()
        let verdict = h.run(packet, counters: &counters).0
        #expect(verdict.tunnelled == .rawSend(source: ip("198.51.100.1"), destination: ip("198.51.100.11")))
        let header = verdict.tunnelHeader?.withUnsafeBytes { Array($0) } ?? []
        #expect(header.count == 20)
        #expect(header[0] == 0x45 && header[9] == 41 && header[6] & 0x40 != 0, "protocol 41, DF")
        #expect(Int(header[2]) << 8 | Int(header[3]) == packet.count + 20)
        #expect(PacketBuilder.referenceChecksum(header) == 0)
    }

    /// On the real server: the inner packet of the other family goes out through a raw socket to the VIP.
    @Test func decapsulatorSendsTheOtherFamilysInnerPacket() {
        let decap = Decapsulator(vips: [ip("203.0.113.10"), ip("2001:db8:f::10")])
        var counters = CounterBatch()
        let inner4 = PacketBuilder().build()
        var outer = [0x60, 0, 0, 0] + be16(UInt16(inner4.count)) + [4, 64] + ip("2001:db8:5::1").bytes
            + ip("2001:db8:5::11").bytes + inner4
        #expect(outer.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) }
            == .sendReplaced(offset: 40, length: inner4.count, destination: ip("203.0.113.10")))
        let inner6 = PacketBuilder.v6().build()
        outer = [0x45, 0] + be16(UInt16(inner6.count + 20)) + [0, 0, 0x40, 0, 64, 41, 0, 0, 198, 51, 100, 1, 198, 51, 100, 11] + inner6
        #expect(outer.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) }
            == .sendReplaced(offset: 20, length: inner6.count, destination: ip("2001:db8:f::10")))
        #expect(counters[.decapsulated] == 2)
        var other = PacketBuilder()
        other.destination = [203, 0, 113, 99]
        let notVIP = other.build()
        outer = [0x60, 0, 0, 0] + be16(UInt16(notVIP.count)) + [4, 64] + ip("2001:db8:5::1").bytes
            + ip("2001:db8:5::11").bytes + notVIP
        #expect(outer.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .drop)
        #expect(counters[.droppedTunnelSpoofed] == 1)
    }
}
