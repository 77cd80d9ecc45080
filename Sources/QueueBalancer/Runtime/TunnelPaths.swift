import Foundation

/// Where the kernel's routes say TUN's outer headers come from and how large they may be: asked once per real
/// server when nfqlb starts, and for new real servers on a reload.
extension TunnelPath {
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

    /// No route to a TUN real server: the tunnel cannot be built.
    public struct Unresolved: Error, CustomStringConvertible {
        public var realServer: IPAddress
        public var description: String {
            "no route to the TUN real server \(realServer): the tunnel needs one (ip route get \(realServer))"
        }
    }

    /// The paths to every TUN real server of `config`: those in `known`, and the others resolved now.
    public static func paths(for config: BalancerConfig, known: [IPAddress: TunnelPath] = [:])
        throws(Unresolved) -> [IPAddress: TunnelPath] {
        var paths = known
        for service in config.services where service.mode == .tun {
            for real in service.reals where paths[real.address] == nil {
                guard let path = resolve(to: real.address) else { throw Unresolved(realServer: real.address) }
                paths[real.address] = path
            }
        }
        return paths
    }
}
