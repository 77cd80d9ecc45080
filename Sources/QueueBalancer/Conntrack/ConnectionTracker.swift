import Synchronization

/// The connection table shared by every queue worker.
///
/// - Ownership and allocation: ``init(configuration:)`` allocates every stripe's entry array and index once;
///   nothing is allocated afterwards. Entries are taken from a per-stripe free list (or a high-water mark, so
///   untouched capacity costs no memory) and returned to it when a connection is removed.
/// - Keys: each connection is indexed twice, by its inbound key (client -> VIP, as the client sends it) and by
///   its reply key (real server -> client, as the real server answers), because `--queue-balance` puts the two
///   directions on different queues (DESIGN.md) and either worker must find the connection.
/// - Locking: the table is split into lock stripes chosen by the hash of the *client endpoint* (address, port,
///   protocol), which both keys contain (source of the inbound key, destination of the reply key). So both
///   index entries of a connection live in one stripe and every operation takes exactly one lock.
/// - Expiry: time is passed in (`now`, milliseconds of a monotonic clock), so tests run in virtual time. An
///   expired entry found by a lookup is removed there; ``expire(now:)`` sweeps the stripes one lock at a time
///   (never the whole table at once), normally once a second from the housekeeping thread.
/// - Bound: ``Configuration/capacity`` connections in all; a new connection in a full stripe first expires
///   that stripe, and is refused (``InboundOutcome/full``) when that frees nothing.
/// - FULLNAT local ports: a connection translated to a local address (LIP) gets a port from the allocator of
///   its (LIP, real server, protocol). Its reply key's destination is then LIP:lport, so each stripe owns the
///   ports whose hash with the LIP lands in it, and a new connection takes a port from its own stripe: both
///   keys still share one stripe and one lock, and the port pools need no lock of their own. Ports come back
///   (FIFO, so a port rests as long as possible) when the connection is removed. The price: a stripe can run
///   out of ports for a key before the others (``InboundOutcome/portsExhausted``).
public final class ConnectionTracker: Sendable {
    public struct Configuration: Sendable {
        /// Maximum number of tracked connections.
        public var capacity: Int
        /// Number of lock stripes (rounded up to a power of two).
        public var stripes: Int
        public var timeouts: ConnectionTimeouts
        /// Seed of the flow hash; random by default.
        public var hashSeed: UInt64
        /// FULLNAT: one port allocator per key; an ``Assignment/allocator`` indexes this list.
        public var portAllocators: [PortAllocatorKey]
        /// FULLNAT: the local ports handed out (outside the kernel's `ip_local_port_range`).
        public var localPorts: ClosedRange<UInt16>
        /// The real servers' live state by number (an ``Assignment``'s `real`, normally
        /// ``RealServerRegistry/loads``): the tracker keeps their connection counts and follows their lifecycle.
        /// Empty to count nothing (every server then counts as active).
        public var loads: [RealServerLoad] = []
        /// FULLNAT: how many port allocators may exist, those added by later config changes included.
        public var portAllocatorCapacity = 1024

        public init(capacity: Int = 262_144, stripes: Int = 64, timeouts: ConnectionTimeouts = .ipvsDefaults,
                    hashSeed: UInt64 = UInt64.random(in: 0...UInt64.max),
                    portAllocators: [PortAllocatorKey] = [], localPorts: ClosedRange<UInt16> = 61000...65535) {
            self.capacity = capacity
            self.stripes = stripes
            self.timeouts = timeouts
            self.hashSeed = hashSeed
            self.portAllocators = portAllocators
            self.localPorts = localPorts
        }
    }

    /// What a FULLNAT port allocator is for: connections from `local` to `real` over `transport`.
    public struct PortAllocatorKey: Sendable, Hashable {
        public var local: IPAddress
        public var real: Endpoint
        public var transport: TransportProtocol

        public init(local: IPAddress, real: Endpoint, transport: TransportProtocol) {
            self.local = local
            self.real = real
            self.transport = transport
        }
    }

    /// The real server the scheduler chose for a new connection.
    public struct Assignment: Sendable, Equatable {
        public var realServer: Endpoint
        /// Its number (``RealServerRegistry``): the index of its ``Configuration/loads``.
        public var real: UInt32
        /// FULLNAT: the local address the connection leaves from, and its port allocator (index into
        /// ``Configuration/portAllocators``); -1 for modes that keep the client's address.
        public var localAddress: IPAddress
        public var allocator: Int32

        public init(realServer: Endpoint, real: UInt32,
                    localAddress: IPAddress = IPAddress(high: 0, low: 0), allocator: Int32 = -1) {
            self.realServer = realServer
            self.real = real
            self.localAddress = localAddress
            self.allocator = allocator
        }
    }

    /// What to do with a packet travelling client -> virtual service.
    public enum InboundOutcome: Sendable, Equatable {
        /// Forward to this real server (number `real`); `created` when the packet opened a new connection.
        case forward(Endpoint, real: UInt32, created: Bool)
        /// FULLNAT: forward to the real server from the local endpoint `local` (LIP:lport).
        case forwardTranslated(Endpoint, local: Endpoint, real: UInt32, created: Bool)
        /// A TCP packet of a connection whose real server was removed (and drained): the connection is
        /// forgotten and the packet dropped; the client's next SYN is scheduled afresh.
        case realServerRemoved
        /// FULLNAT: no free local port for this (local address, real server) in the connection's stripe.
        case portsExhausted
        /// A TCP packet other than an initial SYN with no connection (IPVS drops these too).
        case noConnection
        /// The scheduler found no real server with a weight above zero.
        case noRealServer
        /// The table is at its capacity.
        case full
        /// The reply key of the new connection is held by another live connection (two VIPs sharing a real
        /// server and a client port): the replies could not be told apart, so the connection is refused.
        case conflict
    }

    /// A read-only copy of one connection, for tests and inspection.
    public struct Snapshot: Sendable, Equatable {
        public var inbound: FlowKey
        public var reply: FlowKey
        public var state: ConnectionState
        public var expires: UInt64
        public var real: UInt32
    }

    public let configuration: Configuration
    private let stripes: [Stripe]
    private let stripeMask: Int
    private let hasher: FlowHasher
    private let timeouts: ConnectionTimeouts
    /// FULLNAT: the key of every port allocator, by index (control path only).
    private let allocatorKeys = Mutex<[PortAllocatorKey]>([])

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        var stripeCount = 1
        while stripeCount < max(1, configuration.stripes) { stripeCount <<= 1 }
        let perStripe = max(1, (configuration.capacity + stripeCount - 1) / stripeCount)
        stripeMask = stripeCount - 1
        hasher = FlowHasher(seed: configuration.hashSeed)
        let poolCapacity = max(configuration.portAllocatorCapacity, configuration.portAllocators.count)
        stripes = (0..<stripeCount).map { _ in
            Stripe(capacity: perStripe, poolCapacity: poolCapacity, loads: configuration.loads)
        }
        timeouts = configuration.timeouts
        for key in configuration.portAllocators { _ = portAllocator(for: key) }
    }

    /// FULLNAT: the index of the port allocator of `key` (an ``Assignment/allocator``), created with every port
    /// of ``Configuration/localPorts`` free when it is new. Nil when ``Configuration/portAllocatorCapacity``
    /// allocators exist already. Control path: allocates, and takes every stripe lock once for a new one.
    public func portAllocator(for key: PortAllocatorKey) -> Int32? {
        allocatorKeys.withLock { keys -> Int32? in
            if let index = keys.firstIndex(of: key) { return Int32(index) }
            let index = keys.count
            guard index < stripes[0].poolCapacity else { return nil }
            // Each stripe's share of the ports: those whose (LIP, port) hash selects the stripe.
            var shares = Array(repeating: [UInt16](), count: stripes.count)
            for port in configuration.localPorts {
                let stripe = Int(truncatingIfNeeded: hasher.hash(Endpoint(address: key.local, port: port), key.transport))
                    & stripeMask
                shares[stripe].append(port)
            }
            for (stripe, ports) in zip(stripes, shares) {
                stripe.table.withLock { $0.addPool(ports: ports) }
            }
            keys.append(key)
            return Int32(index)
        }
    }

    /// Looks up (or creates, calling `schedule`) the connection of a client -> virtual service packet, updates
    /// its TCP state and expiry, and says where to forward it. `schedule` runs under the stripe lock, only for a
    /// new connection, and must not call back into the tracker.
    public func inbound(_ key: FlowKey, flags: TCPFlags, now: UInt64,
                        schedule: (FlowKey) -> Assignment?) -> InboundOutcome {
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.source, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        let isTCP = key.transport == .tcp
        return stripe.table.withLock { table -> InboundOutcome in
            if let found = table.find(key, hash: keyHash, direction: .inbound) {
                let entry = table.entries[found]
                let lifecycle = table.lifecycle(of: entry.real)
                let freshSYN = isTCP && flags.contains(.syn) && !flags.contains(.ack) && !flags.contains(.rst)
                // A fresh SYN on the tuple of a finished connection, or of one whose server takes no new
                // connections: a new connection, scheduled afresh *with this SYN* (IPVS drops it and waits for the
                // client's retransmission, a one-second stall: kubernetes issues 81775 and 93297).
                let restarts = freshSYN && (entry.state.acceptsNewSYN || lifecycle != .active)
                // UDP flows leave a server that left the config on their next datagram, instead of being
                // black-holed until they go idle.
                let moves = !isTCP && (lifecycle == .draining || lifecycle == .removed)
                if entry.expires > now && !restarts && !moves && lifecycle != .removed {
                    let state = isTCP ? entry.state.next(after: flags, direction: .inbound) : .udp
                    table.changeState(found, to: state)
                    table.setExpiry(found, now &+ timeouts.timeout(state))
                    if entry.allocator >= 0 {
                        return .forwardTranslated(entry.reply.source, local: entry.reply.destination,
                                                  real: entry.real, created: false)
                    }
                    return .forward(entry.reply.source, real: entry.real, created: false)
                }
                // Expired, restarted, moved, or its server removed: forget it, then schedule afresh if allowed.
                table.remove(found, hasher: hasher)
                if lifecycle == .removed && isTCP && !freshSYN && entry.expires > now { return .realServerRemoved }
            }
            if isTCP && !(flags.contains(.syn) && !flags.contains(.ack) && !flags.contains(.rst)) {
                return .noConnection
            }
            guard let assignment = schedule(key) else { return .noRealServer }
            if table.isFull { _ = table.expire(now: now, hasher: hasher) }
            var local = key.source
            if assignment.allocator >= 0 {
                guard let port = table.takePort(assignment.allocator) else { return .portsExhausted }
                local = Endpoint(address: assignment.localAddress, port: port)
            }
            let reply = FlowKey(source: assignment.realServer, destination: local, transport: key.transport)
            let replyHash = hasher.hash(reply)
            if let other = table.find(reply, hash: replyHash, direction: .reply) {
                guard table.entries[other].expires <= now else {
                    if assignment.allocator >= 0 { table.givePort(assignment.allocator, local.port) }
                    return .conflict
                }
                table.remove(other, hasher: hasher)
            }
            guard let slot = table.allocate() else {
                if assignment.allocator >= 0 { table.givePort(assignment.allocator, local.port) }
                return .full
            }
            let state: ConnectionState = isTCP ? ConnectionState.none.next(after: flags, direction: .inbound) : .udp
            table.entries[slot] = ConnectionEntry(
                inbound: key, reply: reply, expires: now &+ timeouts.timeout(state),
                real: assignment.real, state: state, live: true, nextFree: -1, allocator: assignment.allocator)
            table.insert(slot, hash: keyHash, direction: .inbound)
            table.insert(slot, hash: replyHash, direction: .reply)
            table.setExpiry(slot, table.entries[slot].expires)
            table.count(slot, 1)
            if assignment.allocator >= 0 {
                return .forwardTranslated(assignment.realServer, local: local, real: assignment.real, created: true)
            }
            return .forward(assignment.realServer, real: assignment.real, created: true)
        }
    }

    /// One-packet scheduling (`ops`, UDP, NAT): the datagram was scheduled on its own to `assignment`; make
    /// sure the reply of that real server finds its way back. Connections are keyed by their reply tuple only
    /// (several real servers may answer the same client endpoint), and live the UDP timeout after their last
    /// datagram. Returns false when the table is full.
    public func oneShot(_ key: FlowKey, assignment: Assignment, now: UInt64) -> Bool {
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.source, key.transport)) & stripeMask]
        let reply = FlowKey(source: assignment.realServer, destination: key.source, transport: key.transport)
        let replyHash = hasher.hash(reply)
        let expires = now &+ timeouts.timeout(.udp)
        return stripe.table.withLock { table -> Bool in
            if let found = table.find(reply, hash: replyHash, direction: .reply) {
                table.setExpiry(found, expires)
                return true
            }
            if table.isFull { _ = table.expire(now: now, hasher: hasher) }
            guard let slot = table.allocate() else { return false }
            table.entries[slot] = ConnectionEntry(
                inbound: key, reply: reply, expires: expires, real: assignment.real, state: .udp, live: true,
                nextFree: -1, allocator: -1)
            // Indexed by the reply key only; the inbound index keeps a (never looked up) reference so that
            // removal stays uniform.
            table.insert(slot, hash: hasher.hash(key), direction: .inbound)
            table.insert(slot, hash: replyHash, direction: .reply)
            table.setExpiry(slot, expires)
            table.count(slot, 1)
            return true
        }
    }

    /// Looks up the connection of a real server -> client packet, updates its state and expiry, and returns the
    /// connection's inbound key (client -> VIP): the reply must appear to come from its destination and, under
    /// FULLNAT, go to its source. Nil when no live connection matches.
    public func reply(_ key: FlowKey, flags: TCPFlags, now: UInt64) -> FlowKey? {
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.destination, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        let isTCP = key.transport == .tcp
        return stripe.table.withLock { table -> FlowKey? in
            guard let found = table.find(key, hash: keyHash, direction: .reply) else { return nil }
            let entry = table.entries[found]
            guard entry.expires > now, table.lifecycle(of: entry.real) != .removed else {
                table.remove(found, hasher: hasher)
                return nil
            }
            let state = isTCP ? entry.state.next(after: flags, direction: .reply) : .udp
            table.changeState(found, to: state)
            table.setExpiry(found, now &+ timeouts.timeout(state))
            return entry.inbound
        }
    }

    /// The live connection whose inbound key (client -> VIP) is `key`: its reply key (real server -> client or
    /// local endpoint) and real server number. Changes nothing (ICMP errors about a connection neither open
    /// nor refresh it).
    public func connection(inbound key: FlowKey, now: UInt64) -> (reply: FlowKey, real: UInt32)? {
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.source, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        return stripe.table.withLock { table -> (reply: FlowKey, real: UInt32)? in
            guard let found = table.find(key, hash: keyHash, direction: .inbound) else { return nil }
            let entry = table.entries[found]
            guard entry.expires > now, table.lifecycle(of: entry.real) != .removed else { return nil }
            return (entry.reply, entry.real)
        }
    }

    /// The inbound key of the live connection whose reply key is `key`; changes nothing.
    public func connection(reply key: FlowKey, now: UInt64) -> FlowKey? {
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.destination, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        return stripe.table.withLock { table -> FlowKey? in
            guard let found = table.find(key, hash: keyHash, direction: .reply) else { return nil }
            let entry = table.entries[found]
            guard entry.expires > now, table.lifecycle(of: entry.real) != .removed else { return nil }
            return entry.inbound
        }
    }

    /// Removes every connection whose timeout has passed, one stripe at a time. Returns how many it removed.
    @discardableResult
    public func expire(now: UInt64) -> Int {
        var removed = 0
        for stripe in stripes {
            removed += stripe.table.withLock { $0.expire(now: now, hasher: hasher) }
        }
        return removed
    }

    /// Forgets every connection to a real server that is ``RealServerLifecycle/removed``, one stripe at a
    /// time (the housekeeping thread, when ``RealServerRegistry/advance(now:)`` asks for it). Returns how many.
    @discardableResult
    public func forgetRemovedServers() -> Int {
        var removed = 0
        for stripe in stripes {
            removed += stripe.table.withLock { table in
                var n = 0
                for i in 0..<table.highWater where table.entries[i].live
                    && table.lifecycle(of: table.entries[i].real) == .removed {
                    table.remove(i, hasher: hasher)
                    n += 1
                }
                return n
            }
        }
        return removed
    }

    /// The number of connections held, expired ones not yet swept included.
    public var count: Int {
        stripes.reduce(0) { total, stripe in total + stripe.table.withLock { $0.used } }
    }

    /// A copy of every live connection (not for the packet path).
    public func snapshot() -> [Snapshot] {
        var result: [Snapshot] = []
        for stripe in stripes {
            stripe.table.withLock { table in
                for i in 0..<table.highWater where table.entries[i].live {
                    let e = table.entries[i]
                    result.append(Snapshot(inbound: e.inbound, reply: e.reply, state: e.state, expires: e.expires,
                                           real: e.real))
                }
            }
        }
        return result
    }
}

/// One tracked connection.
struct ConnectionEntry {
    var inbound: FlowKey
    var reply: FlowKey
    var expires: UInt64
    /// The real server's number (``RealServerRegistry``).
    var real: UInt32
    var state: ConnectionState
    var live: Bool
    var nextFree: Int32
    /// FULLNAT port allocator of the local port (`reply.destination.port`), or -1.
    var allocator: Int32

    func key(_ direction: ConnectionState.Direction) -> FlowKey {
        direction == .inbound ? inbound : reply
    }
}

/// One slot of a stripe's open-addressing index: the low 32 bits of the key's hash and the reference
/// `entry << 1 | direction`, or -1 when empty.
struct IndexSlot {
    var hash: UInt32
    var reference: Int32
}

/// One lock stripe: a mutex around a fixed-size table.
final class Stripe: Sendable {
    let table: Mutex<StripeTable>
    let poolCapacity: Int

    init(capacity: Int, poolCapacity: Int, loads: [RealServerLoad]) {
        self.poolCapacity = poolCapacity
        table = Mutex(StripeTable(capacity: capacity, poolCapacity: poolCapacity, loads: loads))
    }

    deinit {
        table.withLock { $0.deallocate() }
    }
}

/// The entries of one stripe and their index (linear probing, backward-shift deletion, at most half full:
/// the index has at least four slots per entry and each entry uses two, so every probe ends at an empty slot).
struct StripeTable {
    let entries: UnsafeMutablePointer<ConnectionEntry>
    let slots: UnsafeMutablePointer<IndexSlot>
    let capacity: Int
    let slotMask: Int
    /// Entries below this index have been used at least once; above it memory is untouched.
    private(set) var highWater = 0
    /// No entry expires before this time: ``expire(now:hasher:)`` does not scan earlier, so a full stripe under
    /// a SYN flood costs one comparison per refused connection, not a scan (lowered on every insert and
    /// update, raised by each scan).
    private(set) var earliestExpiry: UInt64 = .max
    private var freeHead: Int32 = -1
    private(set) var used = 0
    /// FULLNAT: this stripe's free local ports, one ring per port allocator (room for `poolCapacity`).
    let pools: UnsafeMutablePointer<PortRing>
    private(set) var poolCount = 0

    /// The real servers' state by number (may be empty: nothing counted, every server active).
    let loads: [RealServerLoad]

    init(capacity: Int, poolCapacity: Int, loads: [RealServerLoad]) {
        self.loads = loads
        pools = .allocate(capacity: max(1, poolCapacity))
        self.capacity = capacity
        var slotCount = 4
        while slotCount < capacity * 4 { slotCount <<= 1 }
        slotMask = slotCount - 1
        entries = .allocate(capacity: capacity)
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: IndexSlot(hash: 0, reference: -1), count: slotCount)
    }

    func deallocate() {
        entries.deallocate()
        slots.deallocate()
        for i in 0..<poolCount { pools[i].deallocate() }
        pools.deallocate()
    }

    /// Installs the next port allocator's ring (the caller checked the capacity).
    mutating func addPool(ports: [UInt16]) {
        (pools + poolCount).initialize(to: PortRing(ports: ports))
        poolCount += 1
    }

    func takePort(_ allocator: Int32) -> UInt16? { pools[Int(allocator)].take() }

    func givePort(_ allocator: Int32, _ port: UInt16) { pools[Int(allocator)].give(port) }

    var isFull: Bool { used >= capacity }

    func find(_ key: FlowKey, hash: UInt64, direction: ConnectionState.Direction) -> Int? {
        let tag = UInt32(truncatingIfNeeded: hash)
        var i = Int(tag) & slotMask
        while true {
            let slot = slots[i]
            if slot.reference < 0 { return nil }
            if slot.hash == tag && Int(slot.reference & 1) == direction.rawValue {
                let entry = Int(slot.reference >> 1)
                if entries[entry].key(direction) == key { return entry }
            }
            i = (i &+ 1) & slotMask
        }
    }

    mutating func allocate() -> Int? {
        if freeHead >= 0 {
            let slot = Int(freeHead)
            freeHead = entries[slot].nextFree
            used += 1
            return slot
        }
        guard highWater < capacity else { return nil }
        highWater += 1
        used += 1
        (entries + highWater - 1).initialize(to: ConnectionEntry(
            inbound: FlowKey(source: Endpoint(address: IPAddress(high: 0, low: 0), port: 0),
                             destination: Endpoint(address: IPAddress(high: 0, low: 0), port: 0), transport: .tcp),
            reply: FlowKey(source: Endpoint(address: IPAddress(high: 0, low: 0), port: 0),
                           destination: Endpoint(address: IPAddress(high: 0, low: 0), port: 0), transport: .tcp),
            expires: 0, real: 0, state: .none, live: false, nextFree: -1, allocator: -1))
        return highWater - 1
    }

    func insert(_ entry: Int, hash: UInt64, direction: ConnectionState.Direction) {
        let tag = UInt32(truncatingIfNeeded: hash)
        var i = Int(tag) & slotMask
        while slots[i].reference >= 0 { i = (i &+ 1) & slotMask }
        slots[i] = IndexSlot(hash: tag, reference: Int32(entry) << 1 | Int32(direction.rawValue))
    }

    /// Adds `delta` to the load of `entry`'s real server, in the active or inactive count by its state.
    func count(_ entry: Int, _ delta: Int) {
        let real = Int(entries[entry].real)
        guard real < loads.count else { return }
        loads[real].add(delta, active: entries[entry].state == .established)
    }

    /// Where real server number `real` is in its lifecycle (active when its state is not kept).
    func lifecycle(of real: UInt32) -> RealServerLifecycle {
        Int(real) < loads.count ? loads[Int(real)].lifecycle : .active
    }

    /// Moves `entry` to `state`, keeping its real server's active/inactive counts right.
    func changeState(_ entry: Int, to state: ConnectionState) {
        let wasActive = entries[entry].state == .established
        if wasActive != (state == .established) {
            count(entry, -1)
            entries[entry].state = state
            count(entry, 1)
        } else {
            entries[entry].state = state
        }
    }

    mutating func remove(_ entry: Int, hasher: FlowHasher) {
        count(entry, -1)
        unindex(entry, hash: hasher.hash(entries[entry].inbound), direction: .inbound)
        unindex(entry, hash: hasher.hash(entries[entry].reply), direction: .reply)
        if entries[entry].allocator >= 0 { givePort(entries[entry].allocator, entries[entry].reply.destination.port) }
        entries[entry].live = false
        entries[entry].nextFree = freeHead
        freeHead = Int32(entry)
        used -= 1
    }

    private func unindex(_ entry: Int, hash: UInt64, direction: ConnectionState.Direction) {
        let reference = Int32(entry) << 1 | Int32(direction.rawValue)
        var hole = Int(UInt32(truncatingIfNeeded: hash)) & slotMask
        while slots[hole].reference != reference {
            guard slots[hole].reference >= 0 else { return }
            hole = (hole &+ 1) & slotMask
        }
        // Backward-shift deletion: pull later members of the probe run into the hole when their home allows.
        var next = (hole &+ 1) & slotMask
        while slots[next].reference >= 0 {
            let home = Int(slots[next].hash) & slotMask
            if (next &- home) & slotMask >= (next &- hole) & slotMask {
                slots[hole] = slots[next]
                hole = next
            }
            next = (next &+ 1) & slotMask
        }
        slots[hole].reference = -1
    }

    /// Records that `entry` now expires at `expires`.
    mutating func setExpiry(_ entry: Int, _ expires: UInt64) {
        entries[entry].expires = expires
        if expires < earliestExpiry { earliestExpiry = expires }
    }

    mutating func expire(now: UInt64, hasher: FlowHasher) -> Int {
        guard now >= earliestExpiry else { return 0 }
        var removed = 0
        var earliest = UInt64.max
        for i in 0..<highWater where entries[i].live {
            if entries[i].expires <= now {
                remove(i, hasher: hasher)
                removed += 1
            } else if entries[i].expires < earliest {
                earliest = entries[i].expires
            }
        }
        earliestExpiry = earliest
        return removed
    }
}

/// A FIFO of free ports with fixed capacity (all the ports it starts with): `take` from the head, `give` to
/// the tail, so a returned port waits behind every other free one before it is used again.
struct PortRing {
    let storage: UnsafeMutablePointer<UInt16>
    let capacity: Int
    var head = 0
    var count: Int

    init(ports: [UInt16]) {
        capacity = max(1, ports.count)
        storage = .allocate(capacity: capacity)
        for (i, port) in ports.enumerated() { storage[i] = port }
        count = ports.count
    }

    func deallocate() { storage.deallocate() }

    mutating func take() -> UInt16? {
        guard count > 0 else { return nil }
        let port = storage[head]
        head = head + 1 == capacity ? 0 : head + 1
        count -= 1
        return port
    }

    mutating func give(_ port: UInt16) {
        guard count < capacity else { return }
        var tail = head + count
        if tail >= capacity { tail -= capacity }
        storage[tail] = port
        count += 1
    }
}
