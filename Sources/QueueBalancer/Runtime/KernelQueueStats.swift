import Foundation

/// The kernel's own counters for nfqlb's queues, from /proc/net/netfilter/nfnetlink_queue, one line per
/// bound queue: `queue portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence 1`.
public struct KernelQueueStats: Sendable {
    /// Packets dropped because the queue was full (`queue-length`).
    public var queueDropped: UInt64 = 0
    /// Packets dropped because the netlink socket buffer was full (`socket-buffer-mb`).
    public var userDropped: UInt64 = 0
    /// Packets waiting for a verdict now.
    public var waiting: UInt64 = 0

    /// The sums over `queues`; all 0 when the file cannot be read (no queue bound, or no procfs).
    public static func read(queues: [QueueNumber], path: String = "/proc/net/netfilter/nfnetlink_queue") -> KernelQueueStats {
        var stats = KernelQueueStats()
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return stats }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).compactMap { UInt64($0) }
            guard fields.count >= 7,
                  queues.contains(QueueNumber(rawValue: UInt16(truncatingIfNeeded: fields[0]))) else { continue }
            stats.waiting += fields[2]
            stats.queueDropped += fields[5]
            stats.userDropped += fields[6]
        }
        return stats
    }
}
