import Dispatch
import Foundation

/// Runs the health checks of a balancer's real servers (docs/ARCHITECTURE.md, "Health checks"): one
/// ``HealthState`` per checked real server, probes fired on a jittered ``ProbeSchedule`` from a thread of its
/// own and run on a concurrent dispatch queue (at most one in flight per server), never on a queue worker.
/// A transition is handed to `onTransition` (the ``ControlPlane``, which serves the config with the server
/// quiesced or removed) once, with the probe's reason.
public final class HealthChecker: Sendable {
    struct Target {
        var endpoint: Endpoint
        var source: IPAddress?
        var check: HealthCheck
        var state: HealthState
        var next: UInt64
        var inFlight = false
        var lastReason = "not probed yet"
        var transitions = 0
        /// The last probe's duration (ms).
        var lastDuration: UInt64 = 0
    }

    /// What a transition says: the real server, its new status, the last probe's reason.
    public typealias Transition = @Sendable (RealServerRegistry.Key, HealthState.Status, String) -> Void

    private let targets = Lock<[RealServerRegistry.Key: Target]>([:])
    private let onTransition: Lock<Transition?> = Lock(nil)
    private let probes = DispatchQueue(label: "nfqlb.health.probes", attributes: .concurrent)
    private let randomness = Lock(SystemRandomNumberGenerator())

    public init() {}

    /// Where transitions go (set once, before ``run(stop:)``).
    public func onTransition(_ handler: @escaping Transition) { onTransition.withLock { $0 = handler } }

    private func random() -> Double { randomness.withLock { Double.random(in: 0..<1, using: &$0) } }

    /// Checks the real servers `config` gives a health check, from `now` (ms). A server whose address and check
    /// did not change keeps its state (a reload does not restart its rise or fall); a new one starts as its
    /// check's `initial` says.
    public func update(_ config: BalancerConfig, now: UInt64) {
        var wanted: [RealServerRegistry.Key: (Endpoint, IPAddress?, HealthCheck)] = [:]
        for service in config.services {
            for real in service.reals {
                guard let check = service.healthCheck(of: real) else { continue }
                // FULLNAT's packets reach the real servers from a local address: so do its probes.
                let source = service.mode == .fullnat ? service.localAddresses.first : nil
                wanted[RealServerRegistry.Key(service: service, real: real)] = (real.endpoint, source, check)
            }
        }
        targets.withLock { targets in
            for key in targets.keys where wanted[key] == nil { targets[key] = nil }
            for (key, (endpoint, source, check)) in wanted {
                if let known = targets[key], known.check == check, known.endpoint == endpoint, known.source == source { continue }
                let schedule = ProbeSchedule(intervalMilliseconds: check.interval)
                targets[key] = Target(endpoint: endpoint, source: source, check: check,
                                      state: HealthState(initial: check.initial, rise: check.rise, fall: check.fall),
                                      next: schedule.first(after: now, random: random()))
            }
        }
    }

    /// The real servers that are down now.
    public var down: Set<RealServerRegistry.Key> {
        targets.withLock { Set($0.filter { $0.value.state.status == .down }.keys) }
    }

    /// Each checked real server's status and the last probe's reason.
    public var statuses: [RealServerRegistry.Key: (status: HealthState.Status, reason: String)] {
        targets.withLock { $0.mapValues { ($0.state.status, $0.lastReason) } }
    }

    /// What the metrics show of each checked real server.
    public struct Observation: Sendable {
        public var up: Bool
        public var transitions: Int
        /// The last probe's duration, in seconds.
        public var probeSeconds: Double
    }

    public var observations: [RealServerRegistry.Key: Observation] {
        targets.withLock { $0.mapValues { Observation(up: $0.state.status == .up, transitions: $0.transitions,
                                                      probeSeconds: Double($0.lastDuration) / 1000) } }
    }

    /// Fires due probes every 50 ms until `stop` is raised.
    public func run(stop: StopSignal) {
        while !stop.isRaised {
            step(now: monotonicMilliseconds())
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    /// Starts the probes due at `now` (ms) on the probe queue.
    func step(now: UInt64) {
        let due: [(RealServerRegistry.Key, Target)] = targets.withLock { targets in
            var due: [(RealServerRegistry.Key, Target)] = []
            for (key, target) in targets where !target.inFlight && target.next <= now {
                targets[key]?.inFlight = true
                due.append((key, target))
            }
            return due
        }
        for (key, target) in due {
            probes.async { [self] in
                let started = monotonicMilliseconds()
                let result = target.check.probe.run(target: target.endpoint, source: target.source, timeout: target.check.timeout)
                record(key, result, check: target.check, duration: monotonicMilliseconds() - started)
            }
        }
    }

    /// Takes a probe's result for `key` (if the server is still checked the same way) and reports a transition.
    func record(_ key: RealServerRegistry.Key, _ result: ProbeResult, check: HealthCheck, duration: UInt64 = 0) {
        let now = monotonicMilliseconds()
        let transition: HealthState.Status? = targets.withLock { targets in
            guard var target = targets[key], target.check == check else { return nil }
            target.inFlight = false
            target.lastReason = result.reason
            target.lastDuration = duration
            let schedule = ProbeSchedule(intervalMilliseconds: check.interval)
            target.next = schedule.next(after: max(target.next, now - min(now, check.interval)), random: random())
            if target.next <= now { target.next = schedule.next(after: now, random: random()) }
            let changed = target.state.record(success: result.success)
            if changed != nil { target.transitions += 1 }
            targets[key] = target
            return changed
        }
        if let transition, let handler = onTransition.withLock({ $0 }) { handler(key, transition, result.reason) }
    }

    /// The configuration to serve: `configured`, with every real server in `down` quiesced (weight 0) or left
    /// out (`on-failure: remove`, draining as a removal does; DR servers are quiesced), and while none of a service's checked real
    /// servers is up, its `sorry-server` added. A service is never left without a real server: when removals
    /// would empty it, its down servers are quiesced instead.
    public static func served(_ configured: BalancerConfig, down: Set<RealServerRegistry.Key>) -> BalancerConfig {
        guard !down.isEmpty else { return configured }
        var served = configured
        for (i, service) in configured.services.enumerated() {
            var reals: [RealServer] = []
            var quiesced: [RealServer] = []
            var anyUp = false
            for real in service.reals {
                guard down.contains(RealServerRegistry.Key(service: service, real: real)) else {
                    reals.append(real)
                    anyUp = true
                    continue
                }
                var out = real
                out.weight = 0
                quiesced.append(out)
                // DR marks follow the order of the real servers: a DR server is always quiesced, never left out.
                if service.healthCheck(of: real)?.onFailure == .quiesce || service.mode == .dr { reals.append(out) }
            }
            if !anyUp, let sorry = service.sorryServer { reals.append(RealServer(address: sorry.address, port: sorry.port, weight: 1)) }
            served.services[i].reals = reals.isEmpty ? quiesced : reals
        }
        return served
    }
}
