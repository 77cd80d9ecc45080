import Synchronization

/// IPVS persistence templates for one virtual service: a client network (the client address under the
/// service's netmask) keeps its real server for `timeout` after its last packet, so that later connections from
/// it land on the same server (sessions, SSL caches).
///
/// A fixed table of 4,096 buckets of 4 atomic slots, one 64-bit word each: a 16-bit tag of the network's hash,
/// the real server's number + 1 (16 bits, 0 = empty; the ``RealServerRegistry`` number, stable across config
/// changes) and the expiry in seconds of the monotonic clock (32 bits).
/// Lookups and refreshes are lock-free and allocate nothing. When a bucket's four slots are all live, a new
/// network takes the slot that expires first (counted in ``evictions``): with 16,384 slots that only happens
/// when far more client networks are live than a template table of IPVS's default size would hold anyway.
public final class PersistenceTemplates: Sendable {
    /// Template lifetime after the last packet, in milliseconds.
    public let timeout: UInt64
    /// The netmask applied to client addresses: an IPv4 prefix length (0...32) or IPv6 (0...128).
    public let prefixLength: Int
    private let slots: InlineArray<16384, Atomic<UInt64>>
    private let evictionCount = Atomic<Int>(0)

    public init(timeoutSeconds: UInt64, prefixLength: Int) {
        timeout = timeoutSeconds * 1000
        self.prefixLength = prefixLength
        slots = InlineArray { _ in Atomic<UInt64>(0) }
    }

    /// Live templates displaced by newer ones.
    public var evictions: Int { evictionCount.load(ordering: .relaxed) }

    /// The client network of `address` (the address with the host bits cleared).
    public func network(_ address: IPAddress) -> IPAddress {
        address.keepingFirst(address.isIPv4 ? 96 + min(prefixLength, 32) : min(prefixLength, 128))
    }

    private func hash(_ client: IPAddress) -> UInt64 {
        stableHash(network(client), salt: 0x7065_7273)
    }

    /// The real server number the client's network is bound to, if a template is live at `now` (ms).
    public func lookup(_ client: IPAddress, now: UInt64) -> RealServerID? {
        let h = hash(client)
        let tag = h >> 48
        let base = Int(h & 4095) * 4
        let seconds = now / 1000
        for i in base..<(base + 4) {
            let word = slots[i].load(ordering: .relaxed)
            if word >> 48 == tag, (word >> 32) & 0xFFFF != 0, word & 0xFFFF_FFFF > seconds {
                return RealServerID(rawValue: UInt32((word >> 32) & 0xFFFF) - 1)
            }
        }
        return nil
    }

    /// Binds (or refreshes) the client's network to real server number `real` until `now + timeout`.
    public func bind(_ client: IPAddress, to real: RealServerID, now: UInt64) {
        guard real.rawValue < 0xFFFF else { return }
        let h = hash(client)
        let tag = h >> 48
        let base = Int(h & 4095) * 4
        let seconds = now / 1000
        let expiry = min((now + timeout + 999) / 1000, UInt64(UInt32.max))
        let word = tag << 48 | UInt64(real.rawValue + 1) << 32 | expiry
        // The network's own slot, else an empty or expired one, else the one expiring first.
        var target = -1, victimExpiry = UInt64.max, victim = base
        for i in base..<(base + 4) {
            let current = slots[i].load(ordering: .relaxed)
            if current >> 48 == tag && (current >> 32) & 0xFFFF != 0 { target = i; break }
            let currentExpiry = current & 0xFFFF_FFFF
            if target < 0 && (current == 0 || currentExpiry <= seconds) { target = i }
            if currentExpiry < victimExpiry { victimExpiry = currentExpiry; victim = i }
        }
        if target < 0 {
            target = victim
            evictionCount.wrappingAdd(1, ordering: .relaxed)
        }
        // A concurrent writer for another network may win the slot; then this template is simply not kept.
        slots[target].store(word, ordering: .relaxed)
    }

    /// The live templates at `now` as (slot, server number, the rest of the word), for ``BalancerState``.
    func saved(now: UInt64) -> [(slot: Int, real: RealServerID, word: UInt64)] {
        let seconds = now / 1000
        var result: [(slot: Int, real: RealServerID, word: UInt64)] = []
        for i in 0..<slots.count {
            let word = slots[i].load(ordering: .relaxed)
            let number = (word >> 32) & 0xFFFF
            guard number != 0, word & 0xFFFF_FFFF > seconds else { continue }
            result.append((i, RealServerID(rawValue: UInt32(number - 1)), word & ~(UInt64(0xFFFF) << 32)))
        }
        return result
    }

    /// Puts a saved template back in its slot, bound to `real` (this process's number for its server). The
    /// slot is fixed by the network's hash, which does not depend on the process.
    func restore(slot: Int, real: RealServerID, word: UInt64) {
        guard slot >= 0, slot < slots.count, real.rawValue < 0xFFFF else { return }
        slots[slot].store(word & ~(UInt64(0xFFFF) << 32) | UInt64(real.rawValue + 1) << 32, ordering: .relaxed)
    }
}
