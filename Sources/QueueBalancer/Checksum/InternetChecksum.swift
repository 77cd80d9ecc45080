/// The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
///
/// The datapath updates checksums incrementally: the kernel hands nfqlb packets whose L4 checksum is complete
/// and valid (no `NFQA_CFG_F_GSO`), and an incremental update keeps a corrupt checksum corrupt, so nfqlb never
/// launders a damaged packet. The full computation serves where there is nothing to update: headers nfqlb
/// writes itself (tunnel headers, ICMP "too big" answers), and an IPv6 UDP datagram that arrived without a
/// checksum (0, invalid over IPv6). The tests also use it as their reference.
public enum InternetChecksum {
    /// One's-complement sum of `bytes` folded to 16 bits, not complemented. An odd trailing byte is padded.
    ///
    /// Eight bytes at a time: a big-endian 64-bit word added with end-around carry is, modulo 0xFFFF, the sum
    /// of its four 16-bit words (2^16 = 1 there), so folding the 64-bit sum gives the 16-bit one.
    public static func sum(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt16 {
        var acc = UInt64(initial)
        var i = 0
        let n = bytes.count
        while i + 8 <= n {
            let (sum, carry) = acc.addingReportingOverflow(UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
            acc = sum &+ (carry ? 1 : 0)
            i += 8
        }
        var tail: UInt64 = 0
        while i + 1 < n {
            tail &+= UInt64(bytes[i]) << 8 | UInt64(bytes[i + 1])
            i += 2
        }
        if i < n { tail &+= UInt64(bytes[i]) << 8 }
        // The halves first, so that adding the tail cannot overflow.
        return fold((acc >> 32) &+ (acc & 0xFFFF_FFFF) &+ tail)
    }

    /// Folds a wide one's-complement accumulator to 16 bits.
    public static func fold(_ value: UInt64) -> UInt16 {
        var acc = value
        while acc >> 16 != 0 { acc = (acc & 0xFFFF) &+ (acc >> 16) }
        return UInt16(acc)
    }

    /// The checksum field value for `bytes` (complement of the sum), e.g. an IPv4 header with its checksum zeroed.
    public static func compute(_ bytes: UnsafeRawBufferPointer, initial: UInt32 = 0) -> UInt16 {
        ~sum(bytes, initial: initial)
    }

    /// The pseudo-header sum of either family (RFC 768/793 for IPv4, RFC 8200 section 8.1 for IPv6) for a
    /// transport segment of `length` bytes.
    public static func pseudoHeaderSum(source: IPAddress, destination: IPAddress, family: IPFamily,
                                       protocol proto: IPProtocolNumber, length: Int) -> UInt32 {
        guard family == .v6 else {
            return pseudoHeaderSum(source: UInt32(truncatingIfNeeded: source.low),
                                   destination: UInt32(truncatingIfNeeded: destination.low), protocol: proto, length: length)
        }
        func words(_ w: UInt64) -> UInt64 { (w >> 48) &+ (w >> 32 & 0xFFFF) &+ (w >> 16 & 0xFFFF) &+ (w & 0xFFFF) }
        let acc = UInt64(proto.rawValue) &+ UInt64(length >> 16) &+ UInt64(length & 0xFFFF)
            &+ words(source.high) &+ words(source.low) &+ words(destination.high) &+ words(destination.low)
        return UInt32(fold(acc))
    }

    /// The IPv4 pseudo-header sum (RFC 793/768) for an L4 segment of `length` bytes.
    public static func pseudoHeaderSum(source: UInt32, destination: UInt32, protocol proto: IPProtocolNumber, length: Int) -> UInt32 {
        var acc: UInt32 = 0
        acc &+= source >> 16
        acc &+= source & 0xFFFF
        acc &+= destination >> 16
        acc &+= destination & 0xFFFF
        acc &+= UInt32(proto.rawValue)
        acc &+= UInt32(length)
        return acc
    }
}

/// An incremental checksum update, RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` over every changed 16-bit word.
///
/// Accumulate the old and new values of every changed word, then apply the difference to each checksum that
/// covers them. Allocation-free; a value type meant to live on the stack of the per-packet path.
public struct ChecksumDelta {
    var acc: UInt64 = 0

    public init() {}

    /// Records that a 16-bit word changed from `old` to `new`.
    public mutating func replace(_ old: UInt16, with new: UInt16) {
        acc &+= UInt64(~old) &+ UInt64(new)
    }

    /// Records that a 32-bit value (an IPv4 address) changed.
    public mutating func replace(_ old: UInt32, with new: UInt32) {
        replace(UInt16(truncatingIfNeeded: old >> 16), with: UInt16(truncatingIfNeeded: new >> 16))
        replace(UInt16(truncatingIfNeeded: old), with: UInt16(truncatingIfNeeded: new))
    }

    /// Records that a 64-bit value (half an IPv6 address) changed.
    public mutating func replace(_ old: UInt64, with new: UInt64) {
        replace(UInt32(truncatingIfNeeded: old >> 32), with: UInt32(truncatingIfNeeded: new >> 32))
        replace(UInt32(truncatingIfNeeded: old), with: UInt32(truncatingIfNeeded: new))
    }

    /// Records that an address of `family` changed (4 bytes for IPv4, 16 for IPv6).
    public mutating func replace(_ old: IPAddress, with new: IPAddress, family: IPFamily) {
        if family == .v4 {
            replace(UInt32(truncatingIfNeeded: old.low), with: UInt32(truncatingIfNeeded: new.low))
        } else {
            replace(old.high, with: new.high)
            replace(old.low, with: new.low)
        }
    }

    /// Records the changes `other` recorded.
    public mutating func add(_ other: ChecksumDelta) {
        acc &+= other.acc
    }

    /// A field that holds a sum, not its complement (a pseudo-header sum awaiting the rest of the checksum),
    /// after the recorded changes.
    public func appliedToSum(_ sum: UInt16) -> UInt16 {
        InternetChecksum.fold(UInt64(sum) &+ acc)
    }

    /// The checksum field after the recorded changes.
    public func applied(to checksum: UInt16) -> UInt16 {
        ~InternetChecksum.fold(UInt64(~checksum) &+ acc)
    }

    /// The UDP checksum field after the changes: 0 (no checksum, IPv4 only) stays 0, and a result of 0 is
    /// sent as 0xFFFF (RFC 768).
    public func appliedToUDP(_ checksum: UInt16) -> UInt16 {
        if checksum == 0 { return 0 }
        let updated = applied(to: checksum)
        return updated == 0 ? 0xFFFF : updated
    }
}
