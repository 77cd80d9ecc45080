import Testing
@testable import QueueBalancer

/// What the queue worker sends for each kind of verdict: the netlink message, byte for byte where it matters.
@Suite struct VerdictEncoderTests {
    /// The attributes of the one verdict message in `encoder`, by type: (type, value bytes).
    func attributes(_ encoder: VerdictEncoder) -> [(type: UInt16, value: [UInt8])] {
        let bytes = Array(UnsafeRawBufferPointer(start: encoder.verdicts.bytes, count: encoder.verdicts.used))
        var result: [(UInt16, [UInt8])] = []
        var offset = NetlinkLayout.attributesOffset
        while offset + 4 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8
            let type = UInt16(bytes[offset + 2]) | UInt16(bytes[offset + 3]) << 8
            result.append((type, Array(bytes[(offset + 4)..<(offset + length)])))
            offset += (length + 3) & ~3
        }
        return result
    }

    func encode(_ verdict: Verdict, _ packet: [UInt8], counters: inout CounterBatch) -> VerdictEncoder {
        let encoder = VerdictEncoder(queue: 3, sendLimit: 140_000)
        let fits = packet.withUnsafeBytes { encoder.encode(verdict, id: 77, packet: $0, counters: &counters) }
        #expect(fits)
        return encoder
    }

    let translated: [UInt8] = [0x01, 0, 0, 0]

    @Test func eachVerdictBecomesItsMessage() {
        var counters = CounterBatch()
        let packet = PacketBuilder().build()
        let header: [UInt8] = [0, 0, 0, 1, 0, 0, 0, 77]   // NF_ACCEPT, packet id 77
        var a = attributes(encode(.accept, packet, counters: &counters))
        #expect(a.map(\.type) == [NetlinkLayout.attributeVerdictHeader] && a[0].value == header)
        a = attributes(encode(.drop, packet, counters: &counters))
        #expect(a[0].value == [0, 0, 0, 0, 0, 0, 0, 77])
        a = attributes(encode(.acceptMarked(0x1001), packet, counters: &counters))
        #expect(a.map(\.type) == [NetlinkLayout.attributeVerdictHeader, NetlinkLayout.attributeMark])
        #expect(a[1].value == [0, 0, 0x10, 0x01])
        a = attributes(encode(.acceptRewritten, packet, counters: &counters))
        #expect(a.map(\.type) == [NetlinkLayout.attributeVerdictHeader, NetlinkLayout.attributeMark, NetlinkLayout.attributePayload])
        #expect(a[1].value == translated && a[2].value == packet, "the whole buffer, marked translated")
        a = attributes(encode(.acceptReplaced(offset: 20, length: 8), packet, counters: &counters))
        #expect(a[1].value == translated && a[2].value == Array(packet[20..<28]))
        #expect(counters[.droppedRawSend] == 0)
    }

    @Test func aTunnelHeaderGoesInFrontOfThePacket() throws {
        var counters = CounterBatch()
        let packet = PacketBuilder().build()
        let header = try #require(packet.withUnsafeBytes {
            TunnelHeader(encapsulating: $0, innerFamily: .v4, innerLength: packet.count, outer: .v4,
                         source: ip("198.51.100.1"), destination: ip("198.51.100.11"))
        })
        let a = attributes(encode(.acceptEncapsulated(header), packet, counters: &counters))
        #expect(a.map(\.type) == [NetlinkLayout.attributeVerdictHeader, NetlinkLayout.attributePayload], "no mark")
        #expect(Array(a[1].value[20...]) == packet)
        #expect(PacketBuilder.referenceChecksum(Array(a[1].value[0..<20])) == 0)
        #expect(a[1].value[9] == 4 && Int(a[1].value[2]) << 8 | Int(a[1].value[3]) == packet.count + 20)
    }

    /// A packet for a raw socket: its queued packet is dropped; the send itself is counted as lost when no raw
    /// socket could be opened (unprivileged), never silently.
    @Test func aPacketOfTheOtherFamilyIsDroppedAndSentApart() {
        var counters = CounterBatch()
        let inner = PacketBuilder.v6().build()
        let packet = [UInt8](repeating: 0, count: 20) + inner
        let encoder = encode(.sendReplaced(offset: 20, length: inner.count, destination: ip("2001:db8:f::10")), packet,
                             counters: &counters)
        let a = attributes(encoder)
        #expect(a.map(\.type) == [NetlinkLayout.attributeVerdictHeader] && a[0].value == [0, 0, 0, 0, 0, 0, 0, 77])
        #expect(counters[.droppedRawSend] == (RawIPSocket(family: .v6) == nil ? 1 : 0))
    }

    /// A verdict that does not fit is refused whole, so the worker can send the batch and try again.
    @Test func aFullBufferRefusesWhole() {
        var counters = CounterBatch()
        let encoder = VerdictEncoder(queue: 0, sendLimit: 60)
        let packet = PacketBuilder().build()
        #expect(packet.withUnsafeBytes { encoder.encode(.accept, id: 1, packet: $0, counters: &counters) })
        let used = encoder.verdicts.used
        #expect(!packet.withUnsafeBytes { encoder.encode(.acceptRewritten, id: 2, packet: $0, counters: &counters) })
        #expect(encoder.verdicts.used == used && encoder.verdicts.count == 1)
    }

    /// `add` sends the batch when it is full and tries again; a verdict that fits no batch (a 65,535-byte
    /// rewritten packet: the attribute length is 16 bits) becomes a drop counted in `dropped_verdict_size`,
    /// not in `dropped_malformed` (the packet was well formed and already has its verdict counter).
    @Test func aVerdictTooLargeForAnyBatchBecomesADrop() {
        var counters = CounterBatch()
        let encoder = VerdictEncoder(queue: 0, sendLimit: 140_000)
        var sends = 0
        let small = PacketBuilder().build()
        small.withUnsafeBytes { encoder.add(.acceptRewritten, id: 1, packet: $0, counters: &counters) { _ in sends += 1 } }
        #expect(sends == 0 && encoder.verdicts.count == 1)
        let huge = [UInt8](repeating: 0x45, count: 65_535)
        huge.withUnsafeBytes {
            encoder.add(.acceptRewritten, id: 2, packet: $0, counters: &counters) { _ in sends += 1; encoder.verdicts.reset() }
        }
        #expect(sends == 1 && encoder.verdicts.count == 1)
        let a = attributes(encoder)
        #expect(a.map(\.type) == [NetlinkLayout.attributeVerdictHeader] && a[0].value == [0, 0, 0, 0, 0, 0, 0, 2])
        #expect(counters[.droppedVerdictSize] == 1 && counters[.droppedMalformed] == 0)
    }
}
