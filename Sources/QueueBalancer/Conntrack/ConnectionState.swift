/// The state of a tracked connection, as IPVS names them. UDP connections are always ``udp``.
public enum ConnectionState: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case none = 0, established, synSent, synReceived, finWait, timeWait, close, closeWait, lastAck, listen, synAck
    case udp

    public var description: String {
        switch self {
        case .none: "NONE"
        case .established: "ESTABLISHED"
        case .synSent: "SYN_SENT"
        case .synReceived: "SYN_RECV"
        case .finWait: "FIN_WAIT"
        case .timeWait: "TIME_WAIT"
        case .close: "CLOSE"
        case .closeWait: "CLOSE_WAIT"
        case .lastAck: "LAST_ACK"
        case .listen: "LISTEN"
        case .synAck: "SYNACK"
        case .udp: "UDP"
        }
    }

    /// Whether a new SYN on this connection's tuple starts a new connection (the old one has ended).
    public var acceptsNewSYN: Bool { self == .timeWait || self == .close }

    /// Which way a packet travels relative to the connection.
    public enum Direction: Int, Sendable {
        /// Client to virtual service (IPVS "input").
        case inbound = 0
        /// Real server back to the client (IPVS "output").
        case reply = 1
    }

    /// The next TCP state after a packet with `flags` travelling `direction`, following IPVS's state tables
    /// (ip_vs_proto_tcp.c, "tcp_states"): for connections whose both directions pass the balancer (NAT,
    /// FULLNAT), or with `inputOnly` for those whose replies go straight to the client (DR, TUN; IPVS's
    /// "INPUT-ONLY" part, used for connections without output). Without replies a client's FIN means its side
    /// is closing (FIN_WAIT), not that the server closed first (CLOSE_WAIT), and a FIN in FIN_WAIT keeps
    /// FIN_WAIT. RST wins over SYN, SYN over FIN, FIN over ACK, as in IPVS's `tcp_state_idx`.
    public func next(after flags: TCPFlags, direction: Direction, inputOnly: Bool = false) -> ConnectionState {
        let event: Int
        if flags.contains(.rst) { event = 3 } else if flags.contains(.syn) { event = 0 }
        else if flags.contains(.fin) { event = 1 } else if flags.contains(.ack) { event = 2 } else { return self }
        guard self != .udp else { return self }
        let part = direction == .reply ? 1 : inputOnly ? 2 : 0
        return ConnectionState.table[part][event][Int(rawValue)]
    }

    private static let (sNO, sES, sSS, sSR, sFW, sTW, sCL, sCW, sLA, sLI, sSA): (
        ConnectionState, ConnectionState, ConnectionState, ConnectionState, ConnectionState, ConnectionState,
        ConnectionState, ConnectionState, ConnectionState, ConnectionState, ConnectionState
    ) = (.none, .established, .synSent, .synReceived, .finWait, .timeWait, .close, .closeWait, .lastAck, .listen, .synAck)

    // [inbound | reply | inbound input-only][event: syn, fin, ack, rst][current state: NO ES SS SR FW TW CL CW LA LI SA]
    private static let table: [[[ConnectionState]]] = [
        [ // inbound
            [sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR],
            [sCL, sCW, sSS, sTW, sTW, sTW, sCL, sCW, sLA, sLI, sTW],
            [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES],
            [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sSR],
        ],
        [ // reply
            [sSS, sES, sSS, sSR, sSS, sSS, sSS, sSS, sSS, sLI, sSR],
            [sTW, sFW, sSS, sTW, sFW, sTW, sCL, sTW, sLA, sLI, sTW],
            [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sLA, sES, sES],
            [sCL, sCL, sSS, sCL, sCL, sTW, sCL, sCL, sCL, sCL, sCL],
        ],
        [ // inbound, input only (DR, TUN): FIN in ES and FW gives FW; RST in SA gives CL
            [sSR, sES, sES, sSR, sSR, sSR, sSR, sSR, sSR, sSR, sSR],
            [sCL, sFW, sSS, sTW, sFW, sTW, sCL, sCW, sLA, sLI, sTW],
            [sES, sES, sSS, sES, sFW, sTW, sCL, sCW, sCL, sLI, sES],
            [sCL, sCL, sCL, sSR, sCL, sCL, sCL, sCL, sLA, sLI, sCL],
        ],
    ]
}

/// How long a connection lives in each state without traffic, in milliseconds. Defaults are IPVS's.
public struct ConnectionTimeouts: Sendable, Equatable {
    /// Indexed by ``ConnectionState/rawValue``.
    public var milliseconds: [UInt64]

    /// IPVS defaults: established 900 s, SYN_SENT 120 s, SYN_RECV 60 s, FIN_WAIT 120 s, TIME_WAIT 120 s,
    /// CLOSE 10 s, CLOSE_WAIT 60 s, LAST_ACK 30 s, LISTEN 120 s, SYNACK 120 s, NONE 2 s; UDP 300 s.
    public static let ipvsDefaults = ConnectionTimeouts(milliseconds: [
        2, 900, 120, 60, 120, 120, 10, 60, 30, 120, 120, 300,
    ].map { UInt64($0) * 1000 })

    /// The timeout of `state`.
    public func timeout(_ state: ConnectionState) -> UInt64 { milliseconds[Int(state.rawValue)] }

    /// Sets the timeouts the way `ipvsadm --set tcp tcpfin udp` does (seconds; 0 keeps a value).
    public func with(tcp: UInt64?, tcpFin: UInt64?, udp: UInt64?) -> ConnectionTimeouts {
        var copy = self
        if let tcp, tcp > 0 { copy.milliseconds[Int(ConnectionState.established.rawValue)] = tcp * 1000 }
        if let tcpFin, tcpFin > 0 { copy.milliseconds[Int(ConnectionState.finWait.rawValue)] = tcpFin * 1000 }
        if let udp, udp > 0 { copy.milliseconds[Int(ConnectionState.udp.rawValue)] = udp * 1000 }
        return copy
    }
}
