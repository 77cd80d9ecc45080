/// LVS TUN on the wire, for both families: IPv4-in-IPv4 (RFC 2003, IP protocol 4) or IPv6-in-IPv6 (RFC 2473,
/// next header 41) towards the real server, and the ICMP answer when the encapsulated packet would not fit the
/// path: "fragmentation needed" (ICMP 3/4, RFC 1191) or "packet too big" (ICMPv6 2, RFC 8201).
///
/// The outer header has the real server's family. When it is the inner packet's, the encapsulated packet is the
/// verdict; across families (IPv4 in IPv6, IPv6 in IPv4, as IPVS allows) a verdict cannot carry it (the kernel
/// re-injects a verdict into the stack it was queued from), so the worker sends it through a raw socket
/// (``RawIPSocket``) and drops the original.
public enum TunnelEncapsulation {
    /// Bytes the outer header adds: 20 for IPv4, 40 for IPv6.
    public static func overhead(_ family: IPFamily) -> Int { family == .v4 ? 20 : 40 }

    /// The family of the packet in `bytes` (already parsed by the handler) and its length from its own header.
    static func familyAndLength(_ bytes: UnsafeRawBufferPointer) -> (IPFamily, Int) {
        bytes[0] >> 4 == 6 ? (.v6, 40 + Int(bytes.loadBigEndianUInt16(at: 4))) : (.v4, Int(bytes.loadBigEndianUInt16(at: 2)))
    }

    /// The smallest MTU every IPv6 link has (RFC 8200): an ICMPv6 error is cut to fit it.
    static let minimumIPv6MTU = 1280

    /// Writes the outer header of `outer` family (by default the inner packet's) for `inner`, a packet of
    /// `innerLength` bytes of `family`, at `header`. IPv4 outer: TOS (or the IPv6 traffic class), identification
    /// and DF copied from an IPv4 inner header (so the path treats the tunnel like the flow, and a packet without
    /// DF may still be fragmented; an IPv6 inner packet gets DF), TTL 64, protocol 4 or 41. IPv6 outer: traffic
    /// class (and an IPv6 inner packet's flow label) copied, hop limit 64, next header 41 or 4.
    public static func writeOuterHeader(_ header: UnsafeMutableRawPointer, inner: UnsafeRawBufferPointer, family: IPFamily,
                                        outer: IPFamily? = nil, innerLength: Int, source: IPAddress, destination: IPAddress) {
        let outerFamily = outer ?? family
        let out = UnsafeMutableRawBufferPointer(start: header, count: overhead(outerFamily))
        let trafficClass = family == .v4 ? inner[1] : inner[0] << 4 | inner[1] >> 4
        let payloadProtocol: UInt8 = family == .v4 ? 4 : 41
        if outerFamily == .v6 {
            if family == .v6 {
                out.storeBytes(of: inner.loadUnaligned(fromByteOffset: 0, as: UInt32.self), toByteOffset: 0, as: UInt32.self)
            } else {
                out.storeBigEndian(UInt32(0x6000_0000) | UInt32(trafficClass) << 20, at: 0)
            }
            out.storeBigEndian(UInt16(innerLength), at: 4)
            out[6] = payloadProtocol
            out[7] = 64
            out.store(source, family: .v6, at: 8)
            out.store(destination, family: .v6, at: 24)
            return
        }
        out[0] = 0x45
        out[1] = trafficClass
        out.storeBigEndian(UInt16(innerLength + 20), at: 2)
        if family == .v4 {
            out.storeBytes(of: inner.loadUnaligned(fromByteOffset: 4, as: UInt16.self), toByteOffset: 4, as: UInt16.self)
            out.storeBigEndian(inner.loadBigEndianUInt16(at: 6) & 0x4000, at: 6)
        } else {
            out.storeBigEndian(UInt16(0), at: 4)
            out.storeBigEndian(UInt16(0x4000), at: 6)
        }
        out[8] = 64
        out[9] = payloadProtocol
        out.storeBigEndian(UInt16(0), at: 10)
        out.store(source, family: .v4, at: 12)
        out.store(destination, family: .v4, at: 16)
        out.storeBigEndian(InternetChecksum.compute(UnsafeRawBufferPointer(out)), at: 10)
    }

    /// Replaces `bytes` in place by the ICMP error that tells the packet's source to send smaller packets to
    /// `vip`, with `mtu` as the next-hop MTU, and returns the new length (0 if the buffer is too small). IPVS
    /// answers the same way when a tunnelled packet would not fit.
    ///
    /// - IPv4: "fragmentation needed" (type 3 code 4), quoting the IP header and the first 8 transport bytes.
    /// - IPv6: "packet too big" (type 2), quoting as much of the packet as fits in 1280 bytes.
    public static func replaceWithTooBig(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, mtu: Int,
                                         vip: IPAddress) -> Int {
        let family = packet.family
        let headers = family == .v4 ? 28 : 48
        let quoted = family == .v4 ? min(packet.headerLength + 8, packet.totalLength)
                                   : min(packet.totalLength, minimumIPv6MTU - headers)
        let length = headers + quoted
        guard let base = bytes.baseAddress, bytes.count >= length else { return 0 }
        let client = packet.source
        // Move the quoted bytes behind the new headers first (the regions overlap).
        (base + headers).copyMemory(from: base, byteCount: quoted)
        let ip = UnsafeMutableRawBufferPointer(rebasing: bytes[0..<headers - 8])
        let icmp = UnsafeMutableRawBufferPointer(rebasing: bytes[(headers - 8)..<length])
        if family == .v4 {
            ip[0] = 0x45
            ip[1] = 0xC0                                   // internetwork control
            ip.storeBigEndian(UInt16(length), at: 2)
            ip.storeBigEndian(UInt32(0), at: 4)            // id 0, no flags
            ip[8] = 64
            ip[9] = 1
            ip.storeBigEndian(UInt16(0), at: 10)
            ip.store(vip, family: .v4, at: 12)
            ip.store(client, family: .v4, at: 16)
            ip.storeBigEndian(InternetChecksum.compute(UnsafeRawBufferPointer(ip)), at: 10)
            icmp[0] = 3
            icmp[1] = 4
            icmp.storeBigEndian(UInt32(UInt16(clamping: mtu)), at: 4)
        } else {
            ip.storeBigEndian(UInt32(0x6000_0000), at: 0)
            ip.storeBigEndian(UInt16(length - 40), at: 4)
            ip[6] = 58
            ip[7] = 64
            ip.store(vip, family: .v6, at: 8)
            ip.store(client, family: .v6, at: 24)
            icmp[0] = 2
            icmp[1] = 0
            icmp.storeBigEndian(UInt32(clamping: mtu), at: 4)
        }
        icmp.storeBigEndian(UInt16(0), at: 2)
        let pseudo = family == .v4 ? 0 : InternetChecksum.pseudoHeaderSum(
            source: vip, destination: client, family: .v6, protocol: 58, length: icmp.count)
        icmp.storeBigEndian(InternetChecksum.compute(UnsafeRawBufferPointer(icmp), initial: pseudo), at: 2)
        return length
    }
}
