/// The address-and-port rewrite of NAT and FULLNAT, for both families: one endpoint of a packet replaced
/// (destination VIP:vport -> RIP:rport on the way in, source RIP:rport -> VIP:vport on the way back, and
/// FULLNAT's client and local endpoints). Checksums are updated incrementally (RFC 1624): the IPv4 header
/// checksum, and the transport checksum, which covers the addresses through the pseudo-header. So a packet that
/// arrived corrupt leaves corrupt and the receiver still drops it. IPv6 has no header checksum; a UDP checksum
/// of 0 (none) is valid only over IPv4 and stays 0 there, while over IPv6 it is computed in full (RFC 8200 8.1).
public enum NATRewrite {
    /// Rewrites the destination address and port of `packet` to `endpoint`.
    public static func rewriteDestination(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, to endpoint: Endpoint) {
        rewrite(bytes, packet, addressOffset: packet.family.destinationOffset, oldAddress: packet.destination,
                newAddress: endpoint.address, portOffset: packet.transportOffset + TCPHeader.Offset.destinationPort, oldPort: packet.destinationPort, newPort: endpoint.port)
    }

    /// Rewrites the source address and port of `packet` to `endpoint`.
    public static func rewriteSource(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, to endpoint: Endpoint) {
        rewrite(bytes, packet, addressOffset: packet.family.sourceOffset, oldAddress: packet.source,
                newAddress: endpoint.address, portOffset: packet.transportOffset + TCPHeader.Offset.sourcePort, oldPort: packet.sourcePort, newPort: endpoint.port)
    }

    static func rewrite(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket,
                        addressOffset: Int, oldAddress: IPAddress, newAddress: IPAddress,
                        portOffset: Int, oldPort: UInt16, newPort: UInt16) {
        let family = packet.family
        var addressDelta = ChecksumDelta()
        addressDelta.replace(oldAddress, with: newAddress, family: family)
        if family == .v4 {
            // The IPv4 header checksum covers the address only.
            let ipChecksum = bytes.loadBigEndianUInt16(at: IPv4Header.Offset.checksum)
            bytes.storeBigEndian(addressDelta.applied(to: ipChecksum), at: IPv4Header.Offset.checksum)
        }
        bytes.store(newAddress, family: family, at: addressOffset)
        let checksumOffset = packet.checksumOffset
        let l4Checksum = bytes.loadBigEndianUInt16(at: checksumOffset)
        bytes.storeBigEndian(newPort, at: portOffset)
        if packet.transport == .udp && l4Checksum == 0 && family == .v6 {
            bytes.storeBigEndian(transportChecksum(bytes, packet), at: checksumOffset)
            return
        }
        // The transport checksum covers the address (pseudo-header) and the port.
        var l4Delta = addressDelta
        l4Delta.replace(oldPort, with: newPort)
        let updated = packet.transport == .udp ? l4Delta.appliedToUDP(l4Checksum) : l4Delta.applied(to: l4Checksum)
        bytes.storeBigEndian(updated, at: checksumOffset)
    }

    /// The transport checksum of `packet` as it is now in `bytes`, computed in full (the field read as 0) over
    /// the segment: for UDP its own length field (the parser checked it fits the packet), for TCP the rest of
    /// the packet.
    static func transportChecksum(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket) -> UInt16 {
        let raw = UnsafeRawBufferPointer(bytes)
        let source = raw.loadAddress(packet.family, at: packet.family.sourceOffset)
        let destination = raw.loadAddress(packet.family, at: packet.family.destinationOffset)
        bytes.storeBigEndian(UInt16(0), at: packet.checksumOffset)
        let length = packet.transport == .udp ? Int(raw.loadBigEndianUInt16(at: packet.transportOffset + UDPHeader.Offset.length))
                                              : packet.transportLength
        let pseudo = InternetChecksum.pseudoHeaderSum(source: source, destination: destination, family: packet.family,
                                                      protocol: packet.transport.protocolNumber, length: length)
        let checksum = InternetChecksum.compute(
            UnsafeRawBufferPointer(rebasing: raw[packet.transportOffset..<(packet.transportOffset + length)]), initial: pseudo)
        return packet.transport == .udp && checksum == 0 ? 0xFFFF : checksum
    }
}
