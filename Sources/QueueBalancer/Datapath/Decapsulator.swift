/// The real server's side of TUN on a kernel without ipip: each IPIP packet (queued at mangle INPUT, after
/// the kernel reassembled any fragments) is accepted as its inner packet, which the stack then delivers to the
/// socket bound to the VIP on `lo`.
///
/// The kernel keeps the transport header offset of the outer packet when a verdict replaces it, so the inner
/// header must have the outer's length: both IHL 5 (20 bytes). Other packets are dropped and counted
/// (DESIGN.md); packets that are not IPIP pass unchanged.
public struct Decapsulator: PacketProcessor {
    public init() {}

    public func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict {
        let raw = UnsafeRawBufferPointer(bytes)
        guard raw.count >= 20, raw[0] >> 4 == 4 else { counters.count(.droppedMalformed); return .drop }
        guard raw[9] == 4 else { counters.count(.passedOtherProtocol); return .accept }
        let outerLength = Int(raw.loadBigEndianUInt16(at: 2))
        guard outerLength <= raw.count, outerLength >= 40 else { counters.count(.droppedMalformed); return .drop }
        guard raw[0] == 0x45, raw[20] == 0x45 else { counters.count(.droppedTunnelHeader); return .drop }
        let innerLength = Int(raw.loadBigEndianUInt16(at: 22))
        guard innerLength >= 20, innerLength <= outerLength - 20 else { counters.count(.droppedMalformed); return .drop }
        counters.count(.decapsulated)
        return .acceptReplaced(offset: 20, length: innerLength)
    }
}
