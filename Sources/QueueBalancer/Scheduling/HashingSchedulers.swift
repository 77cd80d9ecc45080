/// Schedulers that hash a packet field to a server, as IPVS's dh, sh and mh: the same key always gets the
/// same server while the server set is unchanged. Tables are built once; a pick is one hash and one load.

/// A fixed (unseeded) 64-bit mix, so that sh/dh/mh give the same answer after a restart, as IPVS does.
func stableHash(_ address: IPAddress, port: UInt16 = 0, salt: UInt64 = 0) -> UInt64 {
    let h = FlowHasher.mix(address.high ^ salt, address.low)
    return FlowHasher.mix(h, UInt64(port) &+ 0x9E37_79B9_7F4A_7C15)
}

/// `dh`: destination hashing: 256 buckets dealt to the servers in turn, keyed by the destination address
/// (for caches and firewalls in front of them). A bucket whose server has weight 0 refuses the connection.
public struct DestinationHashScheduler: Scheduler {
    let loads: [RealServerLoad]
    let buckets: [Int]

    public init(loads: [RealServerLoad]) {
        self.loads = loads
        buckets = loads.isEmpty ? [] : (0..<256).map { $0 % loads.count }
    }

    public func pick(for flow: FlowKey) -> Int? {
        guard !buckets.isEmpty else { return nil }
        let server = buckets[Int(stableHash(flow.destination.address) & 0xFF)]
        return loads[server].isAvailable ? server : nil
    }
}

/// `sh`: source hashing: 256 buckets dealt in proportion to the weights, keyed by the source address (and
/// port with `sh-port`): one client sticks to one server. With `sh-fallback` a bucket whose server became
/// unavailable falls through to the next bucket's server.
public struct SourceHashScheduler: Scheduler {
    let loads: [RealServerLoad]
    let buckets: [Int]
    let fallback: Bool
    let includePort: Bool

    public init(loads: [RealServerLoad], fallback: Bool = false, includePort: Bool = false) {
        self.loads = loads
        self.fallback = fallback
        self.includePort = includePort
        let deal = loads.indices.flatMap { i in Array(repeating: i, count: Int(min(loads[i].weight, 256))) }
        buckets = deal.isEmpty ? [] : (0..<256).map { deal[$0 % deal.count] }
    }

    public func pick(for flow: FlowKey) -> Int? {
        guard !buckets.isEmpty else { return nil }
        let start = Int(stableHash(flow.source.address, port: includePort ? flow.source.port : 0) & 0xFF)
        for offset in 0..<(fallback ? 256 : 1) {
            let server = buckets[(start + offset) & 0xFF]
            if loads[server].isAvailable { return server }
        }
        return nil
    }
}

/// `mh`: Maglev hashing (Eisenbud et al., NSDI 2016) with weights: a lookup table of prime size M in which
/// each server owns entries in proportion to its weight, filled from each server's own permutation of the
/// slots, so that adding or removing one server moves few entries. Keyed by the source address (and port
/// with `mh-port`); `mh-fallback` rehashes past an unavailable server.
///
/// Invariant: the table depends only on the real servers' endpoints and weights, the table size and the
/// `hash-seed` — not on their order in the config, the start order or any process state — so balancers with
/// the same service send the same flow to the same real server (docs/ARCHITECTURE.md, "Several balancers";
/// ``digest`` lets operators compare).
public struct MaglevScheduler: Scheduler {
    let loads: [RealServerLoad]
    /// Server index per table entry; -1 when every weight is 0.
    public let table: [Int32]
    let fallback: Bool
    let includePort: Bool
    let seed: UInt64

    /// The default table size: a prime >= 65,536.
    public static let defaultTableSize = 65537

    public init(loads: [RealServerLoad], tableSize: Int = 0, fallback: Bool = false, includePort: Bool = false,
                names: [Endpoint]? = nil, seed: UInt64 = 0) {
        self.loads = loads
        self.fallback = fallback
        self.includePort = includePort
        self.seed = seed
        let size = tableSize > 0 ? MaglevScheduler.prime(atLeast: tableSize) : MaglevScheduler.tableSize(servers: loads.count)
        // Without endpoint names (tests, weights only) servers are named by position.
        let keys = names ?? loads.indices.map { Endpoint(address: IPAddress(ipv4: UInt32($0)), port: 0) }
        table = MaglevScheduler.populate(weights: loads.map(\.weight), names: keys, size: size, seed: seed)
    }

    /// The smallest prime >= max(65537, 100 x servers).
    public static func tableSize(servers: Int) -> Int { prime(atLeast: max(defaultTableSize, 100 * servers)) }

    /// The smallest prime >= max(n, 2). The table's size must be prime: with any other size a server's
    /// permutation (offset + j x skip mod M) may cycle through a few slots only, and filling would never end.
    public static func prime(atLeast n: Int) -> Int {
        var n = max(n, 2)
        while !isPrime(n) { n += 1 }
        return n
    }

    static func isPrime(_ n: Int) -> Bool {
        guard n >= 2 else { return false }
        var d = 2
        while d * d <= n { if n % d == 0 { return false }; d += 1 }
        return true
    }

    /// Fills the table: in each round every server takes `weight / gcd` turns, each turn claiming the next
    /// free slot of its permutation (offset + j * skip mod M, from two hashes of its name and the seed). Servers
    /// take their turns in the order of their names, so the order they are given in does not matter. A `size`
    /// that is not prime is raised to the next prime (the table returned has that many entries).
    public static func populate(weights: [UInt32], names: [Endpoint], size requested: Int, seed: UInt64 = 0) -> [Int32] {
        let size = prime(atLeast: requested)
        var table = [Int32](repeating: -1, count: size)
        let g = weights.filter { $0 > 0 }.reduce(UInt64(0)) { gcd($0, UInt64($1)) }
        guard g > 0 else { return table }
        let turns = weights.map { Int(UInt64($0) / g) }
        let offsets = names.map { Int(stableHash($0.address, port: $0.port, salt: 0x6D61_676C ^ seed) % UInt64(size)) }
        let skips = names.map { Int(stableHash($0.address, port: $0.port, salt: 0x736B_6970 ^ seed) % UInt64(size - 1)) + 1 }
        let order = names.indices.sorted { names[$0] < names[$1] }
        var next = [Int](repeating: 0, count: weights.count)
        var filled = 0
        while filled < size {
            for i in order where turns[i] > 0 {
                for _ in 0..<turns[i] {
                    var slot = (offsets[i] + next[i] * skips[i]) % size
                    while table[slot] >= 0 {
                        next[i] += 1
                        slot = (offsets[i] + next[i] * skips[i]) % size
                    }
                    table[slot] = Int32(i)
                    next[i] += 1
                    filled += 1
                    if filled == size { return table }
                }
            }
        }
        return table
    }

    /// A SHA-256 of the table as endpoints (each slot's server named, not numbered) with the seed: equal on two
    /// balancers exactly when they send every source to the same real server. Lowercase hex.
    public static func digest(table: [Int32], names: [Endpoint], seed: UInt64) -> String {
        let ranks = names.indices.sorted { names[$0] < names[$1] }
        var rankOf = [Int32](repeating: -1, count: names.count)
        for (rank, index) in ranks.enumerated() { rankOf[index] = Int32(rank) }
        var bytes = Array("mh seed=\(seed) size=\(table.count) servers=\(ranks.map { "\(names[$0])" }.joined(separator: ","))\n".utf8)
        bytes.reserveCapacity(bytes.count + 4 * table.count)
        for slot in table {
            let rank = slot >= 0 ? rankOf[Int(slot)] : -1
            withUnsafeBytes(of: rank.littleEndian) { bytes += $0 }
        }
        return Digest.sha256Hex(bytes)
    }

    public func pick(for flow: FlowKey) -> Int? {
        let port = includePort ? flow.source.port : 0
        for attempt in 0..<(fallback ? max(loads.count, 1) : 1) {
            let hash = stableHash(flow.source.address, port: port, salt: UInt64(attempt) ^ seed)
            let server = table[Int(hash % UInt64(table.count))]
            if server >= 0 && loads[Int(server)].isAvailable { return Int(server) }
        }
        return nil
    }
}

/// What operators compare between balancers (`nfqlb check --show-table`): an `mh` service's table size, seed,
/// digest, and how many entries each real server owns.
public struct MaglevTableSummary: Sendable, Equatable {
    public var size: Int
    public var seed: UInt64
    public var digest: String
    /// Entries per real server, in the config's order.
    public var entries: [Share]

    /// How many table entries one real server owns.
    public struct Share: Sendable, Equatable {
        public var real: Endpoint
        public var count: Int
    }
}

extension VirtualService {
    /// The Maglev table this service's configuration gives (every real server up); nil unless its scheduler is mh.
    public var maglevTable: MaglevTableSummary? {
        guard scheduler == .mh else { return nil }
        let names = reals.map(\.endpoint)
        let size = schedulerOptions.mhTableSize > 0 ? schedulerOptions.mhTableSize : MaglevScheduler.tableSize(servers: reals.count)
        let table = MaglevScheduler.populate(weights: reals.map(\.weight), names: names, size: size, seed: schedulerOptions.hashSeed)
        var counts = [Int](repeating: 0, count: reals.count)
        for slot in table where slot >= 0 { counts[Int(slot)] += 1 }
        return MaglevTableSummary(size: table.count, seed: schedulerOptions.hashSeed,
                                  digest: MaglevScheduler.digest(table: table, names: names, seed: schedulerOptions.hashSeed),
                                  entries: zip(names, counts).map { MaglevTableSummary.Share(real: $0, count: $1) })
    }
}
