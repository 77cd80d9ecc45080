import Glibc
import Logging

/// Connection sync between balancers, in the spirit of IPVS's sync daemon (docs/ARCHITECTURE.md, "Several
/// balancers"): every balancer sends its own NAT and FULLNAT connections to the others and keeps their copies,
/// so that when the router moves a flow to another balancer (its own is lost), that balancer forwards the
/// flow's next packets exactly as the first did, FULLNAT local port included.
///
/// - Sending (``run(stop:)``, one thread): every `interval` the tracker's connections are compared with what
///   was sent (no work on the packet path): removals first, then new connections, changed states, and
///   connections not sent for `refresh` (so copies never expire while the connection lives). Records go in
///   ``SyncMessage``s of at most 1,400 bytes to every peer, within `max-rate` bytes per second (a token bucket
///   of one second); what does not fit waits for the next interval.
/// - Receiving (a second thread): a datagram counts only if it comes from a configured peer's address, its
///   HMAC verifies under the shared key, and ``SyncReplayWindow`` has not seen it; each record is mapped to the
///   same real server of the same service here and applied (``ConnectionTracker/synced(_:real:now:)``). A
///   sender that restarted (a newer epoch) is sent every connection again at once.
///
/// Only connections this balancer's packets touched are sent: copies from the others are not passed on until a
/// packet makes them this balancer's own (a flow the router moved here), and then they are.
public final class ConnectionSync: Sendable {
    public let settings: ClusterConfig.Sync
    let tracker: ConnectionTracker
    let logger: Logger
    let socket: Int32
    /// This balancer's identity in its messages: a hash of its listen endpoint.
    let sender: UInt32
    /// This run's epoch: the wall clock at start in ms (a restart starts a newer one).
    let epoch: UInt64
    public let counters = Counters()
    /// Raised when ``run(stop:)`` has returned (both threads done): nfqlb waits for it before it exits.
    public let finished = StopSignal()
    private let resendAll = Lock(false)
    /// When this run started (monotonic ms), and the peers (addresses) heard from since.
    private let started = monotonicMilliseconds()
    private let heard = Lock(Set<IPAddress>())

    /// Whether this balancer may take flows: it has heard from every peer (each answers a newly started
    /// balancer with all its connections at its next interval) and three intervals have passed, or 3 s have
    /// passed (peers that are down). The announcer waits for it, so a restarted balancer does not receive
    /// moved flows before their connections.
    public var isReady: Bool {
        let elapsed = monotonicMilliseconds() &- started
        if elapsed >= 3000 { return true }
        return elapsed >= 3 * settings.interval && heard.withLock { $0.count } >= Set(settings.peers.map(\.address)).count
    }

    /// What the sync did since start (`nfqlb cluster status`, metrics).
    public final class Counters: Sendable {
        private let values = Lock([String: UInt64]())
        func add(_ name: String, _ n: UInt64 = 1) { values.withLock { $0[name, default: 0] &+= n } }
        /// Every counter by name: messages-sent, records-sent, records-deferred (over max-rate), send-errors,
        /// messages-received, rejected-foreign (not a peer's address), rejected-invalid (malformed or
        /// authentication failed), rejected-replayed, records-inserted, records-updated, records-removed,
        /// records-ignored, records-failed, records-unknown-server.
        public var snapshot: [String: UInt64] { values.withLock { $0 } }
    }

    public struct SetupError: Error, CustomStringConvertible {
        public var description: String
    }

    public init(settings: ClusterConfig.Sync, tracker: ConnectionTracker, logger: Logger) throws(SetupError) {
        self.settings = settings
        self.tracker = tracker
        self.logger = logger
        let family = settings.listen.address.isIPv4 ? AF_INET : AF_INET6
        let fd = Glibc.socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SetupError(description: "cluster sync: socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var buffer: Int32 = 4 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, socklen_t(MemoryLayout<Int32>.size))
        let bound = SocketAddress(settings.listen).withSockaddr { bind(fd, $0, $1) }
        guard bound == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw SetupError(description: "cluster sync: cannot listen on \(settings.listen): \(reason) (is it this balancer's address?)")
        }
        socket = fd
        let name = Array("\(settings.listen)".utf8)
        sender = name.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 }   // FNV-1a
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        epoch = UInt64(now.tv_sec) * 1000 + UInt64(now.tv_nsec / 1_000_000)
    }

    deinit { close(socket) }

    /// Sends and receives until `stop`.
    public func run(stop: StopSignal) {
        let receiver = WorkerThread.start { [self] in receive(stop: stop) }
        defer {
            receiver.join()
            finished.raise()
        }
        var sent: [FlowKey: (record: SyncRecord, at: UInt64)] = [:]
        var sequence: UInt64 = 0
        var tokens = Double(settings.maxRate)
        var last = monotonicMilliseconds()
        var lastSent: UInt64 = 0
        logger.info("cluster sync running", metadata: [
            "listen": "\(settings.listen)", "peers": "\(settings.peers.map { "\($0)" }.joined(separator: " "))"])
        while !stop.isRaised {
            usleep(UInt32(settings.interval) * 1000)
            let now = monotonicMilliseconds()
            tokens = min(Double(settings.maxRate), tokens + Double(settings.maxRate) * Double(now &- last) / 1000)
            last = now
            if resendAll.withLock({ flag in defer { flag = false }; return flag }) {
                for key in sent.keys { sent[key]?.at = 0 }
            }
            let batch = ConnectionSync.changes(current: tracker.snapshot(), sent: sent, now: now, refresh: settings.refresh)
            var deferred = 0
            // Nothing to send for a second (or just started): an empty message, so that peers know this run
            // (a new one gets their connections) and see it alive.
            let chunks = batch.isEmpty && now &- lastSent >= 1000 ? [0] : Array(stride(from: 0, to: batch.count, by: SyncMessage.maximumRecords))
            for chunk in chunks {
                let records = Array(batch[chunk..<min(batch.count, chunk + SyncMessage.maximumRecords)])
                let bytes = SyncMessage(sender: sender, epoch: epoch, sequence: sequence, records: records.map(\.record))
                    .encoded(key: settings.key)
                guard tokens >= Double(bytes.count) else {
                    deferred += batch.count - chunk
                    break
                }
                tokens -= Double(bytes.count)
                sequence += 1
                var delivered = false
                for peer in settings.peers {
                    let n = bytes.withUnsafeBytes { raw in
                        SocketAddress(peer).withSockaddr { sendto(socket, raw.baseAddress, raw.count, 0, $0, $1) }
                    }
                    if n == bytes.count { delivered = true } else { counters.add("send-errors") }
                }
                guard delivered else { continue }
                lastSent = now
                counters.add("messages-sent")
                counters.add("records-sent", UInt64(records.count))
                for (key, record) in records {
                    if record.operation == .remove { sent[key] = nil } else { sent[key] = (record, now) }
                }
            }
            if deferred > 0 { counters.add("records-deferred", UInt64(deferred)) }
        }
    }

    /// What to send now, most urgent first: removals of connections sent before and gone since, new connections,
    /// changed ones (state or real server), then those last sent `refresh` ms ago or more. Only this balancer's
    /// own NAT and FULLNAT connections (not DR/TUN, not offloaded, not other balancers' untouched copies).
    static func changes(current: [ConnectionTracker.Saved], sent: [FlowKey: (record: SyncRecord, at: UInt64)],
                        now: UInt64, refresh: UInt64) -> [(key: FlowKey, record: SyncRecord)] {
        var removals: [(FlowKey, SyncRecord)] = [], added: [(FlowKey, SyncRecord)] = []
        var changed: [(FlowKey, SyncRecord)] = [], refreshed: [(FlowKey, SyncRecord)] = []
        var live = Set<FlowKey>()
        for c in current where !c.inputOnly && !c.offloaded && !c.fromPeer && c.expires > now {
            live.insert(c.inbound)
            let record = SyncRecord(operation: .update, transport: c.inbound.transport, state: c.state,
                                    client: c.inbound.source, virtual: c.inbound.destination, real: c.reply.source,
                                    local: c.translated ? c.reply.destination : nil,
                                    lifetime: UInt32(clamping: c.expires - now))
            guard let previous = sent[c.inbound] else { added.append((c.inbound, record)); continue }
            if previous.record.state != record.state || previous.record.real != record.real || previous.record.local != record.local {
                changed.append((c.inbound, record))
            } else if now &- previous.at >= refresh {
                refreshed.append((c.inbound, record))
            }
        }
        for (key, previous) in sent where !live.contains(key) {
            var record = previous.record
            record.operation = .remove
            record.lifetime = 0
            removals.append((key, record))
        }
        return (removals + added + changed + refreshed).map { (key: $0.0, record: $0.1) }
    }

    private func receive(stop: StopSignal) {
        var window = SyncReplayWindow()
        var epochs: [UInt32: UInt64] = [:]
        var buffer = [UInt8](repeating: 0, count: 2048)
        let peers = Set(settings.peers.map(\.address))
        while !stop.isRaised {
            var poller = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 200) > 0 else { continue }
            var from = sockaddr_storage()
            var fromLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let n = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(socket, raw.baseAddress, raw.count, 0, $0, &fromLength) }
                }
            }
            guard n > 0 else { continue }
            counters.add("messages-received")
            guard let address = ConnectionSync.address(of: from), peers.contains(address) else {
                counters.add("rejected-foreign")
                continue
            }
            let message: SyncMessage
            switch SyncMessage.decode(Array(buffer[0..<n]), key: settings.key) {
            case .failure:
                counters.add("rejected-invalid")
                continue
            case .success(let decoded): message = decoded
            }
            guard window.accept(sender: message.sender, epoch: message.epoch, sequence: message.sequence) else {
                counters.add("rejected-replayed")
                continue
            }
            heard.withLock { _ = $0.insert(address) }
            if epochs[message.sender] != message.epoch {
                // A peer seen for the first time, or restarted: it gets every connection at the next interval.
                if epochs[message.sender] != nil {
                    logger.notice("cluster sync: a peer restarted; sending it every connection", metadata: ["peer": "\(address)"])
                }
                epochs[message.sender] = message.epoch
                resendAll.withLock { $0 = true }
            }
            apply(message.records)
        }
    }

    /// Applies records to the tracker, each as the same real server of the same service here.
    func apply(_ records: [SyncRecord]) {
        let now = monotonicMilliseconds()
        for record in records {
            let key = RealServerRegistry.Key(vip: record.virtual.address, port: record.virtual.port,
                                             transport: record.transport, real: record.real,
                                             mode: record.local == nil ? .nat : .fullnat)
            guard let real = tracker.registry.number(of: key) else {
                counters.add("records-unknown-server")
                continue
            }
            switch tracker.synced(record, real: real, now: now) {
            case .inserted: counters.add("records-inserted")
            case .updated: counters.add("records-updated")
            case .removed: counters.add("records-removed")
            case .ignored: counters.add("records-ignored")
            case .failed: counters.add("records-failed")
            }
        }
    }

    /// The address a datagram came from.
    static func address(of storage: sockaddr_storage) -> IPAddress? {
        var copy = storage
        return withUnsafeBytes(of: &copy) { raw -> IPAddress? in
            switch Int32(storage.ss_family) {
            case AF_INET:
                let a = raw.load(as: sockaddr_in.self)
                return IPAddress(ipv4: UInt32(bigEndian: a.sin_addr.s_addr))
            case AF_INET6:
                let a = raw.load(as: sockaddr_in6.self)
                let bytes = withUnsafeBytes(of: a.sin6_addr) { Array($0) }
                let high = bytes[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                let low = bytes[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                return IPAddress(high: high, low: low)
            default:
                return nil
            }
        }
    }
}
