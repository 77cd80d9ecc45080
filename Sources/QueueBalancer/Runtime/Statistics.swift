import Foundation
import SystemPackage

/// What a running nfqlb reports: every ``DatapathCounter``, the processor's gauges and the kernel's own
/// counters for its queues, as `name value` pairs in a fixed order.
public struct Statistics: Sendable {
    public var values: [(name: String, value: UInt64)]

    public init(counters: DatapathCounters, gauges: [(name: String, value: UInt64)], kernel: KernelQueueStats) {
        values = DatapathCounter.allCases.map { ($0.name, counters[$0]) } + gauges + [
            ("kernel_queue_dropped", kernel.queueDropped),
            ("kernel_user_dropped", kernel.userDropped),
            ("kernel_queue_waiting", kernel.waiting),
        ]
    }

    /// One `name value` line each: the statistics file.
    public var text: String { values.map { "\($0.name) \($0.value)\n" }.joined() }

    /// The balancer-wide values that are not 0 (no per-real-server line), for a log line.
    public var summary: String { values.filter { $0.value != 0 && !$0.name.contains("{") }.map { "\($0.name) \($0.value)" }.joined(separator: ", ") }
}

/// Writes the statistics file (`--stats-file`): the whole file replaced at once, so that a reader never sees
/// half of it, and never written through a symlink (``replaceFileAtomically(_:with:mode:)``); readable by all.
public struct StatisticsWriter: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    public func write(_ statistics: Statistics) throws {
        do {
            try replaceFileAtomically(path, with: statistics.text.utf8, mode: 0o644)
        } catch {
            throw StatisticsWriteError(path: path, errno: error)
        }
    }
}

/// The statistics file could not be written.
public struct StatisticsWriteError: Error, CustomStringConvertible {
    public let path: String
    public let errno: Errno
    public var description: String { "cannot write \(path): \(errno)" }
}
