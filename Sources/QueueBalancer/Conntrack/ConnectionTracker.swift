import Synchronization

/// The connection table shared by every queue worker.
///
/// - Ownership and allocation: ``init(configuration:)`` allocates every stripe's entry array and index once;
///   nothing is allocated afterwards. Entries are taken from a per-stripe free list (or a high-water mark, so
///   untouched capacity costs no memory) and returned to it when a connection is removed.
/// - Keys: each connection is indexed twice, by its inbound key (client -> VIP, as the client sends it) and by
///   its reply key (real server -> client, as the real server answers), because `--queue-balance` puts the two
///   directions on different queues (docs/ARCHITECTURE.md, "Kernel facts") and either worker must find the
///   connection.
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
    /// The table's sizes and rules; ``init(config:registry:)`` takes them from a ``BalancerConfig``.
    public struct Configuration: Sendable {
        /// Maximum number of tracked connections.
        public var capacity = 262_144
        /// Number of lock stripes (rounded up to a power of two).
        public var stripes = 64
        public var timeouts = ConnectionTimeouts.ipvsDefaults
        /// Seed of the flow hash; random by default.
        public var hashSeed = UInt64.random(in: 0...UInt64.max)
        /// FULLNAT: the port allocators to create at once (``portAllocator(for:)`` adds more later).
        var portAllocators: [PortAllocatorKey] = []
        /// FULLNAT: the local ports handed out (outside the kernel's `ip_local_port_range`).
        public var localPorts: ClosedRange<UInt16> = 61000...65535
        /// FULLNAT: how many port allocators may exist, those added by later config changes included.
        public var portAllocatorCapacity = 1024
    }

    /// What a FULLNAT port allocator is for: connections from `local` to `real` over `transport`.
    struct PortAllocatorKey: Sendable, Hashable {
        var local: IPAddress
        var real: Endpoint
        var transport: TransportProtocol
    }

    /// FULLNAT: the local address (LIP) a connection leaves from, and the allocator its port comes from.
    struct LocalAddress: Sendable, Equatable {
        var address: IPAddress
        var allocator: PortAllocatorID
    }

    /// The real server the scheduler chose for a new connection.
    struct Assignment: Sendable, Equatable {
        var realServer: Endpoint
        /// Its number in the tracker's ``registry``.
        var real: RealServerID
        /// FULLNAT: where the connection leaves from; nil for the modes that keep the client's address.
        var local: LocalAddress? = nil
        /// The conntrack fast path: the kernel carries the connection; the entry only remembers the choice for
        /// the packets queued before the kernel took over (``handoffTimeout``), and is not counted.
        var offloaded = false
        /// DR, TUN: replies do not pass the balancer; TCP states follow IPVS's input-only table.
        var inputOnly = false
    }

    /// How long an offloaded connection's entry outlives its last queued packet, whatever its state: long
    /// enough for the packets the kernel queues before its connection has the mark (a UDP burst, DR's first
    /// ACK), short enough that entries do not pile up at high connection rates.
    static let handoffTimeout: UInt64 = 10_000

    /// A live connection as a lookup returns it: both keys and the real server's number.
    struct Connection: Sendable, Equatable {
        /// Client -> VIP, as the client sends it.
        var inbound: FlowKey
        /// Real server -> client (FULLNAT: -> local address), as the real server answers.
        var reply: FlowKey
        var real: RealServerID
    }

    /// What to do with a packet travelling client -> virtual service.
    enum InboundOutcome: Sendable, Equatable {
        /// Forward to this real server (number `real`); `created` when the packet opened a new connection.
        case forward(Endpoint, real: RealServerID, created: Bool)
        /// FULLNAT: forward to the real server from the local endpoint `local` (LIP:lport).
        case forwardTranslated(Endpoint, local: Endpoint, real: RealServerID, created: Bool)
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

    /// A copy of one connection, for inspection and for ``BalancerState`` to save across a restart: both keys,
    /// state, expiry (ms of the monotonic clock, which runs on across processes), its real server, whether its
    /// reply destination is a FULLNAT local address and port, and its flags.
    struct Saved: Sendable, Equatable {
        var inbound: FlowKey
        var reply: FlowKey
        var state: ConnectionState
        var expires: UInt64
        var real: RealServerID
        var translated: Bool
        var inputOnly: Bool
        /// A conntrack fast path hand-off entry (the kernel holds the connection; never saved).
        var offloaded = false
        /// A copy from another balancer no packet has touched here (``ConnectionEntry/fromPeer``).
        var fromPeer = false
    }

    /// Every live connection on the Swift path (offloaded hand-off entries are the kernel's; other balancers'
    /// copies are sent again to a restarted balancer), for ``BalancerState``.
    func saved() -> [Saved] { snapshot().filter { !$0.offloaded && !$0.fromPeer } }

    /// Puts a saved connection back, as real server `real` of this process's registry (the caller mapped the
    /// saved number through the server's identity). A FULLNAT connection takes its own local port back from
    /// the allocator of its (local address, real server). False when it cannot be (its stripe is full, its key
    /// is taken, its port is not free, no allocator can be made). Control path, before the queues are bound.
    func restore(_ saved: Saved, real: RealServerID) -> Bool {
        put(saved, real: real, fromPeer: false)
    }

    /// What ``synced(_:real:now:)`` did with a record.
    enum SyncOutcome: Sendable, Equatable {
        case inserted, updated, removed
        /// Nothing to do: a removal of an unknown connection, or a record about a connection this balancer
        /// carries itself (its own packets decide).
        case ignored
        /// It could not be put in (no room, its key or FULLNAT port taken, no allocator).
        case failed
    }

    /// Applies another balancer's record of one of its connections (cluster sync; control path, concurrent
    /// with the queues): a copy is inserted (``ConnectionEntry/fromPeer``) or its state and expiry updated, or
    /// removed. A connection this balancer's own packets have touched is left to them.
    func synced(_ record: SyncRecord, real: RealServerID, now: UInt64) -> SyncOutcome {
        let key = FlowKey(source: record.client, destination: record.virtual, transport: record.transport)
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.source, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        let expires = now &+ UInt64(record.lifetime)
        let reply = FlowKey(source: record.real, destination: record.local ?? record.client, transport: record.transport)
        let existing = stripe.table.withLock { table -> SyncOutcome? in
            guard let found = table.find(key, hash: keyHash, direction: .inbound) else { return nil }
            guard table.entries[found].fromPeer else { return .ignored }
            // Removed; or the sender's connection on this tuple is another one now (another real server or
            // local port): the old copy goes, the new one is put in below.
            if record.operation == .remove || !table.entries[found].matches(reply, .reply) {
                table.remove(found, hasher: hasher)
                return record.operation == .remove ? .removed : nil
            }
            table.changeState(found, to: record.state)
            table.setExpiry(found, expires)
            return .updated
        }
        if let existing { return existing }
        guard record.operation == .update, record.lifetime > 0 else { return .ignored }
        let saved = Saved(inbound: key, reply: reply, state: record.state, expires: expires, real: real,
                          translated: record.local != nil, inputOnly: false)
        return put(saved, real: real, fromPeer: true) ? .inserted : .failed
    }

    /// Inserts `saved` as real server `real`'s connection; false when it cannot be (see ``restore(_:real:)``).
    private func put(_ saved: Saved, real: RealServerID, fromPeer: Bool) -> Bool {
        let key = saved.inbound
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.source, key.transport)) & stripeMask]
        var allocator: PortAllocatorID?
        if saved.translated {
            allocator = portAllocator(for: PortAllocatorKey(local: saved.reply.destination.address, real: saved.reply.source,
                                                            transport: key.transport))
            if allocator == nil { return false }
        }
        let keyHash = hasher.hash(key), replyHash = hasher.hash(saved.reply)
        return stripe.table.withLock { table -> Bool in
            guard table.find(key, hash: keyHash, direction: .inbound) == nil,
                  table.find(saved.reply, hash: replyHash, direction: .reply) == nil else { return false }
            if let allocator, !table.takePort(allocator, saved.reply.destination.port) { return false }
            guard let slot = table.allocate() else {
                if let allocator { table.givePort(allocator, saved.reply.destination.port) }
                return false
            }
            table.entries[slot] = ConnectionEntry(
                inbound: key, reply: saved.reply, expires: saved.expires, real: real, state: saved.state, live: true,
                nextFree: -1, allocator: allocator, offloaded: false, inputOnly: saved.inputOnly)
            table.entries[slot].fromPeer = fromPeer
            table.insert(slot, hash: keyHash, direction: .inbound)
            table.insert(slot, hash: replyHash, direction: .reply)
            table.setExpiry(slot, saved.expires)
            table.count(slot, 1)
            return true
        }
    }

    public let configuration: Configuration
    /// The real servers connections are assigned to: the tracker keeps their connection counts (under the
    /// stripe lock it holds anyway) and follows their lifecycle.
    public let registry: RealServerRegistry
    private let stripes: [Stripe]
    private let stripeMask: Int
    private let hasher: FlowHasher
    private let timeouts: ConnectionTimeouts
    /// FULLNAT: the key of every port allocator, by index (control path only).
    private let allocatorKeys = Lock<[PortAllocatorKey]>([])
    /// Half-open connections removed to make room for new ones in full stripes (``StripeTable/evictHalfOpen(hasher:)``).
    let evictions = Atomic<UInt64>(0)

    /// The tracker `config` asks for: `max-connections`, `timeouts`, the FULLNAT port allocators and
    /// `fullnat-ports`.
    /// `hashSeed`: the flow hash's seed, when it must be a saved tracker's (``BalancerState``); else random.
    public convenience init(config: BalancerConfig, registry: RealServerRegistry = RealServerRegistry(),
                            hashSeed: UInt64? = nil) {
        var configuration = Configuration(capacity: config.maxConnections, timeouts: config.timeouts,
                                          portAllocators: config.portAllocators, localPorts: config.fullnatPorts)
        if let hashSeed { configuration.hashSeed = hashSeed }
        self.init(configuration: configuration, registry: registry)
    }

    /// A tracker with the default ``Configuration``.
    public convenience init(registry: RealServerRegistry = RealServerRegistry()) {
        self.init(configuration: Configuration(), registry: registry)
    }

    public init(configuration: Configuration, registry: RealServerRegistry = RealServerRegistry()) {
        self.configuration = configuration
        self.registry = registry
        var stripeCount = 1
        while stripeCount < max(1, configuration.stripes) { stripeCount <<= 1 }
        let perStripe = max(1, (configuration.capacity + stripeCount - 1) / stripeCount)
        stripeMask = stripeCount - 1
        hasher = FlowHasher(seed: configuration.hashSeed)
        let poolCapacity = max(configuration.portAllocatorCapacity, configuration.portAllocators.count)
        stripes = (0..<stripeCount).map { _ in
            Stripe(capacity: perStripe, poolCapacity: poolCapacity, loads: registry.loads)
        }
        timeouts = configuration.timeouts
        for key in configuration.portAllocators { _ = portAllocator(for: key) }
    }

    /// FULLNAT: the port allocator of `key` (a ``LocalAddress/allocator``), created with every port
    /// of ``Configuration/localPorts`` free when it is new. Nil when ``Configuration/portAllocatorCapacity``
    /// allocators exist already. Control path: allocates, and takes every stripe lock once for a new one.
    func portAllocator(for key: PortAllocatorKey) -> PortAllocatorID? {
        allocatorKeys.withLock { keys -> PortAllocatorID? in
            if let index = keys.firstIndex(of: key) { return PortAllocatorID(index) }
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
            return PortAllocatorID(index)
        }
    }

    /// Looks up (or creates, calling `schedule`) the connection of a client -> virtual service packet, updates
    /// its TCP state and expiry, and says where to forward it. `schedule` runs under the stripe lock, only for a
    /// new connection, and must not call back into the tracker.
    func inbound(_ key: FlowKey, flags: TCPFlags, now: UInt64, adoptMidstream: Bool = false,
                        schedule: (FlowKey) -> Assignment?) -> InboundOutcome {
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.source, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        let isTCP = key.transport == .tcp
        return stripe.table.withLock { table -> InboundOutcome in
            if let found = table.find(key, hash: keyHash, direction: .inbound) {
                let entry = table.entries[found]
                let lifecycle = table.lifecycle(of: entry.real)
                let freshSYN = isTCP && flags.isInitialSYN
                // A fresh SYN on the tuple of a finished connection, or of one whose server takes no new
                // connections: a new connection, scheduled afresh *with this SYN* (IPVS drops it and waits for the
                // client's retransmission, a one-second stall: kubernetes issues 81775 and 93297).
                let restarts = freshSYN && (entry.state.acceptsNewSYN || lifecycle != .active)
                // UDP flows leave a server that left the config on their next datagram, instead of being
                // black-holed until they go idle.
                let moves = !isTCP && (lifecycle == .draining || lifecycle == .removed)
                if entry.expires > now && !restarts && !moves && lifecycle != .removed {
                    let state = isTCP ? entry.state.next(after: flags, direction: .inbound, inputOnly: entry.inputOnly) : .udp
                    table.entries[found].touched()
                    table.changeState(found, to: state)
                    table.setExpiry(found, now &+ lifetime(state, offloaded: entry.offloaded))
                    if entry.allocator != nil {
                        return .forwardTranslated(entry.reply.source, local: entry.reply.destination,
                                                  real: entry.real, created: false)
                    }
                    return .forward(entry.reply.source, real: entry.real, created: false)
                }
                // Expired, restarted, moved, or its server removed: forget it, then schedule afresh if allowed.
                table.remove(found, hasher: hasher)
                if lifecycle == .removed && isTCP && !freshSYN && entry.expires > now { return .realServerRemoved }
            }
            // Midstream: IPVS drops it; a service whose balancers share one hashing table adopts it (the state
            // table takes an ACK from NONE to ESTABLISHED).
            if isTCP && !flags.isInitialSYN && !adoptMidstream { return .noConnection }
            // Room first: a connection refused for want of it must leave the schedulers (round-robin position,
            // persistence templates) as they were.
            if table.isFull { _ = table.expire(now: now, hasher: hasher) }
            if table.isFull && isTCP && table.evictHalfOpen(hasher: hasher) {
                evictions.wrappingAdd(1, ordering: .relaxed)
            }
            if table.isFull { return .full }
            guard let assignment = schedule(key) else { return .noRealServer }
            var local = key.source
            if let translation = assignment.local {
                guard let port = table.takePort(translation.allocator) else { return .portsExhausted }
                local = Endpoint(address: translation.address, port: port)
            }
            let reply = FlowKey(source: assignment.realServer, destination: local, transport: key.transport)
            let replyHash = hasher.hash(reply)
            if let other = table.find(reply, hash: replyHash, direction: .reply) {
                guard table.entries[other].expires <= now else {
                    if let translation = assignment.local { table.givePort(translation.allocator, local.port) }
                    return .conflict
                }
                table.remove(other, hasher: hasher)
            }
            guard let slot = table.allocate() else {
                if let translation = assignment.local { table.givePort(translation.allocator, local.port) }
                return .full
            }
            let state: ConnectionState = isTCP
                ? ConnectionState.none.next(after: flags, direction: .inbound, inputOnly: assignment.inputOnly) : .udp
            table.entries[slot] = ConnectionEntry(
                inbound: key, reply: reply, expires: now &+ lifetime(state, offloaded: assignment.offloaded),
                real: assignment.real, state: state, live: true, nextFree: -1, allocator: assignment.local?.allocator,
                offloaded: assignment.offloaded, inputOnly: assignment.inputOnly)
            table.insert(slot, hash: keyHash, direction: .inbound)
            table.insert(slot, hash: replyHash, direction: .reply)
            table.setExpiry(slot, table.entries[slot].expires)
            table.count(slot, 1)
            if assignment.local != nil {
                return .forwardTranslated(assignment.realServer, local: local, real: assignment.real, created: true)
            }
            return .forward(assignment.realServer, real: assignment.real, created: true)
        }
    }

    /// How long a connection in `state` lives without a packet.
    private func lifetime(_ state: ConnectionState, offloaded: Bool) -> UInt64 {
        offloaded ? ConnectionTracker.handoffTimeout : timeouts.timeout(state)
    }

    /// One-packet scheduling (`ops`, UDP, NAT): the datagram was scheduled on its own to `assignment`; make
    /// sure the reply of that real server finds its way back. Connections are keyed by their reply tuple only
    /// (several real servers may answer the same client endpoint), and live the UDP timeout after their last
    /// datagram. Returns false when the table is full.
    func oneShot(_ key: FlowKey, assignment: Assignment, now: UInt64) -> Bool {
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
                nextFree: -1, allocator: nil, offloaded: false)
            // Indexed by the reply key only; the inbound index keeps a (never looked up) reference so that
            // removal stays uniform.
            table.insert(slot, hash: hasher.hash(key), direction: .inbound)
            table.insert(slot, hash: replyHash, direction: .reply)
            table.setExpiry(slot, expires)
            table.count(slot, 1)
            return true
        }
    }

    /// Looks up the connection of a real server -> client packet and updates its state and expiry. Its inbound
    /// key (client -> VIP) says what the reply must become: from its destination and, under FULLNAT, to its
    /// source. Nil when no live connection matches.
    func reply(_ key: FlowKey, flags: TCPFlags, now: UInt64) -> Connection? {
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(key.destination, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        let isTCP = key.transport == .tcp
        return stripe.table.withLock { table -> Connection? in
            guard let found = table.find(key, hash: keyHash, direction: .reply) else { return nil }
            let entry = table.entries[found]
            guard entry.expires > now, table.lifecycle(of: entry.real) != .removed else {
                table.remove(found, hasher: hasher)
                return nil
            }
            let state = isTCP ? entry.state.next(after: flags, direction: .reply) : .udp
            table.entries[found].touched()
            table.changeState(found, to: state)
            table.setExpiry(found, now &+ lifetime(state, offloaded: entry.offloaded))
            return entry.connection
        }
    }

    /// The live connection whose inbound key (client -> VIP) is `key`. Changes nothing (ICMP errors about a
    /// connection neither open nor refresh it).
    func connection(inbound key: FlowKey, now: UInt64) -> Connection? {
        lookUp(key, direction: .inbound, now: now)
    }

    /// The live connection whose reply key is `key`; changes nothing.
    func connection(reply key: FlowKey, now: UInt64) -> Connection? {
        lookUp(key, direction: .reply, now: now)
    }

    private func lookUp(_ key: FlowKey, direction: ConnectionState.Direction, now: UInt64) -> Connection? {
        // The client endpoint chooses the stripe: the source of an inbound key, the destination of a reply key.
        let client = direction == .inbound ? key.source : key.destination
        let stripe = stripes[Int(truncatingIfNeeded: hasher.hash(client, key.transport)) & stripeMask]
        let keyHash = hasher.hash(key)
        return stripe.table.withLock { table -> Connection? in
            guard let found = table.find(key, hash: keyHash, direction: direction) else { return nil }
            let entry = table.entries[found]
            guard entry.expires > now, table.lifecycle(of: entry.real) != .removed else { return nil }
            return entry.connection
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
    /// The table's memory, allocated once: entries and index slots of every stripe (FULLNAT port rings apart),
    /// in bytes, and how many connections it holds at most.
    public var tableBytes: (bytes: Int, capacity: Int) {
        stripes.reduce((0, 0)) { sum, stripe in
            stripe.table.withLock { table in
                (sum.0 + table.capacity * MemoryLayout<ConnectionEntry>.stride + table.slotCount * MemoryLayout<IndexSlot>.stride,
                 sum.1 + table.capacity)
            }
        }
    }

    public var count: Int {
        stripes.reduce(0) { total, stripe in total + stripe.table.withLock { $0.used } }
    }

    /// The first `limit` live connections that `include` accepts, and how many it accepts in all (`nfqlb list
    /// --connections`; each stripe lock taken once).
    public func connections(limit: Int, where include: (Listed) -> Bool) -> (connections: [Listed], matched: Int) {
        var result: [Listed] = []
        var matched = 0
        for stripe in stripes {
            stripe.table.withLock { table in
                for i in 0..<table.highWater where table.entries[i].live {
                    let e = table.entries[i]
                    let listed = Listed(inbound: e.inbound, reply: e.reply, state: e.state, expires: e.expires, real: e.real,
                                        offloaded: e.offloaded, synced: e.fromPeer)
                    guard include(listed) else { continue }
                    matched += 1
                    if result.count < limit { result.append(listed) }
                }
            }
        }
        return (result, matched)
    }

    /// A tracked connection as `nfqlb list --connections` shows it.
    public struct Listed: Sendable {
        /// Client -> VIP.
        public var inbound: FlowKey
        /// Real server -> client (or -> local address under FULLNAT).
        public var reply: FlowKey
        public var state: ConnectionState
        /// When it expires (ms of the monotonic clock).
        public var expires: UInt64
        public var real: RealServerID
        /// A conntrack fast path hand-off entry.
        public var offloaded: Bool
        /// A copy another balancer sent (cluster sync) that no packet has touched here.
        public var synced = false
    }

    /// A copy of every live connection (not for the packet path; each stripe lock taken once).
    func snapshot() -> [Saved] {
        var result: [Saved] = []
        for stripe in stripes {
            stripe.table.withLock { table in
                for i in 0..<table.highWater where table.entries[i].live {
                    let e = table.entries[i]
                    result.append(Saved(inbound: e.inbound, reply: e.reply, state: e.state, expires: e.expires,
                                        real: e.real, translated: e.allocator != nil, inputOnly: e.inputOnly,
                                        offloaded: e.offloaded, fromPeer: e.fromPeer))
                }
            }
        }
        return result
    }
}

