/// The TCP header (RFC 9293 section 3.1) at the start of a buffer, read in place (non-owning).
///
/// Invariant: ``bytes`` holds at least ``minimumLength`` bytes (``init(_:)`` checks it).
struct TCPHeader {
    static let minimumLength = 20
    static let sourcePortOffset = 0
    static let destinationPortOffset = 2
    static let flagsOffset = 13
    static let checksumOffset = 16

    let bytes: UnsafeRawBufferPointer

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= TCPHeader.minimumLength else { return nil }
        self.bytes = bytes
    }

    var sourcePort: UInt16 { bytes.loadBigEndianUInt16(at: TCPHeader.sourcePortOffset) }
    var destinationPort: UInt16 { bytes.loadBigEndianUInt16(at: TCPHeader.destinationPortOffset) }
    /// The data offset in bytes (20...60 in a valid header).
    var headerLength: Int { Int(bytes[12] >> 4) &* 4 }
    var flags: TCPFlags { TCPFlags(rawValue: bytes[TCPHeader.flagsOffset]) }
}

/// The UDP header (RFC 768) at the start of a buffer, read in place (non-owning).
///
/// Invariant: ``bytes`` holds at least ``length`` bytes (``init(_:)`` checks it).
struct UDPHeader {
    static let length = 8
    static let sourcePortOffset = 0
    static let destinationPortOffset = 2
    static let lengthOffset = 4
    static let checksumOffset = 6

    let bytes: UnsafeRawBufferPointer

    init?(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count >= UDPHeader.length else { return nil }
        self.bytes = bytes
    }

    var sourcePort: UInt16 { bytes.loadBigEndianUInt16(at: UDPHeader.sourcePortOffset) }
    var destinationPort: UInt16 { bytes.loadBigEndianUInt16(at: UDPHeader.destinationPortOffset) }
    /// The datagram's length field: header and payload.
    var datagramLength: Int { Int(bytes.loadBigEndianUInt16(at: UDPHeader.lengthOffset)) }
}

/// The ICMP (RFC 792) and ICMPv6 (RFC 4443) header: type, code, checksum and four bytes whose meaning depends
/// on the type (the next-hop MTU of "fragmentation needed" and "packet too big"). Offsets and type numbers
/// for the code that reads and writes error messages.
enum ICMPHeader {
    static let length = 8
    static let typeOffset = 0
    static let codeOffset = 1
    static let checksumOffset = 2
    /// "Fragmentation needed": the next-hop MTU in the last 16 bits; "packet too big": all 32 bits.
    static let mtuOffset = 4

    /// ICMP for IPv4: the error types nfqlb carries along connections.
    static let destinationUnreachable: UInt8 = 3
    static let timeExceeded: UInt8 = 11
    static let parameterProblem: UInt8 = 12
    /// Destination unreachable, code 4: "fragmentation needed and DF set" (RFC 1191).
    static let fragmentationNeeded: UInt8 = 4

    /// ICMPv6 error types (RFC 4443): destination unreachable, packet too big, time exceeded, parameter problem.
    static let v6DestinationUnreachable: UInt8 = 1
    static let v6PacketTooBig: UInt8 = 2
    static let v6TimeExceeded: UInt8 = 3
    static let v6ParameterProblem: UInt8 = 4

    /// The error types of `family` nfqlb carries along connections (and queues: see ``IptablesRules``).
    static func errorTypes(_ family: IPFamily) -> [UInt8] {
        family == .v4 ? [destinationUnreachable, timeExceeded, parameterProblem]
                      : [v6DestinationUnreachable, v6PacketTooBig, v6TimeExceeded, v6ParameterProblem]
    }

    /// Whether `type` is one of ``errorTypes(_:)``, without building the list (the packet path asks).
    static func isError(_ type: UInt8, _ family: IPFamily) -> Bool {
        family == .v4 ? type == destinationUnreachable || type == timeExceeded || type == parameterProblem
                      : (v6DestinationUnreachable...v6ParameterProblem).contains(type)
    }
}
