import Synchronization

/// Publishes one immutable object to the queue workers and releases a replaced one once no worker can still
/// be reading it: read-copy-update with a generation per reader, so that the packet path takes no lock and
/// touches no reference count.
///
/// - Readers (one slot per queue worker): ``enter(reader:)`` before a batch announces the generation the
///   worker may read from then on; ``leave(reader:)`` after it. Between the two, ``withCurrent(_:)`` gives the
///   current object without retaining it.
/// - The writer (callers serialise ``replace(with:)``): publishes the new object, then retires the old one
///   with the generation in which it was current. ``reclaim()`` releases every retired object older than the
///   oldest generation a reader has announced (readers between batches announce none).
///
/// Memory order: a reader's announcement (a store) and its load of the current object must not be
/// reordered, so both are sequentially consistent, like the writer's publication; acquire/release alone would
/// let the load pass the store on weakly ordered CPUs and reclaim an object in use.
final class TableSwap<Table: AnyObject & Sendable>: Sendable {
    /// The current object, as the bits of a retained `Unmanaged<Table>`.
    private let current: Atomic<UInt>
    /// The generation of the current object.
    private let generation = Atomic<UInt64>(0)
    /// Per reader: the oldest generation it may be reading, or `.max` between batches.
    private let readers: [ReaderSlot]
    /// Replaced objects maybe still read, with the generation each was current in.
    private let retired = Lock<[(generation: UInt64, table: Unmanaged<Table>)]>([])

    final class ReaderSlot: Sendable {
        let generation = Atomic<UInt64>(.max)
    }

    /// Publishes `table` for `readers` reader slots (at least one).
    init(_ table: Table, readers: Int) {
        current = Atomic(UInt(bitPattern: Unmanaged.passRetained(table).toOpaque()))
        self.readers = (0..<max(1, readers)).map { _ in ReaderSlot() }
    }

    deinit {
        unmanaged(current.load(ordering: .acquiring)).release()
        retired.withLock { $0.forEach { $0.table.release() } }
    }

    private func unmanaged(_ bits: UInt) -> Unmanaged<Table> {
        Unmanaged<Table>.fromOpaque(UnsafeRawPointer(bitPattern: bits)!)
    }

    /// The current object, retained (control path).
    var table: Table { unmanaged(current.load(ordering: .sequentiallyConsistent)).takeUnretainedValue() }

    /// Reader `reader` starts a batch: the objects it may read from now on are not released under it.
    func enter(reader: Int) {
        readers[reader].generation.store(generation.load(ordering: .sequentiallyConsistent),
                                         ordering: .sequentiallyConsistent)
    }

    /// Reader `reader` finished its batch and holds no object.
    func leave(reader: Int) {
        readers[reader].generation.store(.max, ordering: .releasing)
    }

    /// Calls `body` with the current object, not retained: only between ``enter(reader:)`` and
    /// ``leave(reader:)``, or on a thread that serialises with ``replace(with:)``.
    func withCurrent<Result>(_ body: (Table) -> Result) -> Result {
        unmanaged(current.load(ordering: .sequentiallyConsistent))._withUnsafeGuaranteedRef(body)
    }

    /// Publishes `table`; the replaced one is retired and released by a later ``reclaim()``.
    func replace(with table: Table) {
        let old = current.load(ordering: .sequentiallyConsistent)
        let retiring = generation.load(ordering: .sequentiallyConsistent)
        current.store(UInt(bitPattern: Unmanaged.passRetained(table).toOpaque()), ordering: .sequentiallyConsistent)
        generation.store(retiring + 1, ordering: .sequentiallyConsistent)
        retired.withLock { $0.append((retiring, unmanaged(old))) }
        reclaim()
    }

    /// Releases the retired objects no reader can still read (the housekeeping thread calls it every second).
    func reclaim() {
        retired.withLock { retired in
            guard !retired.isEmpty else { return }
            let oldest = readers.map { $0.generation.load(ordering: .sequentiallyConsistent) }.min() ?? .max
            retired.removeAll { entry in
                guard entry.generation < oldest else { return false }
                entry.table.release()
                return true
            }
        }
    }

    /// How many replaced objects are still held.
    var retiredCount: Int { retired.withLock { $0.count } }
}
