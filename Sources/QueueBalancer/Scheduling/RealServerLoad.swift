import Synchronization

/// The live connection counts of one real server, IPVS's ActiveConn and InActConn: a TCP connection is active
/// while ESTABLISHED, every other tracked connection (handshake, closing, UDP) is inactive.
///
/// Written by the connection tracker under its stripe lock (relaxed atomic adds), read by the schedulers
/// without a lock: a pick sees counts that may be a few connections stale, as IPVS's do.
///
/// Connection thresholds, as `ipvsadm -x/-y`: at `upper` connections (active + inactive) the server is
/// overloaded and takes no new connection until it is back to `lower` (or 3/4 of `upper` when `lower` is 0).
public final class RealServerLoad: Sendable {
    /// The configured weight (0...65535).
    public let weight: UInt32
    /// Upper connection threshold, 0 for none.
    public let upper: Int
    /// Lower connection threshold, 0 for 3/4 of `upper`.
    public let lower: Int
    private let activeCount = Atomic<Int>(0)
    private let inactiveCount = Atomic<Int>(0)
    private let overloadedFlag = Atomic<Bool>(false)

    public init(weight: UInt32, upper: Int = 0, lower: Int = 0) {
        self.weight = weight
        self.upper = upper
        self.lower = lower
    }

    /// Whether the upper threshold was reached and the lower one not yet regained.
    public var overloaded: Bool { overloadedFlag.load(ordering: .relaxed) }

    /// Whether a scheduler may give this server a new connection: weight above 0 and not overloaded.
    public var isAvailable: Bool { weight > 0 && !overloaded }

    public var active: Int { activeCount.load(ordering: .relaxed) }
    public var inactive: Int { inactiveCount.load(ordering: .relaxed) }

    /// IPVS's "overhead" for lc/wlc: active connections weigh 256 times an inactive one.
    public var overhead: Int { active &* 256 &+ inactive }

    /// Adds `delta` to the active or the inactive count.
    func add(_ delta: Int, active isActive: Bool) {
        if isActive {
            activeCount.wrappingAdd(delta, ordering: .relaxed)
        } else {
            inactiveCount.wrappingAdd(delta, ordering: .relaxed)
        }
        guard upper > 0 else { return }
        let total = active &+ inactive
        if total >= upper {
            overloadedFlag.store(true, ordering: .relaxed)
        } else if lower > 0 ? total <= lower : total &* 4 <= upper &* 3 {
            overloadedFlag.store(false, ordering: .relaxed)
        }
    }
}
