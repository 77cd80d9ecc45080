/// The real server's side of TUN on a kernel without ipip: each IPIP packet (queued at mangle INPUT, after
/// the kernel reassembled any fragments) is accepted as its inner packet, which the stack then delivers to the
/// socket bound to the VIP on `lo`.
///
/// The kernel keeps the transport header offset of the outer packet when a verdict replaces it, so the inner
/// header must have the outer's length: both IHL 5 (20 bytes). Other packets are dropped and counted
/// (DESIGN.md); packets that are not IPIP pass unchanged.
///
/// The inner packet is delivered locally without another routing or martian check (the verdict is given at
/// INPUT), so only inner packets addressed to one of the configured VIPs, from an ordinary unicast source, are
/// let through: anyone who can reach the real server could otherwise tunnel packets to its local-only services
/// (`dropped_tunnel_spoofed`).
public struct Decapsulator: PacketProcessor {
    let vips: [UInt32]

    /// - Parameter vips: the VIPs this real server serves (IPv4 values).
    public init(vips: [UInt32]) {
        self.vips = vips
    }

    public func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict {
        let raw = UnsafeRawBufferPointer(bytes)
        guard raw.count >= 20, raw[0] >> 4 == 4 else { counters.count(.droppedMalformed); return .drop }
        guard raw[9] == 4 else { counters.count(.passedOtherProtocol); return .accept }
        let outerLength = Int(raw.loadBigEndianUInt16(at: 2))
        guard outerLength <= raw.count, outerLength >= 40 else { counters.count(.droppedMalformed); return .drop }
        guard raw[0] == 0x45, raw[20] == 0x45 else { counters.count(.droppedTunnelHeader); return .drop }
        let innerLength = Int(raw.loadBigEndianUInt16(at: 22))
        guard innerLength >= 20, innerLength <= outerLength - 20 else { counters.count(.droppedMalformed); return .drop }
        let innerSource = raw.loadBigEndianUInt32(at: 32), innerDestination = raw.loadBigEndianUInt32(at: 36)
        let firstOctet = innerSource >> 24
        // 0/8, loopback 127/8, multicast and reserved 224/3: never a client.
        guard vips.contains(innerDestination), firstOctet != 0, firstOctet != 127, firstOctet < 224 else {
            counters.count(.droppedTunnelSpoofed)
            return .drop
        }
        counters.count(.decapsulated)
        return .acceptReplaced(offset: 20, length: innerLength)
    }
}
