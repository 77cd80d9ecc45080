/// Schedulers that follow the live connection counts (``RealServerLoad``), as IPVS's lc, wlc, sed and nq.
/// Each scan is over the service's real servers, reads atomics, allocates nothing; weight-0 servers are never
/// picked.

/// `lc`: the fewest connections, counting an active connection as 256 inactive ones (IPVS's overhead).
public struct LeastConnectionScheduler: Scheduler {
    let loads: [RealServerLoad]

    public init(loads: [RealServerLoad]) { self.loads = loads }

    public func pick(for flow: FlowKey) -> Int? {
        var best: Int?, bestOverhead = Int.max
        for i in loads.indices where loads[i].isAvailable {
            let overhead = loads[i].overhead
            if overhead < bestOverhead { best = i; bestOverhead = overhead }
        }
        return best
    }
}

/// `wlc`: the least overhead per unit of weight (IPVS's default scheduler): compares o1 * w2 < o2 * w1.
public struct WeightedLeastConnectionScheduler: Scheduler {
    let loads: [RealServerLoad]

    public init(loads: [RealServerLoad]) { self.loads = loads }

    public func pick(for flow: FlowKey) -> Int? {
        leastPerWeight(loads) { $0.overhead }
    }
}

/// `sed`: shortest expected delay, (active + 1) / weight: a new connection waits behind the active ones.
public struct ShortestExpectedDelayScheduler: Scheduler {
    let loads: [RealServerLoad]

    public init(loads: [RealServerLoad]) { self.loads = loads }

    public func pick(for flow: FlowKey) -> Int? {
        leastPerWeight(loads) { $0.active &+ 1 }
    }
}

/// `nq`: never queue: an idle server (no active connection) if there is one, else as sed.
public struct NeverQueueScheduler: Scheduler {
    let loads: [RealServerLoad]

    public init(loads: [RealServerLoad]) { self.loads = loads }

    public func pick(for flow: FlowKey) -> Int? {
        for i in loads.indices where loads[i].isAvailable && loads[i].active == 0 { return i }
        return leastPerWeight(loads) { $0.active &+ 1 }
    }
}

/// The server with the least `cost / weight` among weight > 0, compared by cross-multiplication (no
/// division, as IPVS); the first on a tie.
func leastPerWeight(_ loads: [RealServerLoad], cost: (RealServerLoad) -> Int) -> Int? {
    var best: Int?, bestCost = 0, bestWeight = 1
    for i in loads.indices where loads[i].isAvailable {
        let c = cost(loads[i]), w = Int(loads[i].weight)
        if best == nil || c &* bestWeight < bestCost &* w {
            best = i; bestCost = c; bestWeight = w
        }
    }
    return best
}
