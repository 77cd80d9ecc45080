/// One kernel connection on the conntrack fast path, as `nfqlb conntrack list` shows it (`ipvsadm -Lcn`).
public struct OffloadedConnection: Sendable, Equatable {
    /// client -> VIP, as the first packet went.
    public var original: FlowKey
    /// The real server nfqlb scheduled it to (its mark says which).
    public var real: Endpoint
    public var mark: Fwmark
    /// TCP: the kernel's state name (ESTABLISHED, TIME_WAIT, ...); UDP: "UDP".
    public var state: String
    /// Packets and bytes each way, when `nf_conntrack_acct` is on.
    public var packetsIn: UInt64?, bytesIn: UInt64?, packetsOut: UInt64?, bytesOut: UInt64?

    /// The names of enum tcp_conntrack, by number.
    static let tcpStates = ["NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
                            "TIME_WAIT", "CLOSE", "SYN_SENT2"]
}

/// The kernel's connections that belong to a config's offloaded services: read and delete them (the CLI's
/// `nfqlb conntrack`, and `scripts/iptables-setup.sh down`, which leaves none behind).
public enum OffloadedConnections {
    /// Every kernel connection whose original destination is an offloaded service of `config` and whose
    /// mark names one of its real servers.
    public static func list(for config: BalancerConfig) throws(ConntrackError) -> [OffloadedConnection] {
        let owners = ConntrackOffload.owners(for: config)
        return try ConntrackSocket.requests().dump().compactMap { entry in
            guard let owner = owners.owner(of: entry) else { return nil }
            let real = config.services[owner.service].reals[owner.real].endpoint
            let state = entry.original.transport == .udp ? "UDP"
                : entry.tcpState.map { Int($0) < OffloadedConnection.tcpStates.count ? OffloadedConnection.tcpStates[Int($0)] : "\($0)" } ?? "?"
            return OffloadedConnection(original: entry.original, real: real, mark: entry.mark, state: state,
                                       packetsIn: entry.originalPackets, bytesIn: entry.originalBytes,
                                       packetsOut: entry.replyPackets, bytesOut: entry.replyBytes)
        }
    }

    /// Deletes `connections` from the kernel; returns how many were still there.
    public static func delete(_ connections: [OffloadedConnection]) throws(ConntrackError) -> Int {
        let socket = try ConntrackSocket.requests()
        var deleted = 0
        for connection in connections where try socket.delete(connection.original) { deleted += 1 }
        return deleted
    }
}
