/// Network-byte-order loads and stores on raw buffers, and the address reader and writer for either family.
///
/// Every header view and rewrite goes through these; the offsets they are given come from the header types
/// (``IPv4Header``, ``IPv6Header``, ``TCPHeader``, ``UDPHeader``, ``ICMPHeader``). Bounds are the caller's to
/// establish (the parser's invariant, see docs/ARCHITECTURE.md "Packet"): in release builds these are plain
/// unaligned loads and stores.
extension UnsafeRawBufferPointer {
    func loadBigEndianUInt16(at offset: Int) -> UInt16 {
        UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }

    func loadBigEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }

    func loadBigEndianUInt64(at offset: Int) -> UInt64 {
        UInt64(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    /// The address of `family` at `offset` (4 bytes for IPv4, 16 for IPv6).
    func loadAddress(_ family: IPFamily, at offset: Int) -> IPAddress {
        family == .v4
            ? IPAddress(ipv4: loadBigEndianUInt32(at: offset))
            : IPAddress(high: loadBigEndianUInt64(at: offset), low: loadBigEndianUInt64(at: offset + 8))
    }
}

extension UnsafeMutableRawBufferPointer {
    func loadBigEndianUInt16(at offset: Int) -> UInt16 {
        UnsafeRawBufferPointer(self).loadBigEndianUInt16(at: offset)
    }

    func storeBigEndian(_ value: UInt16, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt16.self)
    }

    func storeBigEndian(_ value: UInt32, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt32.self)
    }

    func storeBigEndian(_ value: UInt64, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: UInt64.self)
    }

    /// Stores `address` at `offset` as the header of `family` holds it (4 or 16 bytes).
    func store(_ address: IPAddress, family: IPFamily, at offset: Int) {
        if family == .v4 {
            storeBigEndian(UInt32(truncatingIfNeeded: address.low), at: offset)
        } else {
            storeBigEndian(address.high, at: offset)
            storeBigEndian(address.low, at: offset + 8)
        }
    }
}
