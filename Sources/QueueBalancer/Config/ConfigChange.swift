/// One live change to the running configuration, as `nfqlb service add|edit|delete` and `nfqlb real
/// add|edit|delete` (ipvsadm's -A/-E/-D and -a/-e/-d) ask for it through the control socket. Fields use the
/// config file's keys; applied to a ``ConfigDocument`` and validated by ``ConfigLoader`` like the file.
///
/// Changes are layered on the file (docs/ARCHITECTURE.md, "Operating it live"): on reload the file wins for
/// what it sets, and a change to something the file does not define (a service or real server added live,
/// and its later edits) is applied again on top of it.
public enum ConfigChange: Sendable, Equatable {
    case addService(ServiceID, fields: [String: JSONValue])
    /// Fields set to `null` go back to their default.
    case editService(ServiceID, fields: [String: JSONValue])
    case deleteService(ServiceID)
    case addReal(ServiceID, Endpoint, fields: [String: JSONValue])
    case editReal(ServiceID, Endpoint, fields: [String: JSONValue])
    case deleteReal(ServiceID, Endpoint)

    /// A virtual service's identity: protocol, VIP and port (`-t|-u VIP:PORT`).
    public struct ServiceID: Sendable, Hashable, CustomStringConvertible {
        public var transport: TransportProtocol
        public var endpoint: Endpoint

        public init(transport: TransportProtocol, endpoint: Endpoint) {
            self.transport = transport
            self.endpoint = endpoint
        }

        public init(_ service: VirtualService) { self.init(transport: service.transport, endpoint: service.endpoint) }

        public var description: String { "\(transport)/\(endpoint)" }

        func matches(_ fields: [String: JSONValue]) -> Bool {
            fields["protocol"]?.string == "\(transport)" && fields["port"]?.integer == Int(endpoint.port)
                && fields["vip"]?.string.flatMap(IPAddress.init) == endpoint.address
        }
    }

    /// A change refused before validation: what it names does not exist, or exists already.
    public struct Refusal: Error, Equatable, CustomStringConvertible {
        public var reason: String
        public var description: String { reason }
    }

    public var service: ServiceID {
        switch self {
        case .addService(let id, _), .editService(let id, _), .deleteService(let id), .addReal(let id, _, _),
             .editReal(let id, _, _), .deleteReal(let id, _): id
        }
    }

    /// The real server it names, for real server changes.
    public var real: Endpoint? {
        switch self {
        case .addReal(_, let real, _), .editReal(_, let real, _), .deleteReal(_, let real): real
        default: nil
        }
    }

    /// Whether `config` (the file) defines what this change is about: then the file wins at reload.
    public func isDefined(by config: BalancerConfig) -> Bool {
        guard let service = config.services.first(where: { ServiceID($0) == self.service }) else { return false }
        guard let real else { return true }
        return service.reals.contains { $0.endpoint == real }
    }

    /// `document` with this change made (not yet validated: see ``ConfigDocument/config(_:file:)``).
    public func apply(to document: JSONValue) throws(Refusal) -> JSONValue {
        guard var top = document.object, var services = top["services"]?.array else {
            throw Refusal(reason: "the configuration has no services")
        }
        let index = services.firstIndex { $0.object.map(service.matches) ?? false }
        switch self {
        case .addService(let id, let fields):
            guard index == nil else { throw Refusal(reason: "service \(id) exists already (edit it with service edit)") }
            services.append(.object(fields.merging(identity(id)) { _, key in key }))
        case .editService(let id, let fields):
            guard let index, var current = services[index].object else { throw Refusal(reason: "no service \(id)") }
            for (key, value) in fields where !["vip", "port", "protocol", "reals"].contains(key) {
                current[key] = value == .null ? nil : value
            }
            services[index] = .object(current)
        case .deleteService(let id):
            guard let index else { throw Refusal(reason: "no service \(id)") }
            services.remove(at: index)
            guard !services.isEmpty else { throw Refusal(reason: "service \(id) is the last one: a balancer serves at least one") }
        case .addReal(let id, let endpoint, let fields), .editReal(let id, let endpoint, let fields):
            guard let index, var current = services[index].object else { throw Refusal(reason: "no service \(id)") }
            var reals = current["reals"]?.array ?? []
            let at = reals.firstIndex { Self.endpoint(of: $0, servicePort: id.endpoint.port) == endpoint }
            let merged: [String: JSONValue] = ["address": .string("\(endpoint.address)"), "port": JSONValue(Int(endpoint.port))]
            if case .addReal = self {
                guard at == nil else { throw Refusal(reason: "real server \(endpoint) of \(id) exists already (edit it with real edit)") }
                reals.append(.object(fields.merging(merged) { _, key in key }))
            } else {
                guard let at, var real = reals[at].object else { throw Refusal(reason: "no real server \(endpoint) in \(id)") }
                for (key, value) in fields where key != "address" && key != "port" { real[key] = value == .null ? nil : value }
                reals[at] = .object(real)
            }
            current["reals"] = .array(reals)
            services[index] = .object(current)
        case .deleteReal(let id, let endpoint):
            guard let index, var current = services[index].object else { throw Refusal(reason: "no service \(id)") }
            var reals = current["reals"]?.array ?? []
            guard let at = reals.firstIndex(where: { Self.endpoint(of: $0, servicePort: id.endpoint.port) == endpoint }) else {
                throw Refusal(reason: "no real server \(endpoint) in \(id)")
            }
            reals.remove(at: at)
            guard !reals.isEmpty else {
                throw Refusal(reason: "\(endpoint) is the last real server of \(id): delete the service, or set its weight to 0")
            }
            current["reals"] = .array(reals)
            services[index] = .object(current)
        }
        top["services"] = .array(services)
        return .object(top)
    }

    private func identity(_ id: ServiceID) -> [String: JSONValue] {
        ["vip": .string("\(id.endpoint.address)"), "port": JSONValue(Int(id.endpoint.port)), "protocol": .string("\(id.transport)")]
    }

    static func endpoint(of real: JSONValue, servicePort: UInt16) -> Endpoint? {
        guard let address = real["address"]?.string.flatMap(IPAddress.init) else { return nil }
        let port = real["port"]?.integer.flatMap { UInt16(exactly: $0) } ?? servicePort
        return Endpoint(address: address, port: port)
    }
}
