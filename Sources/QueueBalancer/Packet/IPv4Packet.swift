/// What the datapath needs from an IPv4 packet carrying TCP or UDP, read in place from the kernel's buffer.
///
/// Invariant (established by ``IPv4Packet/parse(_:)``): every offset below plus the bytes read there lies
/// inside the buffer and inside the IPv4 total length, so rewriting code may store at them without checks.
public struct IPv4Packet {
    /// IPv4 header length in bytes (IHL * 4), 20...60.
    public var headerLength: Int
    /// The IPv4 total length: the packet's bytes, without any trailing padding the buffer may hold.
    public var totalLength: Int
    public var transport: TransportProtocol
    public var source: UInt32
    public var destination: UInt32
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    /// TCP flags byte (CWR ECE URG ACK PSH RST SYN FIN), 0 for UDP.
    public var tcpFlags: TCPFlags

    /// Offset of the transport header.
    public var transportOffset: Int { headerLength }
    /// Offset of the transport checksum field.
    public var checksumOffset: Int { headerLength + (transport == .tcp ? 16 : 6) }
    /// Whether the header carries IP options (IHL > 5).
    public var hasOptions: Bool { headerLength > 20 }

    /// The outcome of parsing one queued packet.
    public enum Parsed {
        /// TCP or UDP, complete and unfragmented: ready to balance.
        case transport(IPv4Packet)
        /// A fragment (MF set or offset non-zero): nfqlb cannot see ports in it.
        case fragment
        /// ICMP (protocol 1).
        case icmp
        /// Another IP protocol.
        case otherProtocol
        /// Not IPv4 (an IPv6 packet on an IPv4 queue).
        case notIPv4
        /// Truncated or inconsistent headers: IHL < 5, total length beyond the buffer, short transport header.
        case malformed
    }

    /// Parses `bytes` in place; reads nothing outside it and allocates nothing.
    ///
    /// - Parameter headersOnly: `bytes` may be a prefix of the packet (the queue's copy range is short, as for
    ///   DR, where nfqlb only reads headers): the headers up to the ports and TCP flags must be there, the
    ///   rest may not. The invariant above then holds for the header fields only; nothing may be rewritten.
    public static func parse(_ bytes: UnsafeRawBufferPointer, headersOnly: Bool = false) -> Parsed {
        let count = bytes.count
        guard count >= 20 else { return .malformed }
        let versionIHL = bytes[0]
        guard versionIHL >> 4 == 4 else { return versionIHL >> 4 == 6 ? .notIPv4 : .malformed }
        let headerLength = Int(versionIHL & 0x0F) &* 4
        guard headerLength >= 20 else { return .malformed }
        let totalLength = Int(bytes.loadBigEndianUInt16(at: 2))
        guard totalLength >= headerLength, totalLength <= count || headersOnly else { return .malformed }
        let available = min(count, totalLength)
        // More-fragments flag or a fragment offset: only the first fragment has ports, and none has all bytes.
        guard bytes.loadBigEndianUInt16(at: 6) & 0x3FFF == 0 else { return .fragment }
        let proto = bytes[9]
        let l4 = headerLength
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
        case 1:
            return .icmp
        default:
            return .otherProtocol
        }
        return .transport(IPv4Packet(
            headerLength: headerLength,
            totalLength: totalLength,
            transport: transport,
            source: bytes.loadBigEndianUInt32(at: 12),
            destination: bytes.loadBigEndianUInt32(at: 16),
            sourcePort: bytes.loadBigEndianUInt16(at: l4),
            destinationPort: bytes.loadBigEndianUInt16(at: l4 + 2),
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
}
