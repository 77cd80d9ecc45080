import Testing
@testable import QueueBalancer

/// Packets queued with NFQA_CFG_F_GSO may carry unfinished checksums (CHECKSUM_PARTIAL: the field holds the
/// pseudo-header sum). A single packet must leave exactly as its twin with a complete checksum would; a GSO
/// super-packet leaves with the pseudo-header sum of its new addresses, which the kernel finishes per segment.
/// Checked byte for byte, every mode that rewrites, both directions, both families, TCP and UDP.
@Suite struct PartialChecksumTests {
    struct Flow: CustomStringConvertible, Sendable {
        var mode: ForwardingMode
        var v6: Bool
        var udp: Bool
        var description: String { "\(mode) \(v6 ? "IPv6" : "IPv4") \(udp ? "UDP" : "TCP")" }
    }

    static let flows: [Flow] = [ForwardingMode.nat, .fullnat].flatMap { mode in
        [false, true].flatMap { v6 in [false, true].map { udp in Flow(mode: mode, v6: v6, udp: udp) } }
    }

    func handler(_ flow: Flow) -> PacketHandler {
        let real = RealServer(address: ip(flow.v6 ? "2001:db8:5::11" : "198.51.100.11"), port: 8080)
        let config = BalancerConfig(queues: [0], services: [VirtualService(
            vip: ip(flow.v6 ? "2001:db8:f::10" : "203.0.113.10"), port: 80, transport: flow.udp ? .udp : .tcp,
            mode: flow.mode, scheduler: .rr, reals: [real],
            localAddresses: flow.mode == .fullnat ? [ip(flow.v6 ? "2001:db8:5::1" : "198.51.100.1")] : [])])
        return PacketHandler(config: config, tracker: ConnectionTracker(configuration: .init(
            hashSeed: 9, portAllocators: config.portAllocators, localPorts: config.fullnatPorts)))
    }

    /// The folded pseudo-header sum of `packet` (no options or extension headers): what a sender with
    /// checksum offload leaves in the transport checksum field.
    static func pseudoHeaderSum(_ packet: [UInt8]) -> UInt16 {
        let v6 = packet[0] >> 4 == 6
        let transportOffset = v6 ? 40 : 20
        let addresses = v6 ? Array(packet[8..<40]) : Array(packet[12..<20])
        let proto = packet[v6 ? 6 : 9]
        return ~PacketBuilder.referenceChecksum(addresses + [0, proto] + be16(UInt16(packet.count - transportOffset)))
    }

    /// `packet` with its transport checksum field holding the pseudo-header sum.
    static func withPseudoHeaderSum(_ packet: [UInt8]) -> [UInt8] {
        var copy = packet
        let offset = (packet[0] >> 4 == 6 ? 40 : 20) + (packet[packet[0] >> 4 == 6 ? 6 : 9] == 6 ? 16 : 6)
        let sum = pseudoHeaderSum(packet)
        copy[offset] = UInt8(sum >> 8)
        copy[offset + 1] = UInt8(sum & 0xFF)
        return copy
    }

    func run(_ handler: PacketHandler, _ packet: [UInt8], _ info: PacketInfo) -> (Verdict, [UInt8]) {
        var counters = CounterBatch()
        var bytes = packet
        let verdict = bytes.withUnsafeMutableBytes { handler.handle($0, info: info, now: 1_000, counters: &counters) }
        return (verdict, bytes)
    }

    @Test(arguments: flows)
    func partialPacketsLeaveAsTheirCompleteTwins(_ flow: Flow) {
        let complete = handler(flow), single = handler(flow), segmented = handler(flow)
        var client = flow.v6 ? PacketBuilder.v6() : PacketBuilder()
        client.transport = flow.udp ? 17 : 6
        client.payload = (0..<333).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let inbound = client.build()

        let (expectedVerdict, expected) = run(complete, inbound, [])
        #expect(expectedVerdict == .acceptRewritten)
        let (singleVerdict, singleOut) = run(single, Self.withPseudoHeaderSum(inbound), .checksumNotReady)
        #expect(singleVerdict == .acceptRewritten && singleOut == expected, "a single packet leaves complete")
        let (_, segmentedOut) = run(segmented, Self.withPseudoHeaderSum(inbound), [.checksumNotReady, .gso])
        #expect(segmentedOut == Self.withPseudoHeaderSum(expected), "a super-packet leaves with its new pseudo-header sum")

        // The real server's answer, to whoever it saw: the client (NAT) or the local address (FULLNAT).
        let addressLength = flow.v6 ? 16 : 4, sourceAt = flow.v6 ? 8 : 12, transportAt = flow.v6 ? 40 : 20
        var server = flow.v6 ? PacketBuilder.v6() : PacketBuilder()
        server.transport = client.transport
        server.source = Array(expected[(sourceAt + addressLength)..<(sourceAt + 2 * addressLength)])
        server.destination = Array(expected[sourceAt..<(sourceAt + addressLength)])
        server.sourcePort = 8080
        server.destinationPort = UInt16(expected[transportAt]) << 8 | UInt16(expected[transportAt + 1])
        server.tcpFlags = 0x12
        server.payload = Array(repeating: 0xA5, count: 1001)
        let answer = server.build()
        let (_, expectedAnswer) = run(complete, answer, [])
        #expect(Array(expectedAnswer[(sourceAt + addressLength)..<(sourceAt + 2 * addressLength)]) == client.source,
                "the answer goes back to the client")
        #expect(run(single, Self.withPseudoHeaderSum(answer), .checksumNotReady).1 == expectedAnswer)
        #expect(run(segmented, Self.withPseudoHeaderSum(answer), [.checksumNotReady, .gso]).1
            == Self.withPseudoHeaderSum(expectedAnswer))
    }

    /// DR only marks: a super-packet goes back untouched, whatever its checksum.
    @Test func directRoutingLeavesSuperPacketsAlone() {
        let config = BalancerConfig(queues: [0], services: [VirtualService(
            vip: ip("203.0.113.10"), port: 80, transport: .tcp, mode: .dr, scheduler: .rr,
            reals: [RealServer(address: ip("198.51.100.11"), port: 80)])])
        let handler = PacketHandler(config: config, tracker: ConnectionTracker())
        var syn = PacketBuilder()
        syn.payload = Array(repeating: 1, count: 3000)
        let packet = Self.withPseudoHeaderSum(syn.build())
        var counters = CounterBatch()
        var bytes = Array(packet.prefix(Int(PacketHandler.headerCopyRange)))
        let verdict = bytes.withUnsafeMutableBytes { handler.handle($0, info: [.gso, .checksumNotReady], now: 0, counters: &counters) }
        #expect(verdict == .acceptMarked(0x1000) && bytes == Array(packet.prefix(bytes.count)))
        #expect(counters[.gsoPackets] == 1 && counters[.forwarded] == 1)
    }
}
