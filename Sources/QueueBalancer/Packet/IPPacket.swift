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
    /// IPv4: the DF flag; IPv6 packets are never fragmented on the way, so always true.
    public var dontFragment: Bool
    /// How far the transport checksum is finished (not in the bytes: the kernel says, ``PacketInfo``).
    public var checksum: TransportChecksum = .complete

    /// Offset of the transport header.
    public var transportOffset: Int { headerLength }
    /// Offset of the transport checksum field.
    public var checksumOffset: Int { headerLength + transport.checksumOffset }
    /// Whether the packet carries IPv4 options or IPv6 extension headers.
    public var hasOptions: Bool { headerLength > family.minimumHeaderLength }
    /// The transport segment's length (header and payload), as the pseudo-header counts it.
    public var transportLength: Int { totalLength - headerLength }
    /// The connection key of the packet as it travels (source to destination).
    public var flowKey: FlowKey {
        FlowKey(source: Endpoint(address: source, port: sourcePort),
                destination: Endpoint(address: destination, port: destinationPort), transport: transport)
    }

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

    /// The most IPv6 extension headers walked before giving up (``Parsed/unsupportedHeaders``).
    static let extensionHeaderLimit = 8

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
        guard let ip = IPv4Header(bytes), ip.headerLength >= IPv4Header.minimumLength else { return .malformed }
        let totalLength = ip.totalLength
        guard totalLength >= ip.headerLength, totalLength <= bytes.count || headersOnly else { return .malformed }
        // Only the first fragment has ports, and none has all the bytes.
        guard !ip.isFragment else { return .fragment }
        let available = min(bytes.count, totalLength)
        if ip.protocolNumber == .icmp {
            return .icmp(ICMPError.parse(bytes, family: .v4, headerLength: ip.headerLength, totalLength: totalLength,
                                         available: available))
        }
        return transport(bytes, family: .v4, proto: ip.protocolNumber, headerLength: ip.headerLength,
                         totalLength: totalLength, available: available, source: ip.source,
                         destination: ip.destination, dontFragment: ip.dontFragment)
    }

    /// Walks the IPv6 extension-header chain (RFC 8200 section 4) to the transport header.
    private static func parseIPv6(_ bytes: UnsafeRawBufferPointer, headersOnly: Bool) -> Parsed {
        guard let ip = IPv6Header(bytes) else { return .malformed }
        // Payload length 0 with a hop-by-hop header is a jumbogram (RFC 2675); without one it is just empty.
        guard ip.payloadLength > 0 else { return ip.nextHeader == .hopByHop ? .unsupportedHeaders : .malformed }
        let totalLength = ip.totalLength
        guard totalLength <= bytes.count || headersOnly else { return .malformed }
        let available = min(bytes.count, totalLength)
        var next = ip.nextHeader
        var offset = IPv6Header.minimumLength
        for _ in 0..<extensionHeaderLimit {
            let header = IPv6ExtensionHeader(bytes: bytes, offset: offset)
            switch next {
            case .hopByHop, .routing, .destinationOptions:
                guard next != .hopByHop || offset == IPv6Header.minimumLength else { return .malformed }
                guard offset + 8 <= available else { return .malformed }
                let length = header.length
                guard offset + length <= totalLength, offset + length <= available || headersOnly else { return .malformed }
                if next == .routing && header.segmentsLeft != 0 { return .unsupportedHeaders }
                next = header.nextHeader
                offset += length
            case .fragment:
                guard offset + IPv6ExtensionHeader.fragmentHeaderLength <= available else { return .malformed }
                guard header.isAtomicFragment else { return .fragment }
                next = header.nextHeader
                offset += IPv6ExtensionHeader.fragmentHeaderLength
            case .icmpv6:
                return .icmp(ICMPError.parse(bytes, family: .v6, headerLength: offset, totalLength: totalLength,
                                             available: available))
            case .noNextHeader:
                return .otherProtocol
            case .esp, .authentication:
                return .unsupportedHeaders
            default:
                return transport(bytes, family: .v6, proto: next, headerLength: offset, totalLength: totalLength,
                                 available: available, source: ip.source, destination: ip.destination,
                                 dontFragment: true)
            }
        }
        return .unsupportedHeaders
    }

    /// The TCP or UDP header at `headerLength`, checked against the packet's and the buffer's lengths.
    private static func transport(_ bytes: UnsafeRawBufferPointer, family: IPFamily, proto: IPProtocolNumber,
                                  headerLength l4: Int, totalLength: Int, available: Int, source: IPAddress,
                                  destination: IPAddress, dontFragment: Bool) -> Parsed {
        guard let transport = TransportProtocol(proto) else { return .otherProtocol }
        let minimum = transport == .tcp ? TCPHeader.minimumLength : UDPHeader.minimumLength
        guard totalLength - l4 >= minimum, l4 + minimum <= available else { return .malformed }
        let segment = UnsafeRawBufferPointer(rebasing: bytes[l4..<available])
        var flags = TCPFlags()
        if transport == .tcp {
            guard let tcp = TCPHeader(segment), tcp.headerLength >= TCPHeader.minimumLength,
                  l4 + tcp.headerLength <= totalLength else { return .malformed }
            flags = tcp.flags
        } else {
            guard let udp = UDPHeader(segment), udp.datagramLength >= UDPHeader.minimumLength,
                  l4 + udp.datagramLength <= totalLength else { return .malformed }
        }
        // TCP and UDP put the ports at the same offsets.
        return .transport(IPPacket(
            family: family, headerLength: l4, totalLength: totalLength, transport: transport,
            source: source, destination: destination,
            sourcePort: segment.loadBigEndianUInt16(at: TCPHeader.Offset.sourcePort),
            destinationPort: segment.loadBigEndianUInt16(at: TCPHeader.Offset.destinationPort),
            tcpFlags: flags, dontFragment: dontFragment))
    }
}

/// How far a queued packet's transport checksum is finished, from what the kernel says about its buffer.
public enum TransportChecksum: Sendable {
    /// Complete and valid: the kernel finished it before queueing (always, on a queue without GSO).
    case complete
    /// The field holds the pseudo-header sum only, and the packet leaves as it is: a rewrite must complete it,
    /// because the kernel takes a rewritten packet's checksum as final.
    case pseudoHeaderOnly
    /// A GSO super-packet: the field holds the pseudo-header sum, and the kernel checksums each segment when
    /// it splits the packet.
    case segmentedByKernel

    public init(_ info: PacketInfo) {
        self = info.contains(.gso) ? .segmentedByKernel : info.contains(.checksumNotReady) ? .pseudoHeaderOnly : .complete
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

    /// A SYN that opens a connection: SYN without ACK or RST.
    var isInitialSYN: Bool { contains(.syn) && !contains(.ack) && !contains(.rst) }
}
