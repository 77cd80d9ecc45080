/// The IPv4 header (RFC 791) at the start of a buffer, read in place: a non-owning view over the kernel's
/// buffer, so reading a field is one load.
///
/// Invariant: ``bytes`` holds at least ``minimumLength`` bytes (``init(_:)`` checks it). Options and payload
/// beyond them are the caller's to bound, with ``headerLength`` and ``totalLength``.
struct IPv4Header {
    /// A header without options (IHL 5).
    static let minimumLength = 20

    // Field offsets, for code that writes headers.
    static let typeOfServiceOffset = 1
    static let totalLengthOffset = 2
    static let identificationOffset = 4
    static let fragmentFieldOffset = 6
    static let timeToLiveOffset = 8
    static let protocolOffset = 9
    static let checksumOffset = 10
    static let sourceOffset = 12
    static let destinationOffset = 16

    /// The flags and fragment offset field (offset 6).
    static let dontFragment: UInt16 = 0x4000
    static let moreFragments: UInt16 = 0x2000
    static let fragmentOffsetMask: UInt16 = 0x1FFF

    let bytes: UnsafeRawBufferPointer

    /// The header at the start of `bytes`; nil when fewer than 20 bytes are there.
    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= IPv4Header.minimumLength else { return nil }
        self.bytes = bytes
    }

    var version: UInt8 { bytes[0] >> 4 }
    /// IHL in bytes: 20...60 in a valid header (the caller checks the lower bound).
    var headerLength: Int { Int(bytes[0] & 0x0F) &* 4 }
    /// Version 4 with IHL 5: no options.
    var isMinimal: Bool { bytes[0] == 0x45 }
    var typeOfService: UInt8 { bytes[IPv4Header.typeOfServiceOffset] }
    var totalLength: Int { Int(bytes.loadBigEndianUInt16(at: IPv4Header.totalLengthOffset)) }
    var identification: UInt16 { bytes.loadBigEndianUInt16(at: IPv4Header.identificationOffset) }
    var fragmentField: UInt16 { bytes.loadBigEndianUInt16(at: IPv4Header.fragmentFieldOffset) }
    /// More fragments follow, or this is not the first: either way the packet is not whole.
    var isFragment: Bool { fragmentField & (IPv4Header.moreFragments | IPv4Header.fragmentOffsetMask) != 0 }
    /// A non-first fragment (offset > 0): it carries no transport header.
    var isLaterFragment: Bool { fragmentField & IPv4Header.fragmentOffsetMask != 0 }
    var dontFragment: Bool { fragmentField & IPv4Header.dontFragment != 0 }
    var protocolNumber: IPProtocolNumber { IPProtocolNumber(rawValue: bytes[IPv4Header.protocolOffset]) }
    var source: IPAddress { IPAddress(ipv4: bytes.loadBigEndianUInt32(at: IPv4Header.sourceOffset)) }
    var destination: IPAddress { IPAddress(ipv4: bytes.loadBigEndianUInt32(at: IPv4Header.destinationOffset)) }

    /// Writes a header without options (IHL 5) at the start of `out`, checksum included: the headers nfqlb
    /// originates (TUN's outer header, the ICMP "fragmentation needed" answer).
    static func write(into out: UnsafeMutableRawBufferPointer, typeOfService: UInt8, totalLength: Int,
                      identification: UInt16, fragmentField: UInt16, timeToLive: UInt8 = 64,
                      protocolNumber: IPProtocolNumber, source: IPAddress, destination: IPAddress) {
        out[0] = 0x45
        out[typeOfServiceOffset] = typeOfService
        out.storeBigEndian(UInt16(truncatingIfNeeded: totalLength), at: totalLengthOffset)
        out.storeBigEndian(identification, at: identificationOffset)
        out.storeBigEndian(fragmentField, at: fragmentFieldOffset)
        out[timeToLiveOffset] = timeToLive
        out[protocolOffset] = protocolNumber.rawValue
        out.storeBigEndian(UInt16(0), at: checksumOffset)
        out.store(source, family: .v4, at: sourceOffset)
        out.store(destination, family: .v4, at: destinationOffset)
        let header = UnsafeRawBufferPointer(rebasing: out[0..<minimumLength])
        out.storeBigEndian(InternetChecksum.compute(header), at: checksumOffset)
    }
}
