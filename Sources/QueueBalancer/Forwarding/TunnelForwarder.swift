/// LVS TUN (IP tunnelling, `ipvsadm -i`), both families: the packet travels to the real server inside an
/// outer header of the real server's family (``TunnelHeader``): IPv4-in-IPv4 (protocol 4), IPv6-in-IPv6 (next
/// header 41) and, as IPVS allows, across families. The real server decapsulates (on this kernel, without
/// ipip: `nfqlb decap`, ``Decapsulator``), holds the VIP on `lo` and answers the client directly.
///
/// Same family: the encapsulated packet is the verdict. Across families a verdict cannot carry it (the kernel
/// re-injects a verdict's payload into the stack it was queued from), so it leaves through a raw socket
/// (``Verdict/sendEncapsulated(_:)``) and the original is dropped.
///
/// When the encapsulated packet would not fit the path (and an IPv4 client forbade fragmentation; IPv6 routers
/// never fragment), the client is answered from the VIP, as IPVS does, with "fragmentation needed" (ICMP 3/4,
/// RFC 1191, MTU - 20) or "packet too big" (ICMPv6 2, RFC 8201, MTU - 40) in place of the packet: routed back to
/// the client, it lowers the client's path MTU. (The kernel's own ICMP would go to the outer source, the
/// balancer, and the flow would black-hole.)
struct TunnelForwarder: DirectReturnMethod {
    static let queueNeeds = QueueNeeds(wholePackets: true, gsoSuperPackets: false)

    /// The outer source and the path MTU towards the real server.
    let path: TunnelPath

    /// The smallest MTU every IPv6 link has (RFC 8200): an ICMPv6 error is cut to fit it, and IPv6 hosts ignore
    /// a "packet too big" below it.
    static let minimumIPv6MTU = 1280

    /// The path to `real` as resolved (``TunnelPath/resolve(to:)``); a service's `tunnel-source` overrides the
    /// outer source.
    init(service: VirtualService, real: RealServer, paths: [IPAddress: TunnelPath]) throws(ConfigUpdateError) {
        guard var path = paths[real.address] else {
            throw ConfigUpdateError(reason: "no tunnel path to the TUN real server \(real.address) (ip route get \(real.address))")
        }
        if let source = service.tunnelSource { path.source = source }
        self.path = path
    }

    /// Encapsulates towards the real server, or answers "too big".
    func forward(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
                 counters: inout CounterBatch) -> Verdict {
        let real = connection.reply.source.address
        let outer = IPFamily(of: real)
        let overhead = outer.minimumHeaderLength
        // Only an IPv4 packet without DF in an IPv4 tunnel may be fragmented on the way.
        let mayFragment = outer == .v4 && packet.family == .v4 && !packet.dontFragment
        if packet.totalLength + overhead > path.mtu && !mayFragment {
            counters.count(.tunnelTooBig)
            let mtu = packet.family == .v6 ? max(path.mtu - overhead, TunnelForwarder.minimumIPv6MTU) : path.mtu - overhead
            let length = TunnelForwarder.replaceWithTooBig(bytes, packet, mtu: mtu, vip: packet.destination)
            return length > 0 ? .acceptReplaced(offset: 0, length: length) : .drop
        }
        counters.count(.forwarded)
        return encapsulate(bytes, packet.family, length: packet.totalLength, to: real, &counters)
    }

    /// The error travels to the real server through the tunnel, like the connection's packets.
    func forwardError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                      of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        counters.count(.icmpForwarded)
        return encapsulate(bytes, error.family, length: error.totalLength, to: connection.reply.source.address, &counters)
    }

    /// The first `length` bytes of `bytes`, a packet of `family`, in a tunnel to `real`.
    private func encapsulate(_ bytes: UnsafeMutableRawBufferPointer, _ family: IPFamily, length: Int, to real: IPAddress,
                             _ counters: inout CounterBatch) -> Verdict {
        let outer = IPFamily(of: real)
        guard let header = TunnelHeader(encapsulating: UnsafeRawBufferPointer(bytes), innerFamily: family,
                                        innerLength: length, outer: outer, source: path.source, destination: real) else {
            // Longer than the outer header can count: no verdict could carry it, no raw socket send it (the
            // packet's own counter was decided already; these say why it went no further).
            counters.count(outer == family ? .droppedVerdictSize : .droppedRawSend)
            return .drop
        }
        return outer == family ? .acceptEncapsulated(header) : .sendEncapsulated(header)
    }

    /// Replaces `bytes` in place by the ICMP error that tells the packet's source to send smaller packets to
    /// `vip`, with `mtu` as the next-hop MTU, and returns the new length (0 if the buffer is too small). IPVS
    /// answers the same way when a tunnelled packet would not fit.
    ///
    /// - IPv4: "fragmentation needed" (type 3 code 4), quoting the IP header and the first 8 transport bytes.
    /// - IPv6: "packet too big" (type 2), quoting as much of the packet as fits in 1280 bytes.
    static func replaceWithTooBig(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, mtu: Int,
                                  vip: IPAddress) -> Int {
        let family = packet.family
        let headers = family.minimumHeaderLength + ICMPHeader.length
        let quoted = family == .v4 ? min(packet.headerLength + 8, packet.totalLength)   // RFC 792: header + 64 bits
                                   : min(packet.totalLength, TunnelForwarder.minimumIPv6MTU - headers)
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
            icmp[ICMPHeader.Offset.type] = ICMPHeader.destinationUnreachable
            icmp[ICMPHeader.Offset.code] = ICMPHeader.fragmentationNeeded
            icmp.storeBigEndian(UInt32(UInt16(clamping: mtu)), at: ICMPHeader.Offset.mtu)
        } else {
            IPv6Header.write(into: ip, trafficClass: 0, payloadLength: length - IPv6Header.minimumLength, nextHeader: .icmpv6,
                             source: vip, destination: client)
            icmp[ICMPHeader.Offset.type] = ICMPHeader.v6PacketTooBig
            icmp[ICMPHeader.Offset.code] = 0
            icmp.storeBigEndian(UInt32(clamping: mtu), at: ICMPHeader.Offset.mtu)
        }
        icmp.storeBigEndian(UInt16(0), at: ICMPHeader.Offset.checksum)
        let pseudo = family == .v4 ? 0 : InternetChecksum.pseudoHeaderSum(
            source: vip, destination: client, family: .v6, protocol: .icmpv6, length: icmp.count)
        icmp.storeBigEndian(InternetChecksum.compute(UnsafeRawBufferPointer(icmp), initial: pseudo), at: ICMPHeader.Offset.checksum)
        return length
    }
}

/// What TUN needs to know about the path to one real server: the outer source address (the balancer's own
/// address on the route towards it) and the MTU of that route (resolved by ``TunnelPath/paths(for:known:)``).
public struct TunnelPath: Sendable, Equatable {
    public var source: IPAddress
    public var mtu: Int
}
