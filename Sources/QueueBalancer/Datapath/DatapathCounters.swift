import Synchronization

/// Everything the datapath counts, both families alike. Each packet's verdict is counted with its reason
/// (forwarded, replied, a `dropped_` or `passed_` reason, an ICMP or tunnel outcome). Some counters say more
/// about a packet already counted: `connections_created`, `with_ip_options`, and what fails after the
/// forwarding decision: `dropped_verdict_send`, `dropped_verdict_size`, `dropped_header_copy`,
/// `dropped_raw_send`.
public enum DatapathCounter: Int, CaseIterable, Sendable {
    /// Packets received from the kernel queues.
    case received
    /// Client -> VIP packets sent on to a real server: rewritten (NAT, FULLNAT), marked (DR) or tunnelled (TUN).
    case forwarded
    /// Real server -> client replies rewritten to come from the VIP (NAT, FULLNAT; accepted).
    case replied
    /// Conntrack fast path: first packets of a connection handed to the kernel with their real server's mark
    /// (NF_REPEAT); the kernel carries the rest of the connection.
    case offloaded
    /// Conntrack fast path, from the kernel's events (``OffloadMonitor``): connections nfqlb gave a mark that
    /// the kernel reported new, and reported gone.
    case offloadConnectionsNew
    case offloadConnectionsClosed
    /// Kernel connections nfqlb deleted: those of real servers whose drain ended.
    case offloadConnectionsDeleted
    /// Times the kernel dropped events for want of buffer space (each followed by a full re-read).
    case offloadEventsLost
    /// DR on the conntrack fast path: kernel connections nfqlb created for a SYN, and creations that failed.
    case offloadConntrackCreated
    case offloadConntrackFailed
    /// New connections scheduled (a subset of `forwarded`).
    case connectionsCreated
    /// Connections picked up midway (a subset of `connectionsCreated`): a TCP packet other than a SYN with no
    /// connection here, scheduled by its service's hashing table because the service adopts midstream flows
    /// (`adopt-midstream`: another balancer's connection that the router's ECMP moved here).
    case connectionsAdopted
    /// Connections removed because their timeout passed.
    case connectionsExpired
    /// Dropped: truncated or inconsistent headers, or a packet longer than the queue copies (a GSO super-packet
    /// over 65,531 bytes), which could not be returned whole.
    case droppedMalformed
    /// Dropped: IPv4 fragments and IPv6 fragments other than atomic ones (no ports to balance on; the kernel's
    /// defragmentation normally prevents these).
    case droppedFragment
    /// Dropped: TCP packet other than a SYN for a connection nfqlb does not track.
    case droppedNoConnection
    /// Dropped: every real server of the service has weight 0.
    case droppedNoRealServer
    /// Dropped: the connection table is full.
    case droppedTableFull
    /// Dropped: the new connection's reply tuple is held by another connection.
    case droppedConflict
    /// Dropped: FULLNAT had no free local port for the new connection (widen `fullnat-ports` or add
    /// local addresses).
    case droppedPortsExhausted
    /// Dropped: a TCP packet of a connection whose real server was removed from the config and has drained
    /// (the connection is forgotten; the client's next SYN is scheduled afresh).
    case droppedRealServerRemoved
    /// Connections forgotten because their real server was removed (drain time over, or `drain: 0`).
    case connectionsForgotten
    /// TUN: packets too big for the tunnel (IPv4 with DF, or IPv6), answered with ICMP "fragmentation needed"
    /// or ICMPv6 "packet too big" from the VIP (the packet itself is not forwarded).
    case tunnelTooBig
    /// Real server: tunnelled packets decapsulated (accepted as their inner packet).
    case decapsulated
    /// Real server: tunnelled packets nfqlb does not open: an inner packet other than TCP, UDP and its family's
    /// ICMP (an IPv6 one with an extension header among them), or one that cannot be decapsulated in place
    /// because the kernel keeps the outer transport offset: an IPv4 outer or inner header with options
    /// (IHL != 5) (dropped).
    case droppedTunnelHeader
    /// Real server: tunnelled packets whose inner packet is not for a configured VIP or comes from a
    /// loopback, unspecified or multicast source (dropped).
    case droppedTunnelSpoofed
    /// Real server: tunnelled packets from an outer source outside `nfqlb decap --allow-source` (dropped).
    case droppedTunnelSource
    /// Dropped: the verdict could not be delivered to the kernel (counted per packet in the failed send).
    case droppedVerdictSend
    /// Dropped: the verdict would carry a rewritten packet larger than a netlink attribute can (65,531 bytes).
    case droppedVerdictSize
    /// Dropped: the queues copy headers only (every service DR or offloaded) and the packet's verdict would
    /// have sent the copy on as the packet (a reply of an offloaded NAT connection reaching the queue).
    case droppedHeaderCopy
    /// Dropped: a packet for a raw socket (TUN between families, on either side) was refused by the kernel or no
    /// raw socket could be opened (also counted where its verdict was decided).
    case droppedRawSend
    /// ICMP errors from the client side about a tracked connection (e.g. "packet too big" for a reply), sent on
    /// to its real server (accepted, rewritten, marked or tunnelled).
    case icmpForwarded
    /// ICMP errors from a real server about a tracked connection (e.g. port unreachable), sent on to the client
    /// as coming from the VIP (accepted, rewritten).
    case icmpReplied
    /// Passed unhandled: ICMP other than an error about a tracked connection.
    case passedICMP
    /// Passed unhandled: an IP protocol other than TCP, UDP, ICMP and ICMPv6 (or IPv6 "no next header").
    case passedOtherProtocol
    /// Dropped: IPv6 headers nfqlb does not walk (a routing header with segments left, AH/ESP, a chain of more
    /// than 8 headers, a jumbogram).
    case droppedUnsupportedHeaders
    /// Passed unhandled: matches no virtual service and no tracked reply (e.g. a health check's answer), or a
    /// packet from a DR or TUN real server that no rule should have queued.
    case passedUnmatched
    /// Informational: packets carrying IPv4 options or IPv6 extension headers (balanced normally).
    case withIPOptions
    /// Informational: GSO super-packets (many segments in one queue event; the queue has NFQA_CFG_F_GSO).
    case gsoPackets
    /// Receive errors other than ENOBUFS.
    case receiveErrors
    /// ENOBUFS on receive: the socket buffer overflowed and the kernel dropped packets.
    case receiveOverruns
    /// Batches received (received / batches = mean batch size).
    case batches
    /// Netlink messages other than queued packets, e.g. the kernel's error answer to a verdict it refused.
    case kernelMessages

    /// The name in the stats file and logs.
    public var name: String {
        switch self {
        case .received: "received"
        case .forwarded: "forwarded"
        case .replied: "replied"
        case .offloaded: "offloaded"
        case .offloadConnectionsNew: "offload_connections_new"
        case .offloadConnectionsClosed: "offload_connections_closed"
        case .offloadConnectionsDeleted: "offload_connections_deleted"
        case .offloadEventsLost: "offload_events_lost"
        case .offloadConntrackCreated: "offload_conntrack_created"
        case .offloadConntrackFailed: "offload_conntrack_failed"
        case .connectionsCreated: "connections_created"
        case .connectionsAdopted: "connections_adopted"
        case .connectionsExpired: "connections_expired"
        case .droppedMalformed: "dropped_malformed"
        case .droppedFragment: "dropped_fragment"
        case .droppedNoConnection: "dropped_no_connection"
        case .droppedNoRealServer: "dropped_no_real_server"
        case .droppedTableFull: "dropped_table_full"
        case .droppedConflict: "dropped_conflict"
        case .droppedPortsExhausted: "dropped_ports_exhausted"
        case .droppedRealServerRemoved: "dropped_real_server_removed"
        case .connectionsForgotten: "connections_forgotten"
        case .tunnelTooBig: "tunnel_too_big"
        case .decapsulated: "decapsulated"
        case .droppedTunnelHeader: "dropped_tunnel_header"
        case .droppedTunnelSource: "dropped_tunnel_source"
        case .droppedTunnelSpoofed: "dropped_tunnel_spoofed"
        case .droppedVerdictSend: "dropped_verdict_send"
        case .droppedVerdictSize: "dropped_verdict_size"
        case .droppedHeaderCopy: "dropped_header_copy"
        case .droppedRawSend: "dropped_raw_send"
        case .icmpForwarded: "icmp_forwarded"
        case .icmpReplied: "icmp_replied"
        case .passedICMP: "passed_icmp"
        case .passedOtherProtocol: "passed_other_protocol"
        case .droppedUnsupportedHeaders: "dropped_unsupported_headers"
        case .passedUnmatched: "passed_unmatched"
        case .withIPOptions: "with_ip_options"
        case .gsoPackets: "gso_packets"
        case .receiveErrors: "receive_errors"
        case .receiveOverruns: "receive_overruns"
        case .batches: "batches"
        case .kernelMessages: "kernel_messages"
        }
    }

    /// The number of counters (a constant: `allCases` would build an array on every call).
    static let count = DatapathCounter.allCases.count
}

/// Counts of one batch, kept in a local variable by a worker (no atomics, no exclusivity checks) and added to
/// the shared ``DatapathCounters`` once per batch.
public struct CounterBatch {
    var values: InlineArray<48, UInt64>
    /// The worker's per-real-server counters (``RealServerTraffic``); nil where nobody reads them (tests,
    /// the real server's decapsulator).
    public var traffic: TrafficBlock?

    public init(traffic: TrafficBlock? = nil) {
        values = InlineArray(repeating: 0)
        self.traffic = traffic
    }

    public mutating func count(_ counter: DatapathCounter, _ n: UInt64 = 1) {
        values[counter.rawValue] &+= n
    }

    public subscript(_ counter: DatapathCounter) -> UInt64 { values[counter.rawValue] }
}

/// Counters shared by all workers and read by the housekeeping thread.
public final class DatapathCounters: Sendable {
    private let values: InlineArray<48, Atomic<UInt64>>

    public init() {
        precondition(DatapathCounter.count <= 48, "CounterBatch and DatapathCounters hold 48 counters")
        values = InlineArray { _ in Atomic<UInt64>(0) }
    }

    /// Adds a batch's counts (one relaxed atomic add per non-zero counter).
    public func add(_ batch: CounterBatch) {
        for i in 0..<DatapathCounter.count where batch.values[i] != 0 {
            values[i].wrappingAdd(batch.values[i], ordering: .relaxed)
        }
    }

    public func add(_ counter: DatapathCounter, _ n: UInt64 = 1) {
        values[counter.rawValue].wrappingAdd(n, ordering: .relaxed)
    }

    public subscript(_ counter: DatapathCounter) -> UInt64 {
        values[counter.rawValue].load(ordering: .relaxed)
    }
}
