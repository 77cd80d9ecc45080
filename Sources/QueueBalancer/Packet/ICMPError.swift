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

    /// Whether the whole message is in `bytes`, as rewriting it needs (not so when the queue copies headers only).
    func isWhole(in bytes: UnsafeMutableRawBufferPointer) -> Bool { totalLength <= bytes.count }

    /// Offset of the quoted transport header.
    public var innerTransportOffset: Int { innerOffset + innerHeaderLength }

    /// The error in `bytes`, whose outer header of `family` ends at `headerLength`; nil when the message is
    /// not an error (``ICMPHeader/isError(_:_:)``), or quotes something other than a TCP or UDP packet of the
    /// same family with its ports.
    static func parse(_ bytes: UnsafeRawBufferPointer, family: IPFamily, headerLength: Int, totalLength: Int,
                      available: Int) -> ICMPError? {
        let inner = headerLength + ICMPHeader.length
        guard inner + family.minimumHeaderLength <= available,
              ICMPHeader.isError(bytes[headerLength + ICMPHeader.Offset.type], family) else { return nil }
        let quoted = UnsafeRawBufferPointer(rebasing: bytes[inner..<available])
        let innerHeaderLength: Int
        let proto: IPProtocolNumber
        let innerSource: IPAddress, innerDestination: IPAddress
        if family == .v4 {
            guard let ip = IPv4Header(quoted), ip.version == 4, ip.headerLength >= IPv4Header.minimumLength,
                  !ip.isLaterFragment else { return nil }
            innerHeaderLength = ip.headerLength
            (proto, innerSource, innerDestination) = (ip.protocolNumber, ip.source, ip.destination)
        } else {
            guard let ip = IPv6Header(quoted), ip.version == 6 else { return nil }
            innerHeaderLength = IPv6Header.minimumLength
            (proto, innerSource, innerDestination) = (ip.nextHeader, ip.source, ip.destination)
        }
        guard let transport = TransportProtocol(proto) else { return nil }
        let ports = inner + innerHeaderLength
        guard ports + 4 <= available else { return nil }
        return ICMPError(
            family: family, headerLength: headerLength, totalLength: totalLength,
            source: bytes.loadAddress(family, at: family.sourceOffset),
            destination: bytes.loadAddress(family, at: family.destinationOffset),
            type: bytes[headerLength + ICMPHeader.Offset.type], innerOffset: inner, innerHeaderLength: innerHeaderLength,
            transport: transport,
            innerSource: Endpoint(address: innerSource, port: bytes.loadBigEndianUInt16(at: ports + TCPHeader.Offset.sourcePort)),
            innerDestination: Endpoint(address: innerDestination,
                                       port: bytes.loadBigEndianUInt16(at: ports + TCPHeader.Offset.destinationPort)))
    }

    /// The key of the connection the quoted packet belongs to, seen from the other end: for a quoted packet
    /// VIP -> client (the client side reports a problem with a reply), the connection's inbound key; for a
    /// quoted packet client -> real server (the real server reports a problem with a forwarded packet), its
    /// reply key.
    public var connectionKey: FlowKey {
        FlowKey(source: innerDestination, destination: innerSource, transport: transport)
    }

    /// The error translated like the packets of its connection (``rewrite(_:outerSource:outerDestination:innerSource:innerDestination:)``)
    /// and counted as `counter`; passed unchanged (`passed_icmp`) when the buffer does not hold the whole
    /// message.
    func translate(_ bytes: UnsafeMutableRawBufferPointer, counting counter: DatapathCounter, _ counters: inout CounterBatch,
                   outerSource: IPAddress? = nil, outerDestination: IPAddress? = nil, innerSource: Endpoint? = nil,
                   innerDestination: Endpoint? = nil) -> Verdict {
        guard isWhole(in: bytes) else { counters.count(.passedICMP); return .accept }
        rewrite(bytes, outerSource: outerSource, outerDestination: outerDestination, innerSource: innerSource,
                innerDestination: innerDestination)
        counters.count(counter)
        return .acceptRewritten
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
        if family == .v4 {
            let at = IPv4Header.Offset.checksum
            bytes.storeBigEndian(outer.applied(to: bytes.loadBigEndianUInt16(at: at)), at: at)
        }

        var addresses = ChecksumDelta(), ports = ChecksumDelta()
        if let endpoint = innerSource {
            addresses.replace(self.innerSource.address, with: endpoint.address, family: family)
            ports.replace(self.innerSource.port, with: endpoint.port)
            bytes.store(endpoint.address, family: family, at: innerOffset + family.sourceOffset)
            bytes.storeBigEndian(endpoint.port, at: innerTransportOffset + TCPHeader.Offset.sourcePort)
        }
        if let endpoint = innerDestination {
            addresses.replace(self.innerDestination.address, with: endpoint.address, family: family)
            ports.replace(self.innerDestination.port, with: endpoint.port)
            bytes.store(endpoint.address, family: family, at: innerOffset + family.destinationOffset)
            bytes.storeBigEndian(endpoint.port, at: innerTransportOffset + TCPHeader.Offset.destinationPort)
        }
        // Every 16-bit word of the ICMP message that changes (all at even offsets from its start).
        var icmp = family == .v6 ? outer : ChecksumDelta()
        icmp.acc &+= addresses.acc &+ ports.acc
        if family == .v4 && innerOffset + innerHeaderLength <= totalLength {
            let at = innerOffset + IPv4Header.Offset.checksum
            let old = bytes.loadBigEndianUInt16(at: at)
            let updated = addresses.applied(to: old)
            bytes.storeBigEndian(updated, at: at)
            icmp.replace(old, with: updated)
        }
        let checksumAt = innerTransportOffset + transport.checksumOffset
        if checksumAt + 2 <= totalLength {
            var l4 = addresses
            l4.acc &+= ports.acc
            let old = bytes.loadBigEndianUInt16(at: checksumAt)
            let updated = transport == .udp ? l4.appliedToUDP(old) : l4.applied(to: old)
            bytes.storeBigEndian(updated, at: checksumAt)
            icmp.replace(old, with: updated)
        }
        let icmpChecksumAt = headerLength + ICMPHeader.Offset.checksum
        bytes.storeBigEndian(icmp.applied(to: bytes.loadBigEndianUInt16(at: icmpChecksumAt)), at: icmpChecksumAt)
    }
}
