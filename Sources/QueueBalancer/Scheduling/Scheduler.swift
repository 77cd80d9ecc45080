import Synchronization

/// Chooses the real server of a new connection, as an IPVS scheduler does.
///
/// A scheduler is built from the weights of one virtual service's real servers and answers with an index
/// into that list. Picking runs on the packet path for every new connection: it allocates nothing and takes
/// no lock (shared positions are atomics, because every queue worker schedules for the same service).
public protocol Scheduler: Sendable {
    /// The index of the real server for a new connection `flow`, or nil when every weight is 0.
    func pick(for flow: FlowKey) -> Int?
}

/// The scheduler names of the config file, as `ipvsadm -s` spells them.
public enum SchedulerKind: String, Sendable, CaseIterable, CustomStringConvertible {
    case rr, wrr, lc, wlc, sed, nq, dh, sh, mh, lblc, lblcr, fo, ovf, twos

    public var description: String { rawValue }

    /// A scheduler of this kind over real servers with these loads (weights and live connection counts).
    /// `names` (the real servers' endpoints) seed Maglev's permutations, so a server keeps its entries when
    /// others come and go.
    public func makeScheduler(loads: [RealServerLoad], options: SchedulerOptions = SchedulerOptions(),
                              names: [Endpoint]? = nil) -> any Scheduler {
        switch self {
        case .rr: return RoundRobinScheduler(loads: loads)
        case .wrr: return WeightedRoundRobinScheduler(loads: loads)
        case .lc: return LeastConnectionScheduler(loads: loads)
        case .wlc: return WeightedLeastConnectionScheduler(loads: loads)
        case .sed: return ShortestExpectedDelayScheduler(loads: loads)
        case .nq: return NeverQueueScheduler(loads: loads)
        case .dh: return DestinationHashScheduler(loads: loads)
        case .sh: return SourceHashScheduler(loads: loads, fallback: options.shFallback, includePort: options.shPort)
        case .mh: return MaglevScheduler(loads: loads, tableSize: options.mhTableSize,
                                         fallback: options.mhFallback, includePort: options.mhPort, names: names,
                                         seed: options.hashSeed)
        case .lblc: return LocalityScheduler(loads: loads, replicated: false)
        case .lblcr: return LocalityScheduler(loads: loads, replicated: true)
        case .fo: return WeightedFailoverScheduler(loads: loads)
        case .ovf: return OverflowScheduler(loads: loads)
        case .twos: return TwoChoicesScheduler(loads: loads)
        }
    }

    /// A scheduler of this kind from weights alone (counts start at 0 and are not kept).
    public func makeScheduler(weights: [UInt32]) -> any Scheduler {
        makeScheduler(loads: weights.map { RealServerLoad(weight: $0) })
    }
}

/// IPVS's scheduler flags (`ipvsadm -b`) and the Maglev table size.
public struct SchedulerOptions: Sendable, Equatable {
    /// sh: when the hashed server is unavailable (weight 0), try the next one instead of refusing.
    public var shFallback = false
    /// sh: hash the source port too, not only the source address.
    public var shPort = false
    /// mh: as shFallback, for Maglev.
    public var mhFallback = false
    /// mh: hash the source port too.
    public var mhPort = false
    /// mh: lookup table size, a prime; 0 picks the smallest of IPVS's primes >= 100 x servers (default 65537).
    public var mhTableSize = 0
    /// mh: mixed into every hash of the table and the lookup (`hash-seed`); balancers that must agree use the
    /// same one, and a cluster may pick its own so its hashing does not line up with the router's ECMP hash.
    public var hashSeed: UInt64 = 0

    public init() {}
}

/// `rr`: every real server whose weight is above 0, in turn (IPVS skips weight-0 servers the same way).
public final class RoundRobinScheduler: Scheduler {
    private let loads: [RealServerLoad]
    private let eligible: [Int]
    private let position = Atomic<UInt64>(0)

    public init(loads: [RealServerLoad]) {
        self.loads = loads
        eligible = loads.indices.filter { loads[$0].weight > 0 }
    }

    public convenience init(weights: [UInt32]) {
        self.init(loads: weights.map { RealServerLoad(weight: $0) })
    }

    /// The next server in turn, skipping overloaded ones (at most one pass over the servers).
    public func pick(for flow: FlowKey) -> Int? {
        guard !eligible.isEmpty else { return nil }
        for _ in 0..<eligible.count {
            let turn = position.wrappingAdd(1, ordering: .relaxed).oldValue
            let server = eligible[Int(turn % UInt64(eligible.count))]
            if loads[server].isAvailable { return server }
        }
        return nil
    }
}

/// `wrr`: IPVS's weighted round robin. The sequence of one full cycle is computed once from the weights
/// (current weight stepping down from the maximum by the weights' gcd; each pass picks the servers whose
/// weight reaches it), so server `i` appears `w[i] / gcd` times per cycle, interleaved rather than in runs.
public final class WeightedRoundRobinScheduler: Scheduler {
    /// Real-server indices of one cycle.
    public let sequence: [UInt32]
    private let loads: [RealServerLoad]
    private let position = Atomic<UInt64>(0)

    /// The longest cycle kept; beyond it weights are scaled down (proportions kept to within 1/limit).
    static let sequenceLimit = 1 << 20

    public init(loads: [RealServerLoad]) {
        self.loads = loads
        sequence = WeightedRoundRobinScheduler.cycle(weights: loads.map(\.weight))
    }

    public convenience init(weights: [UInt32]) {
        self.init(loads: weights.map { RealServerLoad(weight: $0) })
    }

    static func cycle(weights original: [UInt32]) -> [UInt32] {
        var weights = original.map { UInt64($0) }
        let g = weights.filter { $0 > 0 }.reduce(0) { gcd($0, $1) }
        guard g > 0 else { return [] }
        weights = weights.map { $0 / g }
        let total = weights.reduce(0, +)
        if total > UInt64(sequenceLimit) {
            let scale = Double(sequenceLimit) / Double(total)
            weights = weights.map { $0 == 0 ? 0 : max(1, UInt64(Double($0) * scale)) }
            let g2 = weights.filter { $0 > 0 }.reduce(0) { gcd($0, $1) }
            weights = weights.map { $0 / g2 }
        }
        let maxWeight = weights.max() ?? 0
        var result: [UInt32] = []
        result.reserveCapacity(Int(weights.reduce(0, +)))
        var current = maxWeight
        while current > 0 {
            for (i, w) in weights.enumerated() where w >= current { result.append(UInt32(i)) }
            current -= 1
        }
        return result
    }

    /// The next server of the cycle, skipping overloaded ones (at most as many steps as servers, then nil:
    /// the cycle interleaves servers, so a few steps reach every other one).
    public func pick(for flow: FlowKey) -> Int? {
        guard !sequence.isEmpty else { return nil }
        for _ in 0..<max(loads.count, 1) * 2 {
            let turn = position.wrappingAdd(1, ordering: .relaxed).oldValue
            let server = Int(sequence[Int(turn % UInt64(sequence.count))])
            if server >= loads.count || loads[server].isAvailable { return server }
        }
        // Heavily skewed weights can leave long runs of one overloaded server: take any available one.
        return loads.indices.first { loads[$0].isAvailable }
    }
}

func gcd(_ a: UInt64, _ b: UInt64) -> UInt64 {
    var (x, y) = (a, b)
    while y != 0 { (x, y) = (y, x % y) }
    return x
}
