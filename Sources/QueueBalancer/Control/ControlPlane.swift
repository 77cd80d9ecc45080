import Foundation
import Logging

/// What the control socket's verbs do to a running ``Balancer`` (docs/ARCHITECTURE.md, "Operating it live"):
/// `list`, `connections`, `zero`, `reload`, `save`, `service.add|edit|delete`, `real.add|edit|delete`.
///
/// Every change goes the same way: made on the running config's ``ConfigDocument``, validated by
/// ``ConfigLoader`` as the file is, its iptables rules installed first (when nfqlb manages them:
/// ``RulesInstaller``), then served (``Balancer/change(to:)``). A refused change leaves everything as it was.
/// Live changes are layered on the file (``ConfigChange``): kept across reloads for what the file does not set.
///
/// Threads: any; one request at a time (the lock also serialises SIGHUP's reload). The packet path never
/// waits for it: the workers take no lock held here.
public final class ControlPlane: Sendable {
    public let balancer: Balancer
    /// The config file a reload reads.
    public let configPath: String
    /// Where rules are kept in step with the config; nil when nfqlb does not manage them.
    private let rules: RulesInstaller?
    private let logger: Logger
    private let state: Lock<State>
    /// The health checks (nil: none run); their transitions come back through ``healthChanged(_:_:reason:)``.
    public let health: HealthChecker?
    /// `notify` programs run one at a time, in the order of the transitions.
    private let notifications = DispatchQueue(label: "nfqlb.notify")
    /// The last failure restoring DR routes (logged once).
    private let routeFailure = Lock<String?>(nil)
    /// The cluster's announcer, when the config has a `cluster:` section (``attach(_:)``).
    private let announcer = Lock<ClusterAnnouncer?>(nil)

    /// The cluster's connection sync, when the config has `cluster.sync` (``attach(sync:)``).
    private let sync = Lock<ConnectionSync?>(nil)

    /// Hands the `cluster.*` commands to `announcer`.
    public func attach(_ announcer: ClusterAnnouncer) { self.announcer.withLock { $0 = announcer } }

    /// Reports `sync`'s counters in `cluster.status` and the metrics.
    public func attach(sync: ConnectionSync) { self.sync.withLock { $0 = sync } }

    /// The connection sync's counters by name (nil without `cluster.sync`).
    public var syncCounters: [String: UInt64]? { sync.withLock { $0 }?.counters.snapshot }

    /// The cluster's announcements (nil without a `cluster:` section): the operator's switch, and each VIP's
    /// state as BIRD last reported it.
    public var clusterStatus: (withdrawn: Bool, announced: [IPAddress: Bool])? { announcer.withLock { $0 }?.status }

    /// The configuration as configured (the file with live changes; health verdicts not applied).
    public var configuration: BalancerConfig { state.withLock { $0.configured } }

    struct State {
        /// The file as last loaded successfully.
        var file: BalancerConfig
        /// The file with the live changes: what `save` writes. The balancer serves it with the health checks'
        /// verdicts applied (``HealthChecker/served(_:down:)``).
        var configured: BalancerConfig
        /// Each service's quorum, while it has one.
        var quorums: [ConfigChange.ServiceID: QuorumState] = [:]
        /// Live changes to what the file does not define, in order (re-applied on reload).
        var overlay: [ConfigChange] = []
        /// Earlier running configs whose leaving real servers may still need their rules.
        var retained: [BalancerConfig] = []
        /// The rule lines installed last (nil: not yet by this process).
        var installed: Set<String>?
        /// Per-real-server totals of the last seconds (newest last), for `--rate`.
        var samples: [(time: UInt64, totals: [RealServerRegistry.Key: TrafficTotals])] = []
        var reloads: (succeeded: UInt64, failed: UInt64, lastGood: Date?) = (0, 0, nil)
        /// Each real server's lifecycle at the last tick, for the drain lines of the log.
        var lifecycles: [RealServerRegistry.Key: RealServerLifecycle] = [:]
    }

    /// A request the plane refuses, with the protocol's error code.
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public var code: ControlErrorCode
        public var message: String
        public init(_ code: ControlErrorCode, _ message: String) {
            self.code = code
            self.message = message
        }
        public var description: String { message }
    }

    /// - Parameter rules: nil when nfqlb must not touch the rules (they were not installed by iptables-setup.sh).
    public init(balancer: Balancer, configPath: String, rules: RulesInstaller?, logger: Logger, health: HealthChecker? = nil) {
        self.balancer = balancer
        self.configPath = configPath
        self.rules = rules
        self.logger = logger
        self.health = health
        let config = balancer.handler.config
        state = Lock(State(file: config, configured: config))
        guard let health else { return }
        health.onTransition { [weak self] key, status, reason in self?.healthChanged(key, status, reason: reason) }
        health.update(config, now: monotonicMilliseconds())
        // Servers that start down (`initial: down`) are served so from the start; otherwise nothing changes.
        guard HealthChecker.served(config, down: health.down) != config else { return }
        state.withLock { state in
            do throws(Failure) {
                try serve(configured: config, state: &state)
            } catch {
                logger.error("the health checks' initial state could not be served", metadata: ["reason": "\(error.message)"])
            }
        }
    }

    /// Reloads: what the control socket's and SIGHUP's reload do.
    public var reloadCounts: (succeeded: UInt64, failed: UInt64, lastGood: Date?) { state.withLock { $0.reloads } }

    // MARK: - Requests

    /// The answer to one request from user `uid`.
    public func answer(_ request: ControlRequest, uid: UInt32) -> ControlAnswer {
        do {
            return .success(id: request.id, result: try perform(request, uid: uid))
        } catch {
            return .failure(id: request.id, code: error.code, message: error.message)
        }
    }

    func perform(_ request: ControlRequest, uid: UInt32) throws(Failure) -> JSONValue {
        let args = request.args
        switch request.cmd {
        case "list":
            return list(service: try args["service"].map { v throws(Failure) in try Self.serviceID(v) })
        case "connections":
            return try connections(args)
        case "zero":
            return zero(service: try args["service"].map { v throws(Failure) in try Self.serviceID(v) }, uid: uid)
        case "reload":
            return try reload(uid: uid)
        case "save":
            return try save(format: args["format"]?.string ?? "yaml")
        case "service.add", "service.edit", "service.delete":
            guard let fields = args["service"]?.object else { throw Failure(.badArgument, "\(request.cmd) needs \"service\": {protocol, vip, port, ...}") }
            let id = try Self.serviceID(.object(fields))
            let change: ConfigChange = switch request.cmd {
            case "service.add": .addService(id, fields: fields)
            case "service.edit": .editService(id, fields: fields)
            default: .deleteService(id)
            }
            return try make(change, uid: uid)
        case "real.add", "real.edit", "real.delete":
            guard let service = args["service"], let real = args["real"]?.object else {
                throw Failure(.badArgument, "\(request.cmd) needs \"service\": {protocol, vip, port} and \"real\": {address, port, ...}")
            }
            let id = try Self.serviceID(service)
            guard let address = real["address"]?.string.flatMap(IPAddress.init) else {
                throw Failure(.badArgument, "real.address must be an IP address")
            }
            var port = id.endpoint.port
            if let value = real["port"] {
                guard let n = value.integer, (1...65535).contains(n) else { throw Failure(.badArgument, "real.port must be a number in 1...65535") }
                port = UInt16(n)
            }
            let endpoint = Endpoint(address: address, port: port)
            let fields = real.filter { $0.key != "address" && $0.key != "port" }
            let change: ConfigChange = switch request.cmd {
            case "real.add": .addReal(id, endpoint, fields: fields)
            case "real.edit": .editReal(id, endpoint, fields: fields)
            default: .deleteReal(id, endpoint)
            }
            return try make(change, uid: uid)
        case "cluster.status", "cluster.withdraw", "cluster.announce":
            let announcer = announcer.withLock { $0 }
            guard announcer != nil || (request.cmd == "cluster.status" && syncCounters != nil) else {
                throw Failure(.refused, syncCounters == nil ? "this balancer has no cluster: section"
                                                           : "this balancer announces nothing (its cluster is sync only)")
            }
            var status: [String: JSONValue] = ["announces": .bool(announcer != nil)]
            if let announcer {
                if request.cmd != "cluster.status" {
                    announcer.setWithdrawn(request.cmd == "cluster.withdraw")
                    logger.notice("cluster switched through the control socket", metadata: ["command": "\(request.cmd)", "uid": "\(uid)"])
                }
                let (withdrawn, announced) = announcer.status
                status["withdrawn"] = .bool(withdrawn)
                status["vips"] = .array(RoutingConfig.vips(configuration).map { vip in
                    .object(["vip": .string("\(vip)"), "protocol": .string(ClusterConfig.protocolName(for: vip)),
                             "announced": .bool(announced[vip] ?? false)])
                })
            }
            if let counters = syncCounters {
                status["sync"] = .object(counters.mapValues { JSONValue(Int(clamping: $0)) })
            }
            return .object(status)
        default:
            throw Failure(.unknownCommand, "unknown command '\(request.cmd)' (expected one of: \(ControlRequest.commands.joined(separator: ", ")))")
        }
    }

    /// `{protocol, vip, port}` as a service identity.
    static func serviceID(_ value: JSONValue) throws(Failure) -> ConfigChange.ServiceID {
        guard let transport = value["protocol"]?.string.flatMap({ text in TransportProtocol.allCases.first { "\($0)" == text } }),
              let vip = value["vip"]?.string.flatMap(IPAddress.init),
              let port = value["port"]?.integer, (1...65535).contains(port) else {
            throw Failure(.badArgument, "a service is named by {\"protocol\": \"tcp\"|\"udp\", \"vip\": ADDRESS, \"port\": 1-65535}")
        }
        return ConfigChange.ServiceID(transport: transport, endpoint: Endpoint(address: vip, port: UInt16(port)))
    }

    // MARK: - Changes

    /// Makes one live change (validated, rules first, then served), or refuses it leaving everything as it was.
    func make(_ change: ConfigChange, uid: UInt32) throws(Failure) -> JSONValue {
        try state.withLock { state throws(Failure) in
            let running = state.configured
            let document: JSONValue
            do throws(ConfigChange.Refusal) {
                document = try change.apply(to: ConfigDocument.document(running))
            } catch {
                throw Failure(.refused, error.reason)
            }
            let config: BalancerConfig
            do throws(ConfigError) {
                config = try ConfigDocument.config(document)
            } catch {
                throw Failure(.invalid, error.reason)
            }
            try serve(configured: config, state: &state)
            if !change.isDefined(by: state.file) { state.overlay.append(change) }
            logger.notice("configuration changed through the control socket", metadata: [
                "change": "\(change.summary)", "uid": "\(uid)"])
            return .object(["services": JSONValue(config.services.count)])
        }
    }

    /// Makes `configured` the configuration: the health checks follow it, the rules it needs (beside those of
    /// servers still leaving) are installed, then it is served with the health checks' verdicts applied.
    private func serve(configured: BalancerConfig, state: inout State) throws(Failure) {
        let previous = balancer.handler.config
        health?.update(configured, now: monotonicMilliseconds())
        let config = HealthChecker.served(configured, down: health?.down ?? [])
        do throws(Failure) {
            let merged = Self.rulesConfig(running: config, retained: state.retained + [previous], registry: balancer.handler.registry)
            do {
                try installRules(merged, state: &state)
            } catch {
                throw Failure(.rules, error.description)
            }
            do {
                try balancer.change(to: config)
            } catch {
                throw Failure(.refused, "\(error)")
            }
        } catch {
            health?.update(state.configured, now: monotonicMilliseconds())
            throw error
        }
        if previous != config { state.retained.append(previous) }
        state.configured = configured
        updateQuorums(&state)
    }

    /// A real server's health changed: logged once with the probe's reason, served (quiesced, removed or back),
    /// and passed to the service's `notify` programs.
    func healthChanged(_ key: RealServerRegistry.Key, _ status: HealthState.Status, reason: String) {
        logger.notice(status == .down ? "real server down" : "real server up", metadata: [
            "real-server": "\(key)", "reason": "\(reason)"])
        state.withLock { state in
            // Queued before serving: a quorum change that this transition causes is notified after it.
            let programs = state.configured.services.first { ConfigChange.ServiceID($0) == key.serviceID }?.notify ?? []
            notify(programs, kind: "real-server", name: "\(key.serviceID)/\(key.real)", status: "\(status)")
            do throws(Failure) {
                try serve(configured: state.configured, state: &state)
            } catch {
                logger.error("a health transition could not be served", metadata: ["real-server": "\(key)", "reason": "\(error.message)"])
            }
        }
    }

    /// Each service's quorum against the weight of its up real servers; a change is logged and notified.
    private func updateQuorums(_ state: inout State) {
        let down = health?.down ?? []
        var seen = Set<ConfigChange.ServiceID>()
        for service in state.configured.services {
            guard let quorum = service.quorum else { continue }
            let id = ConfigChange.ServiceID(service)
            seen.insert(id)
            let upWeight = service.reals.filter { !down.contains(RealServerRegistry.Key(service: service, real: $0)) }
                .reduce(0) { $0 + Int($1.weight) }
            guard var current = state.quorums[id], current.minWeight == quorum.minWeight, current.hysteresis == quorum.hysteresis else {
                state.quorums[id] = QuorumState(minWeight: quorum.minWeight, hysteresis: quorum.hysteresis, upWeight: upWeight)
                continue
            }
            if let up = current.update(upWeight: upWeight) {
                logger.notice(up ? "service quorum regained" : "service quorum lost", metadata: [
                    "service": "\(id)", "up-weight": "\(upWeight)", "min-weight": "\(quorum.minWeight)"])
                notify(service.notify, kind: "service", name: "\(id)", status: up ? "up" : "down")
            }
            state.quorums[id] = current
        }
        for id in state.quorums.keys where !seen.contains(id) { state.quorums[id] = nil }
    }

    /// Runs each program with KIND NAME STATE, without a shell, one after another (10 s each at most).
    private func notify(_ programs: [String], kind: String, name: String, status: String) {
        guard !programs.isEmpty else { return }
        let logger = logger
        notifications.async {
            for program in programs {
                let result = ProbeCommand.run([program, kind, name, status], deadline: monotonicMilliseconds() + 10_000)
                if !result.success {
                    logger.warning("notify program failed", metadata: ["program": "\(program)", "reason": "\(result.reason)"])
                }
            }
        }
    }

    /// Whether each service with a quorum has it now.
    public var quorumStates: [ConfigChange.ServiceID: Bool] { state.withLock { $0.quorums.mapValues(\.isUp) } }

    /// The VIPs this balancer can serve now: those with at least one service that has its quorum (a service
    /// without `quorum` always has it). What a cluster balancer announces (``ClusterAnnouncer``).
    public var servableVIPs: Set<IPAddress> {
        state.withLock { state in
            Set(state.configured.services.filter { state.quorums[ConfigChange.ServiceID($0)]?.isUp ?? true }.map(\.vip))
        }
    }

    /// - Returns: whether rules were installed (they differed from those installed last).
    @discardableResult
    private func installRules(_ config: BalancerConfig, state: inout State) throws(RulesInstaller.Failure) -> Bool {
        guard let rules else { return false }
        let lines = IptablesRules.lines(for: config)
        guard lines != state.installed else { return false }
        try rules.install(config)
        state.installed = lines
        return true
    }

    /// What SIGHUP does, with the outcome for the caller: the file, then the live changes to what it does not
    /// define. A file that fails to load, or a result the running balancer cannot serve, is refused with
    /// `file:line: reason` and the running config is kept.
    public func reload(uid: UInt32? = nil) throws(Failure) -> JSONValue {
        try state.withLock { state throws(Failure) in
            do throws(Failure) {
                let file: BalancerConfig
                do {
                    file = try ConfigLoader.load(path: configPath)
                } catch {
                    throw Failure(.invalid, "\(error)")
                }
                var config = file
                var kept: [ConfigChange] = []
                for change in state.overlay where !change.isDefined(by: file) {
                    guard let document = try? change.apply(to: ConfigDocument.document(config)),
                          let changed = try? ConfigDocument.config(document) else {
                        logger.warning("a live change no longer applies on top of the file: dropped", metadata: ["change": "\(change.summary)"])
                        continue
                    }
                    config = changed
                    kept.append(change)
                }
                try serve(configured: config, state: &state)
                state.file = file
                state.overlay = kept
                state.reloads.succeeded += 1
                state.reloads.lastGood = Date()
                logger.notice("configuration reloaded", metadata: [
                    "file": "\(configPath)", "services": "\(config.services.map(\.description).joined(separator: " "))",
                    "live-changes-kept": "\(kept.count)", "uid": "\(uid.map { "\($0)" } ?? "SIGHUP")"])
                return .object(["file": .string(configPath), "services": JSONValue(config.services.count),
                                "live-changes-kept": JSONValue(kept.count)])
            } catch {
                state.reloads.failed += 1
                logger.error("configuration refused, still serving the previous one", metadata: ["reason": "\(error.message)"])
                throw error
            }
        }
    }

    /// The running configuration, live changes included, as YAML or ipvsadm-save rules.
    func save(format: String) throws(Failure) -> JSONValue {
        let config = state.withLock { $0.configured }
        switch format {
        case "yaml":
            return .object(["text": .string(ConfigDocument.yaml(ConfigDocument.document(config),
                                                                 header: "running configuration of nfqlb (nfqlb save)"))])
        case "ipvsadm":
            do {
                return .object(["text": .string(try Ipvsadm.save(config))])
            } catch {
                throw Failure(.refused, error.reason)
            }
        default:
            throw Failure(.badArgument, "format '\(format)' is not one of yaml | ipvsadm")
        }
    }

    // MARK: - Looking

    /// Zeroes the traffic counters of every real server, or of one service's (ipvsadm -Z).
    func zero(service: ConfigChange.ServiceID?, uid: UInt32) -> JSONValue {
        var zeroed = 0
        for entry in balancer.handler.registry.servers() where service == nil || entry.key.serviceID == service {
            balancer.handler.registry.traffic.zero(entry.number.index)
            zeroed += 1
        }
        state.withLock { $0.samples = [] }
        logger.notice("counters zeroed", metadata: ["service": "\(service.map { "\($0)" } ?? "all")", "uid": "\(uid)"])
        return .object(["real-servers": JSONValue(zeroed)])
    }

    /// Every service with its real servers (those still leaving too), their counts, counters and rates.
    func list(service filter: ConfigChange.ServiceID?) -> JSONValue {
        let handler = balancer.handler
        let config = state.withLock { $0.configured }
        let health = self.health?.statuses ?? [:]
        let now = monotonicMilliseconds()
        let entries = handler.registry.servers()
        let persistent = handler.persistentConnections(now: now)
        let rates = state.withLock { Self.rates($0.samples) }
        var services: [JSONValue] = []
        var listed = Set<RealServerRegistry.Key>()
        func real(_ entry: RealServerRegistry.Entry, _ load: RealServerLoad) -> JSONValue {
            listed.insert(entry.key)
            let totals = handler.registry.traffic.totals(entry.number.index) &+ load.offloaded.totals
            let checked = health[entry.key]
            var state = load.overloaded && entry.lifecycle == .active ? "overloaded" : "\(entry.lifecycle)"
            if checked?.status == .down { state = "down" }
            return .object([
                "health": checked.map { .string("\($0.status)") } ?? .null,
                "health-reason": checked.map { .string($0.reason) } ?? .null,
                "address": .string("\(entry.key.real.address)"), "port": JSONValue(Int(entry.key.real.port)),
                "forward": .string(entry.key.mode.ipvsadmName), "weight": JSONValue(Int(load.weight)),
                "active": JSONValue(max(0, load.active)), "inactive": JSONValue(max(0, load.inactive)),
                "state": .string(state),
                "upper": JSONValue(load.upper), "lower": JSONValue(load.lower),
                "persistent": JSONValue(persistent[entry.number] ?? 0),
                "stats": totals.json, "rate": (rates[entry.key] ?? TrafficRate()).json,
            ])
        }
        let byKey = Dictionary(entries.map { ($0.key, $0) }, uniquingKeysWith: { a, _ in a })
        for service in config.services {
            let id = ConfigChange.ServiceID(service)
            guard filter == nil || filter == id else { continue }
            var reals: [JSONValue] = []
            for r in service.reals {
                let key = RealServerRegistry.Key(service: service, real: r)
                guard let entry = byKey[key] else {
                    // Left out by its health check (on-failure: remove) and already forgotten.
                    listed.insert(key)
                    reals.append(.object([
                        "address": .string("\(r.address)"), "port": JSONValue(Int(r.port)), "forward": .string(service.mode.ipvsadmName),
                        "weight": JSONValue(Int(r.weight)), "active": JSONValue(0), "inactive": JSONValue(0),
                        "state": .string("down"), "health": .string("down"),
                        "health-reason": health[key].map { .string($0.reason) } ?? .null, "upper": JSONValue(r.upper),
                        "lower": JSONValue(r.lower), "persistent": JSONValue(0), "stats": TrafficTotals().json,
                        "rate": TrafficRate().json,
                    ]))
                    continue
                }
                reals.append(real(entry, handler.registry[entry.number]))
            }
            // Real servers of this service on their way out (left the config, or of its previous mode).
            for entry in entries where entry.key.serviceID == id && !listed.contains(entry.key) && entry.lifecycle != .removed {
                reals.append(real(entry, handler.registry[entry.number]))
            }
            services.append(Self.serviceJSON(service, reals: reals))
        }
        return .object(["services": .array(services), "size": JSONValue(config.maxConnections)])
    }

    static func serviceJSON(_ service: VirtualService, reals: [JSONValue]) -> JSONValue {
        var stats = TrafficTotals(), rate = TrafficRate()
        for real in reals {
            stats = stats &+ TrafficTotals(json: real["stats"])
            rate = rate + TrafficRate(json: real["rate"])
        }
        var fields = ConfigDocument.service(service)
        fields["reals"] = .array(reals)
        fields["stats"] = stats.json
        fields["rate"] = rate.json
        return .object(fields)
    }

    /// `nfqlb list --connections`: at most `limit` (default 1,000) connections, of one service or real server.
    func connections(_ args: [String: JSONValue]) throws(Failure) -> JSONValue {
        let limit = args["limit"]?.integer ?? 1000
        guard (1...1_000_000).contains(limit) else { throw Failure(.badArgument, "limit must be in 1...1000000") }
        let service = try args["service"].map { v throws(Failure) in try Self.serviceID(v) }
        let realAddress = try args["real"].map { v throws(Failure) -> IPAddress in
            guard let a = v["address"]?.string.flatMap(IPAddress.init) else { throw Failure(.badArgument, "real.address must be an IP address") }
            return a
        }
        let realPort = args["real"]?["port"]?.integer
        let handler = balancer.handler
        let now = monotonicMilliseconds()
        let (listed, matched) = handler.tracker.connections(limit: limit) { c in
            if let service, c.inbound.destination != service.endpoint || c.inbound.transport != service.transport { return false }
            if let realAddress, c.reply.source.address != realAddress { return false }
            if let realPort, Int(c.reply.source.port) != realPort { return false }
            return true
        }
        let rows: [JSONValue] = listed.map { c in
            var row: [String: JSONValue] = [
                "protocol": .string("\(c.inbound.transport)"), "state": .string("\(c.state)"),
                "expires": JSONValue(Int(c.expires > now ? (c.expires - now) / 1000 : 0)),
                "source": .string("\(c.inbound.source)"), "virtual": .string("\(c.inbound.destination)"),
                "destination": .string("\(c.reply.source)"),
            ]
            if c.reply.destination != c.inbound.source { row["local"] = .string("\(c.reply.destination)") }
            if c.offloaded { row["offloaded"] = .bool(true) }
            if c.synced { row["synced"] = .bool(true) }
            return .object(row)
        }
        return .object(["connections": .array(rows), "matched": JSONValue(matched), "truncated": .bool(matched > rows.count)])
    }

    // MARK: - Housekeeping

    /// Once a second: a sample for the rates, a log line for each real server that started or ended its drain,
    /// and the rules of leaving real servers removed once they are gone.
    public func tick() {
        let registry = balancer.handler.registry
        let now = monotonicMilliseconds()
        var totals: [RealServerRegistry.Key: TrafficTotals] = [:]
        let entries = registry.servers()
        for entry in entries {
            totals[entry.key] = registry.traffic.totals(entry.number.index) &+ registry[entry.number].offloaded.totals
        }
        restoreRoutes()
        state.withLock { state in
            logDrains(entries, now: now, state: &state)
            state.samples.append((now, totals))
            if state.samples.count > 3 { state.samples.removeFirst(state.samples.count - 3) }
            let running = balancer.handler.config
            let before = state.retained.count
            state.retained.removeAll { old in
                Self.rulesConfig(running: running, retained: [old], registry: registry) == running
            }
            guard state.retained.count != before, state.installed != nil else { return }
            do {
                if try installRules(Self.rulesConfig(running: running, retained: state.retained, registry: registry), state: &state) {
                    logger.info("rules of drained real servers removed")
                }
            } catch {
                logger.warning("rules of drained real servers not removed", metadata: ["reason": "\(error)"])
            }
        }
    }

    /// DR routes a link flap took away, put back (where nfqlb manages the rules): logged once when restored,
    /// once when they cannot be yet.
    private func restoreRoutes() {
        guard let rules, !balancer.handler.config.directRoutes.isEmpty else { return }
        let config = balancer.handler.config
        do {
            let restored = try rules.restoreMissingRoutes(config)
            if !restored.isEmpty {
                logger.notice("DR routes restored (a link went down and took them)", metadata: ["tables": "\(restored)"])
            }
            routeFailure.withLock { $0 = nil }
        } catch {
            let isNew = routeFailure.withLock { failure -> Bool in
                defer { failure = error.description }
                return failure != error.description
            }
            if isNew { logger.warning("DR routes missing and not restored yet", metadata: ["reason": "\(error)"]) }
        }
    }

    /// Drain start and end, once each: a server that became draining, one whose drain ended (removed), and one
    /// the registry forgot (its number free again).
    private func logDrains(_ entries: [RealServerRegistry.Entry], now: UInt64, state: inout State) {
        var current: [RealServerRegistry.Key: RealServerLifecycle] = [:]
        for entry in entries {
            current[entry.key] = entry.lifecycle
            let before = state.lifecycles[entry.key]
            guard before != entry.lifecycle else { continue }
            let load = balancer.handler.registry[entry.number]
            let connections = "\(max(0, load.active) + max(0, load.inactive))"
            switch entry.lifecycle {
            case .draining:
                let until = entry.drainDeadline == UInt64.max ? "its last connection ends"
                    : "\((entry.drainDeadline &- now) / 1000) s"
                logger.notice("real server draining", metadata: ["real-server": "\(entry.key)", "connections": "\(connections)",
                                                                "until": "\(until)"])
            case .removed where before != nil:
                logger.notice("real server drained", metadata: ["real-server": "\(entry.key)",
                                                               "connections-left-to-forget": "\(connections)"])
            default:
                break
            }
        }
        for key in state.lifecycles.keys where current[key] == nil {
            logger.info("real server forgotten", metadata: ["real-server": "\(key)"])
        }
        state.lifecycles = current
    }

    /// The config whose rules are to be installed: `running`, plus the real servers of `retained` configs that
    /// are not in it and still known to the registry (draining, or removed with connections or templates left).
    static func rulesConfig(running: BalancerConfig, retained: [BalancerConfig], registry: RealServerRegistry) -> BalancerConfig {
        var merged = running
        let runningKeys = Set(running.services.flatMap { s in s.reals.map { RealServerRegistry.Key(service: s, real: $0) } })
        for old in retained {
            for service in old.services {
                let leaving = service.reals.filter { real in
                    let key = RealServerRegistry.Key(service: service, real: real)
                    return !runningKeys.contains(key) && registry.number(of: key) != nil
                }
                guard !leaving.isEmpty else { continue }
                if let i = merged.services.firstIndex(where: { ConfigChange.ServiceID($0) == ConfigChange.ServiceID(service) && $0.mode == service.mode }) {
                    merged.services[i].reals += leaving.filter { r in !merged.services[i].reals.contains { $0.endpoint == r.endpoint } }
                } else {
                    var copy = service
                    copy.reals = leaving
                    merged.services.append(copy)
                }
            }
        }
        return merged
    }

    static func rates(_ samples: [(time: UInt64, totals: [RealServerRegistry.Key: TrafficTotals])]) -> [RealServerRegistry.Key: TrafficRate] {
        guard let first = samples.first, let last = samples.last, last.time > first.time else { return [:] }
        let seconds = Double(last.time - first.time) / 1000
        var rates: [RealServerRegistry.Key: TrafficRate] = [:]
        for (key, now) in last.totals {
            let then = first.totals[key] ?? TrafficTotals()
            let d = now &- then
            rates[key] = TrafficRate(connections: Double(d.connections) / seconds, packetsIn: Double(d.packetsIn) / seconds,
                                     packetsOut: Double(d.packetsOut) / seconds, bytesIn: Double(d.bytesIn) / seconds,
                                     bytesOut: Double(d.bytesOut) / seconds)
        }
        return rates
    }
}

/// Per-second rates (`ipvsadm -L --rate`: CPS, InPPS, OutPPS, InBPS, OutBPS), over the last two seconds.
public struct TrafficRate: Sendable, Equatable {
    public var connections = 0.0, packetsIn = 0.0, packetsOut = 0.0, bytesIn = 0.0, bytesOut = 0.0

    init(connections: Double = 0, packetsIn: Double = 0, packetsOut: Double = 0, bytesIn: Double = 0, bytesOut: Double = 0) {
        self.connections = connections
        self.packetsIn = packetsIn
        self.packetsOut = packetsOut
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
    }

    init(json: JSONValue?) {
        func value(_ key: String) -> Double { if case .number(let n)? = json?[key] { n } else { 0 } }
        self.init(connections: value("cps"), packetsIn: value("inpps"), packetsOut: value("outpps"),
                  bytesIn: value("inbps"), bytesOut: value("outbps"))
    }

    static func + (a: TrafficRate, b: TrafficRate) -> TrafficRate {
        TrafficRate(connections: a.connections + b.connections, packetsIn: a.packetsIn + b.packetsIn,
                    packetsOut: a.packetsOut + b.packetsOut, bytesIn: a.bytesIn + b.bytesIn, bytesOut: a.bytesOut + b.bytesOut)
    }

    var json: JSONValue {
        func rounded(_ v: Double) -> JSONValue { .number(v.rounded()) }
        return .object(["cps": rounded(connections), "inpps": rounded(packetsIn), "outpps": rounded(packetsOut),
                        "inbps": rounded(bytesIn), "outbps": rounded(bytesOut)])
    }
}

extension TrafficTotals {
    init(json: JSONValue?) {
        func value(_ key: String) -> UInt64 { json?[key]?.integer.map { UInt64(max(0, $0)) } ?? 0 }
        self.init(connections: value("conns"), packetsIn: value("inpkts"), packetsOut: value("outpkts"),
                  bytesIn: value("inbytes"), bytesOut: value("outbytes"))
    }

    var json: JSONValue {
        .object(["conns": JSONValue(connections), "inpkts": JSONValue(packetsIn), "outpkts": JSONValue(packetsOut),
                 "inbytes": JSONValue(bytesIn), "outbytes": JSONValue(bytesOut)])
    }
}

extension RealServerLoad.Traffic {
    /// The conntrack fast path's finished connections, as traffic totals (their connections are counted when
    /// nfqlb schedules them).
    var totals: TrafficTotals {
        TrafficTotals(packetsIn: packetsIn, packetsOut: packetsOut, bytesIn: bytesIn, bytesOut: bytesOut)
    }
}

extension RealServerRegistry.Key {
    var serviceID: ConfigChange.ServiceID {
        ConfigChange.ServiceID(transport: transport, endpoint: Endpoint(address: vip, port: port))
    }
}

extension ForwardingMode {
    /// ipvsadm's word for the forwarding method (FULLNAT, which IPVS lacks, gets its own).
    public var ipvsadmName: String {
        switch self {
        case .nat: "Masq"
        case .fullnat: "FullNat"
        case .dr: "Route"
        case .tun: "Tunnel"
        }
    }
}

extension ConfigChange {
    /// One line for the log: the verb and what it names.
    var summary: String {
        switch self {
        case .addService(let id, let fields): "service add \(id) \(JSONValue.object(fields).jsonText)"
        case .editService(let id, let fields): "service edit \(id) \(JSONValue.object(fields).jsonText)"
        case .deleteService(let id): "service delete \(id)"
        case .addReal(let id, let real, let fields): "real add \(id) \(real) \(JSONValue.object(fields).jsonText)"
        case .editReal(let id, let real, let fields): "real edit \(id) \(real) \(JSONValue.object(fields).jsonText)"
        case .deleteReal(let id, let real): "real delete \(id) \(real)"
        }
    }
}
