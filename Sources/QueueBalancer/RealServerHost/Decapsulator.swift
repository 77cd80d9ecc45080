/// The real server's side of TUN on a kernel without ipip/ip6_tunnel: each tunnelled packet (queued at mangle
/// INPUT, after the kernel reassembled any fragments) is accepted as its inner packet, which the stack then
/// delivers to the socket bound to the VIP on `lo`. IPv4-in-IPv4 (protocol 4) on an IPv4 queue rule,
/// IPv6-in-IPv6 (next header 41) on an IPv6 one. Across families (IPv6 in IPv4, IPv4 in IPv6), which a verdict
/// cannot express, the inner packet goes through a raw socket to the local VIP instead (``Verdict/sendReplaced(offset:length:destination:)``):
/// no transport-offset constraint then.
///
/// The kernel keeps the transport header offset of the outer packet when a verdict replaces it, so the inner
/// network header must have the outer's length: IPv4 IHL 5 both (20 bytes), IPv6 without extension headers
/// both (40 bytes). Other packets are dropped and counted; packets that are not tunnelled pass.
///
/// The inner packet is delivered locally without another routing or martian check (the verdict is given at
/// INPUT), so in both families alike only these are let through: tunnels from an allowed outer source (the
/// balancers, ``allowedSources``; `dropped_tunnel_source`), inner packets of TCP, UDP or the family's ICMP
/// (`dropped_tunnel_header`), addressed to one of the configured VIPs from an ordinary unicast source
/// (`dropped_tunnel_spoofed`). Anyone who can reach the real server could otherwise tunnel packets to its
/// local-only services, or to the VIP with a forged client address.
public struct Decapsulator: PacketProcessor {
    let vips: [IPAddress]
    /// Outer sources whose tunnels are opened; empty: any (the command warns).
    public let allowedSources: [IPPrefix]

    /// Whole packets: the inner packet is the verdict.
    public var copyRange: UInt32 { QueueSocket.wholePackets }

    /// - Parameters:
    ///   - vips: the VIPs this real server serves.
    ///   - allowedSources: the balancers' addresses (outer sources); empty accepts tunnels from anywhere.
    public init(vips: [IPAddress], allowedSources: [IPPrefix] = []) {
        self.vips = vips
        self.allowedSources = allowedSources
    }

    /// Whether a tunnel from `source`, read from an outer header of `family`, is opened at all (an IPv4-mapped
    /// address in an IPv6 header is no IPv4 balancer).
    private func allows(_ source: IPAddress, _ family: IPFamily) -> Bool {
        if allowedSources.isEmpty { return true }
        guard source.isIPv4 == (family == .v4) else { return false }
        return allowedSources.contains { $0.contains(source) }
    }

    /// Its queue has no GSO: `info` is always empty.
    public func handle(_ bytes: UnsafeMutableRawBufferPointer, info: PacketInfo, now: UInt64,
                       counters: inout CounterBatch) -> Verdict {
        let raw = UnsafeRawBufferPointer(bytes)
        guard raw.count >= 1 else { counters.count(.droppedMalformed); return .drop }
        switch raw[0] >> 4 {
        case 4: return ipv4(raw, &counters)
        case 6: return ipv6(raw, &counters)
        default: counters.count(.droppedMalformed); return .drop
        }
    }

    private func ipv4(_ raw: UnsafeRawBufferPointer, _ counters: inout CounterBatch) -> Verdict {
        guard let outer = IPv4Header(raw) else { counters.count(.droppedMalformed); return .drop }
        let outerLength = outer.totalLength
        guard outer.protocolNumber == .ipv4 || outer.protocolNumber == .ipv6 else {
            counters.count(.passedOtherProtocol)
            return .accept
        }
        guard allows(outer.source, .v4) else { counters.count(.droppedTunnelSource); return .drop }
        if outer.protocolNumber == .ipv6 {
            let outerHeader = outer.headerLength
            guard outerHeader >= IPv4Header.minimumLength, outerLength <= raw.count, outerLength >= outerHeader else {
                counters.count(.droppedMalformed); return .drop
            }
            return acrossFamilies(raw, at: outerHeader, end: outerLength, &counters)
        } else {
            let minimum = IPv4Header.minimumLength
            guard outerLength <= raw.count, outerLength >= 2 * minimum else { counters.count(.droppedMalformed); return .drop }
            let inner = IPv4Header(UnsafeRawBufferPointer(rebasing: raw[minimum..<outerLength]))!
            // In place, the inner header must have the outer's length: both without options.
            guard outer.isMinimal, inner.isMinimal else { counters.count(.droppedTunnelHeader); return .drop }
            let innerLength = inner.totalLength
            guard innerLength >= minimum, innerLength <= outerLength - minimum else {
                counters.count(.droppedMalformed); return .drop
            }
            return deliver(inner.source, inner.destination, inner.protocolNumber, .v4,
                           .acceptReplaced(offset: minimum, length: innerLength), &counters)
        }
    }

    private func ipv6(_ raw: UnsafeRawBufferPointer, _ counters: inout CounterBatch) -> Verdict {
        guard let outer = IPv6Header(raw) else { counters.count(.droppedMalformed); return .drop }
        let outerLength = outer.totalLength
        guard outerLength <= raw.count else { counters.count(.droppedMalformed); return .drop }
        // The tunnelled packet right after the fixed header; an outer extension header would move the offset.
        guard outer.nextHeader == .ipv4 || outer.nextHeader == .ipv6 else {
            counters.count(.passedOtherProtocol)
            return .accept
        }
        guard allows(outer.source, .v6) else { counters.count(.droppedTunnelSource); return .drop }
        if outer.nextHeader == .ipv4 {
            return acrossFamilies(raw, at: IPv6Header.minimumLength, end: outerLength, &counters)
        } else {
            let length = IPv6Header.minimumLength
            guard outerLength >= 2 * length,
                  let inner = IPv6Header(UnsafeRawBufferPointer(rebasing: raw[length..<outerLength])), inner.version == 6 else {
                counters.count(.droppedMalformed); return .drop
            }
            let innerLength = inner.totalLength
            guard innerLength <= outerLength - length else { counters.count(.droppedMalformed); return .drop }
            // No extension header (the transport offset stays the outer's): the protocol check in `deliver`.
            return deliver(inner.source, inner.destination, inner.nextHeader, .v6,
                           .acceptReplaced(offset: length, length: innerLength), &counters)
        }
    }

    /// Across families: the inner packet at `offset` (IPv6 in an IPv4 outer packet, or IPv4 in IPv6), checked
    /// like the others, leaves through a raw socket.
    private func acrossFamilies(_ raw: UnsafeRawBufferPointer, at offset: Int, end: Int,
                                _ counters: inout CounterBatch) -> Verdict {
        let inner = UnsafeRawBufferPointer(rebasing: raw[offset..<end])
        guard inner.count >= IPv4Header.minimumLength else { counters.count(.droppedMalformed); return .drop }
        switch inner[0] >> 4 {
        case 4:
            let ip = IPv4Header(inner)!
            let length = ip.totalLength
            guard ip.headerLength >= IPv4Header.minimumLength, length >= IPv4Header.minimumLength,
                  length <= inner.count else { counters.count(.droppedMalformed); return .drop }
            return deliver(ip.source, ip.destination, ip.protocolNumber, .v4,
                           .sendReplaced(offset: offset, length: length, destination: ip.destination), &counters)
        case 6:
            guard let ip = IPv6Header(inner), ip.totalLength <= inner.count else {
                counters.count(.droppedMalformed); return .drop
            }
            return deliver(ip.source, ip.destination, ip.nextHeader, .v6,
                           .sendReplaced(offset: offset, length: ip.totalLength, destination: ip.destination), &counters)
        default:
            counters.count(.droppedMalformed)
            return .drop
        }
    }

    /// The one delivery rule, both families alike: TCP, UDP or the family's ICMP (an error about a connection,
    /// sent on by the balancer), only to a configured VIP, only from an ordinary source.
    private func deliver(_ source: IPAddress, _ destination: IPAddress, _ transport: IPProtocolNumber,
                         _ family: IPFamily, _ verdict: Verdict, _ counters: inout CounterBatch) -> Verdict {
        guard transport == .tcp || transport == .udp || transport == (family == .v4 ? .icmp : .icmpv6) else {
            counters.count(.droppedTunnelHeader)
            return .drop
        }
        guard vips.contains(destination), source.isOrdinarySource(in: family) else {
            counters.count(.droppedTunnelSpoofed)
            return .drop
        }
        counters.count(.decapsulated)
        return verdict
    }
}
