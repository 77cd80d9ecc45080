import Foundation
import Logging

/// A running balancer: one ``QueueWorker`` thread per configured queue sharing one ``PacketHandler`` (and so
/// one connection tracker), plus a housekeeping loop on the calling thread that expires connections, reads
/// the kernel's per-queue drop counters and writes the stats file. The same runtime serves the real server's
/// TUN ``Decapsulator`` (no tracker then).
///
/// Sendable: ``update(to:tunnelPaths:)`` may be called from any thread (the handler serialises changes);
/// ``run(stop:statsFile:statsInterval:)`` and its housekeeping state belong to the thread that runs it.
public final class Balancer: @unchecked Sendable {
    /// The config the balancer started with (its queues and sizes hold for its whole run).
    public let config: BalancerConfig
    public let counters = DatapathCounters()
    public let processor: any PacketProcessor
    /// The connection table, nil for the decapsulator.
    public let tracker: ConnectionTracker?
    /// The balancing handler, nil for the decapsulator.
    public let handler: PacketHandler?
    private let logger: Logger

    /// A balancer for `config`; `tunnelPaths` as for ``PacketHandler/init(config:tracker:registry:tunnelPaths:workers:now:)``.
    public init(config: BalancerConfig, logger: Logger, tunnelPaths: [IPAddress: TunnelPath] = [:]) {
        self.config = config
        self.logger = logger
        let registry = RealServerRegistry()
        var trackerConfiguration = ConnectionTracker.Configuration(
            capacity: config.maxConnections, timeouts: config.timeouts,
            portAllocators: config.portAllocators, localPorts: config.fullnatPorts)
        trackerConfiguration.loads = registry.loads
        let tracker = ConnectionTracker(configuration: trackerConfiguration)
        self.tracker = tracker
        let handler = PacketHandler(config: config, tracker: tracker, registry: registry, tunnelPaths: tunnelPaths,
                                    workers: config.queues.count)
        self.handler = handler
        processor = handler
    }

    /// Serves `config` from now on, keeping every connection to a real server that stays (see
    /// ``PacketHandler/update(to:now:tunnelPaths:)``); the running config is kept when it throws.
    public func update(to config: BalancerConfig, tunnelPaths: [IPAddress: TunnelPath] = [:]) throws(ConfigUpdateError) {
        guard let handler else { throw ConfigUpdateError(reason: "the decapsulator has no services to change") }
        try handler.update(to: config, tunnelPaths: tunnelPaths)
        logger.info("configuration changed", metadata: [
            "services": "\(config.services.map(\.description).joined(separator: " "))",
        ])
    }

    /// The real server's TUN decapsulator on `queues`, for inner packets to `vips`.
    public init(decapsulatingQueues queues: [UInt16], vips: [IPAddress], logger: Logger) {
        config = BalancerConfig(queues: queues, services: [])
        self.logger = logger
        tracker = nil
        handler = nil
        processor = Decapsulator(vips: vips)
    }

    /// Binds every queue (all or none: an error unbinds what was bound and is thrown), runs until `stop` is
    /// raised, then stops the workers, unbinds the queues and writes the stats file a last time.
    public func run(stop: StopSignal, statsFile: String?, statsInterval: Duration = .seconds(1)) throws(QueueError) {
        var sockets: [QueueSocket] = []
        let copyRange = (processor as? PacketHandler)?.headersOnly == true ? PacketHandler.headerCopyRange : 0xFFFF
        let bufferBytes = config.socketBufferMiB << 20
        for queue in config.queues {
            do {
                sockets.append(try QueueSocket(queue: QueueNumber(rawValue: queue), bufferBytes: bufferBytes,
                                               queueLength: config.queueLength, copyRange: copyRange))
            } catch {
                sockets.forEach { $0.close() }
                throw error
            }
        }
        // Each send stays well below the send buffer (DESIGN.md: an EMSGSIZE send loses all its verdicts).
        let sendLimit = min(bufferBytes / 4, 1 << 20)
        let workers = sockets.enumerated().map { index, socket in
            QueueWorker(socket: socket, handler: processor, counters: counters, stop: stop,
                        sendLimit: max(sendLimit, 140_000), index: index)
        }
        let threads = workers.map { WorkerThread.start($0) }
        logger.info(tracker == nil ? "nfqlb decapsulating" : "nfqlb running", metadata: [
            "queues": "\(config.queues.map(String.init).joined(separator: ","))",
            "services": "\(config.services.map(\.description).joined(separator: " "))",
        ])
        var nextStats = ContinuousClock.now
        while !stop.isRaised {
            Thread.sleep(forTimeInterval: 0.1)
            if ContinuousClock.now >= nextStats {
                nextStats = ContinuousClock.now + statsInterval
                housekeeping(statsFile: statsFile)
            }
        }
        threads.forEach { $0.join() }
        // The last stats while the queues are still bound: the kernel's counters vanish with the binding.
        housekeeping(statsFile: statsFile)
        sockets.forEach { $0.close() }
        logger.info("nfqlb stopped", metadata: ["stats": "\(statsLine())"])
    }

    private var exhaustedSeen: UInt64 = 0

    private func housekeeping(statsFile: String?) {
        let now = monotonicMilliseconds()
        let expired = tracker?.expire(now: now) ?? 0
        if expired > 0 { counters.add(.connectionsExpired, UInt64(expired)) }
        if let handler, handler.registry.advance(now: now) {
            let forgotten = handler.tracker.forgetRemovedServers()
            if forgotten > 0 { counters.add(.connectionsForgotten, UInt64(forgotten)) }
        }
        handler?.reclaimRetiredTables()
        let exhausted = counters[.droppedPortsExhausted]
        if exhausted > exhaustedSeen {
            logger.warning("FULLNAT local ports exhausted: new connections refused, existing ones untouched", metadata: [
                "refused": "\(exhausted - exhaustedSeen)",
                "fullnat-ports": "\(config.fullnatPorts.lowerBound)-\(config.fullnatPorts.upperBound)",
                "hint": "widen fullnat-ports or add local-addresses",
            ])
            exhaustedSeen = exhausted
        }
        if let statsFile { writeStats(to: statsFile) }
    }

    /// The counters and gauges as `name value` lines.
    public func statsText() -> String {
        var lines = DatapathCounter.allCases.map { "\($0.name) \(counters[$0])" }
        lines.append("connections_active \(tracker?.count ?? 0)")
        let kernel = KernelQueueStats.read(queues: config.queues)
        lines.append("kernel_queue_dropped \(kernel.queueDropped)")
        lines.append("kernel_user_dropped \(kernel.userDropped)")
        lines.append("kernel_queue_waiting \(kernel.waiting)")
        return lines.joined(separator: "\n") + "\n"
    }

    private func statsLine() -> String {
        statsText().split(separator: "\n").filter { !$0.hasSuffix(" 0") }.joined(separator: ", ")
    }

    private func writeStats(to path: String) {
        let temporary = path + ".tmp"
        do {
            try statsText().write(toFile: temporary, atomically: false, encoding: .utf8)
            _ = rename(temporary, path)
        } catch {
            logger.warning("cannot write the stats file", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }
}

/// The kernel's own counters for our queues, from /proc/net/netfilter/nfnetlink_queue:
/// `queue portid waiting copy_mode copy_range queue_dropped user_dropped id_sequence 1`.
public struct KernelQueueStats: Sendable {
    /// Packets dropped because the queue was full (`queue-length`).
    public var queueDropped: UInt64 = 0
    /// Packets dropped because the netlink socket buffer was full (`socket-buffer-mb`).
    public var userDropped: UInt64 = 0
    /// Packets waiting for a verdict now.
    public var waiting: UInt64 = 0

    public static func read(queues: [UInt16], path: String = "/proc/net/netfilter/nfnetlink_queue") -> KernelQueueStats {
        var stats = KernelQueueStats()
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return stats }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).compactMap { UInt64($0) }
            guard fields.count >= 7, queues.contains(UInt16(truncatingIfNeeded: fields[0])) else { continue }
            stats.waiting += fields[2]
            stats.queueDropped += fields[5]
            stats.userDropped += fields[6]
        }
        return stats
    }
}

/// A pthread running one worker; the worker is retained for the thread's lifetime.
final class WorkerThread {
    private var thread: pthread_t

    private init(thread: pthread_t) { self.thread = thread }

    static func start(_ worker: QueueWorker) -> WorkerThread {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(worker).toOpaque()
        let result = pthread_create(&thread, nil, { context in
            let worker = Unmanaged<QueueWorker>.fromOpaque(context!).takeRetainedValue()
            worker.run()
            return nil
        }, context)
        precondition(result == 0, "pthread_create failed: \(result)")
        return WorkerThread(thread: thread)
    }

    func join() { pthread_join(thread, nil) }
}
