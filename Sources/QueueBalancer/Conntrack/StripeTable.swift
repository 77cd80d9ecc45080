import Synchronization

/// A FULLNAT port allocator: the free local ports of one (local address, real server, protocol), one
/// ``PortRing`` per lock stripe (``ConnectionTracker/portAllocator(for:)``).
struct PortAllocatorID: Hashable, Sendable, CustomStringConvertible {
    let rawValue: UInt32

    init(_ index: Int) { rawValue = UInt32(index) }

    /// The position of the allocator's ring in each stripe's pools.
    var index: Int { Int(rawValue) }

    var description: String { "allocator \(rawValue)" }
}

/// One tracked connection, packed (96 bytes: docs/ARCHITECTURE.md, "Memory"): the four addresses a
/// connection involves, their ports, and its state. Its two keys are rebuilt from them: inbound client -> VIP,
/// reply real server -> reply destination (the client, or for FULLNAT the local address).
struct ConnectionEntry {
    private var clientAddress: IPAddress
    private var vipAddress: IPAddress
    private var realAddress: IPAddress
    private var replyAddress: IPAddress
    var expires: UInt64
    var real: RealServerID
    var nextFree: Int32
    private var clientPort: UInt16, vipPort: UInt16, realPort: UInt16, replyPort: UInt16
    /// FULLNAT: the allocator of the local port (`reply.destination.port`), given back on removal; or `none`.
    private var allocatorValue: UInt32
    private var transportValue: TransportProtocol
    var state: ConnectionState
    /// `live`, `offloaded`, `inputOnly` and `fromPeer` in one byte (the entry stays at 96 bytes).
    private var flags: UInt8

    private static let none = UInt32.max
    private static let liveFlag: UInt8 = 1, offloadedFlag: UInt8 = 2, inputOnlyFlag: UInt8 = 4, fromPeerFlag: UInt8 = 8

    /// The slot holds a connection (else it is on the free list).
    var live: Bool {
        get { flags & Self.liveFlag != 0 }
        set { flags = newValue ? flags | Self.liveFlag : flags & ~Self.liveFlag }
    }
    /// The conntrack fast path carries the connection: the entry is not counted.
    var offloaded: Bool { flags & Self.offloadedFlag != 0 }
    /// DR and TUN: the balancer sees the client's packets only, so TCP states follow IPVS's input-only table
    /// (``ConnectionState/next(after:direction:inputOnly:)``).
    var inputOnly: Bool { flags & Self.inputOnlyFlag != 0 }
    /// A copy another balancer sent (cluster sync) that no packet has touched here yet: not sent on, and
    /// updated or removed by its sender's messages only. The first packet makes it this balancer's own.
    var fromPeer: Bool {
        get { flags & Self.fromPeerFlag != 0 }
        set { flags = newValue ? flags | Self.fromPeerFlag : flags & ~Self.fromPeerFlag }
    }

    /// A packet touched the connection here: it is this balancer's own (one store, no branch).
    mutating func touched() { flags &= ~Self.fromPeerFlag }

    init(inbound: FlowKey, reply: FlowKey, expires: UInt64, real: RealServerID, state: ConnectionState, live: Bool,
         nextFree: Int32, allocator: PortAllocatorID?, offloaded: Bool, inputOnly: Bool = false) {
        clientAddress = inbound.source.address
        clientPort = inbound.source.port
        vipAddress = inbound.destination.address
        vipPort = inbound.destination.port
        realAddress = reply.source.address
        realPort = reply.source.port
        replyAddress = reply.destination.address
        replyPort = reply.destination.port
        transportValue = inbound.transport
        self.expires = expires
        self.real = real
        self.state = state
        flags = (live ? Self.liveFlag : 0) | (offloaded ? Self.offloadedFlag : 0) | (inputOnly ? Self.inputOnlyFlag : 0)
        self.nextFree = nextFree
        allocatorValue = allocator?.rawValue ?? Self.none
    }

    var inbound: FlowKey {
        FlowKey(source: Endpoint(address: clientAddress, port: clientPort),
                destination: Endpoint(address: vipAddress, port: vipPort), transport: transportValue)
    }

    var reply: FlowKey {
        FlowKey(source: Endpoint(address: realAddress, port: realPort),
                destination: Endpoint(address: replyAddress, port: replyPort), transport: transportValue)
    }

    var allocator: PortAllocatorID? {
        allocatorValue == Self.none ? nil : PortAllocatorID(Int(allocatorValue))
    }

    /// Whether the key of `direction` is `key`, field by field (no key is built).
    func matches(_ key: FlowKey, _ direction: ConnectionState.Direction) -> Bool {
        guard transportValue == key.transport else { return false }
        return direction == .inbound
            ? clientPort == key.source.port && vipPort == key.destination.port
                && clientAddress == key.source.address && vipAddress == key.destination.address
            : realPort == key.source.port && replyPort == key.destination.port
                && realAddress == key.source.address && replyAddress == key.destination.address
    }

    func key(_ direction: ConnectionState.Direction) -> FlowKey {
        direction == .inbound ? inbound : reply
    }

    var connection: ConnectionTracker.Connection {
        ConnectionTracker.Connection(inbound: inbound, reply: reply, real: real)
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
    let table: Lock<StripeTable>
    let poolCapacity: Int

    init(capacity: Int, poolCapacity: Int, loads: [RealServerLoad]) {
        self.poolCapacity = poolCapacity
        table = Lock(StripeTable(capacity: capacity, poolCapacity: poolCapacity, loads: loads))
    }
}

/// The entries of one stripe and their index (linear probing, backward-shift deletion, at most two thirds
/// full: the index has three slots per entry and each entry uses two, so every probe ends at an empty slot).
/// A key's home slot is its 32-bit tag scaled to the slot count (multiply and shift), so the count need not
/// be a power of two.
///
/// Owns its memory (allocated once in `init`, freed in `deinit`): non-copyable, so that exactly one owner,
/// the stripe's mutex, can free it. Every entry's real-server number is below the registry's capacity (the
/// tracker's own registry hands them out), so indexing `loads` needs no check.
struct StripeTable: ~Copyable {
    let entries: UnsafeMutablePointer<ConnectionEntry>
    let slots: UnsafeMutablePointer<IndexSlot>
    let capacity: Int
    let slotCount: Int
    /// Entries below this index have been used at least once; above it memory is untouched.
    private(set) var highWater = 0
    /// No entry expires before this time: ``expire(now:hasher:)`` does not scan earlier, so a full stripe under
    /// a SYN flood costs one comparison per refused connection, not a scan (lowered on every insert and
    /// update, raised by each scan).
    private(set) var earliestExpiry: UInt64 = .max
    private var freeHead: Int32 = -1
    private(set) var used = 0
    /// Where ``evictHalfOpen(hasher:)`` looks next: it sweeps the entries round and round.
    private var evictionCursor = 0
    /// FULLNAT: this stripe's free local ports, one ring per port allocator (room for `poolCapacity`).
    let pools: UnsafeMutablePointer<PortRing>
    private(set) var poolCount = 0

    /// The real servers' state, by ``RealServerID/index`` (the tracker's registry).
    let loads: [RealServerLoad]

    init(capacity: Int, poolCapacity: Int, loads: [RealServerLoad]) {
        self.loads = loads
        pools = .allocate(capacity: max(1, poolCapacity))
        self.capacity = capacity
        slotCount = max(4, capacity * 3)
        entries = .allocate(capacity: capacity)
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: IndexSlot(hash: 0, reference: -1), count: slotCount)
    }

    deinit {
        entries.deinitialize(count: highWater)
        entries.deallocate()
        slots.deallocate()
        pools.deinitialize(count: poolCount)
        pools.deallocate()
    }

    /// Installs the next port allocator's ring (the caller checked the capacity).
    mutating func addPool(ports: [UInt16]) {
        (pools + poolCount).initialize(to: PortRing(ports: ports))
        poolCount += 1
    }

    func takePort(_ allocator: PortAllocatorID) -> UInt16? { pools[allocator.index].take() }

    /// Takes this particular port (a restored connection's); false when it is not free in this stripe.
    func takePort(_ allocator: PortAllocatorID, _ port: UInt16) -> Bool { pools[allocator.index].remove(port) }

    func givePort(_ allocator: PortAllocatorID, _ port: UInt16) { pools[allocator.index].give(port) }

    var isFull: Bool { used >= capacity }

    /// The slot where the probe for `tag` starts.
    private func home(_ tag: UInt32) -> Int { Int((UInt64(tag) &* UInt64(slotCount)) >> 32) }

    /// The slot after `i`, wrapping.
    private func following(_ i: Int) -> Int { i &+ 1 == slotCount ? 0 : i &+ 1 }

    /// How far slot `i` is past slot `from`, wrapping.
    private func distance(_ i: Int, from: Int) -> Int { i >= from ? i &- from : i &- from &+ slotCount }

    func find(_ key: FlowKey, hash: UInt64, direction: ConnectionState.Direction) -> Int? {
        let tag = UInt32(truncatingIfNeeded: hash)
        var i = home(tag)
        while true {
            let slot = slots[i]
            if slot.reference < 0 { return nil }
            if slot.hash == tag && Int(slot.reference & 1) == direction.rawValue {
                let entry = Int(slot.reference >> 1)
                if entries[entry].matches(key, direction) { return entry }
            }
            i = following(i)
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
            expires: 0, real: 0, state: .none, live: false, nextFree: -1, allocator: nil, offloaded: false))
        return highWater - 1
    }

    func insert(_ entry: Int, hash: UInt64, direction: ConnectionState.Direction) {
        let tag = UInt32(truncatingIfNeeded: hash)
        var i = home(tag)
        while slots[i].reference >= 0 { i = following(i) }
        slots[i] = IndexSlot(hash: tag, reference: Int32(entry) << 1 | Int32(direction.rawValue))
    }

    /// Adds `delta` to the load of `entry`'s real server, in the active or inactive count by its state (an
    /// offloaded connection is counted from the kernel's events instead).
    func count(_ entry: Int, _ delta: Int) {
        guard !entries[entry].offloaded else { return }
        loads[entries[entry].real.index].add(delta, active: entries[entry].state == .established)
    }

    /// Where real server `real` is in its lifecycle.
    func lifecycle(of real: RealServerID) -> RealServerLifecycle {
        loads[real.index].lifecycle
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
        if let allocator = entries[entry].allocator { givePort(allocator, entries[entry].reply.destination.port) }
        entries[entry].live = false
        entries[entry].nextFree = freeHead
        freeHead = Int32(entry)
        used -= 1
    }

    private func unindex(_ entry: Int, hash: UInt64, direction: ConnectionState.Direction) {
        let reference = Int32(entry) << 1 | Int32(direction.rawValue)
        var hole = home(UInt32(truncatingIfNeeded: hash))
        while slots[hole].reference != reference {
            guard slots[hole].reference >= 0 else { return }
            hole = following(hole)
        }
        // Backward-shift deletion: pull later members of the probe run into the hole when their home allows.
        var next = following(hole)
        while slots[next].reference >= 0 {
            if distance(next, from: home(slots[next].hash)) >= distance(next, from: hole) {
                slots[hole] = slots[next]
                hole = next
            }
            next = following(next)
        }
        slots[hole].reference = -1
    }

    /// Records that `entry` now expires at `expires`.
    mutating func setExpiry(_ entry: Int, _ expires: UInt64) {
        entries[entry].expires = expires
        if expires < earliestExpiry { earliestExpiry = expires }
    }

    /// How many entries one eviction looks at, at most.
    static let evictionProbes = 16

    /// A full stripe makes room for a new connection by removing a half-open one (SYN_RECV: the client never
    /// completed its handshake; IPVS's `drop_entry` defence drops the same states): the first such entry among
    /// the next ``evictionProbes`` from a cursor that sweeps the stripe, so the cost is bounded and a genuine
    /// half-open connection lives a whole sweep (the stripe's capacity over the rate of new connections)
    /// before its turn. Established connections are never evicted. True when one was removed.
    mutating func evictHalfOpen(hasher: FlowHasher) -> Bool {
        guard highWater > 0 else { return false }
        for _ in 0..<Swift.min(Self.evictionProbes, highWater) {
            let i = evictionCursor
            evictionCursor = i &+ 1 >= highWater ? 0 : i &+ 1
            if entries[i].live && entries[i].state == .synReceived {
                remove(i, hasher: hasher)
                return true
            }
        }
        return false
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
/// the tail, so a returned port waits behind every other free one before it is used again. Owns its storage.
struct PortRing: ~Copyable {
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

    deinit { storage.deallocate() }

    mutating func take() -> UInt16? {
        guard count > 0 else { return nil }
        let port = storage[head]
        head = head + 1 == capacity ? 0 : head + 1
        count -= 1
        return port
    }

    /// Takes `port` out of the free ports wherever it is (a restored connection's port); false when it is not
    /// free. Moves the head's port into its place: order matters less than not handing the port out twice.
    mutating func remove(_ port: UInt16) -> Bool {
        for offset in 0..<count {
            var i = head + offset
            if i >= capacity { i -= capacity }
            if storage[i] == port {
                storage[i] = storage[head]
                _ = take()
                return true
            }
        }
        return false
    }

    mutating func give(_ port: UInt16) {
        guard count < capacity else { return }
        var tail = head + count
        if tail >= capacity { tail -= capacity }
        storage[tail] = port
        count += 1
    }
}
