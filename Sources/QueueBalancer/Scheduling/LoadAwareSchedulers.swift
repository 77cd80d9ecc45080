import Synchronization

/// `lblc` and `lblcr`: locality-based least connection, keyed by the destination address (for caches): a
/// destination keeps its server (lblc) or its set of servers (lblcr, up to 64) while they are not overloaded;
/// otherwise wlc picks a new one, which is remembered. The memory is a fixed table of 4,096 atomic slots
/// (lblc: server + 1; lblcr: a bit set of servers), so a pick allocates nothing and takes no lock; two
/// destinations sharing a slot share their memory, which only costs locality.
public final class LocalityScheduler: Scheduler {
    let loads: [RealServerLoad]
    let replicated: Bool
    private let slots: InlineArray<4096, Atomic<UInt64>>

    public init(loads: [RealServerLoad], replicated: Bool) {
        self.loads = loads
        self.replicated = replicated
        slots = InlineArray { _ in Atomic<UInt64>(0) }
    }

    /// IPVS's test: more active connections than its weight while another server is under half its weight.
    func isOverloaded(_ i: Int) -> Bool {
        guard loads[i].active > Int(loads[i].weight) else { return false }
        return loads.contains { $0.isAvailable && $0.active &* 2 < Int($0.weight) }
    }

    public func pick(for flow: FlowKey) -> Int? {
        let slot = Int(stableHash(flow.destination.address) & 4095)
        let remembered = slots[slot].load(ordering: .relaxed)
        if replicated {
            // The least loaded member of the set, unless it is overloaded.
            var best: Int?, bestCost = 0, bestWeight = 1
            for i in loads.indices where i < 64 && remembered & (1 << UInt64(i)) != 0 && loads[i].isAvailable {
                let c = loads[i].overhead, w = Int(loads[i].weight)
                if best == nil || c &* bestWeight < bestCost &* w { best = i; bestCost = c; bestWeight = w }
            }
            if let best, !isOverloaded(best) { return best }
            guard let chosen = leastPerWeight(loads, cost: { $0.overhead }) else { return nil }
            if chosen < 64 { slots[slot].bitwiseOr(1 << UInt64(chosen), ordering: .relaxed) }
            return chosen
        }
        if remembered > 0 {
            let i = Int(remembered - 1)
            if i < loads.count && loads[i].isAvailable && !isOverloaded(i) { return i }
        }
        guard let chosen = leastPerWeight(loads, cost: { $0.overhead }) else { return nil }
        slots[slot].store(UInt64(chosen + 1), ordering: .relaxed)
        return chosen
    }
}

/// `fo`: weighted failover: the available server with the highest weight (the first on a tie); the others
/// take over in weight order as servers go to weight 0.
public struct WeightedFailoverScheduler: Scheduler {
    let loads: [RealServerLoad]

    public init(loads: [RealServerLoad]) { self.loads = loads }

    public func pick(for flow: FlowKey) -> Int? { heaviestAvailable(loads) }
}

/// `ovf`: overflow-connection: the highest-weight server whose active connections are below its weight;
/// when every server is full, none (the connection is refused), as IPVS's ovf.
public struct OverflowScheduler: Scheduler {
    let loads: [RealServerLoad]

    public init(loads: [RealServerLoad]) { self.loads = loads }

    public func pick(for flow: FlowKey) -> Int? { heaviestAvailable(loads) { $0.active < Int($0.weight) } }
}

/// The available server with the highest weight among those `eligible` accepts, the first on a tie.
func heaviestAvailable(_ loads: [RealServerLoad], where eligible: (RealServerLoad) -> Bool = { _ in true }) -> Int? {
    var best: Int?
    for i in loads.indices where loads[i].isAvailable && eligible(loads[i])
        && (best == nil || loads[i].weight > loads[best!].weight) {
        best = i
    }
    return best
}

/// `twos`: power of two choices: two servers drawn at random in proportion to their weights, the one with
/// less overhead per weight wins. Nearly as balanced as wlc, without scanning every server and without herding
/// onto the one that looks least loaded to every worker at once.
public final class TwoChoicesScheduler: Scheduler {
    let loads: [RealServerLoad]
    let draw: WeightedRoundRobinScheduler
    private let state = Atomic<UInt64>(0x853C_49E6_748F_EA9B)

    public init(loads: [RealServerLoad]) {
        self.loads = loads
        draw = WeightedRoundRobinScheduler(weights: loads.map(\.weight))
    }

    /// splitmix64 over an atomic counter: lock-free, allocation-free pseudo-random numbers.
    private func random() -> UInt64 {
        var z = state.wrappingAdd(0x9E37_79B9_7F4A_7C15, ordering: .relaxed).newValue
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public func pick(for flow: FlowKey) -> Int? {
        let sequence = draw.sequence
        guard !sequence.isEmpty else { return nil }
        let a = Int(sequence[Int(random() % UInt64(sequence.count))])
        let b = Int(sequence[Int(random() % UInt64(sequence.count))])
        switch (loads[a].isAvailable, loads[b].isAvailable) {
        case (true, true):
            let ca = loads[a].overhead &* Int(loads[b].weight), cb = loads[b].overhead &* Int(loads[a].weight)
            return cb < ca ? b : a
        case (true, false): return a
        case (false, true): return b
        case (false, false): return leastPerWeight(loads) { $0.overhead }   // both draws overloaded: scan
        }
    }
}
