import Foundation
import Logging
import Synchronization

/// Runs one ``PacketProcessor`` on the kernel's queues: binds every queue with what the processor declares
/// (copy range, flags), starts one ``QueueWorker`` thread per queue, and runs the housekeeping loop on the
/// calling thread (the processor's housekeeping, the statistics file, the caller's own step) every second.
/// The balancer (``Balancer``) and the real server's decapsulator (`nfqlb decap`) are both this runtime.
///
/// Threads: the workers share the processor and ``counters`` (atomics, added once per batch); nothing else
/// is shared with them. See docs/ARCHITECTURE.md, "Threads and locks".
public final class QueueRuntime<Processor: PacketProcessor>: Sendable {
    public let processor: Processor
    public let queues: [QueueNumber]
    public let counters = DatapathCounters()
    /// The same counts per queue, in ``queues`` order (for the metrics' `queue` label).
    public let queueCounters: [DatapathCounters]
    private let queueLength: UInt32
    private let bufferBytes: Int
    private let logger: Logger

    /// - Parameters:
    ///   - queueLength: kernel queue length per queue (`queue-length`).
    ///   - socketBufferMiB: netlink receive and send buffer per queue (`socket-buffer-mb`).
    public init(processor: Processor, queues: [UInt16], queueLength: UInt32, socketBufferMiB: Int, logger: Logger) {
        self.processor = processor
        self.queues = queues.map(QueueNumber.init(rawValue:))
        queueCounters = queues.map { _ in DatapathCounters() }
        self.queueLength = queueLength
        bufferBytes = socketBufferMiB << 20
        self.logger = logger
    }

    /// Binds every queue (all or none: an error unbinds what was bound and is thrown), runs until `stop` is
    /// raised, then stops the workers and unbinds the queues. Every `interval` (and once more at the end, while
    /// the queues are still bound: the kernel's counters vanish with the binding) it runs the processor's
    /// housekeeping, then `housekeeping`, then writes `statistics`.
    /// `metadata` goes into the log line that says the queues are bound; `bound` runs right after it (it may
    /// raise `stop`).
    public func run(stop: StopSignal, statistics: StatisticsWriter?, interval: Duration = .seconds(1),
                    metadata: Logger.Metadata = [:], bound: () -> Void = {},
                    housekeeping: () -> Void = {}) throws(QueueError) {
        var sockets: [QueueSocket] = []
        for queue in queues {
            do {
                sockets.append(try QueueSocket(queue: queue, bufferBytes: bufferBytes, queueLength: queueLength,
                                               copyRange: processor.copyRange, flags: processor.queueFlags))
            } catch {
                sockets.forEach { $0.close() }
                throw error
            }
        }
        // Each send stays well below the send buffer: an EMSGSIZE send loses every verdict in it.
        let sendLimit = max(min(bufferBytes / 4, 1 << 20), 140_000)
        let threads = sockets.enumerated().map { index, socket in
            WorkerThread.start(QueueWorker(socket: socket, processor: processor, counters: counters,
                                           queueCounters: queueCounters[index], stop: stop,
                                           sendLimit: sendLimit, index: index, connections: connectionWriter()))
        }
        logger.info("running", metadata: metadata.merging([
            "queues": "\(queues.map(\.description).joined(separator: ","))",
            "copy-range": "\(processor.copyRange)",
        ]) { a, _ in a })
        bound()
        var next = ContinuousClock.now
        while !stop.isRaised {
            Thread.sleep(forTimeInterval: 0.1)
            if ContinuousClock.now >= next {
                next = ContinuousClock.now + interval
                step(statistics, housekeeping)
            }
        }
        threads.forEach { $0.join() }
        step(statistics, housekeeping)
        sockets.forEach { $0.close() }
        logger.info("stopped", metadata: ["stats": "\(self.statistics().summary)"])
    }

    /// A worker's ``ConntrackWriter`` when the processor creates kernel connections; nil (with a warning) when
    /// ctnetlink cannot be opened.
    private func connectionWriter() -> ConntrackWriter? {
        guard processor.createsKernelConnections else { return nil }
        do {
            return ConntrackWriter(socket: try ConntrackSocket.requests())
        } catch {
            logger.warning("DR connections on the conntrack fast path are left to the kernel's pickup", metadata: ["reason": "\(error)"])
            return nil
        }
    }

    private func step(_ statistics: StatisticsWriter?, _ housekeeping: () -> Void) {
        processor.housekeeping(now: monotonicMilliseconds(), counters: counters)
        housekeeping()
        if let statistics { write(statistics) }
    }

    /// The counters, the processor's gauges and the kernel's counters for these queues, now.
    public func statistics() -> Statistics {
        Statistics(counters: counters, gauges: processor.gauges, kernel: KernelQueueStats.read(queues: queues))
    }

    private func write(_ writer: StatisticsWriter) {
        do {
            try writer.write(statistics())
        } catch {
            logger.warning("cannot write the stats file", metadata: ["path": "\(writer.path)", "error": "\(error)"])
        }
    }
}

/// A pthread running one worker; the worker is retained for the thread's lifetime.
final class WorkerThread {
    private var thread: pthread_t

    private init(thread: pthread_t) { self.thread = thread }

    static func start<Processor>(_ worker: QueueWorker<Processor>) -> WorkerThread {
        start(worker.run)
    }

    /// A thread running `run`.
    static func start(_ run: @escaping () -> Void) -> WorkerThread {
        var thread = pthread_t()
        // The start routine cannot be generic or capture: the run loop comes through the context.
        let body = Unmanaged.passRetained(WorkerBody(run)).toOpaque()
        let result = pthread_create(&thread, nil, { context in
            Unmanaged<WorkerBody>.fromOpaque(context!).takeRetainedValue().run()
            return nil
        }, body)
        precondition(result == 0, "pthread_create failed: \(result)")
        return WorkerThread(thread: thread)
    }

    func join() { pthread_join(thread, nil) }

    private final class WorkerBody {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
}

/// A flag a signal handler raises and loops poll: the stop request shared by the workers and the
/// housekeeping loop, or the CLI's reload request.
public final class StopSignal: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public func raise() { flag.store(true, ordering: .relaxed) }
    public func clear() { flag.store(false, ordering: .relaxed) }
    public var isRaised: Bool { flag.load(ordering: .relaxed) }
}
