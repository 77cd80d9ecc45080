/// A flow as it appears in one packet's headers: source, destination, ports and transport protocol.
public struct FlowKey: Hashable, Sendable, CustomStringConvertible {
    public var source: Endpoint
    public var destination: Endpoint
    public var transport: TransportProtocol

    public var description: String { "\(transport) \(source) -> \(destination)" }
}

/// The hash function of the tracker: cheap, allocation-free and keyed by a per-process seed so that a remote
/// sender cannot aim many flows at one bucket.
struct FlowHasher: Sendable {
    let seed: UInt64

    init(seed: UInt64) { self.seed = seed }

    static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let product = (a ^ 0xA076_1D64_78BD_642F).multipliedFullWidth(by: b ^ 0xE703_7ED1_A0B4_28DB)
        return product.high ^ product.low
    }

    /// Hash of one endpoint: selects the lock stripe, so both directions of a connection meet in one stripe.
    /// Its low bits pick the stripe, so they must be spread for every seed: `mix` alone left them nearly fixed
    /// when only the port varies (a FULLNAT local address's ports then crowded into few stripes, and clients
    /// of the others found no port), hence the final avalanche (MurmurHash3's fmix64).
    func hash(_ endpoint: Endpoint, _ transport: TransportProtocol) -> UInt64 {
        let h = FlowHasher.mix(endpoint.address.high ^ seed, endpoint.address.low)
        return FlowHasher.avalanche(FlowHasher.mix(h, UInt64(endpoint.port) << 8 | UInt64(transport.rawValue)))
    }

    static func avalanche(_ x: UInt64) -> UInt64 {
        var h = x
        h ^= h >> 33
        h &*= 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        h &*= 0xC4CE_B9FE_1A85_EC53
        return h ^ (h >> 33)
    }

    /// Hash of a whole flow key: selects the slot inside a stripe's index.
    func hash(_ key: FlowKey) -> UInt64 {
        var h = FlowHasher.mix(key.source.address.high ^ seed, key.source.address.low)
        h = FlowHasher.mix(h ^ key.destination.address.high, key.destination.address.low)
        let ports = UInt64(key.source.port) << 24 | UInt64(key.destination.port) << 8 | UInt64(key.transport.rawValue)
        return FlowHasher.mix(h, ports)
    }
}
