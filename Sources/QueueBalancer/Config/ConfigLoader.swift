import Foundation
import Yams

/// A configuration refused, with where and why: printed as `file:line: reason`.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var file: String
    /// 1-based line, or 0 when the error concerns the whole file.
    public var line: Int
    public var reason: String

    public var description: String { line > 0 ? "\(file):\(line): \(reason)" : "\(file): \(reason)" }
}

/// Reads the YAML configuration, walking Yams' node tree (not `Decodable`) so that every error names its line.
///
/// Schema (see README "Configuration"):
/// ```yaml
/// queues: [0]                 # required; consecutive NFQUEUE numbers
/// syn-queue: 1                 # optional: a queue of its own for TCP SYNs (new connections)
/// fwmark-base: 4096           # optional: first fwmark / routing table of the DR real servers
/// fullnat-ports: 61000-65535  # optional: FULLNAT local ports, outside ip_local_port_range
/// max-connections: 262144     # optional
/// queue-length: 8192          # optional, kernel queue length per queue
/// socket-buffer-mb: 16        # optional
/// timeouts: { tcp: 900, tcpfin: 120, udp: 300 }   # optional, seconds (ipvsadm --set)
/// metrics-listen: 127.0.0.1:9469   # optional: Prometheus metrics on /metrics (default: off)
/// services:                   # required, at least one
///   - name: web               # optional
///     vip: 203.0.113.10
///     port: 80
///     protocol: tcp           # tcp | udp
///     mode: nat               # nat | fullnat | dr | tun
///     tunnel-source: 192.0.2.1  # tun only, optional: outer source (default: the route's source)
///     local-addresses: [198.51.100.1]   # fullnat only, required: the balancer's server-side addresses
///     scheduler: wlc          # rr wrr lc wlc sed nq dh sh mh lblc lblcr fo ovf twos (default wlc)
///     scheduler-flags: [sh-port]  # optional: sh-fallback sh-port mh-fallback mh-port
///     mh-table-size: 65537    # optional, mh only: a prime >= 100 x reals
///     hash-seed: 0            # optional, mh only: mixed into the table and lookups (same on every balancer)
///     persistence: 300        # optional: seconds a client network keeps its real server (ipvsadm -p)
///     ops: true               # optional, UDP (nat, dr, tun): schedule every datagram on its own (ipvsadm -o)
///     persistence-netmask: 24 # optional: prefix length or dotted mask (ipvsadm -M)
///     drain: 60               # optional: seconds a real server left out of a new config keeps its
///                             # established connections (default 0: they end at once)
///     reals:
///       - { address: 198.51.100.11, port: 8080, weight: 1 }   # port defaults to the service port, weight to 1
///       - { address: 198.51.100.12, upper: 1000, lower: 800 } # optional connection thresholds (ipvsadm -x/-y)
/// ```
public enum ConfigLoader {
    /// Loads and validates the file at `path`.
    public static func load(path: String) throws(ConfigError) -> BalancerConfig {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: path, line: 0, reason: "cannot read the file: \(error.localizedDescription)")
        }
        return try parse(yaml: text, file: path)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    public static func parse(yaml text: String, file: String = "<config>") throws(ConfigError) -> BalancerConfig {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            switch error {
            case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
                 .composer(_, let problem, let mark, _):
                throw ConfigError(file: file, line: mark.line, reason: "invalid YAML: \(problem)")
            default:
                throw ConfigError(file: file, line: 0, reason: "invalid YAML: \(error)")
            }
        } catch {
            throw ConfigError(file: file, line: 0, reason: "invalid YAML: \(error)")
        }
        guard let root else { throw ConfigError(file: file, line: 0, reason: "the file is empty") }
        return try Reader(file: file).balancer(root)
    }
}

/// Walks the node tree; every check throws with the offending node's line.
private struct Reader {
    let file: String

    func fail(_ node: Node?, _ reason: String) -> ConfigError {
        ConfigError(file: file, line: node?.mark?.line ?? 0, reason: reason)
    }

    /// The pairs of a mapping, refusing keys outside `allowed` and repeated keys.
    func mapping(_ node: Node, _ what: String, allowed: [String]) throws(ConfigError) -> [String: Node] {
        guard case .mapping(let mapping) = node else { throw fail(node, "\(what) must be a mapping") }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.scalar?.string else { throw fail(key, "keys of \(what) must be plain words") }
            guard allowed.contains(name) else {
                throw fail(key, "unknown key '\(name)' in \(what) (expected one of: \(allowed.joined(separator: ", ")))")
            }
            guard result[name] == nil else { throw fail(key, "key '\(name)' appears twice in \(what)") }
            result[name] = value
        }
        return result
    }

    func required(_ map: [String: Node], _ key: String, in what: String, at node: Node) throws(ConfigError) -> Node {
        guard let value = map[key] else { throw fail(node, "\(what) needs '\(key)'") }
        return value
    }

    func scalar(_ node: Node, _ what: String) throws(ConfigError) -> String {
        guard let text = node.scalar?.string else { throw fail(node, "\(what) must be a single value") }
        return text
    }

    func integer(_ node: Node, _ what: String, _ range: ClosedRange<Int>) throws(ConfigError) -> Int {
        let text = try scalar(node, what)
        guard let value = Int(text) else { throw fail(node, "\(what) '\(text)' is not a whole number") }
        guard range.contains(value) else {
            throw fail(node, "\(what) \(value) is out of range \(range.lowerBound)..\(range.upperBound)")
        }
        return value
    }

    func boolean(_ node: Node, _ what: String) throws(ConfigError) -> Bool {
        switch try scalar(node, what) {
        case "true": return true
        case "false": return false
        case let other: throw fail(node, "\(what) '\(other)' is not true or false")
        }
    }

    func address(_ node: Node, _ what: String) throws(ConfigError) -> IPAddress {
        let text = try scalar(node, what)
        guard let address = IPAddress(text) else {
            throw fail(node, "\(what) '\(text)' is not an IPv4 or IPv6 address")
        }
        return address
    }

    func choice<T: RawRepresentable & CaseIterable>(_ node: Node, _ what: String, _ type: T.Type) throws(ConfigError) -> T
    where T.RawValue == String {
        let text = try scalar(node, what)
        guard let value = T(rawValue: text) else {
            let names = T.allCases.map(\.rawValue).joined(separator: " | ")
            throw fail(node, "\(what) '\(text)' is not one of \(names)")
        }
        return value
    }

    func balancer(_ root: Node) throws(ConfigError) -> BalancerConfig {
        let top = try mapping(root, "the configuration", allowed: [
            "queues", "services", "max-connections", "queue-length", "socket-buffer-mb", "timeouts", "fwmark-base",
            "fullnat-ports", "syn-queue", "metrics-listen", "cluster",
        ])
        let queuesNode = try required(top, "queues", in: "the configuration", at: root)
        guard case .sequence(let queueList) = queuesNode, !queueList.isEmpty else {
            throw fail(queuesNode, "queues must be a non-empty list of NFQUEUE numbers, e.g. [0] or [0, 1]")
        }
        var queues: [UInt16] = []
        for item in queueList {
            let q = UInt16(try integer(item, "queue number", 0...65535))
            guard !queues.contains(q) else { throw fail(item, "queue \(q) is listed twice") }
            queues.append(q)
        }
        let sorted = queues.sorted()
        guard sorted.last! - sorted.first! == UInt16(sorted.count - 1) else {
            throw fail(queuesNode, "queues must be consecutive numbers (iptables --queue-balance takes one range)")
        }
        let servicesNode = try required(top, "services", in: "the configuration", at: root)
        guard case .sequence(let serviceList) = servicesNode, !serviceList.isEmpty else {
            throw fail(servicesNode, "services must be a non-empty list")
        }
        var services: [VirtualService] = []
        var firstLine: [String: Int] = [:]
        for node in serviceList {
            let service = try virtualService(node)
            let key = service.description
            if let line = firstLine[key] {
                throw fail(node, "duplicate service \(key) (first defined at line \(line))")
            }
            firstLine[key] = node.mark?.line ?? 0
            services.append(service)
            let total = services.reduce(0) { $0 + $1.reals.count }
            guard total <= RealServerRegistry.defaultCapacity else {
                throw fail(node, "too many real servers: \(total) in all, at most \(RealServerRegistry.defaultCapacity)")
            }
        }
        var config = BalancerConfig(queues: sorted, services: services)
        if let node = top["max-connections"] { config.maxConnections = try integer(node, "max-connections", 1...(1 << 26)) }
        if let node = top["queue-length"] { config.queueLength = UInt32(try integer(node, "queue-length", 1...(1 << 20))) }
        if let node = top["socket-buffer-mb"] { config.socketBufferMiB = try integer(node, "socket-buffer-mb", 1...1024) }
        if let node = top["fwmark-base"] {
            config.fwmarkBase = Fwmark(rawValue: UInt32(try integer(node, "fwmark-base", 1...0x00FF_0000)))   // below Fwmark.translated
        }
        if let node = top["fullnat-ports"] {
            let text = try scalar(node, "fullnat-ports")
            let bounds = text.split(separator: "-").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard bounds.count == 2, let low = bounds[0], let high = bounds[1], 1024 <= low, low <= high, high <= 65535 else {
                throw fail(node, "fullnat-ports '\(text)' is not a range FIRST-LAST within 1024-65535")
            }
            config.fullnatPorts = UInt16(low)...UInt16(high)
        }
        if let node = top["syn-queue"] {
            let q = UInt16(try integer(node, "syn-queue", 0...65535))
            guard !queues.contains(q) else { throw fail(node, "syn-queue \(q) must be a queue of its own, not one of queues") }
            config.synQueue = q
        }
        if let node = top["metrics-listen"] {
            let text = try scalar(node, "metrics-listen")
            guard let endpoint = Endpoint(listenAddress: text) else {
                throw fail(node, "metrics-listen '\(text)' is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT), e.g. 127.0.0.1:9469")
            }
            config.metricsListen = endpoint
        }
        if let node = top["cluster"] {
            config.cluster = try cluster(node)
            let own = Set(services.flatMap(\.localAddresses))
            if let taken = config.cluster?.takeoverLocalAddresses.first(where: own.contains) {
                throw fail(node, "cluster takeover-local-addresses: \(taken) is this balancer's own local address (list the other balancers')")
            }
        }
        if let node = top["timeouts"] {
            let t = try mapping(node, "timeouts", allowed: ["tcp", "tcpfin", "udp"])
            func seconds(_ key: String) throws(ConfigError) -> UInt64? {
                guard let n = t[key] else { return nil }
                return UInt64(try integer(n, "timeouts.\(key)", 1...(30 * 86400)))
            }
            config.timeouts = config.timeouts.with(tcp: try seconds("tcp"), tcpFin: try seconds("tcpfin"),
                                                   udp: try seconds("udp"))
        }
        return config
    }

    /// The node as a value tree: scalars as their text (what the file said, to be written back as it was).
    func value(_ node: Node) -> JSONValue {
        switch node {
        case .scalar(let scalar): .string(scalar.string)
        case .sequence(let sequence): .array(sequence.map(value))
        case .mapping(let mapping): .object(Dictionary(mapping.compactMap { k, v in k.scalar.map { ($0.string, value(v)) } },
                                                       uniquingKeysWith: { a, _ in a }))
        case .alias: .null
        }
    }

    /// A `health` mapping over `base` (the service's, for a real server's): the probe it names (or the base's),
    /// and every setting it gives, validated.
    func healthSettings(_ node: Node, base: HealthSettings?, what: String) throws(ConfigError) -> HealthSettings {
        let kinds = ["tcp", "http", "https", "udp", "dns", "exec"]
        let m = try mapping(node, what, allowed: kinds + ["interval", "timeout", "rise", "fall", "initial", "on-failure"])
        let named = kinds.filter { m[$0] != nil }
        guard named.count <= 1 else { throw fail(node, "\(what) names two probes (\(named.joined(separator: ", "))): one per check") }
        var given = HealthSettings.Given()
        if let kind = named.first, let n = m[kind] { given.probe = try healthProbe(kind, n, what: what) }
        if let n = m["interval"] { given.interval = try duration(n, "\(what) interval") }
        if let n = m["timeout"] { given.timeout = try duration(n, "\(what) timeout") }
        if let n = m["rise"] { given.rise = try integer(n, "\(what) rise", 1...100) }
        if let n = m["fall"] { given.fall = try integer(n, "\(what) fall", 1...100) }
        if let n = m["initial"] { given.initial = try choice(n, "\(what) initial", HealthState.Status.self) }
        if let n = m["on-failure"] { given.onFailure = try choice(n, "\(what) on-failure", HealthCheck.OnFailure.self) }
        let check = given.over(base?.given).check
        if let check, check.timeout > check.interval {
            throw fail(m["timeout"] ?? m["interval"] ?? node, "\(what): timeout \(HealthCheck.duration(check.timeout)) is longer than the interval \(HealthCheck.duration(check.interval))")
        }
        return HealthSettings(document: value(node), given: given, check: check)
    }

    /// The `cluster:` section (``ClusterConfig``).
    func cluster(_ node: Node) throws(ConfigError) -> ClusterConfig {
        let m = try mapping(node, "cluster", allowed: ["local-as", "router-id", "peers", "bfd", "hold-time", "bird-socket", "withdraw-grace", "balancers", "sync", "takeover-local-addresses"])
        func asNumber(_ n: Node, _ what: String) throws(ConfigError) -> UInt32 {
            UInt32(try integer(n, what, 1...Int(UInt32.max)))
        }
        // Without local-as and peers the balancer announces nothing: a cluster of connection sync only (NAT or
        // FULLNAT active/backup, the addresses moved by keepalived or the like).
        let syncOnly = m["local-as"] == nil && m["peers"] == nil && m["sync"] != nil
        let localAS = syncOnly ? 0 : try asNumber(try required(m, "local-as", in: "cluster", at: node), "cluster local-as")
        var list: [Node] = []
        if !syncOnly {
            let peersNode = try required(m, "peers", in: "cluster", at: node)
            guard case .sequence(let given) = peersNode, !given.isEmpty else {
                throw fail(peersNode, "cluster peers must be a list of routers, e.g. [{ address: 198.51.100.1, as: 65000 }]")
            }
            list = Array(given)
        }
        var peers: [ClusterConfig.Peer] = []
        for item in list {
            let p = try mapping(item, "a cluster peer", allowed: ["address", "as", "interface"])
            let address = try address(try required(p, "address", in: "a cluster peer", at: item), "cluster peer address")
            let remoteAS = try asNumber(try required(p, "as", in: "a cluster peer", at: item), "cluster peer as")
            var interface: String?
            if let n = p["interface"] {
                let name = try scalar(n, "cluster peer interface")
                guard (1...15).contains(name.utf8.count), name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                    throw fail(n, "cluster peer interface '\(name)' is not an interface name")
                }
                interface = name
            }
            guard !peers.contains(where: { $0.address == address }) else { throw fail(item, "cluster peer \(address) is listed twice") }
            peers.append(ClusterConfig.Peer(address: address, remoteAS: remoteAS, interface: interface))
        }
        var cluster = ClusterConfig(document: value(node), localAS: localAS, peers: peers)
        if let n = m["router-id"] {
            let id = try address(n, "cluster router-id")
            guard id.isIPv4 else { throw fail(n, "cluster router-id must be an IPv4 address (BGP identifiers are 32 bits)") }
            cluster.routerID = id
        }
        if let n = m["bfd"] {
            if n.scalar?.string == "off" {
                cluster.bfd = nil
            } else {
                let b = try mapping(n, "cluster bfd", allowed: ["interval", "multiplier"])
                var bfd = ClusterConfig.BFD()
                if let i = b["interval"] {
                    bfd.interval = try duration(i, "cluster bfd interval")
                    guard (10...10_000).contains(bfd.interval) else { throw fail(i, "cluster bfd interval must be within 10ms-10s") }
                }
                if let k = b["multiplier"] { bfd.multiplier = try integer(k, "cluster bfd multiplier", 1...255) }
                cluster.bfd = bfd
            }
        }
        if let n = m["hold-time"] {
            cluster.holdTime = try duration(n, "cluster hold-time")
            guard cluster.holdTime % 1000 == 0, (3000...65_535_000).contains(cluster.holdTime) else {
                throw fail(n, "cluster hold-time must be whole seconds from 3s (BGP's smallest) to 65535s")
            }
        }
        if let n = m["bird-socket"] {
            let path = try scalar(n, "cluster bird-socket")
            guard path.hasPrefix("/") else { throw fail(n, "cluster bird-socket '\(path)' must be an absolute path") }
            cluster.birdSocket = path
        }
        if let n = m["withdraw-grace"] { cluster.withdrawGrace = try duration(n, "cluster withdraw-grace") }
        if let n = m["balancers"] {
            guard case .sequence(let list) = n, !list.isEmpty else {
                throw fail(n, "cluster balancers must be a list of prefixes, e.g. [198.51.100.0/24]")
            }
            for item in list {
                let text = try scalar(item, "cluster balancers")
                let parts = text.split(separator: "/")
                guard parts.count == 2, let address = IPAddress(String(parts[0])), let length = Int(parts[1]),
                      (0...(address.isIPv4 ? 32 : 128)).contains(length) else {
                    throw fail(item, "cluster balancers '\(text)' is not a prefix ADDRESS/LENGTH")
                }
                cluster.balancers.append(text)
            }
        }
        if let n = m["sync"] { cluster.sync = try clusterSync(n) }
        if let n = m["takeover-local-addresses"] {
            guard cluster.sync != nil else {
                throw fail(n, "cluster takeover-local-addresses need cluster sync (without the other balancers' connections their replies cannot be translated here)")
            }
            guard case .sequence(let list) = n, !list.isEmpty else {
                throw fail(n, "cluster takeover-local-addresses must be a list of the other balancers' FULLNAT local addresses")
            }
            for item in list {
                let local = try address(item, "cluster takeover-local-addresses")
                guard !cluster.takeoverLocalAddresses.contains(local) else { throw fail(item, "takeover local address \(local) is listed twice") }
                cluster.takeoverLocalAddresses.append(local)
            }
        }
        return cluster
    }

    /// `cluster.sync` (``ClusterConfig/Sync``); reads the key file.
    func clusterSync(_ node: Node) throws(ConfigError) -> ClusterConfig.Sync {
        let m = try mapping(node, "cluster sync", allowed: ["listen", "peers", "key-file", "interval", "refresh", "max-rate"])
        func endpoint(_ n: Node, _ what: String) throws(ConfigError) -> Endpoint {
            let text = try scalar(n, what)
            guard let endpoint = Endpoint(listenAddress: text), endpoint.port != 0 else {
                throw fail(n, "\(what) '\(text)' is not ADDRESS:PORT (IPv6: [ADDRESS]:PORT), e.g. 198.51.100.1:8848")
            }
            return endpoint
        }
        let listenNode = try required(m, "listen", in: "cluster sync", at: node)
        let listen = try endpoint(listenNode, "cluster sync listen")
        guard listen.address != IPAddress(high: 0, low: 0), listen.address != IPAddress(ipv4: 0) else {
            throw fail(listenNode, "cluster sync listen must be this balancer's own address (the others send to it)")
        }
        let peersNode = try required(m, "peers", in: "cluster sync", at: node)
        guard case .sequence(let list) = peersNode, !list.isEmpty else {
            throw fail(peersNode, "cluster sync peers must be a list of the other balancers' sync endpoints, e.g. [198.51.100.2:8848]")
        }
        var peers: [Endpoint] = []
        for item in list {
            let peer = try endpoint(item, "cluster sync peer")
            guard peer.address.isIPv4 == listen.address.isIPv4 else {
                throw fail(item, "cluster sync peer \(peer) is not of listen's family (\(listen))")
            }
            guard peer != listen else { throw fail(item, "cluster sync peer \(peer) is this balancer's own listen endpoint") }
            guard !peers.contains(peer) else { throw fail(item, "cluster sync peer \(peer) is listed twice") }
            peers.append(peer)
        }
        let keyNode = try required(m, "key-file", in: "cluster sync", at: node)
        let keyFile = try scalar(keyNode, "cluster sync key-file")
        guard keyFile.hasPrefix("/") else { throw fail(keyNode, "cluster sync key-file '\(keyFile)' must be an absolute path") }
        guard let text = try? String(contentsOfFile: keyFile, encoding: .utf8) else {
            throw fail(keyNode, "cluster sync key-file \(keyFile) cannot be read (create it on every balancer: openssl rand -hex 32 > \(keyFile))")
        }
        let key = Array(text.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        guard key.count >= 16 else {
            throw fail(keyNode, "cluster sync key-file \(keyFile) holds \(key.count) bytes; the key needs at least 16 (openssl rand -hex 32)")
        }
        var sync = ClusterConfig.Sync(listen: listen, peers: peers, keyFile: keyFile, key: key)
        if let n = m["interval"] {
            sync.interval = try duration(n, "cluster sync interval")
            guard (10...10_000).contains(sync.interval) else { throw fail(n, "cluster sync interval must be within 10ms-10s") }
        }
        if let n = m["refresh"] {
            sync.refresh = try duration(n, "cluster sync refresh")
            guard (1000...120_000).contains(sync.refresh), sync.refresh > sync.interval else {
                throw fail(n, "cluster sync refresh must be within 1s-2m and longer than the interval (copies must not expire: UDP lives 5m)")
            }
        }
        if let n = m["max-rate"] {
            sync.maxRate = UInt64(try integer(n, "cluster sync max-rate (bytes per second)", 10_000...10_000_000_000))
        }
        return sync
    }

    func duration(_ node: Node, _ what: String) throws(ConfigError) -> UInt64 {
        let text = try scalar(node, what)
        guard let ms = HealthCheck.parseDuration(text), ms <= 3_600_000 else {
            throw fail(node, "\(what) '\(text)' is not a duration up to 1h (e.g. 500ms, 2s, 1m)")
        }
        return ms
    }

    func healthProbe(_ kind: String, _ node: Node, what: String) throws(ConfigError) -> HealthCheck.Probe {
        func bytes(_ n: Node?, _ name: String) throws(ConfigError) -> [UInt8]? {
            guard let n else { return nil }
            let text = try scalar(n, "\(what) \(kind) \(name)")
            guard !text.isEmpty else { throw fail(n, "\(what) \(kind) \(name) is empty") }
            return Array(text.utf8)
        }
        switch kind {
        case "tcp":
            let m = try mapping(node, "\(what) tcp", allowed: ["send", "expect"])
            return .tcp(send: try bytes(m["send"], "send"), expect: try bytes(m["expect"], "expect"))
        case "http", "https":
            let tlsKeys = ["sni", "verify-certificate", "ca-file"]
            let m = try mapping(node, "\(what) \(kind)", allowed: ["path", "host", "expect-status", "body-regex", "body-sha256"] + (kind == "https" ? tlsKeys : []))
            var http = HealthCheck.HTTPProbe()
            if let n = m["path"] {
                http.path = try scalar(n, "\(what) \(kind) path")
                guard http.path.hasPrefix("/"), !http.path.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) else {
                    throw fail(n, "\(what) \(kind) path '\(http.path)' must start with / and hold no spaces")
                }
            }
            if let n = m["host"] {
                let host = try scalar(n, "\(what) \(kind) host")
                guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "\r" || $0 == "\n" }) else {
                    throw fail(n, "\(what) \(kind) host '\(host)' is not a host name")
                }
                http.host = host
            }
            if let n = m["expect-status"] {
                guard case .sequence(let list) = n, !list.isEmpty else {
                    throw fail(n, "\(what) \(kind) expect-status must be a list of codes or ranges, e.g. [\"200-299\", 302]")
                }
                http.expectStatus = []
                for item in list {
                    let text = try scalar(item, "\(what) \(kind) expect-status")
                    let bounds = text.split(separator: "-", maxSplits: 1).map { Int($0.trimmingCharacters(in: .whitespaces)) }
                    guard let low = bounds.first ?? nil, let high = bounds.count == 2 ? bounds[1] : low,
                          (100...599).contains(low), (low...599).contains(high) else {
                        throw fail(item, "\(what) \(kind) expect-status '\(text)' is not a status code or range within 100-599")
                    }
                    http.expectStatus.append(low...high)
                }
            }
            if let n = m["body-regex"] {
                let pattern = try scalar(n, "\(what) \(kind) body-regex")
                guard (try? NSRegularExpression(pattern: pattern)) != nil else {
                    throw fail(n, "\(what) \(kind) body-regex '\(pattern)' is not a regular expression")
                }
                http.bodyRegex = pattern
            }
            if let n = m["body-sha256"] {
                let digest = try scalar(n, "\(what) \(kind) body-sha256").lowercased()
                guard digest.count == 64, digest.allSatisfy(\.isHexDigit) else {
                    throw fail(n, "\(what) \(kind) body-sha256 must be 64 hexadecimal digits (curl -s URL | sha256sum)")
                }
                http.bodySHA256 = digest
            }
            guard kind == "https" else { return .http(http) }
            var tls = HealthCheck.TLSSettings()
            if let n = m["sni"] {
                let name = try scalar(n, "\(what) https sni")
                guard DNSQuery.parseName(name) != nil, !name.isEmpty, IPAddress(name) == nil else {
                    throw fail(n, "\(what) https sni '\(name)' is not a host name")
                }
                tls.sni = name
            }
            if let n = m["ca-file"] {
                let path = try scalar(n, "\(what) https ca-file")
                guard path.hasPrefix("/") else { throw fail(n, "\(what) https ca-file '\(path)' must be an absolute path") }
                guard FileManager.default.isReadableFile(atPath: path) else { throw fail(n, "\(what) https ca-file '\(path)' cannot be read") }
                tls.caFile = path
                tls.verifyCertificate = true
            }
            if let n = m["verify-certificate"] { tls.verifyCertificate = try boolean(n, "\(what) https verify-certificate") }
            return .https(http, tls)
        case "udp":
            let m = try mapping(node, "\(what) udp", allowed: ["payload", "expect"])
            guard let payload = try bytes(m["payload"], "payload") else { throw fail(node, "\(what) udp needs a 'payload' to send") }
            return .udp(payload: payload, expect: try bytes(m["expect"], "expect"))
        case "dns":
            let m = try mapping(node, "\(what) dns", allowed: ["name", "type", "rcode", "transport"])
            var query = DNSQuery()
            /// The key's text through `parse`; a refusal says what the key takes.
            func parsed<T>(_ key: String, _ parse: (String) -> T?, _ takes: String) throws(ConfigError) -> T? {
                guard let n = m[key] else { return nil }
                let text = try scalar(n, "\(what) dns \(key)")
                guard let value = parse(text) else { throw fail(n, "\(what) dns \(key) '\(text)' is not \(takes)") }
                return value
            }
            query.name = try parsed("name", DNSQuery.parseName, "a domain name (labels of 1-63 bytes, 255 in all; '.' is the root)") ?? query.name
            query.type = try parsed("type", DNSQuery.parseType, "a record type (A, AAAA, SOA, NS, MX, TXT, SRV, ... or a number)") ?? query.type
            query.rcode = try parsed("rcode", DNSQuery.parseRcode, "an rcode (NOERROR, SERVFAIL, NXDOMAIN, REFUSED, ... or 0-15)")
            if let n = m["transport"] {
                let text = try scalar(n, "\(what) dns transport")
                guard text == "udp" || text == "tcp" else { throw fail(n, "\(what) dns transport '\(text)' must be udp or tcp") }
                query.overTCP = text == "tcp"
            }
            return .dns(query)
        case "exec":
            let arguments: [String]
            switch node {
            case .sequence(let list):
                var words: [String] = []
                for item in list { words.append(try scalar(item, "\(what) exec argument")) }
                arguments = words
            default:
                arguments = [try scalar(node, "\(what) exec")]
            }
            guard let program = arguments.first, program.hasPrefix("/") else {
                throw fail(node, "\(what) exec must start with the program's absolute path (it runs without a shell), e.g. [/usr/local/bin/check, \"8080\"]")
            }
            return .exec(arguments: arguments)
        default:
            throw fail(node, "\(what): unknown probe \(kind)")
        }
    }

    func virtualService(_ node: Node) throws(ConfigError) -> VirtualService {
        let map = try mapping(node, "a service", allowed: [
            "name", "vip", "port", "protocol", "mode", "scheduler", "reals", "local-addresses", "tunnel-source",
            "scheduler-flags", "mh-table-size", "hash-seed", "adopt-midstream", "persistence", "persistence-netmask", "ops", "drain", "offload",
            "health", "sorry-server", "quorum", "notify",
        ])
        let vip = try address(try required(map, "vip", in: "a service", at: node), "vip")
        let port = UInt16(try integer(try required(map, "port", in: "a service", at: node), "port", 1...65535))
        let transport: TransportProtocol
        let protocolNode = try required(map, "protocol", in: "a service", at: node)
        switch try scalar(protocolNode, "protocol") {
        case "tcp": transport = .tcp
        case "udp": transport = .udp
        case let other: throw fail(protocolNode, "protocol '\(other)' is not one of tcp | udp")
        }
        let modeNode = try required(map, "mode", in: "a service", at: node)
        let mode = try choice(modeNode, "mode", ForwardingMode.self)
        let scheduler = try map["scheduler"].map { n throws(ConfigError) in try choice(n, "scheduler", SchedulerKind.self) } ?? .wlc
        let name = try map["name"].map { n throws(ConfigError) in try scalar(n, "name") }
        let realsNode = try required(map, "reals", in: "a service", at: node)
        guard case .sequence(let realList) = realsNode, !realList.isEmpty else {
            throw fail(realsNode, "service \(Endpoint(address: vip, port: port))/\(transport) has no real servers")
        }
        var localAddresses: [IPAddress] = []
        if let node = map["local-addresses"] {
            guard mode == .fullnat else { throw fail(node, "local-addresses belong to fullnat services only (mode is \(mode))") }
            guard case .sequence(let list) = node, !list.isEmpty else {
                throw fail(node, "local-addresses must be a non-empty list of the balancer's addresses")
            }
            for item in list {
                let local = try address(item, "local address")
                guard local.isIPv4 == vip.isIPv4 else { throw fail(item, "local address \(local) is not of the vip's address family") }
                guard !localAddresses.contains(local) else { throw fail(item, "local address \(local) is listed twice") }
                localAddresses.append(local)
            }
        } else if mode == .fullnat {
            throw fail(node, "a fullnat service needs 'local-addresses' (the balancer's addresses towards the real servers)")
        }
        var tunnelSource: IPAddress?
        if let node = map["tunnel-source"] {
            guard mode == .tun else { throw fail(node, "tunnel-source belongs to tun services only (mode is \(mode))") }
            let source = try address(node, "tunnel-source")
            tunnelSource = source
        }
        let serviceHealth = try map["health"].map { n throws(ConfigError) in try healthSettings(n, base: nil, what: "health") }
        var reals: [RealServer] = []
        for realNode in realList {
            let r = try mapping(realNode, "a real server", allowed: ["address", "port", "weight", "upper", "lower", "health"])
            let addressNode = try required(r, "address", in: "a real server", at: realNode)
            let rip = try address(addressNode, "address")
            // TUN may cross families (IPv4 in IPv6, IPv6 in IPv4), as IPVS allows; the other modes keep the packet's family.
            guard rip.isIPv4 == vip.isIPv4 || mode == .tun else {
                throw fail(addressNode, "real server \(rip) is not of the same address family as vip \(vip) (\(mode) cannot translate between families; only tun can carry one family in the other)")
            }
            if let source = tunnelSource, source.isIPv4 != rip.isIPv4 {
                throw fail(addressNode, "real server \(rip) is not of the family of tunnel-source \(source) (the outer header has the real server's family)")
            }
            let rport = try r["port"].map { n throws(ConfigError) in UInt16(try integer(n, "port", 1...65535)) } ?? port
            if mode == .dr || mode == .tun, rport != port {
                throw fail(r["port"], "a \(mode) real server's port must equal the VIP port \(port) (\(mode) does not rewrite ports), not \(rport)")
            }
            let weight = try r["weight"].map { n throws(ConfigError) in UInt32(try integer(n, "weight", 0...65535)) } ?? 1
            var real = RealServer(address: rip, port: rport, weight: weight)
            if let n = r["upper"] { real.upper = try integer(n, "upper", 0...1_000_000_000) }
            if let n = r["lower"] {
                real.lower = try integer(n, "lower", 0...1_000_000_000)
                guard real.upper > 0, real.lower < real.upper else {
                    throw fail(n, "lower \(real.lower) needs an upper threshold above it (upper \(real.upper))")
                }
            }
            guard !reals.contains(where: { $0.endpoint == real.endpoint }) else {
                throw fail(realNode, "real server \(real.endpoint) is listed twice")
            }
            if let n = r["health"] {
                real.health = try healthSettings(n, base: serviceHealth, what: "health of real server \(real.endpoint)")
                guard real.health?.check != nil else {
                    throw fail(n, "health of real server \(real.endpoint) names no probe (one of: tcp, http, https, udp, dns, exec)")
                }
            } else if serviceHealth != nil && serviceHealth?.check == nil {
                throw fail(realNode, "real server \(real.endpoint) has no probe: the service's health names none (give one of tcp, http, https, udp, dns, exec here or there)")
            }
            reals.append(real)
        }
        var service = VirtualService(name: name, vip: vip, port: port, transport: transport, mode: mode,
                                     scheduler: scheduler, reals: reals, localAddresses: localAddresses)
        service.tunnelSource = tunnelSource
        service.health = serviceHealth
        if let node = map["sorry-server"] {
            let m = try mapping(node, "sorry-server", allowed: ["address", "port"])
            let address = try address(try required(m, "address", in: "sorry-server", at: node), "sorry-server address")
            guard address.isIPv4 == vip.isIPv4 || mode == .tun else {
                throw fail(node, "sorry-server \(address) is not of the family of vip \(vip)")
            }
            let port = try m["port"].map { n throws(ConfigError) in UInt16(try integer(n, "sorry-server port", 1...65535)) } ?? port
            if mode == .dr || mode == .tun, port != service.port {
                throw fail(node, "a \(mode) sorry-server's port must equal the VIP port \(service.port)")
            }
            guard !reals.contains(where: { $0.endpoint == Endpoint(address: address, port: port) }) else {
                throw fail(node, "sorry-server \(Endpoint(address: address, port: port)) is also a real server of the service")
            }
            service.sorryServer = Endpoint(address: address, port: port)
        }
        if let node = map["quorum"] {
            let m = try mapping(node, "quorum", allowed: ["min-weight", "hysteresis"])
            var quorum = Quorum(minWeight: try integer(try required(m, "min-weight", in: "quorum", at: node), "quorum min-weight", 1...10_000_000))
            if let n = m["hysteresis"] { quorum.hysteresis = try integer(n, "quorum hysteresis", 0...10_000_000) }
            service.quorum = quorum
        }
        if let node = map["notify"] {
            guard case .sequence(let list) = node else { throw fail(node, "notify must be a list of programs, e.g. [/usr/local/sbin/lb-notify]") }
            for item in list {
                let program = try scalar(item, "notify program")
                guard program.hasPrefix("/") else { throw fail(item, "notify program '\(program)' must be an absolute path (it runs without a shell)") }
                service.notify.append(program)
            }
        }
        if let node = map["scheduler-flags"] {
            guard case .sequence(let flags) = node else { throw fail(node, "scheduler-flags must be a list, e.g. [sh-fallback, sh-port]") }
            for flag in flags {
                let name = try scalar(flag, "scheduler flag")
                switch (name, scheduler) {
                case ("sh-fallback", .sh): service.schedulerOptions.shFallback = true
                case ("sh-port", .sh): service.schedulerOptions.shPort = true
                case ("mh-fallback", .mh): service.schedulerOptions.mhFallback = true
                case ("mh-port", .mh): service.schedulerOptions.mhPort = true
                case ("sh-fallback", _), ("sh-port", _), ("mh-fallback", _), ("mh-port", _):
                    throw fail(flag, "scheduler flag '\(name)' needs scheduler \(name.prefix(2)), not \(scheduler)")
                default:
                    throw fail(flag, "unknown scheduler flag '\(name)' (expected sh-fallback, sh-port, mh-fallback, mh-port)")
                }
            }
        }
        if let node = map["adopt-midstream"] { service.adoptMidstream = try boolean(node, "adopt-midstream") }
        if let node = map["ops"] {
            switch try scalar(node, "ops") {
            case "true": service.onePacket = true
            case "false": service.onePacket = false
            case let other: throw fail(node, "ops '\(other)' is not true or false")
            }
            if service.onePacket {
                guard transport == .udp else { throw fail(node, "ops schedules UDP datagrams; \(transport) has connections") }
                guard mode != .fullnat else {
                    throw fail(node, "ops is not available with fullnat (each datagram would need its own local port)")
                }
                guard map["persistence"] == nil else { throw fail(node, "ops and persistence exclude each other") }
            }
        }
        if let node = map["offload"] {
            service.offload = try choice(node, "offload", Offload.self)
            if service.offload == .conntrack {
                guard mode != .tun else {
                    throw fail(node, "offload: conntrack needs the kernel to carry the connection, and for tun it would need ipip, which this kernel lacks (use offload: none)")
                }
                guard !service.onePacket else {
                    throw fail(node, "offload: conntrack keeps each flow on one real server; ops schedules every datagram on its own")
                }
            }
        }
        if let node = map["persistence"] {
            service.persistence = UInt64(try integer(node, "persistence", 0...(30 * 86400)))
        }
        if let node = map["drain"] {
            service.drain = UInt64(try integer(node, "drain", 0...86400))
        }
        service.persistencePrefix = vip.isIPv4 ? 32 : 128
        if let node = map["persistence-netmask"] {
            guard service.persistence > 0 else { throw fail(node, "persistence-netmask needs persistence") }
            let text = try scalar(node, "persistence-netmask")
            if let prefix = Int(text), (0...(vip.isIPv4 ? 32 : 128)).contains(prefix) {
                service.persistencePrefix = prefix
            } else if vip.isIPv4, let mask = IPAddress.parseIPv4(Substring(text)), (~mask &+ 1) & ~mask == 0 {
                service.persistencePrefix = mask.nonzeroBitCount   // a contiguous dotted mask, e.g. 255.255.255.0
            } else {
                throw fail(node, "persistence-netmask '\(text)' is neither a prefix length nor a contiguous netmask")
            }
        }
        if let node = map["mh-table-size"] {
            guard scheduler == .mh else { throw fail(node, "mh-table-size needs scheduler mh, not \(scheduler)") }
            let size = try integer(node, "mh-table-size", 2...(1 << 24))
            guard MaglevScheduler.isPrime(size), size >= 100 * reals.count else {
                throw fail(node, "mh-table-size \(size) must be a prime >= 100 x the real servers (\(100 * reals.count))")
            }
            service.schedulerOptions.mhTableSize = size
        }
        if let node = map["hash-seed"] {
            guard scheduler == .mh else { throw fail(node, "hash-seed needs scheduler mh, not \(scheduler)") }
            let text = try scalar(node, "hash-seed")
            let seed = text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
            guard let seed else { throw fail(node, "hash-seed '\(text)' is not a number from 0 to 2^64-1 (decimal or 0x hex)") }
            service.schedulerOptions.hashSeed = seed
        }
        if let node = map["adopt-midstream"], service.adoptMidstream == true, !service.canAdoptMidstream {
            throw fail(node, "adopt-midstream needs a TCP service in dr or tun mode with scheduler mh or sh (the same answer on every balancer), not \(transport) \(mode) \(scheduler)")
        }
        return service
    }
}
