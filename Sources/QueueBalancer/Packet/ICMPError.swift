/// An ICMP or ICMPv6 error message and the TCP or UDP packet it quotes, read in place: what nfqlb needs to send
/// the error on along a tracked connection, as IPVS does for both families (destination unreachable, e.g.
/// "fragmentation needed" / "packet too big", time exceeded, parameter problem).
///
/// Invariant (established by ``parse(_:family:headerLength:totalLength:available:)``): the outer header up to
/// `headerLength`, the 8-byte ICMP header, the quoted network header and the quoted ports lie inside the buffer
/// and inside `totalLength`.
public struct ICMPError {
    public var family: IPFamily
    /// Offset of the ICMP header (the outer network headers' length).
    public var headerLength: Int
    public var totalLength: Int
    public var source: IPAddress
    public var destination: IPAddress
    public var type: UInt8
    /// Offset of the quoted packet (`headerLength + 8`) and its network header length.
    public var innerOffset: Int
    public var innerHeaderLength: Int
    public var transport: TransportProtocol
    public var innerSource: Endpoint
    public var innerDestination: Endpoint

    /// Offset of the quoted transport header.
    public var innerTransportOffset: Int { innerOffset + innerHeaderLength }

    /// The error types nfqlb passes along connections: IPv4 3 (destination unreachable), 11 (time exceeded),
    /// 12 (parameter problem); IPv6 1 (destination unreachable), 2 (packet too big), 3 (time exceeded),
    /// 4 (parameter problem).
    public static func isError(_ type: UInt8, _ family: IPFamily) -> Bool {
        family == .v4 ? type == 3 || type == 11 || type == 12 : (1...4).contains(type)
    }

    /// The error in `bytes`, whose outer header of `family` ends at `headerLength`; nil when the message is
    /// not an error, or quotes something other than a TCP or UDP packet of the same family with its ports.
    static func parse(_ bytes: UnsafeRawBufferPointer, family: IPFamily, headerLength: Int, totalLength: Int,
                      available: Int) -> ICMPError? {
        let inner = headerLength + 8
        guard inner + (family == .v4 ? 20 : 40) <= available, isError(bytes[headerLength], family) else { return nil }
        let innerHeaderLength: Int
        let proto: UInt8
        let innerSource: IPAddress, innerDestination: IPAddress
        if family == .v4 {
            guard bytes[inner] >> 4 == 4 else { return nil }
            innerHeaderLength = Int(bytes[inner] & 0x0F) &* 4
            guard innerHeaderLength >= 20, bytes.loadBigEndianUInt16(at: inner + 6) & 0x1FFF == 0 else { return nil }
            proto = bytes[inner + 9]
            innerSource = IPAddress(ipv4: bytes.loadBigEndianUInt32(at: inner + 12))
            innerDestination = IPAddress(ipv4: bytes.loadBigEndianUInt32(at: inner + 16))
        } else {
            guard bytes[inner] >> 4 == 6 else { return nil }
            innerHeaderLength = 40
            proto = bytes[inner + 6]
            innerSource = IPAddress(high: bytes.loadBigEndianUInt64(at: inner + 8), low: bytes.loadBigEndianUInt64(at: inner + 16))
            innerDestination = IPAddress(high: bytes.loadBigEndianUInt64(at: inner + 24), low: bytes.loadBigEndianUInt64(at: inner + 32))
        }
        guard let transport = TransportProtocol(rawValue: proto) else { return nil }
        let ports = inner + innerHeaderLength
        guard ports + 4 <= available else { return nil }
        return ICMPError(
            family: family, headerLength: headerLength, totalLength: totalLength,
            source: NATRewrite.address(bytes, family, at: family.sourceOffset),
            destination: NATRewrite.address(bytes, family, at: family.destinationOffset),
            type: bytes[headerLength], innerOffset: inner, innerHeaderLength: innerHeaderLength, transport: transport,
            innerSource: Endpoint(address: innerSource, port: bytes.loadBigEndianUInt16(at: ports)),
            innerDestination: Endpoint(address: innerDestination, port: bytes.loadBigEndianUInt16(at: ports + 2)))
    }

    /// The key of the connection the quoted packet belongs to, seen from the other end: for a quoted packet
    /// VIP -> client (the client side reports a problem with a reply), the connection's inbound key; for a
    /// quoted packet client -> real server (the real server reports a problem with a forwarded packet), its
    /// reply key.
    public var connectionKey: FlowKey {
        FlowKey(source: innerDestination, destination: innerSource, transport: transport)
    }

    /// Rewrites the outer addresses and the quoted packet's endpoints given (nil: unchanged), updating every
    /// checksum that covers them incrementally (RFC 1624), so that a damaged message stays damaged: the outer
    /// IPv4 header checksum, the quoted IPv4 header checksum and transport checksum (when quoted), and the ICMP
    /// checksum, which covers the quote (and, for ICMPv6, the outer addresses through its pseudo-header). The
    /// message must lie in `bytes` up to `totalLength`.
    public func rewrite(_ bytes: UnsafeMutableRawBufferPointer, outerSource: IPAddress? = nil,
                        outerDestination: IPAddress? = nil, innerSource: Endpoint? = nil, innerDestination: Endpoint? = nil) {
        var outer = ChecksumDelta()
        if let address = outerSource {
            outer.replace(source, with: address, family: family)
            bytes.store(address, family: family, at: family.sourceOffset)
        }
        if let address = outerDestination {
            outer.replace(destination, with: address, family: family)
            bytes.store(address, family: family, at: family.destinationOffset)
        }
        if family == .v4 { bytes.storeBigEndian(outer.applied(to: bytes.loadBigEndianUInt16(at: 10)), at: 10) }

        var addresses = ChecksumDelta(), ports = ChecksumDelta()
        if let endpoint = innerSource {
            addresses.replace(self.innerSource.address, with: endpoint.address, family: family)
            ports.replace(self.innerSource.port, with: endpoint.port)
            bytes.store(endpoint.address, family: family, at: innerOffset + family.sourceOffset)
            bytes.storeBigEndian(endpoint.port, at: innerTransportOffset)
        }
        if let endpoint = innerDestination {
            addresses.replace(self.innerDestination.address, with: endpoint.address, family: family)
            ports.replace(self.innerDestination.port, with: endpoint.port)
            bytes.store(endpoint.address, family: family, at: innerOffset + family.destinationOffset)
            bytes.storeBigEndian(endpoint.port, at: innerTransportOffset + 2)
        }
        // Every 16-bit word of the ICMP message that changes (all at even offsets from its start).
        var icmp = family == .v6 ? outer : ChecksumDelta()
        icmp.acc &+= addresses.acc &+ ports.acc
        if family == .v4 && innerOffset + innerHeaderLength <= totalLength {
            let at = innerOffset + 10
            let old = bytes.loadBigEndianUInt16(at: at)
            let updated = addresses.applied(to: old)
            bytes.storeBigEndian(updated, at: at)
            icmp.replace(old, with: updated)
        }
        let checksumAt = innerTransportOffset + (transport == .tcp ? 16 : 6)
        if checksumAt + 2 <= totalLength {
            var l4 = addresses
            l4.acc &+= ports.acc
            let old = bytes.loadBigEndianUInt16(at: checksumAt)
            let updated = transport == .udp ? l4.appliedToUDP(old) : l4.applied(to: old)
            bytes.storeBigEndian(updated, at: checksumAt)
            icmp.replace(old, with: updated)
        }
        bytes.storeBigEndian(icmp.applied(to: bytes.loadBigEndianUInt16(at: headerLength + 2)), at: headerLength + 2)
    }
}
