import Testing
@testable import QueueBalancer

/// TUN: IPIP towards the real server, ICMP "fragmentation needed" for packets that would not fit, and the
/// real server's decapsulation.
@Suite struct TunnelTests {
    func tunConfig() -> BalancerConfig {
        BalancerConfig(queues: [0], services: [
            VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .tun, scheduler: .rr,
                           reals: [RealServer(address: IPAddress("198.51.100.11")!, port: 80)]),
        ])
    }

    func handler(mtu: Int = 1500) -> PacketHandler {
        PacketHandler(config: tunConfig(), tracker: ConnectionTracker(),
                      tunnelPaths: [IPAddress("198.51.100.11")!: TunnelPath(source: IPAddress("198.51.100.1")!, mtu: mtu)])
    }

    @Test func smallPacketIsEncapsulatedWithAValidOuterHeader() {
        var counters = CounterBatch()
        var syn = PacketBuilder()
        syn.payload = Array(repeating: 7, count: 100)
        let packet = syn.build()
        let (verdict, out) = handler().run(packet, counters: &counters)
        #expect(verdict.tunnelled == .verdict(source: ip("198.51.100.1"), destination: ip("198.51.100.11")))
        #expect(out == packet, "the inner packet is not touched")

        // The bytes the worker sends: outer header + inner packet.
        let writer = VerdictWriter(limit: 4096)
        let ok = verdict.tunnelHeader.map {
            writer.appendEncapsulated(queue: QueueNumber(rawValue: 0), packetID: 1, packet: packet, header: $0)
        }
        #expect(ok == true)
        let message = Array(UnsafeRawBufferPointer(start: writer.bytes, count: writer.used))
        #expect(Int(message[0]) | Int(message[1]) << 8 == writer.used)
        let payloadAttribute = 32
        #expect(Int(message[payloadAttribute]) | Int(message[payloadAttribute + 1]) << 8 == 4 + 20 + packet.count)
        let outer = Array(message[(payloadAttribute + 4)..<(payloadAttribute + 24)])
        #expect(outer[0] == 0x45 && outer[9] == 4)
        #expect(Int(outer[2]) << 8 | Int(outer[3]) == packet.count + 20)
        #expect(outer[6] & 0x40 != 0, "DF copied from the inner header")
        #expect(Array(outer[12..<16]) == [198, 51, 100, 1] && Array(outer[16..<20]) == [198, 51, 100, 11])
        #expect(PacketBuilder.referenceChecksum(outer) == 0, "outer header checksum valid")
        #expect(Array(message[(payloadAttribute + 24)..<(payloadAttribute + 24 + packet.count)]) == packet)
    }

    @Test func tooBigWithDFIsAnsweredWithFragmentationNeededFromTheVIP() {
        var counters = CounterBatch()
        var big = PacketBuilder()
        big.tcpFlags = 0x02
        let h = handler(mtu: 1500)
        _ = h.run(big.build(), counters: &counters)      // open the connection
        big.tcpFlags = 0x10
        big.payload = Array(repeating: 1, count: 1460)    // 1500 bytes: 1520 encapsulated
        let packet = big.build()
        let (verdict, out) = h.run(packet, counters: &counters)
        #expect(verdict == .acceptReplaced(offset: 0, length: 56))
        #expect(counters[.tunnelTooBig] == 1)
        let icmp = Array(out[0..<56])
        #expect(Array(icmp[12..<16]) == [203, 0, 113, 10], "from the VIP")
        #expect(Array(icmp[16..<20]) == [192, 0, 2, 2], "to the client")
        #expect(icmp[9] == 1 && icmp[20] == 3 && icmp[21] == 4, "ICMP type 3 code 4")
        #expect(Int(icmp[26]) << 8 | Int(icmp[27]) == 1480, "next-hop MTU = path MTU - 20")
        #expect(Array(icmp[28..<56]) == Array(packet[0..<28]), "quotes the IP header and 8 bytes of TCP")
        #expect(PacketBuilder.referenceChecksum(Array(icmp[0..<20])) == 0)
        #expect(PacketBuilder.referenceChecksum(Array(icmp[20..<56])) == 0)

        // Without DF the kernel may fragment the outer packet: encapsulate.
        big.fragmentField = 0
        #expect(h.run(big.build(), counters: &counters).0.tunnelled == .verdict(source: ip("198.51.100.1"), destination: ip("198.51.100.11")))
    }

    @Test func decapsulatorReturnsTheInnerPacketOrDropsWhatItCannotHandle() {
        let inner = PacketBuilder().build()
        var outer: [UInt8] = [0x45, 0] + be16(UInt16(inner.count + 20)) + [0, 0, 0x40, 0, 64, 4, 0, 0, 198, 51, 100, 1, 198, 51, 100, 11]
        outer += inner
        let decap = Decapsulator(vips: [ip("203.0.113.10")])
        var counters = CounterBatch()
        var bytes = outer
        #expect(bytes.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .acceptReplaced(offset: 20, length: inner.count))
        #expect(counters[.decapsulated] == 1)

        var withOptions = PacketBuilder(); withOptions.options = [1, 1, 1, 0]
        let innerWithOptions = withOptions.build()
        var bad: [UInt8] = [0x45, 0] + be16(UInt16(innerWithOptions.count + 20)) + Array(outer[4..<20]) + innerWithOptions
        #expect(bad.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .drop)
        #expect(counters[.droppedTunnelHeader] == 1)

        var truncated = Array(outer[0..<30])
        #expect(truncated.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .drop)
        #expect(counters[.droppedMalformed] == 1)

        // Inner packets for another address, or from loopback, are not delivered (no local-service injection).
        var toLocalhost = PacketBuilder(); toLocalhost.destination = [127, 0, 0, 1]
        var fromLoopback = PacketBuilder(); fromLoopback.source = [127, 0, 0, 1]
        for innerBuilder in [toLocalhost, fromLoopback] {
            let spoofedInner = innerBuilder.build()
            var spoofed: [UInt8] = [0x45, 0] + be16(UInt16(spoofedInner.count + 20)) + Array(outer[4..<20]) + spoofedInner
            #expect(spoofed.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .drop)
        }
        #expect(counters[.droppedTunnelSpoofed] == 2)

        var notTunnel = PacketBuilder().build()
        #expect(notTunnel.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) } == .accept)
        #expect(counters[.passedOtherProtocol] == 1)
    }

    /// `--allow-source`: only the balancers' tunnels are opened, in both families; and both families open only
    /// TCP, UDP and their ICMP (IPv4 once let any inner protocol through).
    @Test func decapsulatorOpensTunnelsFromAllowedSourcesOnly() {
        func tunnel4(from source: [UInt8], inner: [UInt8]) -> [UInt8] {
            [0x45, 0] + be16(UInt16(inner.count + 20)) + [0, 0, 0x40, 0, 64, 4, 0, 0] + source + [198, 51, 100, 11] + inner
        }
        func tunnel6(from source: [UInt8], inner: [UInt8]) -> [UInt8] {
            [0x60, 0, 0, 0] + be16(UInt16(inner.count)) + [41, 64] + source + ip("2001:db8:5::11").bytes + inner
        }
        let decap = Decapsulator(vips: [ip("203.0.113.10"), ip("2001:db8:f::10")],
                                 allowedSources: [IPPrefix("198.51.100.0/30")!, IPPrefix("2001:db8:5::1")!])
        var counters = CounterBatch()
        func verdict(_ packet: [UInt8]) -> Verdict {
            var bytes = packet
            return bytes.withUnsafeMutableBytes { decap.handle($0, now: 0, counters: &counters) }
        }
        let inner4 = PacketBuilder().build(), inner6 = PacketBuilder.v6().build()
        #expect(verdict(tunnel4(from: [198, 51, 100, 1], inner: inner4)) == .acceptReplaced(offset: 20, length: inner4.count))
        #expect(verdict(tunnel4(from: [198, 51, 100, 66], inner: inner4)) == .drop)
        #expect(verdict(tunnel6(from: ip("2001:db8:5::1").bytes, inner: inner6)) == .acceptReplaced(offset: 40, length: inner6.count))
        #expect(verdict(tunnel6(from: ip("2001:db8:5::2").bytes, inner: inner6)) == .drop)
        // An IPv4 balancer address does not open IPv6 tunnels, nor the reverse.
        #expect(verdict(tunnel6(from: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 198, 51, 100, 1], inner: inner6)) == .drop)
        #expect(counters[.droppedTunnelSource] == 3 && counters[.decapsulated] == 2)
        // Inner protocols: GRE (47) inside IPv4 is refused like any other non-TCP/UDP/ICMP; ICMP passes.
        var gre = PacketBuilder(); gre.transport = 47
        #expect(verdict(tunnel4(from: [198, 51, 100, 2], inner: gre.build())) == .drop)
        #expect(counters[.droppedTunnelHeader] == 1)
        var echo = PacketBuilder(); echo.transport = 1; echo.icmp = (type: 8, code: 0, rest: [0, 1, 0, 1], quoted: [])
        let icmp = echo.build()
        #expect(verdict(tunnel4(from: [198, 51, 100, 2], inner: icmp)) == .acceptReplaced(offset: 20, length: icmp.count))
        // Without --allow-source every outer source is accepted (the command warns).
        #expect(Decapsulator(vips: [ip("203.0.113.10")]).allowedSources.isEmpty)
    }

    @Test func prefixesParseAndMatchTheirOwnFamily() {
        #expect(IPPrefix("198.51.100.7/24")?.description == "198.51.100.0/24")
        #expect(IPPrefix("2001:db8:5::1")?.description == "2001:db8:5::1/128")
        #expect(IPPrefix("198.51.100.1")?.contains(ip("198.51.100.1")) == true)
        #expect(IPPrefix("198.51.100.1")?.contains(ip("198.51.100.2")) == false)
        #expect(IPPrefix("0.0.0.0/0")?.contains(ip("2001:db8::1")) == false)
        #expect(IPPrefix("::/0")?.contains(ip("2001:db8::1")) == true)
        #expect(IPPrefix("::/0")?.contains(ip("192.0.2.1")) == false)
        for bad in ["198.51.100.0/33", "2001:db8::/129", "x/24", "198.51.100.0/", "198.51.100.0/-1", "1/2/3"] {
            #expect(IPPrefix(bad) == nil, "\(bad)")
        }
    }
}
