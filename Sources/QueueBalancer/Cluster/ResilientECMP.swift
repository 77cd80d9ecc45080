import CNFQueue
import Foundation
import Glibc
import Logging

/// On the router in front of the balancers (`nfqlb cluster router-ecmp`): mirrors the ECMP route that the
/// routing daemon installs for each VIP into a kernel *resilient* next-hop group, so that a balancer that leaves
/// moves only its own flows and one that comes back takes only its share (plain ECMP groups rehash up to half of
/// all flows). FRR 8.4 cannot program resilient groups itself; its route stays where it is, as the source of
/// truth, and a policy rule (`to VIP lookup TABLE`) sends the VIP's lookups to the mirrored route first
/// (docs/ARCHITECTURE.md, "Several balancers").
///
/// Reconciled when the kernel reports a route or next-hop change (a netlink subscription), and once a second.
public final class ResilientECMP {
    public struct Settings: Sendable {
        public var table: UInt32 = 4242
        public var rulePreference = 90
        public var buckets = 128
        /// A bucket idle this long may move to a returning next hop (s).
        public var idleTimer = 1
        /// After this long unbalanced, busy buckets move too (s): a returning balancer gets its share then.
        public var unbalancedTimer = 3
        public init() {}
    }

    let vips: [IPAddress]
    let settings: Settings
    let logger: Logger
    /// The next hops last installed per VIP ("GATEWAY DEV"), to change only what changed.
    private var installed: [IPAddress: [String]] = [:]
    /// Next-hop object ids by "GATEWAY DEV", stable for the process's life.
    private var nexthopIDs: [String: UInt32] = [:]

    /// Ids far above those routing daemons allocate from (zebra starts low).
    static let nexthopBase: UInt32 = 0x7000_0000
    static let groupBase: UInt32 = 0x7100_0000

    public init(vips: [IPAddress], settings: Settings = Settings(), logger: Logger) {
        self.vips = vips
        self.settings = settings
        self.logger = logger
    }

    /// The next hops of the routing daemon's route to `vip` in the main table, as "GATEWAY DEV", sorted.
    static func nexthops(ofRouteJSON json: Data) -> [String] {
        guard let routes = try? JSONSerialization.jsonObject(with: json) as? [[String: Any]] else { return [] }
        var hops: [String] = []
        for route in routes {
            if let list = route["nexthops"] as? [[String: Any]] {
                for hop in list {
                    if let gateway = hop["gateway"] as? String, let dev = hop["dev"] as? String { hops.append("\(gateway) \(dev)") }
                }
            } else if let gateway = route["gateway"] as? String, let dev = route["dev"] as? String {
                hops.append("\(gateway) \(dev)")
            }
        }
        return hops.sorted()
    }

    /// The `ip -batch` commands that make the mirrored route of `vip` (group `group`) use `hops`.
    func commands(vip: IPAddress, group: UInt32, hops: [String]) -> String {
        let prefix = vip.isIPv4 ? "\(vip)/32" : "\(vip)/128"
        guard !hops.isEmpty else { return "route del \(prefix) table \(settings.table)\n" }
        var out = ""
        var members: [String] = []
        for hop in hops {
            let id = nexthopIDs[hop] ?? {
                let id = Self.nexthopBase + UInt32(nexthopIDs.count)
                nexthopIDs[hop] = id
                return id
            }()
            let words = hop.split(separator: " ")
            out += "nexthop replace id \(id) via \(words[0]) dev \(words[1])\n"
            members.append("\(id)")
        }
        out += "nexthop replace id \(group) group \(members.joined(separator: "/")) type resilient buckets \(settings.buckets) idle_timer \(settings.idleTimer) unbalanced_timer \(settings.unbalancedTimer)\n"
        out += "route replace \(prefix) nhid \(group) table \(settings.table)\n"
        return out
    }

    /// Reads each VIP's route and installs what changed.
    public func reconcile() {
        for (index, vip) in vips.enumerated() {
            let family = vip.isIPv4 ? "-4" : "-6"
            let prefix = vip.isIPv4 ? "\(vip)/32" : "\(vip)/128"
            guard let (status, output) = runCapturingOutput(["ip", family, "-j", "route", "show", prefix, "table", "main"]),
                  status == 0 else { continue }
            let hops = Self.nexthops(ofRouteJSON: Data(output.utf8))
            guard installed[vip] != hops else { continue }
            let group = Self.groupBase + UInt32(index)
            let batch = commands(vip: vip, group: group, hops: hops)
            // No family flag: a next-hop group has none (`ip -4 nexthop ... group` is refused), routes take the
            // prefix's.
            guard let (done, errors) = runCapturingOutput(["ip", "-force", "-batch", "-"], input: batch, errors: true) else { continue }
            if done != 0 && !hops.isEmpty {
                logger.error("router-ecmp: the resilient group was not installed", metadata: ["vip": "\(vip)", "reason": "\(errors.trimmingCharacters(in: .whitespacesAndNewlines))"])
                continue
            }
            installed[vip] = hops
            logger.notice("router-ecmp: next hops", metadata: ["vip": "\(vip)", "next-hops": "\(hops.map { $0.split(separator: " ")[0] }.joined(separator: ","))"])
        }
    }

    /// Adds the policy rules, then reconciles on every route or next-hop event and once a second until `stop`;
    /// then removes the rules, routes and groups it made, leaving the routing daemon's routes alone.
    public func run(stop: StopSignal) throws(Failure) {
        for vip in vips {
            let prefix = vip.isIPv4 ? "\(vip)/32" : "\(vip)/128"
            _ = runCapturingOutput(["ip", vip.isIPv4 ? "-4" : "-6", "rule", "add", "to", prefix, "lookup", "\(settings.table)", "pref", "\(settings.rulePreference)"])
        }
        defer { cleanup() }
        guard let socket = mnl_socket_open(0) else { throw Failure(description: "netlink route socket: \(String(cString: strerror(errno)))") }
        defer { mnl_socket_close(socket) }
        // IPv4 and IPv6 routes (RTMGRP_*_ROUTE), then next-hop objects (RTNLGRP_NEXTHOP, 32: too high for the mask).
        guard mnl_socket_bind(socket, 0x40 | 0x400, pid_t(MNL_SOCKET_AUTOPID)) >= 0 else {
            throw Failure(description: "netlink route subscription: \(String(cString: strerror(errno)))")
        }
        let fd = mnl_socket_get_fd(socket)
        var group: Int32 = 32
        _ = setsockopt(fd, 270 /* SOL_NETLINK */, 1 /* NETLINK_ADD_MEMBERSHIP */, &group, socklen_t(MemoryLayout<Int32>.size))
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var next = ContinuousClock.now
        while !stop.isRaised {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, 100)
            var changed = false
            if ready > 0 {
                while recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT)) > 0 { changed = true }
            }
            if changed || ContinuousClock.now >= next {
                next = ContinuousClock.now + .seconds(1)
                reconcile()
            }
        }
    }

    private func cleanup() {
        var lines = ""
        for (index, vip) in vips.enumerated() {
            let prefix = vip.isIPv4 ? "\(vip)/32" : "\(vip)/128"
            lines += "rule del to \(prefix) lookup \(settings.table) pref \(settings.rulePreference)\n"
                + "route del \(prefix) table \(settings.table)\n" + "nexthop del id \(Self.groupBase + UInt32(index))\n"
        }
        for id in nexthopIDs.values { lines += "nexthop del id \(id)\n" }
        if !lines.isEmpty { _ = runCapturingOutput(["ip", "-force", "-batch", "-"], input: lines, errors: true) }
        logger.notice("router-ecmp: stopped, the routing daemon's routes serve the VIPs again")
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }
}
