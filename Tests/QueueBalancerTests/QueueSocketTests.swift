import Foundation
import Synchronization
import Testing
@testable import QueueBalancer

/// The queue socket's own bookkeeping, without a kernel queue.
@Suite struct QueueSocketTests {
    /// Queues are bound from one thread each: their config messages' sequence numbers must all differ (the
    /// answer is matched by it) and never be 0. A plain static counter lost increments under this race.
    @Test func configSequenceNumbersAreUniqueAcrossThreads() {
        let threads = 4, each = 5_000
        let all = Lock<[UInt32]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            var mine: [UInt32] = []
            mine.reserveCapacity(each)
            for _ in 0..<each { mine.append(QueueSocket.nextSequence()) }
            all.withLock { $0 += mine }
        }
        let taken = all.withLock { $0 }
        #expect(taken.count == threads * each && Set(taken).count == threads * each)
        #expect(!taken.contains(0))
    }
}
