import Logging
import Synchronization

/// A running balancer: the ``PacketHandler`` of a configuration (one connection tracker and real-server
/// registry shared by every queue) on a ``QueueRuntime``, with live config changes and the balancer's own
/// housekeeping words in the log.
///
/// Sendable: ``update(to:tunnelPaths:)`` may be called from any thread (the handler serialises changes);
/// ``run(stop:statsFile:)`` belongs to the thread that runs it.
public final class Balancer: Sendable {
    /// The config the balancer started with (its queues and sizes hold for its whole run).
    public let config: BalancerConfig
    public let handler: PacketHandler
    private let runtime: QueueRuntime<PacketHandler>
    private let logger: Logger
    /// FULLNAT port exhaustion already reported (the counter's value at the last warning).
    private let exhaustionReported = Atomic<UInt64>(0)
    /// The TUN paths resolved at start (a reload resolves those of real servers added since, each time).
    private let tunnelPaths: [IPAddress: TunnelPath]
    /// While ``run(stop:statsFile:)`` runs: its stop signal, and the conntrack fast path's monitor thread once
    /// a service is offloaded (started by `run`, or by the config change that adds the first such service).
    private let running = Lock<(stop: StopSignal, monitor: WorkerThread?)?>(nil)
    /// Where the connections are saved on stop and were restored from (`--state-file`).
    private let stateFile: String?

    /// A balancer for `config`; `tunnelPaths` as for ``PacketHandler/init(config:tracker:tunnelPaths:workers:now:)``.
    /// With a `stateFile`, the connections and persistence templates a previous nfqlb saved there on SIGTERM
    /// are taken back (``BalancerState``), and ``run(stop:statsFile:)`` saves them there when it stops.
    public init(config: BalancerConfig, logger: Logger, tunnelPaths: [IPAddress: TunnelPath] = [:],
                stateFile: String? = nil) {
        self.config = config
        self.logger = logger
        self.tunnelPaths = tunnelPaths
        self.stateFile = stateFile
        var saved: BalancerState?
        if let stateFile {
            do {
                saved = try BalancerState.take(from: stateFile, for: config)
            } catch {
                logger.warning("state file ignored: connections of the previous run are not restored", metadata: [
                    "path": "\(stateFile)", "reason": "\(error)"])
            }
        }
        handler = PacketHandler(config: config, tracker: ConnectionTracker(config: config, hashSeed: config.cluster?.sync?.trackerSeed ?? saved?.hashSeed),
                                tunnelPaths: tunnelPaths, workers: config.allQueues.count)
        if let saved, let stateFile {
            let report = handler.restore(saved, now: monotonicMilliseconds())
            logger.info("state restored", metadata: [
                "path": "\(stateFile)", "connections": "\(report.connections)", "templates": "\(report.templates)",
                "dropped-real-servers-gone": "\(report.orphaned)", "dropped-expired-or-unplaceable": "\(report.failed)"])
        }
        runtime = QueueRuntime(processor: handler, queues: config.allQueues, queueLength: config.queueLength,
                               socketBufferMiB: config.socketBufferMiB, logger: logger)
    }

    /// The datapath's counters.
    public var counters: DatapathCounters { runtime.counters }

    /// The datapath's counters of each queue.
    public var queueCounters: [(queue: QueueNumber, counters: DatapathCounters)] {
        Array(zip(runtime.queues, runtime.queueCounters))
    }

    /// Serves `config` from now on, keeping every connection to a real server that stays (see
    /// ``PacketHandler/update(to:now:tunnelPaths:)``); the running config is kept when it throws. `tunnelPaths`
    /// adds to (or replaces) the paths resolved at start.
    public func update(to config: BalancerConfig, tunnelPaths: [IPAddress: TunnelPath] = [:]) throws(ConfigUpdateError) {
        try handler.update(to: config, tunnelPaths: self.tunnelPaths.merging(tunnelPaths) { _, given in given })
        startOffloadMonitorIfNeeded()
        logger.info("configuration changed", metadata: [
            "services": "\(config.services.map(\.description).joined(separator: " "))",
        ])
    }

    /// Serves `config` from now on, resolving first the tunnel paths of TUN real servers not known yet (what a
    /// reload and a live change do; ``ControlPlane``). The running config is kept when it throws.
    public func change(to config: BalancerConfig) throws(ChangeRefused) {
        let paths: [IPAddress: TunnelPath]
        do {
            paths = try TunnelPath.paths(for: config, known: tunnelPaths)
        } catch {
            throw ChangeRefused(reason: "\(error)")
        }
        do {
            try update(to: config, tunnelPaths: paths)
        } catch {
            throw ChangeRefused(reason: error.reason)
        }
    }

    /// A configuration the running balancer cannot serve, and why.
    public struct ChangeRefused: Error, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    /// Binds the queues and balances until `stop` is raised (see ``QueueRuntime/run(stop:statistics:interval:housekeeping:)``).
    /// `bound` runs once the queues are bound (the CLI opens its control socket and metrics listener there, so
    /// that a missing CAP_NET_ADMIN is what an unprivileged start reports).
    public func run(stop: StopSignal, statsFile: String?, bound: () -> Void = {}) throws(QueueError) {
        running.withLock { $0 = (stop, nil) }
        startOffloadMonitorIfNeeded()
        defer {
            let monitor = running.withLock { running in
                defer { running = nil }
                return running?.monitor
            }
            monitor?.join()
        }
        try runtime.run(stop: stop, statistics: statsFile.map(StatisticsWriter.init(path:)), metadata: [
            "services": "\(config.services.map(\.description).joined(separator: " "))",
        ], bound: bound) {
            reportPortExhaustion()
        }
        saveState()
    }

    /// After the workers stopped: the connections and templates to the state file, for the next nfqlb.
    private func saveState() {
        guard let stateFile else { return }
        let state = handler.savedState(now: monotonicMilliseconds())
        do {
            try state.write(to: stateFile)
            logger.info("state saved for the next start", metadata: [
                "path": "\(stateFile)", "connections": "\(state.connections.count)", "templates": "\(state.templates.count)"])
        } catch {
            logger.error("state not saved: connections will not survive the restart", metadata: [
                "path": "\(stateFile)", "error": "\(error)"])
        }
    }

    /// Starts the ``OffloadMonitor`` when the balancer runs, serves an offloaded service and has none yet.
    private func startOffloadMonitorIfNeeded() {
        guard handler.config.services.contains(where: { $0.offload == .conntrack }) else { return }
        running.withLock { running in
            guard let stop = running?.stop, running?.monitor == nil else { return }
            let monitor = OffloadMonitor(handler: handler, counters: runtime.counters,
                                         bufferBytes: max(config.socketBufferMiB, 8) << 20, logger: logger)
            running?.monitor = WorkerThread.start { monitor.run(stop: stop) }
        }
    }

    /// The statistics now, as the stats file holds them.
    public func statsText() -> String { runtime.statistics().text }

    /// FULLNAT: refused connections for want of local ports are worth one warning per second at most.
    private func reportPortExhaustion() {
        let exhausted = runtime.counters[.droppedPortsExhausted]
        let reported = exhaustionReported.exchange(exhausted, ordering: .relaxed)
        guard exhausted > reported else { return }
        logger.warning("FULLNAT local ports exhausted: new connections refused, existing ones untouched", metadata: [
            "refused": "\(exhausted - reported)",
            "fullnat-ports": "\(config.fullnatPorts.lowerBound)-\(config.fullnatPorts.upperBound)",
            "hint": "widen fullnat-ports or add local-addresses",
        ])
    }
}
