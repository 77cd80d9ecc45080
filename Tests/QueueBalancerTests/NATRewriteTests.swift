import Testing
@testable import QueueBalancer

/// NAT rewriting, byte for byte: the output must equal a packet built from scratch with the new addresses
/// and ports (checksums computed by the reference, not incrementally).
@Suite struct NATRewriteTests {
    @Test(arguments: [
        (6 as UInt8, [] as [UInt8], false),
        (6, Array("GET / HTTP/1.1\r\n\r\n".utf8), false),
        (6, [], true),                       // with IP options
        (17, Array("hello".utf8), false),
        (17, [0xFF, 0xFF, 0x00], true),
    ])
    func inboundAndReplyRewrite(transport: UInt8, payload: [UInt8], withOptions: Bool) {
        let handler = PacketHandler(config: natConfig(), tracker: ConnectionTracker())
        var counters = CounterBatch()
        let vport: UInt16 = transport == 6 ? 80 : 53
        let rport: UInt16 = transport == 6 ? 8080 : 5353

        var client = PacketBuilder()
        client.transport = transport
        client.destinationPort = vport
        client.payload = payload
        if withOptions { client.options = [1, 1, 1, 0] }
        let (verdict, out) = handler.run(client.build(), counters: &counters)
        #expect(verdict == .acceptRewritten)
        var expected = client
        expected.destination = [198, 51, 100, 11]
        expected.destinationPort = rport
        #expect(out == expected.build())

        // The real server's answer comes back rewritten to the VIP.
        var reply = PacketBuilder()
        reply.transport = transport
        reply.source = [198, 51, 100, 11]
        reply.sourcePort = rport
        reply.destination = [192, 0, 2, 2]
        reply.destinationPort = 40000
        reply.tcpFlags = 0x12
        reply.payload = payload
        let (replyVerdict, replyOut) = handler.run(reply.build(), counters: &counters)
        #expect(replyVerdict == .acceptRewritten)
        var expectedReply = reply
        expectedReply.source = [203, 0, 113, 10]
        expectedReply.sourcePort = vport
        #expect(replyOut == expectedReply.build())
        #expect(counters[.forwarded] == 1 && counters[.replied] == 1 && counters[.connectionsCreated] == 1)
    }

    @Test func udpWithoutChecksumKeepsZero() {
        let handler = PacketHandler(config: natConfig(), tracker: ConnectionTracker())
        var counters = CounterBatch()
        var client = PacketBuilder()
        client.transport = 17
        client.destinationPort = 53
        client.udpChecksumOff = true
        client.payload = [1, 2, 3, 4]
        let (_, out) = handler.run(client.build(), counters: &counters)
        #expect(out[26] == 0 && out[27] == 0)
        var expected = client
        expected.destination = [198, 51, 100, 11]
        expected.destinationPort = 5353
        #expect(out == expected.build())
    }

    /// A corrupt checksum stays corrupt: the real server must still see the damage (RFC 1624 updates).
    @Test func corruptChecksumStaysCorrupt() {
        let handler = PacketHandler(config: natConfig(), tracker: ConnectionTracker())
        var counters = CounterBatch()
        var packet = PacketBuilder().build()
        packet[36] ^= 0x5A   // TCP checksum high byte
        let (_, out) = handler.run(packet, counters: &counters)
        let segment = Array(out[20...])
        let pseudo = Array(out[12..<20]) + [0, 6] + be16(UInt16(segment.count))
        #expect(PacketBuilder.referenceChecksum(pseudo + segment) != 0)
    }

    @Test func tcpWithoutConnectionIsDroppedAndUnmatchedIsPassed() {
        let handler = PacketHandler(config: natConfig(), tracker: ConnectionTracker())
        var counters = CounterBatch()
        var ack = PacketBuilder()
        ack.tcpFlags = 0x10
        let (verdict, _) = handler.run(ack.build(), counters: &counters)
        #expect(verdict == .drop)
        #expect(counters[.droppedNoConnection] == 1)

        var stray = PacketBuilder()
        stray.source = [198, 51, 100, 11]
        stray.sourcePort = 8080
        stray.destination = [198, 51, 100, 1]   // a health check answer to the balancer itself
        stray.tcpFlags = 0x12
        let packet = stray.build()
        let (strayVerdict, strayOut) = handler.run(packet, counters: &counters)
        #expect(strayVerdict == .accept)
        #expect(strayOut == packet)
        #expect(counters[.passedUnmatched] == 1)
    }

    @Test func allWeightsZeroDropsWithCounter() {
        let handler = PacketHandler(config: natConfig(weights: [0, 0]), tracker: ConnectionTracker())
        var counters = CounterBatch()
        let (verdict, _) = handler.run(PacketBuilder().build(), counters: &counters)
        #expect(verdict == .drop)
        #expect(counters[.droppedNoRealServer] == 1)
    }
}
