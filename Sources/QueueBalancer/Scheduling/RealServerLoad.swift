import Synchronization

/// The live connection counts of one real server, IPVS's ActiveConn and InActConn: a TCP connection is active
/// while ESTABLISHED, every other tracked connection (handshake, closing, UDP) is inactive.
///
/// Written by the connection tracker under its stripe lock (relaxed atomic adds), read by the schedulers
/// without a lock: a pick sees counts that may be a few connections stale, as IPVS's do.
public final class RealServerLoad: Sendable {
    /// The configured weight (0...65535).
    public let weight: UInt32
    private let activeCount = Atomic<Int>(0)
    private let inactiveCount = Atomic<Int>(0)

    public init(weight: UInt32) {
        self.weight = weight
    }

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
    }
}
