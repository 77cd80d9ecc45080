import Synchronization

/// Where a real server is in its life, as the datapath sees it (see ``RealServerRegistry`` for the rules).
///
/// - `active`: in the config with a weight above 0; takes new connections.
/// - `quiescent`: in the config with weight 0 (IPVS's quiescent server): no new connection, no persistence
///   template honoured; its connections continue, and a fresh SYN reusing one of its tuples is scheduled
///   afresh rather than sent to it.
/// - `draining`: removed from the config, `drain` seconds not yet over: its established TCP connections
///   continue; its UDP flows move to another server on their next datagram.
/// - `removed`: out of the config and drained: every connection to it is forgotten; TCP packets of those
///   connections are dropped, UDP flows and new SYNs are scheduled afresh.
public enum RealServerLifecycle: UInt8, Sendable, CustomStringConvertible {
    case active, quiescent, draining, removed

    public var description: String {
        switch self {
        case .active: "active"
        case .quiescent: "quiescent"
        case .draining: "draining"
        case .removed: "removed"
        }
    }
}

/// The live state of one real server of one virtual service: its weight, its place in the lifecycle and its
/// connection counts, IPVS's ActiveConn and InActConn (a TCP connection is active while ESTABLISHED, every
/// other tracked connection — handshake, closing, UDP — is inactive).
///
/// One object per (virtual service, real server) for as long as that pair exists: a config change keeps the
/// object, and so the counts, of every real server that stays (``RealServerRegistry``). Counts are written by
/// the connection tracker under its stripe lock (relaxed atomic adds); weights, thresholds and the lifecycle
/// by the control path. Schedulers read them without a lock: a pick may see values a few connections stale,
/// as IPVS's do.
///
/// Connection thresholds, as `ipvsadm -x/-y`: at `upper` connections (active + inactive) the server is
/// overloaded and takes no new connection until it is back to `lower` (or 3/4 of `upper` when `lower` is 0).
public final class RealServerLoad: Sendable {
    private let weightValue: Atomic<UInt32>
    private let upperValue: Atomic<Int>
    private let lowerValue: Atomic<Int>
    private let lifecycleValue: Atomic<UInt8>
    private let activeCount = Atomic<Int>(0)
    private let inactiveCount = Atomic<Int>(0)
    private let overloadedFlag = Atomic<Bool>(false)
    private let offloadedTraffic: InlineArray<4, Atomic<UInt64>> = InlineArray { _ in Atomic<UInt64>(0) }

    public init(weight: UInt32, upper: Int = 0, lower: Int = 0) {
        weightValue = Atomic(weight)
        upperValue = Atomic(upper)
        lowerValue = Atomic(lower)
        lifecycleValue = Atomic(weight > 0 ? RealServerLifecycle.active.rawValue : RealServerLifecycle.quiescent.rawValue)
    }

    /// The configured weight (0...65535).
    public var weight: UInt32 { weightValue.load(ordering: .relaxed) }
    /// Upper connection threshold, 0 for none.
    public var upper: Int { upperValue.load(ordering: .relaxed) }
    /// Lower connection threshold, 0 for 3/4 of `upper`.
    public var lower: Int { lowerValue.load(ordering: .relaxed) }

    public var lifecycle: RealServerLifecycle {
        RealServerLifecycle(rawValue: lifecycleValue.load(ordering: .acquiring)) ?? .removed
    }

    /// Whether the upper threshold was reached and the lower one not yet regained.
    public var overloaded: Bool { overloadedFlag.load(ordering: .relaxed) }

    /// Whether a scheduler may give this server a new connection: active (in the config, weight above 0) and
    /// not overloaded.
    public var isAvailable: Bool { lifecycle == .active && !overloaded }

    public var active: Int { activeCount.load(ordering: .relaxed) }
    public var inactive: Int { inactiveCount.load(ordering: .relaxed) }
    /// Every tracked connection to this server.
    public var connections: Int { active &+ inactive }

    /// IPVS's "overhead" for lc/wlc: active connections weigh 256 times an inactive one.
    public var overhead: Int { active &* 256 &+ inactive }

    /// Sets what the config says about this server (it is in the config): weight, thresholds, and so the
    /// lifecycle `active` or `quiescent`.
    func configure(weight: UInt32, upper: Int, lower: Int) {
        weightValue.store(weight, ordering: .relaxed)
        upperValue.store(upper, ordering: .relaxed)
        lowerValue.store(lower, ordering: .relaxed)
        setLifecycle(weight > 0 ? .active : .quiescent)
        updateOverload()
    }

    func setLifecycle(_ lifecycle: RealServerLifecycle) {
        lifecycleValue.store(lifecycle.rawValue, ordering: .releasing)
    }

    /// Forgets the counts of a previous owner (the registry reuses a slot only once its count is 0).
    func reset() {
        activeCount.store(0, ordering: .relaxed)
        inactiveCount.store(0, ordering: .relaxed)
        overloadedFlag.store(false, ordering: .relaxed)
        for i in 0..<4 { offloadedTraffic[i].store(0, ordering: .relaxed) }
    }

    /// Traffic of this server's finished connections on the conntrack fast path, from the kernel's accounting
    /// (``OffloadLedger``): packets and bytes client -> server (`in`) and server -> client (`out`).
    public struct Traffic: Sendable, Equatable {
        public var packetsIn: UInt64 = 0, bytesIn: UInt64 = 0, packetsOut: UInt64 = 0, bytesOut: UInt64 = 0
    }

    public var offloaded: Traffic {
        Traffic(packetsIn: offloadedTraffic[0].load(ordering: .relaxed), bytesIn: offloadedTraffic[1].load(ordering: .relaxed),
                packetsOut: offloadedTraffic[2].load(ordering: .relaxed), bytesOut: offloadedTraffic[3].load(ordering: .relaxed))
    }

    func addOffloaded(_ traffic: Traffic) {
        offloadedTraffic[0].wrappingAdd(traffic.packetsIn, ordering: .relaxed)
        offloadedTraffic[1].wrappingAdd(traffic.bytesIn, ordering: .relaxed)
        offloadedTraffic[2].wrappingAdd(traffic.packetsOut, ordering: .relaxed)
        offloadedTraffic[3].wrappingAdd(traffic.bytesOut, ordering: .relaxed)
    }

    /// Adds `delta` to the active or the inactive count.
    func add(_ delta: Int, active isActive: Bool) {
        if isActive {
            activeCount.wrappingAdd(delta, ordering: .relaxed)
        } else {
            inactiveCount.wrappingAdd(delta, ordering: .relaxed)
        }
        updateOverload()
    }

    private func updateOverload() {
        let upper = self.upper
        guard upper > 0 else {
            if overloaded { overloadedFlag.store(false, ordering: .relaxed) }
            return
        }
        let total = active &+ inactive
        let lower = self.lower
        if total >= upper {
            overloadedFlag.store(true, ordering: .relaxed)
        } else if lower > 0 ? total <= lower : total &* 4 <= upper &* 3 {
            overloadedFlag.store(false, ordering: .relaxed)
        }
    }
}
