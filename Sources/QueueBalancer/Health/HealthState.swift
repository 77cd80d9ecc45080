/// Whether a real server passes its health check, as keepalived's checkers decide it but with every default
/// spelled out: `rise` consecutive successes bring a down server up, `fall` consecutive failures take an up
/// server down, and a new server starts as `initial` says. One value per real server, advanced by each probe's
/// result; pure, so it runs in virtual time in the tests.
public struct HealthState: Sendable, Equatable {
    public enum Status: String, Sendable, Equatable, CaseIterable, CustomStringConvertible {
        case up, down
        public var description: String { rawValue }
    }

    public private(set) var status: Status
    /// Consecutive results against the current status: successes while down, failures while up.
    public private(set) var streak = 0
    public let rise: Int
    public let fall: Int

    public init(initial: Status, rise: Int, fall: Int) {
        precondition(rise >= 1 && fall >= 1, "rise and fall are at least 1")
        status = initial
        self.rise = rise
        self.fall = fall
    }

    /// Takes one probe result; returns the new status when this result changed it.
    public mutating func record(success: Bool) -> Status? {
        switch (status, success) {
        case (.up, true), (.down, false):
            streak = 0
            return nil
        case (.up, false):
            streak += 1
            guard streak >= fall else { return nil }
        case (.down, true):
            streak += 1
            guard streak >= rise else { return nil }
        }
        status = status == .up ? .down : .up
        streak = 0
        return status
    }
}

/// A service's quorum (keepalived's `quorum` with `hysteresis`): the service is up while the weights of its up
/// real servers add up to `minWeight`; once down, it comes back at `minWeight + hysteresis`, so a server that
/// flaps at the edge does not make the service flap with it.
public struct QuorumState: Sendable, Equatable {
    public let minWeight: Int
    public let hysteresis: Int
    public private(set) var isUp: Bool

    public init(minWeight: Int, hysteresis: Int, upWeight: Int) {
        self.minWeight = minWeight
        self.hysteresis = hysteresis
        isUp = upWeight >= minWeight
    }

    /// Takes the current weight of the up real servers; returns the new state when it changed.
    public mutating func update(upWeight: Int) -> Bool? {
        if isUp, upWeight < minWeight {
            isUp = false
            return false
        }
        if !isUp, upWeight >= minWeight + hysteresis {
            isUp = true
            return true
        }
        return nil
    }
}

/// When probes fire: every `interval`, each one moved by up to ±`jitter` of it, and the first one at a random
/// point of the first interval, so that the probes of many real servers spread out instead of firing together.
public struct ProbeSchedule: Sendable {
    public let interval: UInt64
    /// The largest shift of a probe, in ms (a tenth of the interval).
    public var jitter: UInt64 { interval / 10 }

    public init(intervalMilliseconds: UInt64) { interval = max(1, intervalMilliseconds) }

    /// The first probe's time after `start` (ms), with `random` in 0..<1.
    public func first(after start: UInt64, random: Double) -> UInt64 {
        start + UInt64(Double(interval) * min(max(random, 0), 0.999_999))
    }

    /// The probe after one at `previous` (ms), with `random` in 0..<1: `interval` ± `jitter`.
    public func next(after previous: UInt64, random: Double) -> UInt64 {
        let shift = Double(2 * jitter) * min(max(random, 0), 0.999_999)
        return previous + interval - jitter + UInt64(shift)
    }
}
