/// The IPv4 header (RFC 791 section 3.1), read in place (``HeaderView``).
struct IPv4Header: HeaderView {
    /// A header without options (IHL 5).
    static let minimumLength = 20

    /// Field offsets, as RFC 791 draws the header.
    enum Offset {
        static let typeOfService = 1, totalLength = 2, identification = 4, fragmentField = 6
        static let timeToLive = 8, protocolNumber = 9, checksum = 10, source = 12, destination = 16
    }

    /// Bits of the flags and fragment offset field.
    static let dontFragment: UInt16 = 0x4000, moreFragments: UInt16 = 0x2000, fragmentOffsetMask: UInt16 = 0x1FFF

    let bytes: UnsafeRawBufferPointer

    var version: UInt8 { bytes[0] >> 4 }
    /// IHL in bytes: 20...60 in a valid header (the caller checks the lower bound).
    var headerLength: Int { Int(bytes[0] & 0x0F) &* 4 }
    /// Version 4 with IHL 5: no options.
    var isMinimal: Bool { bytes[0] == 0x45 }
    var typeOfService: UInt8 { bytes[Offset.typeOfService] }
    var totalLength: Int { Int(bytes.loadBigEndianUInt16(at: Offset.totalLength)) }
    var identification: UInt16 { bytes.loadBigEndianUInt16(at: Offset.identification) }
    var fragmentField: UInt16 { bytes.loadBigEndianUInt16(at: Offset.fragmentField) }
    /// More fragments follow, or this is not the first: either way the packet is not whole.
    var isFragment: Bool { fragmentField & (IPv4Header.moreFragments | IPv4Header.fragmentOffsetMask) != 0 }
    /// A non-first fragment (offset > 0): it carries no transport header.
    var isLaterFragment: Bool { fragmentField & IPv4Header.fragmentOffsetMask != 0 }
    var dontFragment: Bool { fragmentField & IPv4Header.dontFragment != 0 }
    var protocolNumber: IPProtocolNumber { IPProtocolNumber(rawValue: bytes[Offset.protocolNumber]) }
    var source: IPAddress { bytes.loadAddress(.v4, at: Offset.source) }
    var destination: IPAddress { bytes.loadAddress(.v4, at: Offset.destination) }

    /// Writes a header without options (IHL 5) at the start of `out`, checksum included: the headers nfqlb
    /// originates (TUN's outer header, the ICMP "fragmentation needed" answer).
    static func write(into out: UnsafeMutableRawBufferPointer, typeOfService: UInt8, totalLength: Int,
                      identification: UInt16, fragmentField: UInt16, timeToLive: UInt8 = 64,
                      protocolNumber: IPProtocolNumber, source: IPAddress, destination: IPAddress) {
        out[0] = 0x45
        out[Offset.typeOfService] = typeOfService
        out.storeBigEndian(UInt16(truncatingIfNeeded: totalLength), at: Offset.totalLength)
        out.storeBigEndian(identification, at: Offset.identification)
        out.storeBigEndian(fragmentField, at: Offset.fragmentField)
        out[Offset.timeToLive] = timeToLive
        out[Offset.protocolNumber] = protocolNumber.rawValue
        out.storeBigEndian(UInt16(0), at: Offset.checksum)
        out.store(source, family: .v4, at: Offset.source)
        out.store(destination, family: .v4, at: Offset.destination)
        let header = UnsafeRawBufferPointer(rebasing: out[0..<minimumLength])
        out.storeBigEndian(InternetChecksum.compute(header), at: Offset.checksum)
    }
}
