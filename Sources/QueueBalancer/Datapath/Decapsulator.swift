/// The real server's side of TUN on a kernel without ipip/ip6_tunnel: each tunnelled packet (queued at mangle
/// INPUT, after the kernel reassembled any fragments) is accepted as its inner packet, which the stack then
/// delivers to the socket bound to the VIP on `lo`. IPv4-in-IPv4 (protocol 4) on an IPv4 queue rule,
/// IPv6-in-IPv6 (next header 41) on an IPv6 one. Across families (IPv6 in IPv4, IPv4 in IPv6), which a verdict
/// cannot express, the inner packet goes through a raw socket to the local VIP instead (``Verdict/sendReplaced(offset:length:)``):
/// no transport-offset constraint then.
///
/// The kernel keeps the transport header offset of the outer packet when a verdict replaces it, so the inner
/// network header must have the outer's length: IPv4 IHL 5 both (20 bytes), IPv6 without extension headers
/// both (40 bytes). Other packets are dropped and counted (DESIGN.md); packets that are not tunnelled pass.
///
/// The inner packet is delivered locally without another routing or martian check (the verdict is given at
/// INPUT), so only inner packets addressed to one of the configured VIPs, from an ordinary unicast source, are
/// let through: anyone who can reach the real server could otherwise tunnel packets to its local-only services
/// (`dropped_tunnel_spoofed`).
public struct Decapsulator: PacketProcessor {
    let vips: [IPAddress]

    /// - Parameter vips: the VIPs this real server serves.
    public init(vips: [IPAddress]) {
        self.vips = vips
    }

    public func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict {
        let raw = UnsafeRawBufferPointer(bytes)
        guard raw.count >= 1 else { counters.count(.droppedMalformed); return .drop }
        switch raw[0] >> 4 {
        case 4: return ipv4(raw, &counters)
        case 6: return ipv6(raw, &counters)
        default: counters.count(.droppedMalformed); return .drop
        }
    }

    private func ipv4(_ raw: UnsafeRawBufferPointer, _ counters: inout CounterBatch) -> Verdict {
        guard raw.count >= 20 else { counters.count(.droppedMalformed); return .drop }
        if raw[9] == 41 {
            let outerHeader = Int(raw[0] & 0x0F) * 4
            let outerLength = Int(raw.loadBigEndianUInt16(at: 2))
            guard outerHeader >= 20, outerLength <= raw.count, outerLength >= outerHeader else {
                counters.count(.droppedMalformed); return .drop
            }
            return inner(raw, at: outerHeader, end: outerLength, &counters)
        }
        guard raw[9] == 4 else { counters.count(.passedOtherProtocol); return .accept }
        let outerLength = Int(raw.loadBigEndianUInt16(at: 2))
        guard outerLength <= raw.count, outerLength >= 40 else { counters.count(.droppedMalformed); return .drop }
        guard raw[0] == 0x45, raw[20] == 0x45 else { counters.count(.droppedTunnelHeader); return .drop }
        let innerLength = Int(raw.loadBigEndianUInt16(at: 22))
        guard innerLength >= 20, innerLength <= outerLength - 20 else { counters.count(.droppedMalformed); return .drop }
        let source = raw.loadBigEndianUInt32(at: 32)
        let firstOctet = source >> 24
        // 0/8, loopback 127/8, multicast and reserved 224/3: never a client.
        guard vips.contains(IPAddress(ipv4: raw.loadBigEndianUInt32(at: 36))), firstOctet != 0, firstOctet != 127,
              firstOctet < 224 else {
            counters.count(.droppedTunnelSpoofed)
            return .drop
        }
        counters.count(.decapsulated)
        return .acceptReplaced(offset: 20, length: innerLength)
    }

    private func ipv6(_ raw: UnsafeRawBufferPointer, _ counters: inout CounterBatch) -> Verdict {
        guard raw.count >= 40 else { counters.count(.droppedMalformed); return .drop }
        let outerLength = 40 + Int(raw.loadBigEndianUInt16(at: 4))
        guard outerLength <= raw.count else { counters.count(.droppedMalformed); return .drop }
        if raw[6] == 4 { return inner(raw, at: 40, end: outerLength, &counters) }
        // Next header 41 right after the fixed header; an outer extension header would move the offset.
        guard raw[6] == 41 else { counters.count(.passedOtherProtocol); return .accept }
        guard outerLength >= 80, raw[40] >> 4 == 6 else { counters.count(.droppedMalformed); return .drop }
        let innerLength = 40 + Int(raw.loadBigEndianUInt16(at: 44))
        guard innerLength <= outerLength - 40 else { counters.count(.droppedMalformed); return .drop }
        // TCP, UDP, or ICMPv6 (an error about a connection, sent on by the balancer): no extension header.
        guard raw[46] == TransportProtocol.tcp.rawValue || raw[46] == TransportProtocol.udp.rawValue || raw[46] == 58 else {
            counters.count(.droppedTunnelHeader)
            return .drop
        }
        let source = IPAddress(high: raw.loadBigEndianUInt64(at: 48), low: raw.loadBigEndianUInt64(at: 56))
        let destination = IPAddress(high: raw.loadBigEndianUInt64(at: 64), low: raw.loadBigEndianUInt64(at: 72))
        // Unspecified ::, loopback ::1, multicast ff00::/8, IPv4-mapped: never a client.
        let ordinary = !(source.high == 0 && source.low <= 1) && source.high >> 56 != 0xFF && !source.isIPv4
        guard vips.contains(destination), ordinary else {
            counters.count(.droppedTunnelSpoofed)
            return .drop
        }
        counters.count(.decapsulated)
        return .acceptReplaced(offset: 40, length: innerLength)
    }

    /// Across families: the inner packet at `offset` (IPv6 in an IPv4 outer packet, or IPv4 in IPv6), checked
    /// like the others, leaves through a raw socket.
    private func inner(_ raw: UnsafeRawBufferPointer, at offset: Int, end: Int, _ counters: inout CounterBatch) -> Verdict {
        guard end >= offset + 20 else { counters.count(.droppedMalformed); return .drop }
        let version = raw[offset] >> 4
        let length: Int
        let source: IPAddress, destination: IPAddress
        let ordinary: Bool
        if version == 4 {
            length = Int(raw.loadBigEndianUInt16(at: offset + 2))
            guard raw[offset] & 0x0F >= 5, length >= 20, offset + length <= end else {
                counters.count(.droppedMalformed); return .drop
            }
            source = IPAddress(ipv4: raw.loadBigEndianUInt32(at: offset + 12))
            destination = IPAddress(ipv4: raw.loadBigEndianUInt32(at: offset + 16))
            let firstOctet = raw[offset + 12]
            ordinary = firstOctet != 0 && firstOctet != 127 && firstOctet < 224
        } else if version == 6 {
            guard end >= offset + 40 else { counters.count(.droppedMalformed); return .drop }
            length = 40 + Int(raw.loadBigEndianUInt16(at: offset + 4))
            guard offset + length <= end else { counters.count(.droppedMalformed); return .drop }
            source = NATRewrite.address(raw, .v6, at: offset + 8)
            destination = NATRewrite.address(raw, .v6, at: offset + 24)
            ordinary = !(source.high == 0 && source.low <= 1) && source.high >> 56 != 0xFF && !source.isIPv4
        } else {
            counters.count(.droppedMalformed); return .drop
        }
        guard vips.contains(destination), ordinary else { counters.count(.droppedTunnelSpoofed); return .drop }
        counters.count(.decapsulated)
        return .sendReplaced(offset: offset, length: length)
    }
}
