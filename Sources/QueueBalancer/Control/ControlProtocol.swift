/// The control socket's protocol (README "Control socket"): one JSON object per line each way.
///
///     → {"id": 1, "cmd": "real.edit", "args": {"service": {"protocol": "tcp", "vip": "203.0.113.10", "port": 80},
///                                              "real": {"address": "198.51.100.11", "port": 8080, "weight": 0}}}
///     ← {"id": 1, "ok": true, "result": {...}}
///     ← {"id": 1, "ok": false, "error": {"code": "invalid", "message": "..."}}
///
/// `id` is any JSON value, echoed (null when absent or unreadable); `args` may be left out.
public struct ControlRequest: Sendable, Equatable {
    public var id: JSONValue
    public var cmd: String
    public var args: [String: JSONValue]

    public init(id: JSONValue = .null, cmd: String, args: [String: JSONValue] = [:]) {
        self.id = id
        self.cmd = cmd
        self.args = args
    }

    /// Every command the control plane knows.
    public static let commands = ["list", "connections", "zero", "reload", "save", "service.add", "service.edit",
                                  "service.delete", "real.add", "real.edit", "real.delete", "cluster.status",
                                  "cluster.withdraw", "cluster.announce"]

    /// The longest request line accepted, newline excluded.
    public static let maximumLength = 65_536

    /// Parses one line (without its newline); the failure carries the id when it could be read.
    public static func parse(_ line: some Collection<UInt8>) -> Result<ControlRequest, ControlAnswer> {
        guard line.count <= maximumLength else {
            return .failure(.failure(id: .null, code: .tooLong, message: "request longer than \(maximumLength) bytes"))
        }
        guard let value = try? JSONValue.parse(Array(line)) else {
            return .failure(.failure(id: .null, code: .badRequest, message: "not a JSON object: send one {\"id\", \"cmd\", \"args\"} object per line"))
        }
        guard case .object(let fields) = value else {
            return .failure(.failure(id: .null, code: .badRequest, message: "a request is a JSON object {\"id\", \"cmd\", \"args\"}"))
        }
        let id = fields["id"] ?? .null
        guard let cmd = fields["cmd"]?.string else {
            return .failure(.failure(id: id, code: .badRequest, message: "the request has no \"cmd\" string"))
        }
        var args: [String: JSONValue] = [:]
        if let given = fields["args"], given != .null {
            guard let object = given.object else {
                return .failure(.failure(id: id, code: .badRequest, message: "\"args\" must be an object"))
            }
            args = object
        }
        return .success(ControlRequest(id: id, cmd: cmd, args: args))
    }

    /// The request as one line, newline included.
    public var line: String {
        JSONValue.object(["id": id, "cmd": .string(cmd), "args": .object(args)]).jsonText + "\n"
    }
}

/// The error codes of the control protocol.
public enum ControlErrorCode: String, Sendable, Equatable, CaseIterable {
    /// Not a JSON object, no `cmd`, `args` not an object.
    case badRequest = "bad-request"
    /// A line longer than ``ControlRequest/maximumLength``.
    case tooLong = "too-long"
    case unknownCommand = "unknown-command"
    /// An argument missing or of the wrong kind.
    case badArgument = "bad-argument"
    /// The configuration (file or changed) is not valid: `file:line: reason` or the reason.
    case invalid
    /// A change the running balancer cannot make (it names nothing, exists already, needs a restart).
    case refused
    /// The iptables rules or routes the change needs could not be installed (nothing changed).
    case rules
    /// The caller is not allowed (not root).
    case denied
    /// The request did not arrive in time.
    case timeout
}

/// One answer line.
public struct ControlAnswer: Error, Sendable, Equatable {
    public var value: JSONValue

    public static func success(id: JSONValue, result: JSONValue) -> ControlAnswer {
        ControlAnswer(value: .object(["id": id, "ok": .bool(true), "result": result]))
    }

    public static func failure(id: JSONValue, code: ControlErrorCode, message: String) -> ControlAnswer {
        ControlAnswer(value: .object(["id": id, "ok": .bool(false),
                                      "error": .object(["code": .string(code.rawValue), "message": .string(message)])]))
    }

    public var isSuccess: Bool { value["ok"] == .bool(true) }
    public var result: JSONValue? { value["result"] }
    public var errorCode: String? { value["error"]?["code"]?.string }
    public var errorMessage: String? { value["error"]?["message"]?.string }

    /// The answer as one line, newline included.
    public var line: String { value.jsonText + "\n" }

    public init(value: JSONValue) { self.value = value }
}
