/// `ipvsadm` rules as nfqlb configuration, both ways: ``importRules(_:file:)`` reads what `ipvsadm-save -n`
/// (or `ipvsadm -Sn`) prints and writes nfqlb YAML, validated by ``ConfigLoader`` exactly as a config file
/// is; ``save(_:)`` writes a configuration as `ipvsadm-save -n` lines. What one side cannot express is refused
/// with its line, never dropped silently.
public enum Ipvsadm {
    /// The YAML configuration for the rules in `text` (`file` names it in errors). Lines may start with
    /// `ipvsadm`; `#` starts a comment. Understood: `-A`/`-E` with `-t`/`-u`, `-s`, `-p [timeout]`, `-M`,
    /// `-b`, `-o`; `-a`/`-e` with `-r`, `-m`/`-g`/`-i`, `-w`, `-x`, `-y`. nfqlb chooses the forwarding method
    /// per service, so the real servers of one service must share theirs (ipvsadm's default is `-g`).
    public static func importRules(_ text: String, file: String = "<ipvsadm>") throws(ConfigError) -> String {
        var services: [ImportedService] = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = index + 1
            func fail(_ reason: String) -> ConfigError { ConfigError(file: file, line: line, reason: reason) }
            var words = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first
                .map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init) } ?? []
            if words.first == "ipvsadm" { words.removeFirst() }
            guard let command = words.first else { continue }
            var options = Options(words: Array(words.dropFirst()), fail: fail)
            switch command {
            case "-A", "--add-service", "-E", "--edit-service":
                let id = try options.serviceID()
                let existing = services.firstIndex { $0.id == id }
                if command == "-A" || command == "--add-service" {
                    guard existing == nil else { throw fail("service \(id.text) is added twice") }
                    services.append(ImportedService(id: id, line: line))
                } else if existing == nil {
                    throw fail("service \(id.text) is edited before it is added")
                }
                let i = existing ?? services.count - 1
                try options.serviceOptions(&services[i])
            case "-a", "--add-server", "-e", "--edit-server":
                let id = try options.serviceID()
                guard let i = services.firstIndex(where: { $0.id == id }) else {
                    throw fail("real server for \(id.text), a service not added before")
                }
                try options.serverOptions(&services[i], adding: command == "-a" || command == "--add-server", line: line)
            default:
                throw fail("'\(command)' is not an ipvsadm rule nfqlb can import (only -A, -E, -a, -e, as ipvsadm-save prints)")
            }
        }
        guard !services.isEmpty else { throw ConfigError(file: file, line: 0, reason: "no service (-A) to import") }
        var yaml = "# converted from \(file) by nfqlb import ipvsadm\nqueues: [0]\nservices:\n"
        for service in services {
            guard !service.reals.isEmpty else {
                throw ConfigError(file: file, line: service.line, reason: "service \(service.id.text) has no real server (-a)")
            }
            yaml += service.yaml
        }
        _ = try ConfigLoader.parse(yaml: yaml, file: "\(file) (converted)")
        return yaml
    }

    /// `config` as `ipvsadm-save -n` prints rules. Settings ipvsadm has no words for (FULLNAT, local addresses,
    /// `offload`, `drain`, a tunnel source, `mh-table-size`) are refused with the service they belong to.
    public static func save(_ config: BalancerConfig) throws(ConfigError) -> String {
        var out = ""
        for service in config.services {
            func refuse(_ what: String) -> ConfigError {
                ConfigError(file: "<running config>", line: 0, reason: "\(service): \(what) has no ipvsadm equivalent")
            }
            if service.mode == .fullnat { throw refuse("mode fullnat") }
            if service.offload != .none { throw refuse("offload") }
            if service.drain != 0 { throw refuse("drain") }
            if service.tunnelSource != nil { throw refuse("tunnel-source") }
            if service.schedulerOptions.mhTableSize != 0 { throw refuse("mh-table-size") }
            if service.schedulerOptions.hashSeed != 0 { throw refuse("hash-seed") }
            let id = "\(service.transport == .tcp ? "-t" : "-u") \(service.endpoint)"
            var line = "-A \(id) -s \(service.scheduler)"
            let flags = service.schedulerOptions.flagNames
            if !flags.isEmpty { line += " -b \(flags.joined(separator: ","))" }
            if service.persistence > 0 {
                line += " -p \(service.persistence)"
                let full = service.vip.isIPv4 ? 32 : 128
                if service.persistencePrefix != full {
                    line += " -M \(service.vip.isIPv4 ? dottedMask(service.persistencePrefix) : String(service.persistencePrefix))"
                }
            }
            if service.onePacket { line += " -o" }
            out += line + "\n"
            let method = service.mode == .nat ? "-m" : service.mode == .dr ? "-g" : "-i"
            for real in service.reals {
                var server = "-a \(id) -r \(real.endpoint) \(method) -w \(real.weight)"
                if real.upper > 0 { server += " -x \(real.upper)" }
                if real.lower > 0 { server += " -y \(real.lower)" }
                out += server + "\n"
            }
        }
        return out
    }

    static func dottedMask(_ prefix: Int) -> String {
        let mask: UInt32 = prefix == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefix)
        return "\(mask >> 24).\(mask >> 16 & 255).\(mask >> 8 & 255).\(mask & 255)"
    }
}

extension SchedulerOptions {
    /// The `scheduler-flags` (and `ipvsadm -b`) names of the flags set.
    var flagNames: [String] {
        [(shFallback, "sh-fallback"), (shPort, "sh-port"), (mhFallback, "mh-fallback"), (mhPort, "mh-port")]
            .filter(\.0).map(\.1)
    }
}

/// A virtual service as the ipvsadm lines being imported have described it so far.
private struct ImportedService {
    struct ID: Equatable {
        var transport: TransportProtocol
        var endpoint: Endpoint
        var text: String { "\(transport == .tcp ? "-t" : "-u") \(endpoint)" }
    }

    struct Real {
        var endpoint: Endpoint
        var weight: Int = 1
        var upper = 0
        var lower = 0
    }

    var id: ID
    var line: Int
    var scheduler = "wlc"
    var persistence: Int?
    var netmask: String?
    var flags: [String] = []
    var ops = false
    var mode: ForwardingMode?
    var reals: [Real] = []

    var yaml: String {
        func quoted(_ a: IPAddress) -> String { a.isIPv4 ? "\(a)" : "\"\(a)\"" }
        var out = "  - vip: \(quoted(id.endpoint.address))\n    port: \(id.endpoint.port)\n"
        out += "    protocol: \(id.transport)\n    mode: \((mode ?? .dr).rawValue)\n    scheduler: \(scheduler)\n"
        if !flags.isEmpty { out += "    scheduler-flags: [\(flags.joined(separator: ", "))]\n" }
        if let persistence { out += "    persistence: \(persistence)\n" }
        if let netmask { out += "    persistence-netmask: \(netmask)\n" }
        if ops { out += "    ops: true\n" }
        out += "    reals:\n"
        for real in reals {
            var entry = "      - { address: \(quoted(real.endpoint.address)), port: \(real.endpoint.port), weight: \(real.weight)"
            if real.upper > 0 { entry += ", upper: \(real.upper)" }
            if real.lower > 0 { entry += ", lower: \(real.lower)" }
            out += entry + " }\n"
        }
        return out
    }
}

/// The words after an ipvsadm command, consumed option by option.
private struct Options {
    var words: [String]
    let fail: (String) -> ConfigError

    mutating func next() -> String? { words.isEmpty ? nil : words.removeFirst() }

    mutating func value(of option: String) throws(ConfigError) -> String {
        guard let value = next() else { throw fail("\(option) needs a value") }
        return value
    }

    mutating func number(of option: String, _ range: ClosedRange<Int>) throws(ConfigError) -> Int {
        let text = try value(of: option)
        guard let n = Int(text), range.contains(n) else { throw fail("\(option) '\(text)' is not a number in \(range)") }
        return n
    }

    /// ADDRESS:PORT, IPv6 as [ADDRESS]:PORT; numbers only (`ipvsadm-save -n`).
    func endpoint(_ text: String, defaultPort: UInt16? = nil) throws(ConfigError) -> Endpoint {
        var host = Substring(text), port: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw fail("'\(text)' is not [IPv6]:port") }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { port = rest.dropFirst() } else if !rest.isEmpty { throw fail("'\(text)' is not [IPv6]:port") }
        } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard let address = IPAddress(String(host)) else {
            throw fail("'\(host)' is not an IP address (names are not resolved: use ipvsadm-save -n)")
        }
        if let port {
            guard let n = UInt16(port), n > 0 else { throw fail("port '\(port)' is not a number in 1...65535 (use ipvsadm-save -n)") }
            return Endpoint(address: address, port: n)
        }
        guard let defaultPort else { throw fail("'\(text)' has no port") }
        return Endpoint(address: address, port: defaultPort)
    }

    mutating func serviceID() throws(ConfigError) -> ImportedService.ID {
        guard let option = next() else { throw fail("the service (-t or -u ADDRESS:PORT) is missing") }
        switch option {
        case "-t", "--tcp-service": return ImportedService.ID(transport: .tcp, endpoint: try endpoint(try value(of: option)))
        case "-u", "--udp-service": return ImportedService.ID(transport: .udp, endpoint: try endpoint(try value(of: option)))
        case "-f", "--fwmark-service": throw fail("fwmark services (-f) are not supported: nfqlb matches VIP, port and protocol")
        case "--sctp-service": throw fail("SCTP services are not supported (TCP and UDP only)")
        default: throw fail("expected -t or -u ADDRESS:PORT, found '\(option)'")
        }
    }

    mutating func serviceOptions(_ service: inout ImportedService) throws(ConfigError) {
        while let option = next() {
            switch option {
            case "-s", "--scheduler":
                let name = try value(of: option)
                guard SchedulerKind(rawValue: name) != nil else {
                    throw fail("scheduler '\(name)' is not one of \(SchedulerKind.allCases.map(\.rawValue).joined(separator: " "))")
                }
                service.scheduler = name
            case "-p", "--persistent":
                // The timeout is optional: 300 s by default, as ipvsadm's.
                if let first = words.first, let n = Int(first) {
                    guard (1...(30 * 86400)).contains(n) else { throw fail("-p \(first) is not a timeout in seconds") }
                    words.removeFirst()
                    service.persistence = n
                } else {
                    service.persistence = 300
                }
            case "-M", "--netmask": service.netmask = try value(of: option)
            case "-o", "--ops": service.ops = true
            case "-b", "--sched-flags":
                for flag in try value(of: option).split(separator: ",").map(String.init) {
                    guard ["sh-fallback", "sh-port", "mh-fallback", "mh-port"].contains(flag) else {
                        throw fail("scheduler flag '\(flag)' is not one of sh-fallback sh-port mh-fallback mh-port")
                    }
                    if !service.flags.contains(flag) { service.flags.append(flag) }
                }
            default: throw fail("service option '\(option)' cannot be imported")
            }
        }
    }

    mutating func serverOptions(_ service: inout ImportedService, adding: Bool, line: Int) throws(ConfigError) {
        guard next().map({ $0 == "-r" || $0 == "--real-server" }) == true else { throw fail("the real server (-r ADDRESS[:PORT]) is missing") }
        let endpoint = try endpoint(try value(of: "-r"), defaultPort: service.id.endpoint.port)
        var real = ImportedService.Real(endpoint: endpoint)
        let existing = service.reals.firstIndex { $0.endpoint == endpoint }
        if adding {
            guard existing == nil else { throw fail("real server \(endpoint) is added twice to \(service.id.text)") }
        } else {
            guard let existing else { throw fail("real server \(endpoint) is edited before it is added") }
            real = service.reals[existing]
        }
        var mode: ForwardingMode = .dr
        var modeGiven = false
        while let option = next() {
            switch option {
            case "-m", "--masquerading": mode = .nat; modeGiven = true
            case "-g", "--gatewaying": mode = .dr; modeGiven = true
            case "-i", "--ipip": mode = .tun; modeGiven = true
            case "-w", "--weight": real.weight = try number(of: option, 0...65535)
            case "-x", "--u-threshold": real.upper = try number(of: option, 0...Int(Int32.max))
            case "-y", "--l-threshold": real.lower = try number(of: option, 0...Int(Int32.max))
            default: throw fail("real server option '\(option)' cannot be imported")
            }
        }
        if adding || modeGiven {
            if let set = service.mode, set != mode {
                throw fail("\(endpoint) is \(mode), the other real servers of \(service.id.text) are \(set): nfqlb sets the forwarding method per service")
            }
            service.mode = mode
        }
        if let existing { service.reals[existing] = real } else { service.reals.append(real) }
    }
}
