import Synchronization

/// What `ipvsadm -L --stats` shows per real server: connections scheduled to it, and packets and bytes each way
/// (`in`: client -> real server, `out`: real server -> client, as IPVS counts them: the IP packets nfqlb
/// handled, a GSO super-packet counting once with its whole length).
public struct TrafficTotals: Sendable, Equatable, Codable {
    public var connections: UInt64 = 0
    public var packetsIn: UInt64 = 0
    public var packetsOut: UInt64 = 0
    public var bytesIn: UInt64 = 0
    public var bytesOut: UInt64 = 0

    public init(connections: UInt64 = 0, packetsIn: UInt64 = 0, packetsOut: UInt64 = 0, bytesIn: UInt64 = 0,
                bytesOut: UInt64 = 0) {
        self.connections = connections
        self.packetsIn = packetsIn
        self.packetsOut = packetsOut
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
    }

    static func &+ (a: TrafficTotals, b: TrafficTotals) -> TrafficTotals {
        TrafficTotals(connections: a.connections &+ b.connections, packetsIn: a.packetsIn &+ b.packetsIn,
                      packetsOut: a.packetsOut &+ b.packetsOut, bytesIn: a.bytesIn &+ b.bytesIn,
                      bytesOut: a.bytesOut &+ b.bytesOut)
    }

    static func &- (a: TrafficTotals, b: TrafficTotals) -> TrafficTotals {
        TrafficTotals(connections: a.connections &- b.connections, packetsIn: a.packetsIn &- b.packetsIn,
                      packetsOut: a.packetsOut &- b.packetsOut, bytesIn: a.bytesIn &- b.bytesIn,
                      bytesOut: a.bytesOut &- b.bytesOut)
    }
}

/// The per-real-server counters of the packet path: one block of counters per queue worker, written by that
/// worker alone (a relaxed load and store, no read-modify-write, no lock) and summed on read by the control
/// plane. Reading a server's totals subtracts its baseline: the sums when its number was given to it (numbers
/// are reused) or when it was last zeroed (`nfqlb zero`).
///
/// Invariant: a worker's block is allocated once (``block(worker:)``, before the worker runs) and lives as long
/// as this object; only that worker writes it.
public final class RealServerTraffic: @unchecked Sendable {
    /// Counters per real server, in this order.
    static let fields = 5
    public let capacity: Int
    private let blocks: Lock<[UnsafeMutablePointer<Atomic<UInt64>>]>
    /// By number: the sums when `nfqlb zero` last zeroed it (or it was given), and when it was given.
    private let baselines: Lock<(zeroed: [TrafficTotals], assigned: [TrafficTotals])>

    init(capacity: Int) {
        self.capacity = capacity
        blocks = Lock([])
        let zeros = Array(repeating: TrafficTotals(), count: capacity)
        baselines = Lock((zeros, zeros))
    }

    deinit {
        blocks.withLock { blocks in
            for block in blocks {
                block.deinitialize(count: capacity * Self.fields)
                block.deallocate()
            }
        }
    }

    /// The counters worker `worker` writes (allocated on first use; workers are numbered from 0).
    public func block(worker: Int) -> TrafficBlock {
        blocks.withLock { blocks in
            while blocks.count <= worker {
                let block = UnsafeMutablePointer<Atomic<UInt64>>.allocate(capacity: capacity * Self.fields)
                for i in 0..<capacity * Self.fields { (block + i).initialize(to: Atomic(0)) }
                blocks.append(block)
            }
            return TrafficBlock(base: blocks[worker], capacity: capacity)
        }
    }

    /// Every worker's counts of real server `index`, summed, since its number was given or zeroed.
    public func totals(_ index: Int) -> TrafficTotals {
        raw(index) &- baselines.withLock { $0.zeroed[index] }
    }

    /// Every worker's counts of real server `index` since its number was given, whatever `nfqlb zero` did: what
    /// the metrics export, which must never go down.
    public func lifetimeTotals(_ index: Int) -> TrafficTotals {
        raw(index) &- baselines.withLock { $0.assigned[index] }
    }

    private func raw(_ index: Int) -> TrafficTotals {
        blocks.withLock { blocks in
            var sum = TrafficTotals()
            for block in blocks {
                let at = block + index * Self.fields
                sum.connections &+= at[0].load(ordering: .relaxed)
                sum.packetsIn &+= at[1].load(ordering: .relaxed)
                sum.packetsOut &+= at[2].load(ordering: .relaxed)
                sum.bytesIn &+= at[3].load(ordering: .relaxed)
                sum.bytesOut &+= at[4].load(ordering: .relaxed)
            }
            return sum
        }
    }

    /// From now on real server `index` counts from 0 in ``totals(_:)`` (`nfqlb zero`).
    public func zero(_ index: Int) {
        let now = raw(index)
        baselines.withLock { $0.zeroed[index] = now }
    }

    /// Number `index` has a new owner: it counts from 0 in ``totals(_:)`` and ``lifetimeTotals(_:)``.
    func assign(_ index: Int) {
        let now = raw(index)
        baselines.withLock {
            $0.zeroed[index] = now
            $0.assigned[index] = now
        }
    }
}

/// One worker's per-real-server counters, as the packet path sees them (``CounterBatch/traffic``): a plain
/// pointer, so counting is two loads and two stores, no reference counting.
public struct TrafficBlock: @unchecked Sendable {
    let base: UnsafeMutablePointer<Atomic<UInt64>>
    let capacity: Int

    @inline(__always)
    private func add(_ index: Int, _ field: Int, _ n: UInt64) {
        let counter = base + index * RealServerTraffic.fields + field
        counter.pointee.store(counter.pointee.load(ordering: .relaxed) &+ n, ordering: .relaxed)
    }

    /// A packet client -> real server `index` of `bytes` bytes; `connection`: it opened a connection.
    @inline(__always)
    func countIn(_ index: Int, bytes: Int, connection: Bool) {
        guard index < capacity else { return }
        if connection { add(index, 0, 1) }
        add(index, 1, 1)
        add(index, 3, UInt64(bytes))
    }

    /// A reply real server `index` -> client of `bytes` bytes.
    @inline(__always)
    func countOut(_ index: Int, bytes: Int) {
        guard index < capacity else { return }
        add(index, 2, 1)
        add(index, 4, UInt64(bytes))
    }
}
