import Glibc
import Logging

/// Announces this balancer's VIPs through BIRD only while it serves them (docs/ARCHITECTURE.md, "Several
/// balancers"): a VIP is announced while the queues are bound, at least one of its services has its quorum, and
/// the operator has not withdrawn the balancer (`nfqlb cluster withdraw`); at shutdown every VIP is withdrawn
/// first, and the workers stop only once BIRD reports the protocols down and `withdraw-grace` has passed (the
/// router's forwarding follows within it), so no flow is sent here after nfqlb stops taking packets.
///
/// One thread runs ``run(stop:then:)``: once a second it compares what should be announced with what BIRD says
/// and enables or disables the difference (so a restarted BIRD, which starts with the protocols disabled, is
/// brought back in step). Each change is logged once; a BIRD that cannot be reached is logged once per outage.
public final class ClusterAnnouncer: Sendable {
    public let cluster: ClusterConfig
    let bird: BirdControl
    let logger: Logger
    /// What the VIPs should be, given by the control plane (``ControlPlane/servableVIPs``).
    let servable: @Sendable () -> Set<IPAddress>
    let vips: @Sendable () -> [IPAddress]

    private struct State {
        /// The operator withdrew this balancer (`nfqlb cluster withdraw`) until `nfqlb cluster announce`.
        var withdrawn = false
        /// BIRD's protocol states as last read, by VIP.
        var announced: [IPAddress: Bool] = [:]
        /// The last failure talking to BIRD (logged once).
        var failure: String?
    }

    private let state = Lock(State())

    public init(cluster: ClusterConfig, logger: Logger, vips: @escaping @Sendable () -> [IPAddress],
                servable: @escaping @Sendable () -> Set<IPAddress>) {
        self.cluster = cluster
        bird = BirdControl(socket: cluster.birdSocket)
        self.logger = logger
        self.vips = vips
        self.servable = servable
    }

    /// The operator's switch: withdraw every VIP (keep serving the flows that still arrive) or announce again.
    public func setWithdrawn(_ withdrawn: Bool) {
        state.withLock { $0.withdrawn = withdrawn }
        logger.notice(withdrawn ? "cluster: balancer withdrawn by the operator" : "cluster: balancer announced again by the operator")
        reconcile()
    }

    /// Whether the operator withdrew the balancer, and the VIPs BIRD announces for it.
    public var status: (withdrawn: Bool, announced: [IPAddress: Bool]) {
        state.withLock { ($0.withdrawn, $0.announced) }
    }

    /// The VIPs that should be announced now.
    func wanted() -> Set<IPAddress> {
        state.withLock { $0.withdrawn } ? [] : servable()
    }

    /// Brings BIRD in step with ``wanted()``: reads the protocols' states, enables and disables the difference.
    @discardableResult
    func reconcile(forceDown: Bool = false) -> Bool {
        let wanted = forceDown ? [] : wanted()
        let prefix = "nfqlb_vip_"
        let states: [String: Bool]
        switch bird.states(prefix: prefix) {
        case .failure(let failure):
            noteFailure(failure.description)
            return false
        case .success(let read): states = read
        }
        var announced: [IPAddress: Bool] = [:]
        var ok = true
        for vip in vips() {
            let name = ClusterConfig.protocolName(for: vip)
            guard let up = states[name] else {
                noteFailure("BIRD has no protocol \(name): generate its configuration with `nfqlb cluster config`")
                ok = false
                continue
            }
            let want = wanted.contains(vip)
            if up != want {
                if let failure = bird.set(name, enabled: want) {
                    noteFailure(failure.description)
                    ok = false
                    announced[vip] = up
                    continue
                }
                logger.notice(want ? "cluster: VIP announced" : "cluster: VIP withdrawn", metadata: [
                    "vip": "\(vip)", "reason": "\(reason(wanted: want, forced: forceDown))"])
            }
            announced[vip] = want
        }
        state.withLock { state in
            state.announced = announced
            if ok, state.failure != nil {
                state.failure = nil
                logger.notice("cluster: BIRD answers again")
            }
        }
        return ok
    }

    private func reason(wanted: Bool, forced: Bool) -> String {
        if wanted { return "serving" }
        if forced { return "not serving (starting or stopping)" }
        if state.withLock({ $0.withdrawn }) { return "withdrawn by the operator" }
        return "no service of this VIP has its quorum"
    }

    private func noteFailure(_ text: String) {
        let isNew = state.withLock { state -> Bool in
            defer { state.failure = text }
            return state.failure != text
        }
        if isNew { logger.error("cluster: BIRD not in step", metadata: ["reason": "\(text)"]) }
    }

    /// Before the live device exists: every VIP's protocol disabled, in case a previous nfqlb died with them
    /// enabled (else BIRD would announce as soon as the new device appears, before the queues are bound).
    /// False when BIRD could not be told (logged).
    @discardableResult
    public func withdrawBeforeStart() -> Bool { reconcile(forceDown: true) }

    /// Until `stop`: reconciles every second. Then withdraws every VIP, waits until BIRD has them down (at
    /// most 2 s) and `withdraw-grace`, and raises `then` (the workers' stop).
    public func run(stop: StopSignal, then workersStop: StopSignal) {
        defer { workersStop.raise() }
        var next = ContinuousClock.now
        while !stop.isRaised {
            if ContinuousClock.now >= next {
                next = ContinuousClock.now + .seconds(1)
                reconcile()
            }
            usleep(50_000)
        }
        let started = ContinuousClock.now
        var down = false
        while ContinuousClock.now - started < .seconds(2) {
            if reconcile(forceDown: true), state.withLock({ $0.announced.values.allSatisfy { !$0 } }) {
                down = true
                break
            }
            usleep(50_000)
        }
        let waited = ContinuousClock.now - started
        usleep(UInt32(min(cluster.withdrawGrace, 60_000)) * 1000)
        logger.notice("cluster: VIPs withdrawn before stopping", metadata: [
            "confirmed": "\(down)", "withdrawal-ms": "\(Int(waited / .milliseconds(1)))",
            "grace-ms": "\(cluster.withdrawGrace)"])
    }
}
