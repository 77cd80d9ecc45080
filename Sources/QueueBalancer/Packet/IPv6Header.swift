/// The IPv6 fixed header (RFC 8200 section 3) at the start of a buffer, read in place (non-owning).
///
/// Invariant: ``bytes`` holds at least ``length`` bytes (``init(_:)`` checks it).
struct IPv6Header {
    /// The fixed header; extension headers follow it (``IPv6ExtensionHeader``).
    static let length = 40

    static let payloadLengthOffset = 4
    static let nextHeaderOffset = 6
    static let hopLimitOffset = 7
    static let sourceOffset = 8
    static let destinationOffset = 24

    let bytes: UnsafeRawBufferPointer

    /// The header at the start of `bytes`; nil when fewer than 40 bytes are there.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= IPv6Header.length else { return nil }
        self.bytes = bytes
    }

    var version: UInt8 { bytes[0] >> 4 }
    var trafficClass: UInt8 { (bytes[0] & 0x0F) << 4 | bytes[1] >> 4 }
    var flowLabel: UInt32 { bytes.loadBigEndianUInt32(at: 0) & 0xF_FFFF }
    /// Bytes after the fixed header; 0 with a hop-by-hop header means a jumbogram (RFC 2675).
    var payloadLength: Int { Int(bytes.loadBigEndianUInt16(at: IPv6Header.payloadLengthOffset)) }
    /// The packet's length: the fixed header and the payload.
    var totalLength: Int { IPv6Header.length + payloadLength }
    var nextHeader: IPProtocolNumber { IPProtocolNumber(rawValue: bytes[IPv6Header.nextHeaderOffset]) }
    var source: IPAddress { bytes.loadAddress(.v6, at: IPv6Header.sourceOffset) }
    var destination: IPAddress { bytes.loadAddress(.v6, at: IPv6Header.destinationOffset) }

    /// Writes a fixed header at the start of `out` (the headers nfqlb originates: TUN's outer header, the
    /// ICMPv6 "packet too big" answer).
    static func write(into out: UnsafeMutableRawBufferPointer, trafficClass: UInt8, flowLabel: UInt32 = 0,
                      payloadLength: Int, nextHeader: IPProtocolNumber, hopLimit: UInt8 = 64,
                      source: IPAddress, destination: IPAddress) {
        out.storeBigEndian(UInt32(0x6000_0000) | UInt32(trafficClass) << 20 | flowLabel & 0xF_FFFF, at: 0)
        out.storeBigEndian(UInt16(truncatingIfNeeded: payloadLength), at: payloadLengthOffset)
        out[nextHeaderOffset] = nextHeader.rawValue
        out[hopLimitOffset] = hopLimit
        out.store(source, family: .v6, at: sourceOffset)
        out.store(destination, family: .v6, at: destinationOffset)
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
