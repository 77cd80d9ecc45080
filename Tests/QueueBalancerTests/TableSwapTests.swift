import Foundation
import Synchronization
import Testing
@testable import QueueBalancer

/// The read-copy-update of the service table: a replaced object lives until no reader can hold it.
@Suite struct TableSwapTests {
    /// An object that notes in `log` when it is released.
    final class Table: Sendable {
        let id: Int
        let log: Log

        init(_ id: Int, log: Log) {
            self.id = id
            self.log = log
        }

        deinit { log.released.withLock { _ = $0.insert(id) } }
    }

    final class Log: Sendable {
        let released = Lock<Set<Int>>([])
        var ids: Set<Int> { released.withLock { $0 } }
    }

    @Test func aReplacedTableIsReleasedOnceEveryReaderHasLeftItsBatch() {
        let log = Log()
        let swap = TableSwap(Table(0, log: log), readers: 2)
        swap.enter(reader: 0)
        swap.replace(with: Table(1, log: log))
        #expect(swap.withCurrent { $0.id } == 1, "the new table is current at once")
        #expect(swap.retiredCount == 1 && log.ids.isEmpty, "reader 0 may still read table 0")
        swap.enter(reader: 1)            // starts after the swap: reads table 1 only
        swap.reclaim()
        #expect(log.ids.isEmpty)
        swap.leave(reader: 0)
        swap.reclaim()
        #expect(log.ids == [0] && swap.retiredCount == 0)
        // Reader 1 entered in generation 1: a second swap keeps table 1 until it leaves.
        swap.replace(with: Table(2, log: log))
        #expect(log.ids == [0] && swap.retiredCount == 1)
        swap.leave(reader: 1)
        swap.reclaim()
        #expect(log.ids == [0, 1])
    }

    @Test func idleReadersHoldNothing() {
        let log = Log()
        let swap = TableSwap(Table(0, log: log), readers: 4)
        for id in 1...10 { swap.replace(with: Table(id, log: log)) }
        #expect(swap.retiredCount == 0 && log.ids == Set(0..<10), "released at each swap: no reader was in a batch")
    }

    /// Readers on their own threads (as queue workers are) read the current table in every batch while a
    /// writer replaces it as fast as it can: no reader ever sees a table that was released, and every replaced
    /// table is released in the end.
    @Test func readersNeverSeeAReleasedTable() {
        let log = Log()
        let swap = TableSwap(Table(0, log: log), readers: 3)
        let violations = Atomic<Int>(0)
        let done = Atomic<Bool>(false)
        let finished = DispatchSemaphore(value: 0)
        for reader in 0..<3 {
            Thread {
                var batches = 0
                while !done.load(ordering: .relaxed) || batches < 100 {
                    swap.enter(reader: reader)
                    for _ in 0..<8 {
                        let id = swap.withCurrent { $0.id }
                        if log.ids.contains(id) { violations.wrappingAdd(1, ordering: .relaxed) }
                    }
                    swap.leave(reader: reader)
                    batches += 1
                }
                finished.signal()
            }.start()
        }
        for id in 1...2_000 {
            swap.replace(with: Table(id, log: log))
            if id % 16 == 0 { swap.reclaim() }
        }
        done.store(true, ordering: .relaxed)
        for _ in 0..<3 { finished.wait() }
        swap.reclaim()
        #expect(violations.load(ordering: .relaxed) == 0)
        #expect(swap.retiredCount == 0 && log.ids == Set(0..<2_000), "every replaced table released, the current one kept")
    }
}
