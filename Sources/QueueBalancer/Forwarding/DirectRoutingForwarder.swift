/// LVS DR (direct routing, `ipvsadm -g`): the packet is not changed at all. The verdict only sets the real
/// server's fwmark; a policy route per mark (`ip rule fwmark M table T`, `default via RIP` in table T) sends
/// the frame to that real server on the shared L2 network, which holds the VIP on `lo` and answers the
/// client directly. nfqlb reads only the headers, so the queue copies just them.
struct DirectRoutingForwarder: DirectReturnMethod {
    static let queueNeeds = QueueNeeds(wholePackets: false, gsoSuperPackets: true)

    /// The real server's mark: its policy route.
    let mark: Fwmark
    /// The conntrack fast path: the mark is given to the kernel's connection, which keeps it for later packets.
    let offloaded: Bool

    init(real: RealServer, routes: [DirectRoute], offloaded: Bool) throws(ConfigUpdateError) {
        guard let route = routes.first(where: { $0.realServer == real.address }) else {
            throw ConfigUpdateError(reason: "DR real server \(real.address) has no fwmark route")
        }
        mark = route.mark
        self.offloaded = offloaded
    }

    /// Offloaded, the kernel sees only the client's direction of a connection: its conntrack would call the
    /// client's first ACK after a SYN it saw invalid (it never sees the real server's SYN-ACK). So the SYN stays
    /// untracked, and nfqlb creates the kernel's connection itself with the SYN's verdict (SYN_RECV, with the
    /// mark: ``ConntrackWriter``), which the client's ACK then finds and makes ESTABLISHED. Left to the kernel
    /// (loose pickup at the first ACK, `nf_conntrack_tcp_loose`) the ACK and the request right behind it would
    /// both be queued, each with a connection of its own, and the kernel drops the second (insert_failed).
    static func offloadRules(for service: VirtualService, marks: [ConntrackOffload.MarkKey: Fwmark],
                             config: BalancerConfig) -> [ChainRule] {
        guard service.transport == .tcp else { return [] }
        return [ChainRule(chain: .raw, rule: "-d \(IptablesRules.host(service.vip)) -p tcp -m tcp --dport \(service.port) --tcp-flags SYN,ACK,RST SYN -m comment --comment \"nfqlb \(service.mode) \(service): SYN untracked, nfqlb creates its connection\" -j CT --notrack")]
    }

    func forward(_ bytes: UnsafeMutableRawBufferPointer, _ packet: IPPacket, of connection: ConnectionTracker.Connection,
                 counters: inout CounterBatch) -> Verdict {
        if offloaded {
            counters.count(.offloaded)
            // The SYN passed untracked: nfqlb creates the kernel's connection. A later packet that still came
            // here (before it existed) gets the mark saved in the connection the kernel made for it.
            if packet.tcpFlags.contains(.syn) && !packet.tcpFlags.contains(.ack) {
                return .acceptMarkedCreatingConnection(mark, connection.inbound)
            }
            return .repeatMarked(mark)
        }
        counters.count(.forwarded)
        return .acceptMarked(mark)
    }

    /// The error goes to the real server the way the connection's packets do: unchanged, marked.
    func forwardError(_ bytes: UnsafeMutableRawBufferPointer, _ error: ICMPError,
                      of connection: ConnectionTracker.Connection, counters: inout CounterBatch) -> Verdict {
        counters.count(.icmpForwarded)
        return .acceptMarked(mark)
    }

    /// The policy routing of the DR real servers of one family, as `ip -4 -batch` (or `ip -6 -batch`) input:
    /// one fwmark rule and one table with a default route via the real server each. Empty when the config has
    /// no DR real server of that family.
    static func routeCommands(for config: BalancerConfig, family: IPFamily) -> String {
        config.directRoutes.filter { IPFamily(of: $0.realServer) == family }.map { route in
            "rule add fwmark \(route.mark) table \(route.table) pref \(routeRulePreference)\n"
                + "route replace default via \(route.realServer) table \(route.table)\n"
        }.joined()
    }

    /// Preference of the fwmark rules: after `local` (0), before `main` (32766).
    static let routeRulePreference = 100

    /// Refuses a config change that would move a mark under connections in flight: a real server's mark is its
    /// policy route, installed by the setup script in config order. A server that stays must keep its mark,
    /// and a leaving one's mark must not go to another server while its connections drain.
    static func checkMarks(from old: BalancerConfig, to new: BalancerConfig) throws(ConfigUpdateError) {
        let before = Dictionary(old.directRoutes.map { ($0.realServer, $0.mark) }, uniquingKeysWith: { a, _ in a })
        for route in new.directRoutes {
            if let mark = before[route.realServer], mark != route.mark {
                throw ConfigUpdateError(reason: "DR real server \(route.realServer) would move from fwmark \(mark) to \(route.mark): keep the DR real servers in their order (leave a removed one listed with weight 0 until it has drained) or restart")
            }
            if let owner = before.first(where: { $0.value == route.mark && $0.key != route.realServer })?.key {
                throw ConfigUpdateError(reason: "fwmark \(route.mark) of DR real server \(owner) would go to \(route.realServer): keep the DR real servers in their order (leave a removed one listed with weight 0 until it has drained) or restart")
            }
        }
    }

    /// Refuses `routes` when a DR real server that left earlier and still drains (its forwarder in `previous`,
    /// by number) would see its mark go to another server.
    static func checkDrainingMarks(_ registry: RealServerRegistry, previous: [Forwarder],
                                   routes: [DirectRoute]) throws(ConfigUpdateError) {
        for entry in registry.servers() where entry.lifecycle == .draining || entry.lifecycle == .removed {
            guard case .directRouting(let method) = previous[entry.number.index],
                  let taker = routes.first(where: { $0.mark == method.mark }),
                  taker.realServer != entry.key.real.address else { continue }
            throw ConfigUpdateError(reason: "fwmark \(method.mark) of DR real server \(entry.key.real.address), still draining, would go to \(taker.realServer): wait until it has drained, or restart")
        }
    }
}

/// The policy route that steers a DR packet to one real server: `ip rule add fwmark MARK table TABLE` and
/// `ip route replace default via REAL table TABLE`. One per distinct DR real-server address.
public struct DirectRoute: Sendable, Equatable {
    public var realServer: IPAddress
    public var mark: Fwmark
    public var table: UInt32
}

extension BalancerConfig {
    /// The policy routes of the DR real servers, numbered from ``fwmarkBase`` in order of first appearance.
    public var directRoutes: [DirectRoute] {
        var routes: [DirectRoute] = []
        for service in services where service.mode == .dr {
            for real in service.reals where !routes.contains(where: { $0.realServer == real.address }) {
                let number = fwmarkBase.rawValue + UInt32(routes.count)
                routes.append(DirectRoute(realServer: real.address, mark: Fwmark(rawValue: number), table: number))
            }
        }
        return routes
    }
}
