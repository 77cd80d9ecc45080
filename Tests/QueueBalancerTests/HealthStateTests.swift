import Testing
@testable import QueueBalancer

/// The health state machines in virtual time: rise/fall, quorum with hysteresis, the probe schedule's jitter.
@Suite struct HealthStateTests {
    @Test func aDownServerNeedsRiseSuccessesInARow() {
        var state = HealthState(initial: .down, rise: 2, fall: 3)
        #expect(state.record(success: true) == nil)
        #expect(state.record(success: false) == nil)      // the streak starts again
        #expect(state.record(success: true) == nil)
        #expect(state.record(success: true) == .up)
        #expect(state.status == .up && state.streak == 0)
    }

    @Test func anUpServerNeedsFallFailuresInARow() {
        var state = HealthState(initial: .up, rise: 2, fall: 3)
        let results = [false, false, true, false, false, false]
        let transitions = results.map { state.record(success: $0) }
        #expect(transitions == [nil, nil, nil, nil, nil, .down])
        #expect(state.status == .down)
    }

    @Test func riseAndFallOfOneActOnTheFirstResult() {
        var state = HealthState(initial: .up, rise: 1, fall: 1)
        #expect(state.record(success: false) == .down)
        #expect(state.record(success: true) == .up)
    }

    /// Detection time: a server that stops answering goes down after `fall` probes, so within
    /// fall x interval (+ the jitter of each probe) of its failure.
    @Test func detectionTakesFallIntervals() {
        let schedule = ProbeSchedule(intervalMilliseconds: 2000)
        var state = HealthState(initial: .up, rise: 2, fall: 3)
        var time = schedule.first(after: 0, random: 0.5)
        let failedAt: UInt64 = 10_000
        var downAt: UInt64?
        var random = 0.0
        while downAt == nil && time < 60_000 {
            if state.record(success: time < failedAt) == .down { downAt = time }
            random = (random + 0.37).truncatingRemainder(dividingBy: 1)
            time = schedule.next(after: time, random: random)
        }
        let detected = try! #require(downAt) - failedAt
        #expect(detected <= 3 * (2000 + schedule.jitter))
        #expect(detected >= 2 * (2000 - schedule.jitter))
    }

    @Test func quorumWithHysteresis() {
        var quorum = QuorumState(minWeight: 2, hysteresis: 1, upWeight: 3)
        #expect(quorum.isUp)
        #expect(quorum.update(upWeight: 2) == nil)
        #expect(quorum.update(upWeight: 1) == false)
        #expect(quorum.update(upWeight: 2) == nil)        // at min-weight, but not min-weight + hysteresis
        #expect(!quorum.isUp)
        #expect(quorum.update(upWeight: 3) == true)
        #expect(QuorumState(minWeight: 2, hysteresis: 0, upWeight: 1).isUp == false)
    }

    @Test(arguments: [0.0, 0.25, 0.5, 0.999_999, 1.0])
    func jitterStaysWithinATenthOfTheInterval(random: Double) {
        let schedule = ProbeSchedule(intervalMilliseconds: 5000)
        let next = schedule.next(after: 100_000, random: random)
        #expect(next >= 100_000 + 5000 - 500 && next <= 100_000 + 5000 + 500)
        let first = schedule.first(after: 0, random: random)
        #expect(first < 5000)
    }

    @Test func firstProbesOfManyServersSpreadOverTheInterval() {
        let schedule = ProbeSchedule(intervalMilliseconds: 1000)
        var generator = SystemRandomNumberGenerator()
        let firsts = (0..<100).map { _ in schedule.first(after: 0, random: Double.random(in: 0..<1, using: &generator)) }
        // 100 servers in ten 100 ms slots: no slot holds them all.
        let slots = Dictionary(grouping: firsts) { $0 / 100 }
        #expect(slots.count >= 5 && slots.values.allSatisfy { $0.count < 50 })
    }
}
