import Testing
@testable import QueueBalancer

@Suite struct SchedulerTests {
    let flow = FlowKey(source: endpoint("192.0.2.2", 1), destination: endpoint("203.0.113.10", 80), transport: .tcp)

    func distribution(_ scheduler: any Scheduler, servers: Int, picks: Int) -> [Int] {
        var counts = Array(repeating: 0, count: servers)
        for _ in 0..<picks { counts[scheduler.pick(for: flow)!] += 1 }
        return counts
    }

    @Test func roundRobinIsExactAndSkipsWeightZero() {
        #expect(distribution(RoundRobinScheduler(weights: [1, 1, 1]), servers: 3, picks: 60) == [20, 20, 20])
        #expect(distribution(RoundRobinScheduler(weights: [5, 0, 1]), servers: 3, picks: 60) == [30, 0, 30])
        #expect(RoundRobinScheduler(weights: [0, 0]).pick(for: flow) == nil)
    }

    @Test func weightedRoundRobinHonoursWeightsExactlyPerCycle() {
        #expect(distribution(WeightedRoundRobinScheduler(weights: [1, 2]), servers: 2, picks: 60) == [20, 40])
        #expect(distribution(WeightedRoundRobinScheduler(weights: [1, 2, 3]), servers: 3, picks: 60) == [10, 20, 30])
        #expect(distribution(WeightedRoundRobinScheduler(weights: [100, 200, 0]), servers: 3, picks: 300) == [100, 200, 0])
        #expect(WeightedRoundRobinScheduler(weights: [0]).pick(for: flow) == nil)
    }

    /// IPVS interleaves rather than sending runs: weights 1,2,3 give 3 2 3 1 2 3 per cycle.
    @Test func weightedRoundRobinInterleavesLikeIPVS() {
        #expect(WeightedRoundRobinScheduler(weights: [1, 2, 3]).sequence == [2, 1, 2, 0, 1, 2])
        #expect(WeightedRoundRobinScheduler(weights: [4, 2]).sequence == [0, 0, 1])
    }

    @Test func largeWeightsStayBoundedAndProportional() {
        let scheduler = WeightedRoundRobinScheduler(weights: [65535, 65534, 1, 30000, 65535, 12345, 54321, 1, 2, 3, 65000, 64000, 63000, 62000, 61000, 60000, 59000, 58000])
        #expect(scheduler.sequence.count <= WeightedRoundRobinScheduler.sequenceLimit + 18)
        let counts = scheduler.sequence.reduce(into: [UInt32: Int]()) { $0[$1, default: 0] += 1 }
        let ratio = Double(counts[0]!) / Double(counts[3]!)
        #expect(abs(ratio - 65535.0 / 30000.0) < 0.01)
        #expect(counts[7]! >= 1)
    }

    @Test func concurrentPicksStayExact() async {
        let scheduler = RoundRobinScheduler(weights: [1, 1, 1, 1])
        let counts = await withTaskGroup(of: [Int].self) { group in
            for _ in 0..<4 { group.addTask { distribution(scheduler, servers: 4, picks: 10_000) } }
            var total = [0, 0, 0, 0]
            for await partial in group { for i in 0..<4 { total[i] += partial[i] } }
            return total
        }
        #expect(counts == [10_000, 10_000, 10_000, 10_000])
    }
}
