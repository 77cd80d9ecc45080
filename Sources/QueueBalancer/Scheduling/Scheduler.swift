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
    /// Round robin: each real server with a weight above 0 in turn.
    case rr
    /// Weighted round robin: IPVS's interleaved sequence, each server picked in proportion to its weight.
    case wrr

    public var description: String { rawValue }

    /// A scheduler of this kind for real servers with these weights.
    public func makeScheduler(weights: [UInt32]) -> any Scheduler {
        switch self {
        case .rr: RoundRobinScheduler(weights: weights)
        case .wrr: WeightedRoundRobinScheduler(weights: weights)
        }
    }
}

/// `rr`: every real server whose weight is above 0, in turn (IPVS skips weight-0 servers the same way).
public final class RoundRobinScheduler: Scheduler {
    private let eligible: [Int]
    private let position = Atomic<UInt64>(0)

    public init(weights: [UInt32]) {
        eligible = weights.indices.filter { weights[$0] > 0 }
    }

    public func pick(for flow: FlowKey) -> Int? {
        guard !eligible.isEmpty else { return nil }
        let turn = position.wrappingAdd(1, ordering: .relaxed).oldValue
        return eligible[Int(turn % UInt64(eligible.count))]
    }
}

/// `wrr`: IPVS's weighted round robin. The sequence of one full cycle is computed once from the weights
/// (current weight stepping down from the maximum by the weights' gcd; each pass picks the servers whose
/// weight reaches it), so server `i` appears `w[i] / gcd` times per cycle, interleaved rather than in runs.
public final class WeightedRoundRobinScheduler: Scheduler {
    /// Real-server indices of one cycle.
    public let sequence: [UInt32]
    private let position = Atomic<UInt64>(0)

    /// The longest cycle kept; beyond it weights are scaled down (proportions kept to within 1/limit).
    static let sequenceLimit = 1 << 20

    public init(weights: [UInt32]) {
        sequence = WeightedRoundRobinScheduler.cycle(weights: weights)
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

    public func pick(for flow: FlowKey) -> Int? {
        guard !sequence.isEmpty else { return nil }
        let turn = position.wrappingAdd(1, ordering: .relaxed).oldValue
        return Int(sequence[Int(turn % UInt64(sequence.count))])
    }
}

func gcd(_ a: UInt64, _ b: UInt64) -> UInt64 {
    var (x, y) = (a, b)
    while y != 0 { (x, y) = (y, x % y) }
    return x
}
