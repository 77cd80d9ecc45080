import Foundation
import Logging
import Synchronization

/// The kernel's connections on the conntrack fast path as nfqlb counts them: which real server each belongs
/// to and whether it is active, kept from the kernel's events (``ConntrackEntry``) since nfqlb sees only their
/// first packet. Every change goes into the real server's ``RealServerLoad`` (ActiveConn/InActConn, so the
/// connection-counting schedulers and the thresholds work as on the Swift path) and, when a connection ends,
/// its traffic from the kernel's accounting.
///
/// Pure logic over entries (the unit tests feed it); ``OffloadMonitor`` feeds it the kernel's events.
/// Invariant: every connection in ``connections`` is counted exactly once in its real server's load, as active
/// when its TCP state is ESTABLISHED, as inactive otherwise.
struct OffloadLedger {
    struct Connection: Equatable, Sendable {
        var real: RealServerID
        var active: Bool
    }

    let registry: RealServerRegistry
    /// By original tuple (client -> VIP), which is also what a deletion names.
    private(set) var connections: [FlowKey: Connection] = [:]

    init(registry: RealServerRegistry) { self.registry = registry }

    enum Change: Equatable {
        /// Nothing changed, or not a connection of nfqlb's (no mark).
        case none
        /// A connection with a mark that names no real server of `owners` (a config change may have added it).
        case notOwned
        case opened(RealServerID)
        case changed(RealServerID)
        case closed(RealServerID)
    }

    /// Applies one event. A new or updated entry of an unknown connection whose mark names a real server in
    /// `owners` opens it (an update too: its new event may have been lost); a destroyed one closes it.
    mutating func apply(_ entry: ConntrackEntry, owners: [OffloadOwner: RealServerID]) -> Change {
        let key = entry.original
        let known = connections[key]
        if entry.kind == .destroy {
            guard let known else { return .none }
            connections[key] = nil
            let load = registry[known.real]
            load.add(-1, active: known.active)
            load.addOffloaded(RealServerLoad.Traffic(
                packetsIn: entry.originalPackets ?? 0, bytesIn: entry.originalBytes ?? 0,
                packetsOut: entry.replyPackets ?? 0, bytesOut: entry.replyBytes ?? 0))
            return .closed(known.real)
        }
        let active = key.transport == .tcp && (entry.tcpState.map { $0 == ConntrackLayout.tcpEstablished } ?? known?.active ?? false)
        if let known {
            guard known.active != active else { return .none }
            registry[known.real].add(-1, active: known.active)
            registry[known.real].add(1, active: active)
            connections[key]?.active = active
            return .changed(known.real)
        }
        guard entry.mark.rawValue & ConntrackOffload.markMask.rawValue != 0 else { return .none }
        guard let real = owners.owner(of: entry) else { return .notOwned }
        connections[key] = Connection(real: real, active: active)
        registry[real].add(1, active: active)
        return .opened(real)
    }

    /// Makes the ledger what a full dump of the kernel's connections says: dumped connections are opened or
    /// updated, known ones missing from it are closed (without traffic: the kernel's accounting went with them).
    mutating func reconcile(with dump: [ConntrackEntry], owners: [OffloadOwner: RealServerID]) -> (opened: Int, closed: Int) {
        var opened = 0, closed = 0
        var present = Set<FlowKey>()
        for entry in dump {
            present.insert(entry.original)
            if case .opened = apply(entry, owners: owners) { opened += 1 }
        }
        for (key, connection) in connections where !present.contains(key) {
            connections[key] = nil
            registry[connection.real].add(-1, active: connection.active)
            closed += 1
        }
        return (opened, closed)
    }

    /// The connections whose real server's drain has ended (``RealServerLifecycle/removed``): the kernel
    /// entries to delete.
    func orphans() -> [FlowKey] {
        var removed: [RealServerID: Bool] = [:]
        return connections.compactMap { key, connection in
            let gone = removed[connection.real] ?? (registry[connection.real].lifecycle == .removed)
            removed[connection.real] = gone
            return gone ? key : nil
        }
    }

    /// Closes a connection the kernel no longer has (its destroy event was lost).
    mutating func forget(_ key: FlowKey) {
        guard let known = connections.removeValue(forKey: key) else { return }
        registry[known.real].add(-1, active: known.active)
    }

    var count: Int { connections.count }
}

/// Keeps the ``OffloadLedger`` of a running balancer from the kernel's conntrack events, on its own thread:
/// reads every existing connection at start (a restarted nfqlb finds the connections the kernel kept), then
/// each event; reads them all again when the kernel reports lost events; once a second deletes the kernel
/// connections of real servers whose drain has ended. Leaves every other connection alone, also when nfqlb
/// stops (the kernel keeps carrying them). See docs/ARCHITECTURE.md, "The conntrack fast path".
final class OffloadMonitor: @unchecked Sendable {
    private let handler: PacketHandler
    private let counters: DatapathCounters
    private let logger: Logger
    private let bufferBytes: Int
    /// Owned by the monitor's thread (the reason for `@unchecked Sendable`: nothing else touches it).
    private var ledger: OffloadLedger

    /// How long the monitor lets events gather after a batch that did not fill its vectors.
    static let gatherInterval = 0.002

    init(handler: PacketHandler, counters: DatapathCounters, bufferBytes: Int, logger: Logger) {
        self.handler = handler
        self.counters = counters
        self.bufferBytes = bufferBytes
        self.logger = logger
        ledger = OffloadLedger(registry: handler.registry)
    }

    /// Runs until `stop` is raised; returns early, with an error in the log, when ctnetlink cannot be opened
    /// (the kernel still carries the connections; only the counts are missing).
    func run(stop: StopSignal) {
        let events: ConntrackSocket, requests: ConntrackSocket
        do {
            events = try ConntrackSocket.events(bufferBytes: bufferBytes)
            requests = try ConntrackSocket.requests()
        } catch {
            logger.error("conntrack fast path: no connection counts", metadata: ["reason": "\(error)"])
            return
        }
        let found = resynchronize(requests)
        logger.info("conntrack fast path: following the kernel's connections", metadata: ["existing": "\(found)"])
        let batch = ReceiveBatch(capacity: 64, messageSize: 8192)
        var owners = handler.offloadOwners
        var next = ContinuousClock.now + .seconds(1)
        while !stop.isRaised {
            switch events.receive(into: batch) {
            case .messages(let n):
                for index in 0..<n {
                    ConntrackSocket.forEachMessage(in: UnsafeRawBufferPointer(batch.message(index))) { message in
                        guard let entry = ConntrackEntry.parse(message) else { return }
                        var change = ledger.apply(entry, owners: owners)
                        if change == .notOwned {
                            owners = handler.offloadOwners           // a config change may have added the owner
                            change = ledger.apply(entry, owners: owners)
                        }
                        count(change)
                    }
                }
                if n > 0 { handler.offloadedConnections.store(ledger.count, ordering: .relaxed) }
                // Counts may lag by a few milliseconds: let events gather rather than wake for each one (at
                // thousands of connections a second, a wake-up per event costs more than the events).
                if n > 0 && n < batch.capacity { Thread.sleep(forTimeInterval: Self.gatherInterval) }
            case .overrun:
                counters.add(.offloadEventsLost)
                owners = handler.offloadOwners
                _ = resynchronize(requests)
            case .failed(let errno):
                logger.error("conntrack events: receive failed", metadata: ["errno": "\(errno)"])
                return
            }
            if ContinuousClock.now >= next {
                next = ContinuousClock.now + .seconds(1)
                owners = handler.offloadOwners
                deleteOrphans(requests)
                handler.offloadedConnections.store(ledger.count, ordering: .relaxed)
            }
        }
    }

    private func count(_ change: OffloadLedger.Change) {
        switch change {
        case .opened: counters.add(.offloadConnectionsNew)
        case .closed: counters.add(.offloadConnectionsClosed)
        case .changed, .none, .notOwned: break
        }
    }

    /// Reads every kernel connection and reconciles the ledger with them; returns how many are nfqlb's.
    private func resynchronize(_ requests: ConntrackSocket) -> Int {
        do {
            let (opened, closed) = ledger.reconcile(with: try requests.dump(), owners: handler.offloadOwners)
            counters.add(.offloadConnectionsNew, UInt64(opened))
            counters.add(.offloadConnectionsClosed, UInt64(closed))
        } catch {
            logger.error("conntrack fast path: cannot read the kernel's connections", metadata: ["reason": "\(error)"])
        }
        handler.offloadedConnections.store(ledger.count, ordering: .relaxed)
        return ledger.count
    }

    /// Deletes the kernel connections of real servers whose drain ended; their destroy events close them in
    /// the ledger.
    private func deleteOrphans(_ requests: ConntrackSocket) {
        let orphans = ledger.orphans()
        guard !orphans.isEmpty else { return }
        var deleted = 0
        for original in orphans {
            do {
                if try requests.delete(original) { deleted += 1 } else { ledger.forget(original) }
            } catch {
                logger.warning("conntrack fast path: cannot delete a drained connection", metadata: ["reason": "\(error)"])
                break
            }
        }
        counters.add(.offloadConnectionsDeleted, UInt64(deleted))
        logger.info("conntrack fast path: drained real servers' connections deleted", metadata: ["count": "\(deleted)"])
    }
}
