/// LVS TUN on the wire: IPv4-in-IPv4 (RFC 2003, IP protocol 4) towards the real server, and the ICMP
/// "fragmentation needed" answer when the encapsulated packet would not fit the path.
public enum IPIPEncapsulation {
    /// Bytes the outer header adds.
    public static let overhead = 20

    /// Writes the 20-byte outer IPv4 header for `inner` (a parsed packet of `innerLength` bytes) at `header`:
    /// TOS, identification and DF copied from the inner header (so the path treats the tunnel like the flow,
    /// and a packet without DF may still be fragmented), TTL 64, protocol 4.
    public static func writeOuterHeader(_ header: UnsafeMutableRawPointer, inner: UnsafeRawBufferPointer,
                                        innerLength: Int, source: UInt32, destination: UInt32) {
        header.storeBytes(of: UInt8(0x45), toByteOffset: 0, as: UInt8.self)
        header.storeBytes(of: inner[1], toByteOffset: 1, as: UInt8.self)
        header.storeBytes(of: UInt16(innerLength + overhead).bigEndian, toByteOffset: 2, as: UInt16.self)
        header.storeBytes(of: inner.loadUnaligned(fromByteOffset: 4, as: UInt16.self), toByteOffset: 4, as: UInt16.self)
        let dontFragment = inner.loadBigEndianUInt16(at: 6) & 0x4000
        header.storeBytes(of: dontFragment.bigEndian, toByteOffset: 6, as: UInt16.self)
        header.storeBytes(of: UInt8(64), toByteOffset: 8, as: UInt8.self)
        header.storeBytes(of: UInt8(4), toByteOffset: 9, as: UInt8.self)
        header.storeBytes(of: UInt16(0), toByteOffset: 10, as: UInt16.self)
        header.storeBytes(of: source.bigEndian, toByteOffset: 12, as: UInt32.self)
        header.storeBytes(of: destination.bigEndian, toByteOffset: 16, as: UInt32.self)
        let checksum = InternetChecksum.compute(UnsafeRawBufferPointer(start: header, count: 20))
        header.storeBytes(of: checksum.bigEndian, toByteOffset: 10, as: UInt16.self)
    }

    /// Replaces `bytes` in place by ICMP "fragmentation needed" (type 3 code 4, RFC 1191) from `vip` to the
    /// packet's source, quoting the original IP header and the first 8 transport bytes, with next-hop MTU
    /// `mtu`. Returns the new length. IPVS answers the same way when a tunnelled packet would not fit.
    public static func replaceWithFragmentationNeeded(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPv4Packet,
                                                      mtu: UInt16, vip: UInt32) -> Int {
        let quoted = min(packet.headerLength + 8, packet.totalLength)
        let length = 20 + 8 + quoted
        guard let base = bytes.baseAddress, bytes.count >= length else { return 0 }
        // Move the quoted bytes behind the new headers first (the regions overlap).
        (base + 28).copyMemory(from: base, byteCount: quoted)
        let ip = base, icmp = base + 20
        ip.storeBytes(of: UInt8(0x45), toByteOffset: 0, as: UInt8.self)
        ip.storeBytes(of: UInt8(0xC0), toByteOffset: 1, as: UInt8.self)          // internetwork control
        ip.storeBytes(of: UInt16(length).bigEndian, toByteOffset: 2, as: UInt16.self)
        ip.storeBytes(of: UInt32(0), toByteOffset: 4, as: UInt32.self)           // id 0, no flags
        ip.storeBytes(of: UInt8(64), toByteOffset: 8, as: UInt8.self)
        ip.storeBytes(of: UInt8(1), toByteOffset: 9, as: UInt8.self)
        ip.storeBytes(of: UInt16(0), toByteOffset: 10, as: UInt16.self)
        ip.storeBytes(of: vip.bigEndian, toByteOffset: 12, as: UInt32.self)
        ip.storeBytes(of: packet.source.bigEndian, toByteOffset: 16, as: UInt32.self)
        let ipChecksum = InternetChecksum.compute(UnsafeRawBufferPointer(start: ip, count: 20))
        ip.storeBytes(of: ipChecksum.bigEndian, toByteOffset: 10, as: UInt16.self)
        icmp.storeBytes(of: UInt8(3), toByteOffset: 0, as: UInt8.self)
        icmp.storeBytes(of: UInt8(4), toByteOffset: 1, as: UInt8.self)
        icmp.storeBytes(of: UInt16(0), toByteOffset: 2, as: UInt16.self)
        icmp.storeBytes(of: UInt16(0), toByteOffset: 4, as: UInt16.self)
        icmp.storeBytes(of: mtu.bigEndian, toByteOffset: 6, as: UInt16.self)
        let icmpChecksum = InternetChecksum.compute(UnsafeRawBufferPointer(start: icmp, count: 8 + quoted))
        icmp.storeBytes(of: icmpChecksum.bigEndian, toByteOffset: 2, as: UInt16.self)
        return length
    }
}
