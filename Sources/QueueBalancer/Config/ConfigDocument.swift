/// A configuration as a tree of values with the config file's keys (README "Configuration"): what `nfqlb save`
/// writes as YAML, and what live changes (``ConfigChange``) edit. A document becomes a ``BalancerConfig`` only
/// through ``ConfigLoader``, so a change made through the control socket is validated exactly as the file is.
///
/// Only settings that differ from their defaults are written, except a service's identity, mode, scheduler and
/// real servers, and a real server's address, port and weight.
public enum ConfigDocument {
    /// Key order of the YAML output.
    static let topKeys = ["queues", "syn-queue", "fwmark-base", "fullnat-ports", "max-connections", "queue-length",
                          "socket-buffer-mb", "timeouts", "metrics-listen", "cluster", "services"]
    static let serviceKeys = ["name", "vip", "port", "protocol", "mode", "scheduler", "scheduler-flags", "mh-table-size",
                              "hash-seed", "adopt-midstream", "persistence", "persistence-netmask", "ops", "drain", "offload", "local-addresses",
                              "tunnel-source", "health", "sorry-server", "quorum", "notify", "reals"]
    static let realKeys = ["address", "port", "weight", "upper", "lower", "health"]

    /// The document of `config`.
    public static func document(_ config: BalancerConfig) -> JSONValue {
        let defaults = BalancerConfig(queues: [], services: [])
        var top: [String: JSONValue] = [
            "queues": .array(config.queues.map { JSONValue(Int($0)) }),
            "services": .array(config.services.map { .object(service($0)) }),
        ]
        if let q = config.synQueue { top["syn-queue"] = JSONValue(Int(q)) }
        if let listen = config.metricsListen { top["metrics-listen"] = .string("\(listen)") }
        if let cluster = config.cluster { top["cluster"] = cluster.document }
        if config.fwmarkBase != defaults.fwmarkBase { top["fwmark-base"] = JSONValue(Int(config.fwmarkBase.rawValue)) }
        if config.fullnatPorts != defaults.fullnatPorts {
            top["fullnat-ports"] = .string("\(config.fullnatPorts.lowerBound)-\(config.fullnatPorts.upperBound)")
        }
        if config.maxConnections != defaults.maxConnections { top["max-connections"] = JSONValue(config.maxConnections) }
        if config.queueLength != defaults.queueLength { top["queue-length"] = JSONValue(Int(config.queueLength)) }
        if config.socketBufferMiB != defaults.socketBufferMiB { top["socket-buffer-mb"] = JSONValue(config.socketBufferMiB) }
        if config.timeouts != defaults.timeouts {
            func seconds(_ state: ConnectionState) -> JSONValue { JSONValue(Int(config.timeouts.timeout(state) / 1000)) }
            top["timeouts"] = .object(["tcp": seconds(.established), "tcpfin": seconds(.finWait), "udp": seconds(.udp)])
        }
        return .object(top)
    }

    /// A service's keys.
    public static func service(_ s: VirtualService) -> [String: JSONValue] {
        var fields: [String: JSONValue] = [
            "vip": .string("\(s.vip)"), "port": JSONValue(Int(s.port)), "protocol": .string("\(s.transport)"),
            "mode": .string(s.mode.rawValue), "scheduler": .string(s.scheduler.rawValue),
            "reals": .array(s.reals.map { .object(real($0)) }),
        ]
        if let name = s.name { fields["name"] = .string(name) }
        let flags = s.schedulerOptions.flagNames
        if !flags.isEmpty { fields["scheduler-flags"] = .array(flags.map(JSONValue.string)) }
        if s.schedulerOptions.mhTableSize != 0 { fields["mh-table-size"] = JSONValue(s.schedulerOptions.mhTableSize) }
        if s.schedulerOptions.hashSeed != 0 { fields["hash-seed"] = .string("\(s.schedulerOptions.hashSeed)") }
        if s.persistence > 0 {
            fields["persistence"] = JSONValue(s.persistence)
            if s.persistencePrefix != (s.vip.isIPv4 ? 32 : 128) { fields["persistence-netmask"] = JSONValue(s.persistencePrefix) }
        }
        if s.onePacket { fields["ops"] = .bool(true) }
        if let adopt = s.adoptMidstream { fields["adopt-midstream"] = .bool(adopt) }
        if s.drain > 0 { fields["drain"] = JSONValue(s.drain) }
        if s.offload != .none { fields["offload"] = .string(s.offload.rawValue) }
        if !s.localAddresses.isEmpty { fields["local-addresses"] = .array(s.localAddresses.map { .string("\($0)") }) }
        if let source = s.tunnelSource { fields["tunnel-source"] = .string("\(source)") }
        if let health = s.health { fields["health"] = health.document }
        if let sorry = s.sorryServer {
            fields["sorry-server"] = .object(["address": .string("\(sorry.address)"), "port": JSONValue(Int(sorry.port))])
        }
        if let quorum = s.quorum {
            fields["quorum"] = .object(["min-weight": JSONValue(quorum.minWeight), "hysteresis": JSONValue(quorum.hysteresis)])
        }
        if !s.notify.isEmpty { fields["notify"] = .array(s.notify.map(JSONValue.string)) }
        return fields
    }

    /// A real server's keys.
    public static func real(_ r: RealServer) -> [String: JSONValue] {
        var fields: [String: JSONValue] = ["address": .string("\(r.address)"), "port": JSONValue(Int(r.port)),
                                           "weight": JSONValue(Int(r.weight))]
        if r.upper > 0 { fields["upper"] = JSONValue(r.upper) }
        if r.lower > 0 { fields["lower"] = JSONValue(r.lower) }
        if let health = r.health { fields["health"] = health.document }
        return fields
    }

    /// The document as YAML, block style for the top level and services, one flow mapping per real server.
    public static func yaml(_ document: JSONValue, header: String? = nil) -> String {
        var out = header.map { "# \($0)\n" } ?? ""
        let top = document.object ?? [:]
        for key in ordered(top, topKeys) {
            guard key == "services", let services = top[key]?.array else {
                out += "\(key): \(top[key]!.yamlScalar)\n"
                continue
            }
            out += "services:\n"
            for service in services {
                let fields = service.object ?? [:]
                var first = true
                for field in ordered(fields, serviceKeys) {
                    out += first ? "  - " : "    "
                    first = false
                    if field == "reals", let reals = fields[field]?.array {
                        out += "reals:\n" + reals.map { real in
                            let fields = real.object ?? [:]
                            let entries = ordered(fields, realKeys).map { "\($0): \(fields[$0]!.yamlScalar)" }
                            return "      - { \(entries.joined(separator: ", ")) }\n"
                        }.joined()
                        if reals.isEmpty { out.removeLast(); out += " []\n" }
                    } else {
                        out += "\(field): \(fields[field]!.yamlScalar)\n"
                    }
                }
            }
        }
        return out
    }

    /// The keys of `fields`: those of `order` first, in that order, then any others sorted.
    private static func ordered(_ fields: [String: JSONValue], _ order: [String]) -> [String] {
        order.filter { fields[$0] != nil } + fields.keys.filter { !order.contains($0) }.sorted()
    }

    /// The configuration a document describes, validated by ``ConfigLoader`` (errors name `file`).
    public static func config(_ document: JSONValue, file: String = "<change>") throws(ConfigError) -> BalancerConfig {
        try ConfigLoader.parse(yaml: yaml(document), file: file)
    }
}
