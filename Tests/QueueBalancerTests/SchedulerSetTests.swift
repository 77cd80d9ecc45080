import Testing
@testable import QueueBalancer

/// Each IPVS scheduler's defining property.
@Suite struct SchedulerSetTests {
    func flow(_ source: String = "192.0.2.2", port: UInt16 = 40000, destination: String = "203.0.113.10") -> FlowKey {
        FlowKey(source: endpoint(source, port), destination: endpoint(destination, 80), transport: .tcp)
    }

    func loads(_ weights: [UInt32], active: [Int] = [], inactive: [Int] = []) -> [RealServerLoad] {
        weights.enumerated().map { i, w in
            let load = RealServerLoad(weight: w)
            if i < active.count { load.add(active[i], active: true) }
            if i < inactive.count { load.add(inactive[i], active: false) }
            return load
        }
    }

    @Test func leastConnectionFollowsOverhead() {
        // Overhead = active * 256 + inactive: one active outweighs 200 inactive.
        #expect(LeastConnectionScheduler(loads: loads([1, 1, 1], active: [2, 1, 0], inactive: [0, 0, 200])).pick(for: flow()) == 2)
        #expect(LeastConnectionScheduler(loads: loads([1, 1, 1], active: [2, 1, 0], inactive: [0, 0, 300])).pick(for: flow()) == 1)
        #expect(LeastConnectionScheduler(loads: loads([0, 1], active: [0, 9])).pick(for: flow()) == 1, "weight 0 never")
    }

    @Test func weightedLeastConnectionDividesByWeight() {
        // 10 active on weight 4 (2.5 per weight) beats 3 active on weight 1.
        #expect(WeightedLeastConnectionScheduler(loads: loads([4, 1], active: [10, 3])).pick(for: flow()) == 0)
        #expect(WeightedLeastConnectionScheduler(loads: loads([4, 1], active: [10, 2])).pick(for: flow()) == 1)
        #expect(WeightedLeastConnectionScheduler(loads: loads([0, 0])).pick(for: flow()) == nil)
    }

    @Test func shortestExpectedDelayAndNeverQueue() {
        // sed: (active + 1) / weight: (3 + 1) / 4 = 1 beats (0 + 1) / 1 = 1? tie -> first; (4+1)/4 loses.
        #expect(ShortestExpectedDelayScheduler(loads: loads([4, 1], active: [4, 0])).pick(for: flow()) == 1)
        #expect(ShortestExpectedDelayScheduler(loads: loads([4, 1], active: [2, 0])).pick(for: flow()) == 0)
        // nq: an idle server first, whatever the weights.
        #expect(NeverQueueScheduler(loads: loads([100, 1, 1], active: [1, 5, 0])).pick(for: flow()) == 2)
        #expect(NeverQueueScheduler(loads: loads([100, 1], active: [1, 5])).pick(for: flow()) == 0)
    }

    /// The picking follows the counts the tracker keeps: lc spreads concurrent connections evenly.
    @Test func leastConnectionFollowsTheTrackersCounts() {
        let config = BalancerConfig(queues: [0], services: [
            VirtualService(vip: IPAddress("203.0.113.10")!, port: 80, transport: .tcp, mode: .nat, scheduler: .lc,
                           reals: (11...13).map { RealServer(address: IPAddress("198.51.100.\($0)")!, port: 8080) }),
        ])
        let registry = RealServerRegistry(capacity: 16)
        let handler = PacketHandler(config: config, tracker: ConnectionTracker(registry: registry))
        var counters = CounterBatch()
        for port: UInt16 in 1000..<1030 {
            var syn = PacketBuilder()
            syn.sourcePort = port
            _ = handler.run(syn.build(), now: 0, counters: &counters)
        }
        #expect(registry.loads[0..<3].map(\.inactive) == [10, 10, 10])
        // Established connections move to the active count; expiry takes them away again.
        var ack = PacketBuilder()
        ack.sourcePort = 1000
        ack.tcpFlags = 0x10
        _ = handler.run(ack.build(), now: 1, counters: &counters)
        #expect(registry.loads[0..<3].map(\.active).reduce(0, +) == 1)
        #expect(registry.loads[0..<3].map(\.inactive).reduce(0, +) == 29)
        handler.tracker.expire(now: 10_000_000)
        #expect(registry.loads[0..<3].map(\.overhead) == [0, 0, 0])
    }

    @Test func hashingSchedulersAreStableAndSpread() {
        let dh = DestinationHashScheduler(loads: loads([1, 1, 1]))
        let sh = SourceHashScheduler(loads: loads([1, 1, 1]))
        let mh = MaglevScheduler(loads: loads([1, 1, 1]))
        for scheduler in [dh, sh, mh] as [any Scheduler] {
            var seen = Set<Int>()
            for i in 0..<200 {
                let f = flow("192.0.2.\(i)", destination: "203.0.113.\(i)")
                let first = scheduler.pick(for: f)
                #expect(scheduler.pick(for: f) == first, "same key, same server")
                if let first { seen.insert(first) }
            }
            #expect(seen == [0, 1, 2], "\(type(of: scheduler)) spreads keys over every server")
        }
        // sh ignores the port unless sh-port; sh-port spreads one client's connections.
        #expect(sh.pick(for: flow(port: 1)) == sh.pick(for: flow(port: 2)))
        let shPort = SourceHashScheduler(loads: loads([1, 1, 1]), includePort: true)
        #expect(Set((1...50).map { shPort.pick(for: flow(port: UInt16($0)))! }).count == 3)
    }

    @Test func sourceHashDealsBucketsByWeight() {
        let weighted = SourceHashScheduler(loads: loads([3, 1]))
        #expect(weighted.buckets.filter { $0 == 0 }.count == 192 && weighted.buckets.filter { $0 == 1 }.count == 64)
        let quiesced = SourceHashScheduler(loads: loads([1, 0]))
        #expect(quiesced.buckets.allSatisfy { $0 == 0 }, "a weight-0 server gets no bucket")
    }

    @Test func maglevHonoursWeightsAndRefusesWithoutFallback() {
        let mh = MaglevScheduler(loads: loads([1, 2, 1]), tableSize: 65537)
        let counts = [0, 1, 2].map { i in mh.table.filter { $0 == i }.count }
        #expect(abs(Double(counts[1]) / Double(counts[0]) - 2) < 0.01)
        #expect(counts.reduce(0, +) == 65537)
        #expect(MaglevScheduler.tableSize(servers: 10) == 65537)
        #expect(MaglevScheduler.tableSize(servers: 1000) == 100_003)
    }

    /// A size that is not prime once made filling loop forever (a server's permutation cycled through a few
    /// slots); it is raised to the next prime, and every entry gets a server.
    @Test func maglevRaisesATableSizeThatIsNotPrime() {
        for (requested, size) in [(65536, 65537), (1, 2), (100, 101), (4, 5)] {
            let mh = MaglevScheduler(loads: loads([1, 1, 1]), tableSize: requested)
            #expect(mh.table.count == size && mh.table.allSatisfy { $0 >= 0 }, "\(requested)")
        }
        #expect(MaglevScheduler.populate(weights: [1, 3], names: [Endpoint(address: IPAddress(ipv4: 1), port: 80),
                                                                  Endpoint(address: IPAddress(ipv4: 2), port: 80)],
                                         size: 1000).count == 1009)
    }

    @Test func failoverAndOverflowOrder() {
        #expect(WeightedFailoverScheduler(loads: loads([5, 10, 7])).pick(for: flow()) == 1)
        #expect(WeightedFailoverScheduler(loads: loads([5, 0, 7])).pick(for: flow()) == 2)
        #expect(WeightedFailoverScheduler(loads: loads([0, 0])).pick(for: flow()) == nil)
        // ovf: highest weight with room (active < weight); none when all are full.
        #expect(OverflowScheduler(loads: loads([5, 10, 7], active: [0, 3, 0])).pick(for: flow()) == 1)
        #expect(OverflowScheduler(loads: loads([5, 10, 7], active: [0, 10, 0])).pick(for: flow()) == 2)
        #expect(OverflowScheduler(loads: loads([5, 10, 7], active: [5, 10, 7])).pick(for: flow()) == nil)
    }

    @Test func localityKeepsADestinationOnItsServerUntilOverloaded() {
        let l = loads([4, 4])
        let lblc = LocalityScheduler(loads: l, replicated: false)
        let first = lblc.pick(for: flow(destination: "203.0.113.77"))!
        // More load on the remembered server does not move the destination while it is not overloaded.
        l[first].add(3, active: true)
        #expect(lblc.pick(for: flow(destination: "203.0.113.77")) == first)
        // Overloaded (active > weight while the other is under half): the destination moves.
        l[first].add(5, active: true)
        #expect(lblc.pick(for: flow(destination: "203.0.113.77")) == 1 - first)
        let lblcr = LocalityScheduler(loads: l, replicated: true)
        let a = lblcr.pick(for: flow(destination: "203.0.113.88"))!
        #expect(a == 1 - first, "least loaded")
        #expect(lblcr.pick(for: flow(destination: "203.0.113.88")) == a)
    }

    @Test func twoChoicesPrefersTheLessLoadedAndHonoursWeights() {
        // With one server far more loaded, it wins only when both draws hit it: (1/2)^2 = 25%.
        let busy = TwoChoicesScheduler(loads: loads([1, 1], active: [100, 0]))
        let picks = (0..<4000).map { _ in busy.pick(for: flow())! }
        let share = Double(picks.filter { $0 == 0 }.count) / 4000
        #expect(abs(share - 0.25) < 0.04)
        // Equal loads: draws follow weights (the first draw wins ties).
        let weighted = TwoChoicesScheduler(loads: loads([1, 3]))
        let heavy = Double((0..<4000).filter { _ in weighted.pick(for: flow()) == 1 }.count) / 4000
        #expect(abs(heavy - 0.75) < 0.04)
    }

    @Test func everyKindBuildsAndRefusesWhenAllWeightsAreZero() {
        for kind in SchedulerKind.allCases {
            #expect(kind.makeScheduler(weights: [0, 0]).pick(for: flow()) == nil, "\(kind)")
            #expect(kind.makeScheduler(weights: [1, 1]).pick(for: flow()) != nil, "\(kind)")
        }
    }
}

/// Upper/lower connection thresholds (`ipvsadm -x/-y`): an overloaded server takes no new connection.
@Suite struct ThresholdTests {
    @Test func overloadStartsAtUpperAndEndsAtLower() {
        let load = RealServerLoad(weight: 1, upper: 4, lower: 2)
        load.add(3, active: false)
        #expect(!load.overloaded)
        load.add(1, active: true)
        #expect(load.overloaded && !load.isAvailable)
        load.add(-1, active: false)
        #expect(load.overloaded, "3 is above lower")
        load.add(-1, active: false)
        #expect(!load.overloaded, "back to lower")
        // lower 0: 3/4 of upper.
        let quarter = RealServerLoad(weight: 1, upper: 8)
        quarter.add(8, active: false)
        #expect(quarter.overloaded)
        quarter.add(-2, active: false)
        #expect(!quarter.overloaded)
    }

    @Test func everySchedulerSkipsAnOverloadedServer() {
        let flow = FlowKey(source: endpoint("192.0.2.2", 1), destination: endpoint("203.0.113.10", 80), transport: .tcp)
        for kind in SchedulerKind.allCases {
            let loads = [RealServerLoad(weight: 100, upper: 1), RealServerLoad(weight: 1)]
            loads[0].add(1, active: true)
            let scheduler = kind.makeScheduler(loads: loads)
            for _ in 0..<20 {
                let pick = scheduler.pick(for: flow)
                // dh and sh/mh without fallback refuse rather than move a key to another server.
                #expect(pick == 1 || (pick == nil && [.dh, .sh, .mh].contains(kind)), "\(kind) picked \(String(describing: pick))")
            }
        }
    }

    @Test func thresholdsFromTheConfig() throws {
        let yaml = "queues: [0]\nservices:\n  - { vip: 203.0.113.10, port: 80, protocol: tcp, mode: nat, reals: [ { address: 198.51.100.11, upper: 100, lower: 50 } ] }\n"
        let real = try ConfigLoader.parse(yaml: yaml).services[0].reals[0]
        #expect(real.upper == 100 && real.lower == 50)
        #expect(throws: ConfigError.self) {
            try ConfigLoader.parse(yaml: yaml.replacingOccurrences(of: "upper: 100, lower: 50", with: "lower: 50"))
        }
    }
}
