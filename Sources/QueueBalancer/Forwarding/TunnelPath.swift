import Foundation

/// What TUN needs to know about the path to one real server: the outer source address (the balancer's own
/// address on the route towards it) and the MTU of that route.
public struct TunnelPath: Sendable, Equatable {
    public var source: IPAddress
    public var mtu: Int

    public init(source: IPAddress, mtu: Int) {
        self.source = source
        self.mtu = mtu
    }

    /// Asks the kernel (`ip route get REAL`): the `src` of the route, and its `mtu` attribute or else the
    /// output device's MTU. Nil when there is no route.
    public static func resolve(to real: IPAddress) -> TunnelPath? {
        guard let (status, output) = runCapturingOutput(["ip", real.isIPv4 ? "-4" : "-6", "route", "get", real.description]), status == 0 else {
            return nil
        }
        let words = output.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        func value(after key: String) -> String? {
            guard let i = words.firstIndex(of: key), i + 1 < words.count else { return nil }
            return words[i + 1]
        }
        guard let source = value(after: "src").flatMap(IPAddress.init) else { return nil }
        var mtu = value(after: "mtu").flatMap(Int.init)
        if mtu == nil, let device = value(after: "dev"),
           let text = try? String(contentsOfFile: "/sys/class/net/\(device)/mtu", encoding: .utf8) {
            mtu = Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return TunnelPath(source: source, mtu: mtu ?? 1500)
    }
}
