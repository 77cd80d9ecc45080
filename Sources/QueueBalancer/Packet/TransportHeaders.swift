/// The TCP header (RFC 9293 section 3.1), read in place (``HeaderView``).
struct TCPHeader: HeaderView {
    static let minimumLength = 20

    /// Field offsets. The ports are where UDP has them.
    enum Offset {
        static let sourcePort = 0, destinationPort = 2, dataOffset = 12, flags = 13, checksum = 16
    }

    let bytes: UnsafeRawBufferPointer

    var sourcePort: UInt16 { bytes.loadBigEndianUInt16(at: Offset.sourcePort) }
    var destinationPort: UInt16 { bytes.loadBigEndianUInt16(at: Offset.destinationPort) }
    /// The data offset in bytes (20...60 in a valid header).
    var headerLength: Int { Int(bytes[Offset.dataOffset] >> 4) &* 4 }
    var flags: TCPFlags { TCPFlags(rawValue: bytes[Offset.flags]) }
}

/// The UDP header (RFC 768), read in place (``HeaderView``).
struct UDPHeader: HeaderView {
    static let minimumLength = 8

    /// Field offsets.
    enum Offset {
        static let sourcePort = 0, destinationPort = 2, length = 4, checksum = 6
    }

    let bytes: UnsafeRawBufferPointer

    /// The datagram's length field: header and payload.
    var datagramLength: Int { Int(bytes.loadBigEndianUInt16(at: Offset.length)) }
}

/// The ICMP (RFC 792) and ICMPv6 (RFC 4443) header: type, code, checksum and four bytes whose meaning depends
/// on the type (the next-hop MTU of "fragmentation needed" and "packet too big"). Offsets and type numbers
/// for the code that reads and writes error messages.
enum ICMPHeader {
    static let length = 8

    /// Field offsets. "Fragmentation needed" has the next-hop MTU in the last 16 bits of the word at `mtu`,
    /// "packet too big" in all 32.
    enum Offset {
        static let type = 0, code = 1, checksum = 2, mtu = 4
    }

    /// ICMP for IPv4: the error types nfqlb carries along connections, and code 4 of "destination
    /// unreachable", "fragmentation needed and DF set" (RFC 1191).
    static let destinationUnreachable: UInt8 = 3, timeExceeded: UInt8 = 11, parameterProblem: UInt8 = 12
    static let fragmentationNeeded: UInt8 = 4

    /// ICMPv6 (RFC 4443): destination unreachable, packet too big, time exceeded, parameter problem (1...4).
    static let v6DestinationUnreachable: UInt8 = 1, v6PacketTooBig: UInt8 = 2, v6ParameterProblem: UInt8 = 4

    /// The error types of `family` nfqlb carries along connections (and queues: see ``IptablesRules``).
    static func errorTypes(_ family: IPFamily) -> [UInt8] {
        family == .v4 ? [destinationUnreachable, timeExceeded, parameterProblem]
                      : Array(v6DestinationUnreachable...v6ParameterProblem)
    }

    /// Whether `type` is one of ``errorTypes(_:)``, without building the list (the packet path asks).
    static func isError(_ type: UInt8, _ family: IPFamily) -> Bool {
        family == .v4 ? type == destinationUnreachable || type == timeExceeded || type == parameterProblem
                      : (v6DestinationUnreachable...v6ParameterProblem).contains(type)
    }
}
