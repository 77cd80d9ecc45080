import Foundation

/// A JSON value: what the control socket carries, and the neutral form a configuration is edited in
/// (``ConfigDocument``) before it is written as YAML and validated by ``ConfigLoader``.
public enum JSONValue: Sendable, Equatable, Codable, CustomStringConvertible {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .number(let value):
            if value == value.rounded(), abs(value) < 1e15 { try container.encode(Int64(value)) } else { try container.encode(value) }
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }

    public init(_ value: Int) { self = .number(Double(value)) }
    public init(_ value: UInt64) { self = .number(Double(value)) }

    /// Compact JSON, keys sorted (one line: the control protocol's framing).
    public var jsonText: String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)).map { String(decoding: $0, as: UTF8.self) } ?? "null"
    }

    public var description: String { jsonText }

    public var string: String? { if case .string(let s) = self { s } else { nil } }
    public var object: [String: JSONValue]? { if case .object(let o) = self { o } else { nil } }
    public var array: [JSONValue]? { if case .array(let a) = self { a } else { nil } }
    public var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    /// A whole number (JSON has no integers: 80.0 is 80, 80.5 is none).
    public var integer: Int? {
        if case .number(let n) = self, n == n.rounded(), abs(n) < 1e15 { Int(n) } else { nil }
    }

    public subscript(key: String) -> JSONValue? { object?[key] }

    /// The value as a YAML scalar, or a flow collection (JSON is YAML's flow style).
    var yamlScalar: String {
        switch self {
        case .string(let s):
            let plain = !s.isEmpty && s.unicodeScalars.allSatisfy { c in
                (c >= "A" && c <= "Z") || (c >= "a" && c <= "z") || (c >= "0" && c <= "9") || "_./-".unicodeScalars.contains(c)
            }
                && Double(s) == nil && !["true", "false", "yes", "no", "null", "on", "off", "~"].contains(s.lowercased())
            return plain ? s : JSONValue.string(s).jsonText
        case .array(let items): return "[" + items.map(\.yamlScalar).joined(separator: ", ") + "]"
        case .object(let fields) where fields.isEmpty:
            return "{}"
        case .object(let fields):
            return "{ " + fields.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value.yamlScalar)" }.joined(separator: ", ") + " }"
        default: return jsonText
        }
    }

    /// Parses one JSON text.
    public static func parse(_ text: some DataProtocol) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(text))
    }
}
