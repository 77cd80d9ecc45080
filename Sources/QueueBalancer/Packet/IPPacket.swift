/// The IP version of a packet.
public enum IPFamily: UInt8, Sendable, CustomStringConvertible {
    case v4 = 4, v6 = 6

    public var description: String { self == .v4 ? "IPv4" : "IPv6" }

    /// Byte offsets of the source and destination addresses in the fixed header, and the address size.
    var sourceOffset: Int { self == .v4 ? 12 : 8 }
    var destinationOffset: Int { self == .v4 ? 16 : 24 }
    var addressSize: Int { self == .v4 ? 4 : 16 }
}

/// What the datapath needs from an IPv4 or IPv6 packet carrying TCP or UDP, read in place from the kernel's
/// buffer. One type for both families, so every mode, the tracker and the schedulers have one code path.
///
/// Invariant (established by ``IPPacket/parse(_:headersOnly:)``): every offset below plus the bytes read there
/// lies inside the buffer and inside the packet's length, so rewriting code may store at them without checks.
public struct IPPacket {
    public var family: IPFamily
    /// Bytes before the transport header: the IPv4 header with its options (IHL * 4, 20...60), or the IPv6
    /// fixed header and its extension headers (40 and up).
    public var headerLength: Int
    /// The packet's length (IPv4 total length; IPv6 40 + payload length), without any trailing padding the
    /// buffer may hold.
    public var totalLength: Int
    public var transport: TransportProtocol
    public var source: IPAddress
    public var destination: IPAddress
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN), 0 for UDP.
    public var tcpFlags: TCPFlags

    /// Offset of the transport header.
    public var transportOffset: Int { headerLength }
    /// Offset of the transport checksum field.
    public var checksumOffset: Int { headerLength + (transport == .tcp ? 16 : 6) }
    /// Whether the packet carries IPv4 options or IPv6 extension headers.
    public var hasOptions: Bool { headerLength > (family == .v4 ? 20 : 40) }
    /// The transport segment's length (header and payload), as the pseudo-header counts it.
    public var transportLength: Int { totalLength - headerLength }

    /// The outcome of parsing one queued packet.
    public enum Parsed {
        /// TCP or UDP, complete and unfragmented: ready to balance.
        case transport(IPPacket)
        /// A fragment (IPv4 MF or offset; an IPv6 fragment header other than an atomic one): no ports in it.
        case fragment
        /// ICMP or ICMPv6: an error quoting a TCP or UDP packet, or nil for anything else (echo, neighbour
        /// discovery, errors about other protocols).
        case icmp(ICMPError?)
        /// Another IP protocol (or IPv6 "no next header").
        case otherProtocol
        /// IPv6 headers nfqlb does not walk: a routing header with segments left (the VIP is not the final
        /// destination), AH or ESP before the transport header, a chain longer than 8 headers, a jumbogram.
        case unsupportedHeaders
        /// Truncated or inconsistent headers: a version other than 4 and 6, IHL < 5, a length beyond the
        /// buffer, an extension header or transport header cut short.
        case malformed
    }

    /// Parses `bytes` in place; reads nothing outside it and allocates nothing.
    ///
    /// - Parameter headersOnly: `bytes` may be a prefix of the packet (the queue's copy range is short, as for
    ///   DR, where nfqlb only reads headers): the headers up to the ports and TCP flags must be there, the
    ///   rest may not. The invariant above then holds for the header fields only; nothing may be rewritten.
    public static func parse(_ bytes: UnsafeRawBufferPointer, headersOnly: Bool = false) -> Parsed {
        guard bytes.count >= 1 else { return .malformed }
        switch bytes[0] >> 4 {
        case 4: return parseIPv4(bytes, headersOnly: headersOnly)
        case 6: return parseIPv6(bytes, headersOnly: headersOnly)
        default: return .malformed
        }
    }

    private static func parseIPv4(_ bytes: UnsafeRawBufferPointer, headersOnly: Bool) -> Parsed {
        let count = bytes.count
        guard count >= 20 else { return .malformed }
        let headerLength = Int(bytes[0] & 0x0F) &* 4
        guard headerLength >= 20 else { return .malformed }
        let totalLength = Int(bytes.loadBigEndianUInt16(at: 2))
        guard totalLength >= headerLength, totalLength <= count || headersOnly else { return .malformed }
        // More-fragments flag or a fragment offset: only the first fragment has ports, and none has all bytes.
        guard bytes.loadBigEndianUInt16(at: 6) & 0x3FFF == 0 else { return .fragment }
        switch bytes[9] {
        case 1:
            let available = min(count, totalLength)
            return .icmp(ICMPError.parse(bytes, family: .v4, headerLength: headerLength, totalLength: totalLength,
                                         available: available))
        case let proto:
            return transport(bytes, family: .v4, proto: proto, headerLength: headerLength, totalLength: totalLength,
                             available: min(count, totalLength),
                             source: IPAddress(ipv4: bytes.loadBigEndianUInt32(at: 12)),
                             destination: IPAddress(ipv4: bytes.loadBigEndianUInt32(at: 16)))
        }
    }

    /// Walks the IPv6 extension-header chain (RFC 8200 section 4) to the transport header.
    private static func parseIPv6(_ bytes: UnsafeRawBufferPointer, headersOnly: Bool) -> Parsed {
        let count = bytes.count
        guard count >= 40 else { return .malformed }
        let payloadLength = Int(bytes.loadBigEndianUInt16(at: 4))
        // Payload length 0 with a hop-by-hop header is a jumbogram (RFC 2675); without one it is just empty.
        guard payloadLength > 0 else { return bytes[6] == 0 ? .unsupportedHeaders : .malformed }
        let totalLength = 40 + payloadLength
        guard totalLength <= count || headersOnly else { return .malformed }
        let available = min(count, totalLength)
        var next = bytes[6]
        var offset = 40
        for _ in 0..<8 {
            switch next {
            case 0, 43, 60:
                // Hop-by-hop (first only), routing, destination options: next header, length in 8-byte units.
                guard next != 0 || offset == 40 else { return .malformed }
                guard offset + 8 <= available else { return .malformed }
                let length = (Int(bytes[offset + 1]) + 1) &* 8
                guard offset + length <= totalLength, offset + length <= available || headersOnly else { return .malformed }
                if next == 43 && bytes[offset + 3] != 0 { return .unsupportedHeaders }   // segments left
                next = bytes[offset]
                offset += length
            case 44:
                guard offset + 8 <= available else { return .malformed }
                // An atomic fragment (offset 0, no more fragments, RFC 6946) is a whole packet.
                guard bytes.loadBigEndianUInt16(at: offset + 2) & 0xFFF9 == 0 else { return .fragment }
                next = bytes[offset]
                offset += 8
            case 58:
                return .icmp(ICMPError.parse(bytes, family: .v6, headerLength: offset, totalLength: totalLength,
                                             available: available))
            case 59:
                return .otherProtocol
            case 50, 51:
                return .unsupportedHeaders
            default:
                return transport(bytes, family: .v6, proto: next, headerLength: offset, totalLength: totalLength,
                                 available: available,
                                 source: IPAddress(high: bytes.loadBigEndianUInt64(at: 8), low: bytes.loadBigEndianUInt64(at: 16)),
                                 destination: IPAddress(high: bytes.loadBigEndianUInt64(at: 24),
                                                        low: bytes.loadBigEndianUInt64(at: 32)))
            }
        }
        return .unsupportedHeaders
    }

    /// The TCP or UDP header at `headerLength`, checked against the packet's and the buffer's lengths.
    private static func transport(_ bytes: UnsafeRawBufferPointer, family: IPFamily, proto: UInt8, headerLength l4: Int,
                                  totalLength: Int, available: Int, source: IPAddress, destination: IPAddress) -> Parsed {
        let transport: TransportProtocol
        var flags: UInt8 = 0
        switch proto {
        case TransportProtocol.tcp.rawValue:
            guard totalLength - l4 >= 20, l4 + 20 <= available else { return .malformed }
            let dataOffset = Int(bytes[l4 + 12] >> 4) &* 4
            guard dataOffset >= 20, l4 + dataOffset <= totalLength else { return .malformed }
            flags = bytes[l4 + 13]
            transport = .tcp
        case TransportProtocol.udp.rawValue:
            guard totalLength - l4 >= 8, l4 + 8 <= available else { return .malformed }
            let udpLength = Int(bytes.loadBigEndianUInt16(at: l4 + 4))
            guard udpLength >= 8, l4 + udpLength <= totalLength else { return .malformed }
            transport = .udp
        default:
            return .otherProtocol
        }
        return .transport(IPPacket(
            family: family, headerLength: l4, totalLength: totalLength, transport: transport,
            source: source, destination: destination,
            sourcePort: bytes.loadBigEndianUInt16(at: l4), destinationPort: bytes.loadBigEndianUInt16(at: l4 + 2),
            tcpFlags: TCPFlags(rawValue: flags)))
    }
}

/// The TCP flags the tracker follows.
public struct TCPFlags: OptionSet, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let ack = TCPFlags(rawValue: 0x10)
}

extension UnsafeRawBufferPointer {
    func loadBigEndianUInt16(at offset: Int) -> UInt16 {
        UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    func loadBigEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    func loadBigEndianUInt64(at offset: Int) -> UInt64 {
        UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    func loadBigEndianUInt16(at offset: Int) -> UInt16 {
        UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    func storeBigEndian(_ value: UInt16, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    func storeBigEndian(_ value: UInt32, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
    }

    func storeBigEndian(_ value: UInt64, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt64.self)
    }

    func loadBigEndianUInt64(at offset: Int) -> UInt64 {
        UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// Stores `address` at `offset` as the header of `family` holds it (4 or 16 bytes).
    func store(_ address: IPAddress, family: IPFamily, at offset: Int) {
        if family == .v4 {
            storeBigEndian(UInt32(truncatingIfNeeded: address.low), at: offset)
        } else {
            storeBigEndian(address.high, at: offset)
            storeBigEndian(address.low, at: offset + 8)
        }
    }
}
