/// The number of a real server in the ``RealServerRegistry``: the identity that connections, persistence
/// templates, connection counts and forwarders refer to, stable for as long as the (virtual service, real
/// endpoint) pair is known (across config changes that keep it).
///
/// Numbers run from 0 to the registry's capacity; the datapath indexes its per-server arrays with ``index``.
public struct RealServerID: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
                            CustomStringConvertible {
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public init(integerLiteral value: UInt32) { rawValue = value }

    /// The position of this server in per-server arrays (the registry's loads, the service table's forwarders).
    public var index: Int { Int(rawValue) }

    public static func < (a: RealServerID, b: RealServerID) -> Bool { a.rawValue < b.rawValue }

    public var description: String { "#\(rawValue)" }
}
