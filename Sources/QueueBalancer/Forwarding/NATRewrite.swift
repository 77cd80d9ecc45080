/// The address-and-port rewrite of NAT and FULLNAT, for both families: a packet's source or destination
/// endpoint, or both, replaced (VIP:vport -> RIP:rport on the way in, RIP:rport -> VIP:vport on the way back,
/// and FULLNAT's client and local endpoints), with every checksum that covers them.
///
/// The IPv4 header checksum, which covers the addresses, is always complete: it is updated incrementally
/// (RFC 1624). The transport checksum covers the addresses (through the pseudo-header) and the ports, and how
/// it follows depends on how far the kernel finished it (``TransportChecksum``):
/// - complete: updated incrementally, so a packet that arrived corrupt leaves corrupt and the receiver still
///   drops it. A UDP checksum of 0 (none) is valid only over IPv4 and stays 0 there; over IPv6 it is
///   computed in full (RFC 8200 section 8.1);
/// - a GSO super-packet's pseudo-header sum: the address part follows, the kernel checksums each segment;
/// - a single packet's pseudo-header sum: completed here, since the kernel takes a rewritten packet's checksum
///   as final (docs/ARCHITECTURE.md, "Kernel facts").
public enum NATRewrite {
    /// Rewrites the endpoints given (nil: unchanged) of `packet` in `bytes`, and its checksums.
    public static func translate(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, source: Endpoint? = nil,
                                 destination: Endpoint? = nil) {
        let family = packet.family
        var addresses = ChecksumDelta(), ports = ChecksumDelta()
        if let source {
            addresses.replace(packet.source, with: source.address, family: family)
            ports.replace(packet.sourcePort, with: source.port)
            bytes.store(source.address, family: family, at: family.sourceOffset)
            bytes.storeBigEndian(source.port, at: packet.transportOffset + TCPHeader.Offset.sourcePort)
        }
        if let destination {
            addresses.replace(packet.destination, with: destination.address, family: family)
            ports.replace(packet.destinationPort, with: destination.port)
            bytes.store(destination.address, family: family, at: family.destinationOffset)
            bytes.storeBigEndian(destination.port, at: packet.transportOffset + TCPHeader.Offset.destinationPort)
        }
        if family == .v4 {
            let at = IPv4Header.Offset.checksum
            bytes.storeBigEndian(addresses.applied(to: bytes.loadBigEndianUInt16(at: at)), at: at)
        }
        let at = packet.checksumOffset
        let field = bytes.loadBigEndianUInt16(at: at)
        switch packet.checksum {
        case .complete:
            if packet.transport == .udp && field == 0 {
                if family == .v6 { bytes.storeBigEndian(transportChecksum(bytes, packet), at: at) }
                return
            }
            var delta = addresses
            delta.add(ports)
            bytes.storeBigEndian(packet.transport == .udp ? delta.appliedToUDP(field) : delta.applied(to: field), at: at)
        case .segmentedByKernel:
            // Ports are not in the pseudo-header: the kernel's sum over each segment covers them.
            bytes.storeBigEndian(addresses.appliedToSum(field), at: at)
        case .pseudoHeaderOnly:
            bytes.storeBigEndian(addresses.appliedToSum(field), at: at)
            bytes.storeBigEndian(completedChecksum(bytes, packet), at: at)
        }
    }

    /// The bytes of `packet`'s transport segment as its checksum counts them: for UDP its own length field
    /// (the parser checked it fits the packet), for TCP the rest of the packet.
    private static func segment(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket) -> UnsafeRawBufferPointer {
        let raw = UnsafeRawBufferPointer(bytes)
        let length = packet.transport == .udp
            ? Int(raw.loadBigEndianUInt16(at: packet.transportOffset + UDPHeader.Offset.length)) : packet.transportLength
        return UnsafeRawBufferPointer(rebasing: raw[packet.transportOffset..<(packet.transportOffset + length)])
    }

    /// The transport checksum of `packet` as it is now in `bytes`, computed in full (the field read as 0).
    static func transportChecksum(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket) -> UInt16 {
        bytes.storeBigEndian(UInt16(0), at: packet.checksumOffset)
        let raw = UnsafeRawBufferPointer(bytes)
        let segment = segment(bytes, packet)
        let pseudo = InternetChecksum.pseudoHeaderSum(
            source: raw.loadAddress(packet.family, at: packet.family.sourceOffset),
            destination: raw.loadAddress(packet.family, at: packet.family.destinationOffset),
            family: packet.family, protocol: packet.transport.protocolNumber, length: segment.count)
        let checksum = InternetChecksum.compute(segment, initial: pseudo)
        return packet.transport == .udp && checksum == 0 ? 0xFFFF : checksum
    }

    /// The checksum of a segment whose checksum field holds the pseudo-header sum: the sum over the segment,
    /// field included, complemented.
    private static func completedChecksum(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket) -> UInt16 {
        let checksum = InternetChecksum.compute(segment(bytes, packet))
        return packet.transport == .udp && checksum == 0 ? 0xFFFF : checksum
    }
}
