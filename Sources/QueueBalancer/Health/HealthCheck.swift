/// A real server's health check, as the config's `health:` says it, with every default spelled out
/// (README "Health checks"). A service's `health` is the default of its real servers; a real server's own
/// `health` overrides it key by key (a probe kind given there replaces the service's probe).
public struct HealthCheck: Sendable, Equatable, CustomStringConvertible {
    /// What a probe does; a probe succeeds or fails, within ``timeout``.
    public enum Probe: Sendable, Equatable, CustomStringConvertible {
        /// Connect; then optionally send bytes and expect the answer to start with others.
        case tcp(send: [UInt8]?, expect: [UInt8]?)
        /// `GET path` (HTTP/1.0, `Connection: close`), the status in one of the ranges, the body optionally
        /// matching a regular expression.
        case http(HTTPProbe)
        /// The same over TLS: SNI, and the server's certificate checked only when asked.
        case https(HTTPProbe, TLSSettings)
        /// A datagram; with `expect`, the answer must start with it; without, no ICMP error within the timeout
        /// (port unreachable is a failure either way).
        case udp(payload: [UInt8], expect: [UInt8]?)
        /// A DNS query for a name and type; see ``DNSQuery`` for what counts as an answer.
        case dns(DNSQuery)
        /// A command run without a shell; exit status 0 is a success (killed at the timeout: a failure).
        case exec(arguments: [String])

        public var kind: String {
            switch self {
            case .tcp: "tcp"
            case .http: "http"
            case .https: "https"
            case .udp: "udp"
            case .dns: "dns"
            case .exec: "exec"
            }
        }

        public var description: String {
            switch self {
            case .tcp(let send, let expect):
                "tcp" + (send.map { " send \($0.count) bytes" } ?? "") + (expect.map { " expect \($0.count) bytes" } ?? "")
            case .http(let http):
                "http \(http)"
            case .https(let http, let tls):
                "https \(http)\(tls)"
            case .udp(let payload, let expect):
                "udp \(payload.count) bytes" + (expect.map { " expect \($0.count) bytes" } ?? ", no ICMP error")
            case .dns(let query): "\(query)"
            case .exec(let arguments): "exec \(arguments.joined(separator: " "))"
            }
        }
    }

    public struct HTTPProbe: Sendable, Equatable, CustomStringConvertible {
        public var path = "/"
        public var host: String?
        public var expectStatus: [ClosedRange<Int>] = [200...299]
        public var bodyRegex: String?
        /// The body's SHA-256, lowercase hexadecimal (`curl -s URL | sha256sum`).
        public var bodySHA256: String?

        public var description: String {
            "GET \(path)" + (host.map { " Host \($0)" } ?? "")
                + " status " + expectStatus.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: ",")
                + (bodyRegex.map { " body ~ /\($0)/" } ?? "")
                + (bodySHA256.map { " body sha256 \($0.prefix(12))…" } ?? "")
        }
    }

    /// An `https` probe's TLS: the server name sent (SNI) and whether the server's certificate is checked.
    public struct TLSSettings: Sendable, Equatable, CustomStringConvertible {
        /// The server name sent; nil: the probe's `host` when that is a name, else none.
        public var sni: String?
        /// Check the certificate's chain (against `caFile`, else the system's CAs) and that it names `sni`, else
        /// `host`, else the real server's address. Off by default, as keepalived's SSL_GET: real servers often
        /// hold the public name's certificate, not their own address's.
        public var verifyCertificate = false
        /// PEM file of the CAs to trust; giving one turns `verifyCertificate` on unless it is set false.
        public var caFile: String?

        public init() {}

        /// The name sent as SNI for a probe whose Host header is `host`.
        func serverName(host: String?) -> String? {
            if let sni { return sni }
            guard let host, IPAddress(host) == nil else { return nil }
            // A Host header may carry a port; SNI never does.
            if let colon = host.lastIndex(of: ":"), !host.hasSuffix("]"), UInt16(host[host.index(after: colon)...]) != nil {
                return String(host[..<colon])
            }
            return host
        }

        public var description: String {
            (sni.map { ", SNI \($0)" } ?? "")
                + (verifyCertificate ? ", certificate checked" + (caFile.map { " against \($0)" } ?? " against the system's CAs") : ", certificate not checked")
        }
    }

    /// What a failed server's weight becomes.
    public enum OnFailure: String, Sendable, Equatable, CaseIterable {
        /// Weight 0: no new connections, existing ones go on.
        case quiesce
        /// Out of the service, draining as a removal does (its service's `drain`).
        case remove
    }

    public var probe: Probe
    /// Between probes (ms), each moved by up to a tenth of it (``ProbeSchedule``).
    public var interval: UInt64 = 5000
    /// How long a probe may take (ms); longer is a failure. Default 2 s, or the interval when shorter.
    public var timeout: UInt64 = 2000
    public var rise = 2
    public var fall = 3
    public var initial = HealthState.Status.up
    public var onFailure = OnFailure.quiesce

    public init(probe: Probe) { self.probe = probe }

    public var description: String {
        "\(probe), every \(Self.duration(interval)), timeout \(Self.duration(timeout)), rise \(rise), fall \(fall), initial \(initial), on-failure \(onFailure.rawValue)"
    }

    /// A duration as the config writes it: `1500ms`, `2s`, `5m`.
    public static func duration(_ milliseconds: UInt64) -> String {
        if milliseconds % 60_000 == 0 { return "\(milliseconds / 60_000)m" }
        if milliseconds % 1000 == 0 { return "\(milliseconds / 1000)s" }
        return "\(milliseconds)ms"
    }

    /// `1500ms`, `2s`, `1m`, or a plain number of seconds; nil when it is none of these (or 0).
    public static func parseDuration(_ text: String) -> UInt64? {
        let units: [(String, UInt64)] = [("ms", 1), ("s", 1000), ("m", 60_000)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            guard let n = UInt64(text.dropLast(suffix.count)), n > 0 else { return nil }
            return n.multipliedReportingOverflow(by: factor).overflow ? nil : n * factor
        }
        guard let n = UInt64(text), n > 0 else { return nil }
        return n * 1000
    }
}

/// The `health` of a service or real server: what the file said (kept to write it back) and what it means.
public struct HealthSettings: Sendable, Equatable {
    /// The keys as written (``ConfigDocument`` writes them back).
    public var document: JSONValue
    /// The keys given here, each validated.
    public var given: Given
    /// The check, the service's keys under the real server's, defaults for the rest; nil when no probe is named
    /// (a service's defaults: then each of its real servers names one).
    public var check: HealthCheck?

    /// The settings one `health` mapping gives.
    public struct Given: Sendable, Equatable {
        public var probe: HealthCheck.Probe?
        public var interval: UInt64?
        public var timeout: UInt64?
        public var rise: Int?
        public var fall: Int?
        public var initial: HealthState.Status?
        public var onFailure: HealthCheck.OnFailure?

        /// These settings over `base`'s.
        func over(_ base: Given?) -> Given {
            guard let base else { return self }
            return Given(probe: probe ?? base.probe, interval: interval ?? base.interval, timeout: timeout ?? base.timeout,
                         rise: rise ?? base.rise, fall: fall ?? base.fall, initial: initial ?? base.initial,
                         onFailure: onFailure ?? base.onFailure)
        }

        /// The check, with the defaults for what is not given; nil without a probe.
        var check: HealthCheck? {
            guard let probe else { return nil }
            var check = HealthCheck(probe: probe)
            if let interval { check.interval = interval }
            // The default timeout is 2 s, or the interval when that is shorter.
            check.timeout = timeout ?? min(check.timeout, check.interval)
            if let rise { check.rise = rise }
            if let fall { check.fall = fall }
            if let initial { check.initial = initial }
            if let onFailure { check.onFailure = onFailure }
            return check
        }
    }
}

/// A service's `quorum`: the weight of its up real servers below which it reports down.
public struct Quorum: Sendable, Equatable {
    public var minWeight: Int
    public var hysteresis = 0
}
