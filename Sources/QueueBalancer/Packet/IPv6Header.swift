/// The IPv6 fixed header (RFC 8200 section 3), read in place (``HeaderView``).
struct IPv6Header: HeaderView {
    /// The fixed header; extension headers follow it (``IPv6ExtensionHeader``).
    static let minimumLength = 40

    /// Field offsets after the version, traffic class and flow label word.
    enum Offset {
        static let payloadLength = 4, nextHeader = 6, hopLimit = 7, source = 8, destination = 24
    }

    let bytes: UnsafeRawBufferPointer

    var version: UInt8 { bytes[0] >> 4 }
    var trafficClass: UInt8 { (bytes[0] & 0x0F) << 4 | bytes[1] >> 4 }
    var flowLabel: UInt32 { bytes.loadBigEndianUInt32(at: 0) & 0xF_FFFF }
    /// Bytes after the fixed header; 0 with a hop-by-hop header means a jumbogram (RFC 2675).
    var payloadLength: Int { Int(bytes.loadBigEndianUInt16(at: Offset.payloadLength)) }
    /// The packet's length: the fixed header and the payload.
    var totalLength: Int { IPv6Header.minimumLength + payloadLength }
    var nextHeader: IPProtocolNumber { IPProtocolNumber(rawValue: bytes[Offset.nextHeader]) }
    var source: IPAddress { bytes.loadAddress(.v6, at: Offset.source) }
    var destination: IPAddress { bytes.loadAddress(.v6, at: Offset.destination) }

    /// Writes a fixed header at the start of `out` (the headers nfqlb originates: TUN's outer header, the
    /// ICMPv6 "packet too big" answer).
    static func write(into out: UnsafeMutableRawBufferPointer, trafficClass: UInt8, flowLabel: UInt32 = 0,
                      payloadLength: Int, nextHeader: IPProtocolNumber, hopLimit: UInt8 = 64,
                      source: IPAddress, destination: IPAddress) {
        out.storeBigEndian(UInt32(0x6000_0000) | UInt32(trafficClass) << 20 | flowLabel & 0xF_FFFF, at: 0)
        out.storeBigEndian(UInt16(truncatingIfNeeded: payloadLength), at: Offset.payloadLength)
        out[Offset.nextHeader] = nextHeader.rawValue
        out[Offset.hopLimit] = hopLimit
        out.store(source, family: .v6, at: Offset.source)
        out.store(destination, family: .v6, at: Offset.destination)
    }
}

/// One IPv6 extension header (RFC 8200 section 4) at `offset` of a packet, read in place.
///
/// Invariant: the first 8 bytes (every extension header's minimum) lie in ``bytes`` (the parser checks it).
struct IPv6ExtensionHeader {
    /// The fragment header's length; every other header states its own (``length``).
    static let fragmentHeaderLength = 8

    let bytes: UnsafeRawBufferPointer
    let offset: Int

    var nextHeader: IPProtocolNumber { IPProtocolNumber(rawValue: bytes[offset]) }
    /// Hop-by-hop, routing and destination options: the length field counts 8-byte units after the first 8.
    var length: Int { (Int(bytes[offset + 1]) + 1) &* 8 }
    /// Routing header: segments left (non-zero: the VIP is not the packet's final destination).
    var segmentsLeft: UInt8 { bytes[offset + 3] }
    /// Fragment header: offset 0 and no "more fragments" flag mean an atomic fragment (RFC 6946), a whole packet.
    var isAtomicFragment: Bool { bytes.loadBigEndianUInt16(at: offset + 2) & 0xFFF9 == 0 }
}
