import Synchronization

/// Every real server the balancer knows, live or on its way out, each with a stable number: the
/// identity connections, persistence templates and schedulers refer to across config changes.
///
/// A real server here is one (virtual service, real endpoint, forwarding mode), as in IPVS (the same RIP:port
/// behind two virtual services is two real servers with their own weights and counts). Its number and its
/// ``RealServerLoad`` are kept for as long as it is in the config, so a config change never touches the
/// connections, counts or templates of servers that stay. A service whose mode changes gets new real servers;
/// the old ones drain until their last connection is gone, whatever the service's `drain`, so that, as in
/// IPVS, a connection keeps the forwarding method it started with.
///
/// The lifecycle (``RealServerLifecycle``), driven by ``apply(_:now:)`` and ``advance(now:)``:
/// - in the config with weight > 0: `active`; with weight 0: `quiescent`;
/// - left out of the config: `draining` until its service's `drain` seconds have passed (at once when
///   `drain` is 0), then `removed`;
/// - removed, with no connection left and its service's persistence time over (so that no template can still
///   name it): its number is free again, and reused last-freed-last (FIFO).
/// Put back into the config before its number is freed, a server gets its number, counts and connections back.
///
/// Numbers are preallocated (``capacity``, with one ``RealServerLoad`` each), so the packet path indexes a
/// plain array. Only the control path (config changes, the housekeeping second) takes the lock here.
public final class RealServerRegistry: Sendable {
    /// Real servers that can exist at once, removed ones still draining included.
    public static let defaultCapacity = 4096

    /// The live state of every number, by ``RealServerID/index`` (shared with the tracker, which counts, and the
    /// schedulers).
    public let loads: [RealServerLoad]
    /// Connections, packets and bytes per number, counted by the queue workers (``RealServerTraffic``).
    public let traffic: RealServerTraffic
    private let state: Lock<State>

    /// What identifies a real server: its virtual service, its endpoint and how packets reach it.
    public struct Key: Hashable, Sendable, CustomStringConvertible {
        public var vip: IPAddress
        public var port: UInt16
        public var transport: TransportProtocol
        public var real: Endpoint
        public var mode: ForwardingMode

        public init(vip: IPAddress, port: UInt16, transport: TransportProtocol, real: Endpoint, mode: ForwardingMode) {
            self.vip = vip
            self.port = port
            self.transport = transport
            self.real = real
            self.mode = mode
        }

        public init(service: VirtualService, real: RealServer) {
            vip = service.vip
            port = service.port
            transport = service.transport
            self.real = real.endpoint
            mode = service.mode
        }

        /// The same real server of the same service, whatever the mode.
        func isSameServer(as other: Key) -> Bool {
            vip == other.vip && port == other.port && transport == other.transport && real == other.real
        }

        public var description: String { "\(real) of \(Endpoint(address: vip, port: port))/\(transport) (\(mode))" }
    }

    /// One real server as ``servers()`` reports it.
    public struct Entry: Sendable, Equatable {
        public var number: RealServerID
        public var key: Key
        public var lifecycle: RealServerLifecycle
        public var weight: UInt32
        public var active: Int
        public var inactive: Int
        /// Draining: when it becomes removed (ms of the monotonic clock).
        public var drainDeadline: UInt64
    }

    struct Slot {
        var key: Key?
        /// While in the config: its service's `drain` and persistence times (ms), used when it leaves.
        var drain: UInt64 = 0
        var templateLifetime: UInt64 = 0
        /// Draining: when it becomes removed (``untilIdle``: once it has no connection). Removed: when it did.
        var drainDeadline: UInt64 = 0
        var removedAt: UInt64 = 0
    }

    struct State {
        var numbers: [Key: RealServerID] = [:]
        var slots: [Slot]
        /// Free numbers, first to reuse at `freeHead`.
        var free: [RealServerID]
        var freeHead = 0
    }

    /// The drain deadline of a server that drains until its last connection is gone.
    static let untilIdle = UInt64.max

    public enum Failure: Error, Equatable, CustomStringConvertible {
        /// The config holds more real servers than fit beside those still draining.
        case full(needed: Int, free: Int, capacity: Int)

        public var description: String {
            switch self {
            case .full(let needed, let free, let capacity):
                "too many real servers: \(needed) new ones but \(free) free (at most \(capacity) real servers, draining ones included)"
            }
        }
    }

    /// A registry of `capacity` numbers.
    public init(capacity: Int = RealServerRegistry.defaultCapacity) {
        loads = (0..<capacity).map { _ in RealServerLoad(weight: 0) }
        traffic = RealServerTraffic(capacity: capacity)
        state = Lock(State(slots: Array(repeating: Slot(), count: capacity), free: (0..<UInt32(capacity)).map(RealServerID.init(rawValue:))))
    }

    public var capacity: Int { loads.count }

    /// The live state of real server `id`.
    public subscript(_ id: RealServerID) -> RealServerLoad { loads[id.index] }

    /// Throws what ``apply(_:now:)`` would throw for `config`, changing nothing.
    public func check(_ config: BalancerConfig) throws(Failure) {
        try state.withLock { state throws(Failure) in _ = try wantedKeys(config, fitting: state) }
    }

    /// The keys of `config`'s real servers, when the new ones fit the free numbers of `state`.
    private func wantedKeys(_ config: BalancerConfig, fitting state: State) throws(Failure) -> Set<Key> {
        var wanted = Set<Key>()
        for service in config.services {
            for real in service.reals { wanted.insert(Key(service: service, real: real)) }
        }
        let newKeys = wanted.filter { state.numbers[$0] == nil }.count
        let freeCount = state.free.count - state.freeHead
        guard newKeys <= freeCount else { throw .full(needed: newKeys, free: freeCount, capacity: capacity) }
        return wanted
    }

    /// Makes `config` the current set of real servers at `now` (ms): each real server of each service gets its
    /// number (the one it had, or a free one), weight and thresholds; servers no longer in the config start
    /// draining (or are removed at once when their service's `drain` was 0), except that a server whose
    /// service changed mode drains until it has no connection left. Nothing changes when it fails.
    ///
    /// - Returns: the numbers by service and real server, in config order.
    @discardableResult
    public func apply(_ config: BalancerConfig, now: UInt64) throws(Failure) -> [[RealServerID]] {
        try state.withLock { state throws(Failure) -> [[RealServerID]] in
            let wanted = try wantedKeys(config, fitting: state)

            for (key, number) in state.numbers where !wanted.contains(key) {
                let load = loads[number.index]
                guard load.lifecycle == .active || load.lifecycle == .quiescent else { continue }
                let slot = state.slots[number.index]
                if wanted.contains(where: { $0.isSameServer(as: key) }) {
                    load.setLifecycle(.draining)
                    state.slots[number.index].drainDeadline = RealServerRegistry.untilIdle
                } else if slot.drain > 0 {
                    load.setLifecycle(.draining)
                    state.slots[number.index].drainDeadline = now &+ slot.drain
                } else {
                    load.setLifecycle(.removed)
                    state.slots[number.index].removedAt = now
                }
            }
            var result: [[RealServerID]] = []
            for service in config.services {
                var numbers: [RealServerID] = []
                for real in service.reals {
                    let key = Key(service: service, real: real)
                    let number: RealServerID
                    if let known = state.numbers[key] {
                        number = known
                    } else {
                        number = state.free[state.freeHead]
                        state.freeHead += 1
                        state.numbers[key] = number
                        loads[number.index].reset()
                        traffic.assign(number.index)
                    }
                    state.slots[number.index] = Slot(key: key, drain: service.drain * 1000,
                                                    templateLifetime: service.persistence * 1000)
                    loads[number.index].configure(weight: real.weight, upper: real.upper, lower: real.lower)
                    numbers.append(number)
                }
                result.append(numbers)
            }
            return result
        }
    }

    /// The housekeeping step at `now` (ms): draining servers whose drain time is over become removed, and
    /// removed servers with no connection and no possible template left free their number.
    ///
    /// - Returns: whether a removed server still has connections, which are then to be forgotten
    ///   (``ConnectionTracker/forgetRemovedServers()``).
    @discardableResult
    public func advance(now: UInt64) -> Bool {
        state.withLock { state in
            var sweep = false
            var freed: [Key] = []
            for (key, number) in state.numbers {
                let i = number.index
                let load = loads[i]
                switch load.lifecycle {
                case .draining where state.slots[i].drainDeadline <= now
                        || (state.slots[i].drainDeadline == RealServerRegistry.untilIdle && load.connections == 0):
                    load.setLifecycle(.removed)
                    state.slots[i].removedAt = now
                    sweep = sweep || load.connections > 0
                case .removed where load.connections > 0:
                    sweep = true
                // Templates expire in whole seconds, rounded up: one more second before the number is reused.
                case .removed where load.connections == 0
                        && now >= state.slots[i].removedAt &+ state.slots[i].templateLifetime &+ 1000:
                    freed.append(key)
                default:
                    break
                }
            }
            for key in freed {
                let number = state.numbers.removeValue(forKey: key)!
                state.slots[number.index] = Slot()
                state.free.append(number)
            }
            if state.freeHead > 1024 && state.freeHead * 2 > state.free.count {
                state.free.removeFirst(state.freeHead)
                state.freeHead = 0
            }
            return sweep
        }
    }

    /// Every known real server, live or leaving, by number.
    public func servers() -> [Entry] {
        state.withLock { state in
            state.numbers.map { key, number in
                let load = loads[number.index]
                return Entry(number: number, key: key, lifecycle: load.lifecycle, weight: load.weight,
                             active: load.active, inactive: load.inactive,
                             drainDeadline: state.slots[number.index].drainDeadline)
            }.sorted { $0.number < $1.number }
        }
    }

    /// The number of a real server, if it is known (live or leaving).
    public func number(of key: Key) -> RealServerID? {
        state.withLock { $0.numbers[key] }
    }
}
