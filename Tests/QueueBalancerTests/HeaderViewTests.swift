import Testing
@testable import QueueBalancer

/// The header views read fields by name from packets built field by field, and the header writers produce
/// headers a from-scratch reference accepts.
@Suite struct HeaderViewTests {
    @Test func ipv4FieldsByName() throws {
        var builder = PacketBuilder()
        builder.options = [1, 1, 1, 0]
        builder.fragmentField = 0x4000
        let packet = builder.build()
        try packet.withUnsafeBytes { bytes in
            let header = try #require(IPv4Header(bytes))
            #expect(header.version == 4 && header.headerLength == 24 && !header.isMinimal)
            #expect(header.totalLength == packet.count && header.identification == 0x1234)
            #expect(header.dontFragment && !header.isFragment && !header.isLaterFragment)
            #expect(header.protocolNumber == .tcp && header.source == ip("192.0.2.2") && header.destination == ip("203.0.113.10"))
            let tcp = try #require(TCPHeader(UnsafeRawBufferPointer(rebasing: bytes[24...])))
            #expect(tcp.sourcePort == 40000 && tcp.destinationPort == 80 && tcp.headerLength == 20 && tcp.flags == .syn)
            #expect(IPv4Header(UnsafeRawBufferPointer(rebasing: bytes[0..<19])) == nil, "19 bytes are no header")
        }
    }

    @Test func ipv6FieldsByName() throws {
        var builder = PacketBuilder.v6()
        builder.transport = 17
        builder.payload = [1, 2, 3]
        var packet = builder.build()
        packet[0] = 0x6A; packet[1] = 0xB1; packet[2] = 0x23; packet[3] = 0x45   // traffic class 0xAB, flow 0x12345
        try packet.withUnsafeBytes { bytes in
            let header = try #require(IPv6Header(bytes))
            #expect(header.version == 6 && header.trafficClass == 0xAB && header.flowLabel == 0x12345)
            #expect(header.totalLength == packet.count && header.nextHeader == .udp)
            #expect(header.source == ip("2001:db8:c::2") && header.destination == ip("2001:db8:f::10"))
            let udp = try #require(UDPHeader(UnsafeRawBufferPointer(rebasing: bytes[40...])))
            #expect(udp.datagramLength == 11)
        }
    }

    @Test func writtenHeadersAreValid() {
        var v4 = [UInt8](repeating: 0xEE, count: 20)
        v4.withUnsafeMutableBytes {
            IPv4Header.write(into: $0, typeOfService: 0xB8, totalLength: 1500, identification: 0xBEEF,
                             fragmentField: IPv4Header.dontFragment, protocolNumber: .ipv6,
                             source: ip("198.51.100.1"), destination: ip("198.51.100.11"))
        }
        #expect(v4[0] == 0x45 && v4[1] == 0xB8 && Array(v4[2..<10]) == [0x05, 0xDC, 0xBE, 0xEF, 0x40, 0, 64, 41])
        #expect(PacketBuilder.referenceChecksum(v4) == 0)
        var v6 = [UInt8](repeating: 0xEE, count: 40)
        v6.withUnsafeMutableBytes {
            IPv6Header.write(into: $0, trafficClass: 0xAB, flowLabel: 0x12345, payloadLength: 1000, nextHeader: .ipv4,
                             source: ip("2001:db8:5::1"), destination: ip("2001:db8:5::11"))
        }
        #expect(Array(v6[0..<8]) == [0x6A, 0xB1, 0x23, 0x45, 0x03, 0xE8, 4, 64])
        #expect(Array(v6[24..<40]) == ip("2001:db8:5::11").bytes)
    }

    /// The decapsulator's rule for inner sources, both families.
    @Test(arguments: [
        ("192.0.2.2", true), ("0.1.2.3", false), ("127.0.0.1", false), ("224.0.0.1", false), ("240.0.0.1", false),
        ("223.255.255.255", true), ("2001:db8:c::2", true), ("::", false), ("::1", false), ("ff02::1", false),
        ("::ffff:192.0.2.2", false),
    ])
    func ordinarySources(_ text: String, _ ordinary: Bool) {
        let address = ip(text)
        let family: IPFamily = text.contains(":") ? .v6 : .v4
        #expect(address.isOrdinarySource(in: family) == ordinary)
    }
}
