import Testing
@testable import QueueBalancer

/// Malformed and unexpected packets: each case has a defined verdict and lands in its counter, never a crash.
@Suite struct PacketParsingTests {
    struct Case: CustomStringConvertible {
        var description: String
        var packet: [UInt8]
        var verdict: Verdict
        var counter: DatapathCounter
    }

    static var cases: [Case] {
        let syn = PacketBuilder().build()
        var badIHL = syn; badIHL[0] = 0x44
        var longTotal = syn; longTotal[2] = 0x05; longTotal[3] = 0xDC   // claims 1500 bytes
        var version5 = syn; version5[0] = 0x55
        var shortTCPDataOffset = syn; shortTCPDataOffset[20 + 12] = 0x40  // TCP data offset 4 words
        var udp = PacketBuilder(); udp.transport = 17; udp.destinationPort = 53; udp.payload = [1, 2, 3]
        var udpBadLength = udp.build(); udpBadLength[20 + 4] = 0x01    // UDP length 259 > packet
        var fragmentMF = PacketBuilder(); fragmentMF.fragmentField = 0x2000
        var fragmentOffset = PacketBuilder(); fragmentOffset.fragmentField = 0x0010
        var icmp = PacketBuilder(); icmp.transport = 1
        var gre = PacketBuilder(); gre.transport = 47
        var v6 = PacketBuilder.v6()
        v6.extensions = [(43, [0, 1, 0, 0, 0, 0] + Array(repeating: 0, count: 16))]    // routing, segments left 1
        let routed = v6.build()
        v6.extensions = [(51, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0])]                      // AH
        let ah = v6.build()
        v6.extensions = Array(repeating: (60, [0, 0, 0, 0, 0, 0]), count: 9)       // 9 destination-options headers
        let longChain = v6.build()
        v6.extensions = [(44, [0, 0x08, 0, 0, 0, 1])]                               // fragment offset 1 (8 bytes)
        let v6Fragment = v6.build()
        v6.extensions = [(44, [0, 0x01, 0, 0, 0, 1])]                               // first fragment, M set
        let v6FirstFragment = v6.build()
        v6.extensions = [(60, [0, 0, 0, 0, 0, 0]), (0, [0, 0, 0, 0, 0, 0])]         // hop-by-hop not first
        let lateHopByHop = v6.build()
        v6.extensions = [(0, [0xC2, 4, 0, 1, 0, 0])]                                 // jumbo payload option
        var jumbogram = v6.build(); jumbogram[4] = 0; jumbogram[5] = 0
        v6.extensions = [(60, [0, 0, 0, 0, 0, 0])]
        let cutChain = Array(v6.build().prefix(44)).withPayloadLength(4)
        var icmpv6 = PacketBuilder.v6(); icmpv6.transport = 58
        var noNext = PacketBuilder.v6(); noNext.transport = 59
        return [
            Case(description: "empty", packet: [], verdict: .drop, counter: .droppedMalformed),
            Case(description: "19 bytes", packet: Array(syn.prefix(19)), verdict: .drop, counter: .droppedMalformed),
            Case(description: "IHL 4 (< 5)", packet: badIHL, verdict: .drop, counter: .droppedMalformed),
            Case(description: "total length beyond buffer", packet: longTotal, verdict: .drop, counter: .droppedMalformed),
            Case(description: "version 5", packet: version5, verdict: .drop, counter: .droppedMalformed),
            Case(description: "TCP header cut", packet: Array(syn.prefix(30)).withTotalLength(30), verdict: .drop, counter: .droppedMalformed),
            Case(description: "TCP data offset < 5", packet: shortTCPDataOffset, verdict: .drop, counter: .droppedMalformed),
            Case(description: "UDP length beyond packet", packet: udpBadLength, verdict: .drop, counter: .droppedMalformed),
            Case(description: "fragment with MF", packet: fragmentMF.build(), verdict: .drop, counter: .droppedFragment),
            Case(description: "fragment with offset", packet: fragmentOffset.build(), verdict: .drop, counter: .droppedFragment),
            Case(description: "ICMP", packet: icmp.build(), verdict: .accept, counter: .passedICMP),
            Case(description: "GRE", packet: gre.build(), verdict: .accept, counter: .passedOtherProtocol),
            Case(description: "IPv6 routing header with segments left", packet: routed, verdict: .drop, counter: .droppedUnsupportedHeaders),
            Case(description: "IPv6 AH", packet: ah, verdict: .drop, counter: .droppedUnsupportedHeaders),
            Case(description: "IPv6 chain of 9 headers", packet: longChain, verdict: .drop, counter: .droppedUnsupportedHeaders),
            Case(description: "IPv6 jumbogram", packet: jumbogram, verdict: .drop, counter: .droppedUnsupportedHeaders),
            Case(description: "IPv6 fragment", packet: v6Fragment, verdict: .drop, counter: .droppedFragment),
            Case(description: "IPv6 first fragment", packet: v6FirstFragment, verdict: .drop, counter: .droppedFragment),
            Case(description: "IPv6 hop-by-hop not first", packet: lateHopByHop, verdict: .drop, counter: .droppedMalformed),
            Case(description: "IPv6 extension header cut", packet: cutChain, verdict: .drop, counter: .droppedMalformed),
            Case(description: "IPv6 39 bytes", packet: Array(PacketBuilder.v6().build().prefix(39)), verdict: .drop, counter: .droppedMalformed),
            Case(description: "IPv6 payload length beyond buffer", packet: Array(PacketBuilder.v6().build().prefix(50)), verdict: .drop, counter: .droppedMalformed),
            Case(description: "ICMPv6", packet: icmpv6.build(), verdict: .accept, counter: .passedICMP),
            Case(description: "IPv6 no next header", packet: noNext.build(), verdict: .accept, counter: .passedOtherProtocol),
        ]
    }

    @Test(arguments: cases)
    func verdictAndCounter(_ c: Case) {
        let handler = PacketHandler(config: natConfig(), tracker: ConnectionTracker())
        var counters = CounterBatch()
        let (verdict, bytes) = handler.run(c.packet, counters: &counters)
        #expect(verdict == c.verdict)
        #expect(counters[c.counter] == 1)
        #expect(bytes == c.packet, "a packet that is not rewritten is left byte for byte")
        let total = DatapathCounter.allCases.reduce(UInt64(0)) { $0 + counters[$1] }
        #expect(total == 1, "exactly one counter says why")
    }

    @Test func parsesTCPWithOptionsInPlace() {
        var builder = PacketBuilder()
        builder.options = [1, 1, 1, 0]   // NOP NOP NOP EOL
        let packet = builder.build()
        let parsed = packet.withUnsafeBytes { IPPacket.parse($0) }
        guard case .transport(let p) = parsed else { Issue.record("not parsed: \(parsed)"); return }
        #expect(p.headerLength == 24)
        #expect(p.hasOptions)
        #expect(p.sourcePort == 40000 && p.destinationPort == 80)
        #expect(p.tcpFlags == .syn)
        #expect(p.source == ip("192.0.2.2") && p.destination == ip("203.0.113.10"))
    }

    /// The extension-header chain is walked to the transport header, whichever headers it holds.
    @Test func walksIPv6ExtensionHeaders() {
        var b = PacketBuilder.v6()
        b.extensions = [(0, [1, 4, 0, 0, 0, 0]), (60, [1, 4, 0, 0, 0, 0] + Array(repeating: 0, count: 8)),
                        (43, [0, 0, 0, 0, 0, 0]), (44, [0, 0, 0, 0, 0, 7])]    // hop-by-hop, dest opts, routing (done), atomic fragment
        let packet = b.build()
        guard case .transport(let p) = packet.withUnsafeBytes({ IPPacket.parse($0) }) else {
            Issue.record("not parsed"); return
        }
        #expect(p.family == .v6 && p.headerLength == 40 + 8 + 16 + 8 + 8 && p.hasOptions)
        #expect(p.source == ip("2001:db8:c::2") && p.destination == ip("2001:db8:f::10"))
        #expect(p.sourcePort == 40000 && p.destinationPort == 80 && p.tcpFlags == .syn)
        #expect(p.totalLength == packet.count)
    }

    @Test func trailingPaddingIsIgnored() {
        var udp = PacketBuilder(); udp.transport = 17; udp.destinationPort = 53
        let packet = udp.build() + [0, 0, 0, 0, 0, 0]   // Ethernet minimum-frame padding
        guard case .transport(let p) = packet.withUnsafeBytes({ IPPacket.parse($0) }) else {
            Issue.record("not parsed"); return
        }
        #expect(p.totalLength == packet.count - 6)
    }
}

extension Array where Element == UInt8 {
    func withPayloadLength(_ n: Int) -> [UInt8] {
        var copy = self
        copy[4] = UInt8(n >> 8)
        copy[5] = UInt8(n & 0xFF)
        return copy
    }

    func withTotalLength(_ n: Int) -> [UInt8] {
        var copy = self
        copy[2] = UInt8(n >> 8)
        copy[3] = UInt8(n & 0xFF)
        return copy
    }
}
