import Foundation

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

/// Writes the statistics file (`--stats-file`): the whole file replaced at once (a temporary file renamed over
/// it), so that a reader never sees half of it.
public struct StatisticsWriter: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    public func write(_ statistics: Statistics) throws {
        let temporary = path + ".tmp"
        try statistics.text.write(toFile: temporary, atomically: false, encoding: .utf8)
        guard rename(temporary, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
    }
}
