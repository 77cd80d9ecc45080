/// The LVS NAT header rewrite: destination VIP:vport -> RIP:rport on the way in, source RIP:rport -> VIP:vport
/// on the way back. Both checksums are updated incrementally (RFC 1624), so a packet that arrived corrupt
/// leaves corrupt and the receiver still drops it.
public enum NATRewrite {
    /// Rewrites the destination address and port of `packet` (client -> real server).
    public static func rewriteDestination(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPv4Packet,
                                          address: UInt32, port: UInt16) {
        rewrite(bytes, packet, addressOffset: 16, oldAddress: packet.destination, newAddress: address,
                portOffset: packet.transportOffset + 2, oldPort: packet.destinationPort, newPort: port)
    }

    /// Rewrites the source address and port of `packet` (real server reply -> client).
    public static func rewriteSource(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPv4Packet,
                                     address: UInt32, port: UInt16) {
        rewrite(bytes, packet, addressOffset: 12, oldAddress: packet.source, newAddress: address,
                portOffset: packet.transportOffset, oldPort: packet.sourcePort, newPort: port)
    }

    static func rewrite(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPv4Packet,
                        addressOffset: Int, oldAddress: UInt32, newAddress: UInt32,
                        portOffset: Int, oldPort: UInt16, newPort: UInt16) {
        var addressDelta = ChecksumDelta()
        addressDelta.replace(oldAddress, with: newAddress)
        // IPv4 header checksum covers the address only.
        let ipChecksum = bytes.loadBigEndianUInt16(at: 10)
        bytes.storeBigEndian(addressDelta.applied(to: ipChecksum), at: 10)
        bytes.storeBigEndian(newAddress, at: addressOffset)
        // The L4 checksum covers the address (pseudo-header) and the port.
        var l4Delta = addressDelta
        l4Delta.replace(oldPort, with: newPort)
        let checksumOffset = packet.checksumOffset
        let l4Checksum = bytes.loadBigEndianUInt16(at: checksumOffset)
        let updated = packet.transport == .udp ? l4Delta.appliedToUDP(l4Checksum) : l4Delta.applied(to: l4Checksum)
        bytes.storeBigEndian(updated, at: checksumOffset)
        bytes.storeBigEndian(newPort, at: portOffset)
    }
}
