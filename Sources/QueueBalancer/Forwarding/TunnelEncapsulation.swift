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
    public static func overhead(_ family: IPFamily) -> Int { family.minimumHeaderLength }

    /// The family of the packet in `bytes` (already parsed by the handler) and its length from its own header.
    static func familyAndLength(_ bytes: UnsafeRawBufferPointer) -> (IPFamily, Int) {
        if let ip = IPv6Header(bytes), ip.version == 6 { return (.v6, ip.totalLength) }
        return (.v4, IPv4Header(bytes)?.totalLength ?? 0)
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
        let payload = IPProtocolNumber.encapsulating(family)
        if outerFamily == .v6 {
            // The inner header's first bytes hold its traffic class (and, for IPv6, its flow label).
            let innerIPv6 = family == .v6 ? IPv6Header(inner) : nil
            let trafficClass = innerIPv6?.trafficClass ?? inner[IPv4Header.typeOfServiceOffset]
            IPv6Header.write(into: out, trafficClass: trafficClass, flowLabel: innerIPv6?.flowLabel ?? 0,
                             payloadLength: innerLength, nextHeader: payload, source: source, destination: destination)
            return
        }
        // IPv4 outer: identification and DF copied from an IPv4 inner packet; an IPv6 one gets DF.
        let innerIPv4 = family == .v4 ? IPv4Header(inner) : nil
        IPv4Header.write(into: out, typeOfService: innerIPv4?.typeOfService ?? IPv6Header(inner)?.trafficClass ?? 0,
                         totalLength: innerLength + IPv4Header.minimumLength,
                         identification: innerIPv4?.identification ?? 0,
                         fragmentField: innerIPv4.map { $0.fragmentField & IPv4Header.dontFragment } ?? IPv4Header.dontFragment,
                         protocolNumber: payload, source: source, destination: destination)
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
        let headers = family.minimumHeaderLength + ICMPHeader.length
        let quoted = family == .v4 ? min(packet.headerLength + 8, packet.totalLength)   // RFC 792: header + 64 bits
                                   : min(packet.totalLength, minimumIPv6MTU - headers)
        let length = headers + quoted
        guard let base = bytes.baseAddress, bytes.count >= length else { return 0 }
        let client = packet.source
        // Move the quoted bytes behind the new headers first (the regions overlap).
        (base + headers).copyMemory(from: base, byteCount: quoted)
        let ip = UnsafeMutableRawBufferPointer(rebasing: bytes[0..<(headers - ICMPHeader.length)])
        let icmp = UnsafeMutableRawBufferPointer(rebasing: bytes[(headers - ICMPHeader.length)..<length])
        if family == .v4 {
            IPv4Header.write(into: ip, typeOfService: 0xC0 /* internetwork control */, totalLength: length,
                             identification: 0, fragmentField: 0, protocolNumber: .icmp, source: vip, destination: client)
            icmp[ICMPHeader.typeOffset] = ICMPHeader.destinationUnreachable
            icmp[ICMPHeader.codeOffset] = ICMPHeader.fragmentationNeeded
            icmp.storeBigEndian(UInt32(UInt16(clamping: mtu)), at: ICMPHeader.mtuOffset)
        } else {
            IPv6Header.write(into: ip, trafficClass: 0, payloadLength: length - IPv6Header.length, nextHeader: .icmpv6,
                             source: vip, destination: client)
            icmp[ICMPHeader.typeOffset] = ICMPHeader.v6PacketTooBig
            icmp[ICMPHeader.codeOffset] = 0
            icmp.storeBigEndian(UInt32(clamping: mtu), at: ICMPHeader.mtuOffset)
        }
        icmp.storeBigEndian(UInt16(0), at: ICMPHeader.checksumOffset)
        let pseudo = family == .v4 ? 0 : InternetChecksum.pseudoHeaderSum(
            source: vip, destination: client, family: .v6, protocol: .icmpv6, length: icmp.count)
        icmp.storeBigEndian(InternetChecksum.compute(UnsafeRawBufferPointer(icmp), initial: pseudo), at: ICMPHeader.checksumOffset)
        return length
    }
}
