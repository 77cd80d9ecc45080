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
        let ipv6: [UInt8] = [0x60] + Array(repeating: 0, count: 39)
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
            Case(description: "IPv6 on an IPv4 queue", packet: ipv6, verdict: .accept, counter: .passedNotIPv4),
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
        let parsed = packet.withUnsafeBytes { IPv4Packet.parse($0) }
        guard case .transport(let p) = parsed else { Issue.record("not parsed: \(parsed)"); return }
        #expect(p.headerLength == 24)
        #expect(p.hasOptions)
        #expect(p.sourcePort == 40000 && p.destinationPort == 80)
        #expect(p.tcpFlags == .syn)
        #expect(p.source == ipv4("192.0.2.2") && p.destination == ipv4("203.0.113.10"))
    }

    @Test func trailingPaddingIsIgnored() {
        var udp = PacketBuilder(); udp.transport = 17; udp.destinationPort = 53
        let packet = udp.build() + [0, 0, 0, 0, 0, 0]   // Ethernet minimum-frame padding
        guard case .transport(let p) = packet.withUnsafeBytes({ IPv4Packet.parse($0) }) else {
            Issue.record("not parsed"); return
        }
        #expect(p.totalLength == packet.count - 6)
    }
}

extension Array where Element == UInt8 {
    func withTotalLength(_ n: Int) -> [UInt8] {
        var copy = self
        copy[2] = UInt8(n >> 8)
        copy[3] = UInt8(n & 0xFF)
        return copy
    }
}
