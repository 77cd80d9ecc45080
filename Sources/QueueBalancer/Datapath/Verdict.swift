/// What the kernel is told to do with one queued packet: a complete instruction, decided by a
/// ``PacketProcessor`` and only encoded by the queue worker (an NFQNL_MSG_VERDICT message, and for a packet
/// that leaves in another family, a raw-socket send). See docs/ARCHITECTURE.md, "The packet's walk".
public enum Verdict: Equatable, Sendable {
    /// NF_ACCEPT, packet unchanged.
    case accept
    /// NF_DROP.
    case drop
    /// NF_ACCEPT, packet unchanged, with this fwmark (DR: policy routing steers it to the real server).
    case acceptMarked(Fwmark)
    /// NF_REPEAT, packet unchanged, with this fwmark: the packet runs its hook's chain again, which saves the
    /// mark in the kernel's connection (the conntrack fast path, ``ConntrackOffload``).
    case repeatMarked(Fwmark)
    /// NF_ACCEPT, packet unchanged, with this fwmark; and before it, the kernel's connection tracking gets an
    /// entry for `flow` with the mark (DR on the conntrack fast path: the SYN passes untracked, and the
    /// client's next packets find the connection nfqlb created, ``ConntrackWriter``).
    case acceptMarkedCreatingConnection(Fwmark, FlowKey)
    /// NF_ACCEPT with the whole buffer as rewritten in place, marked ``Fwmark/translated``.
    case acceptRewritten
    /// NF_ACCEPT with the packet replaced by `length` bytes of the buffer from `offset` (an ICMP answer built
    /// in place, or the inner packet of a tunnel), marked ``Fwmark/translated``.
    case acceptReplaced(offset: Int, length: Int)
    /// NF_ACCEPT with the packet replaced by `header` followed by the first `header.innerLength` bytes of the
    /// buffer (TUN, outer header of the packet's own family).
    case acceptEncapsulated(TunnelHeader)
    /// NF_DROP; `header` followed by the first `header.innerLength` bytes of the buffer leave through the raw
    /// socket of the header's family instead (TUN between families: a verdict cannot change the family, the
    /// kernel re-injects its payload into the stack the packet was queued from).
    case sendEncapsulated(TunnelHeader)
    /// NF_DROP; `length` bytes of the buffer from `offset`, a packet of the other family (a decapsulated inner
    /// packet), leave through a raw socket to `destination`.
    case sendReplaced(offset: Int, length: Int, destination: IPAddress)
}

extension Verdict {
    /// Whether the verdict hands (part of) the queued buffer back as a packet: wrong when the queue copied
    /// headers only (``PacketHandler/headersOnly``), since the packet would leave cut short.
    var carriesPacketBytes: Bool {
        switch self {
        case .accept, .drop, .acceptMarked, .repeatMarked, .acceptMarkedCreatingConnection: false
        case .acceptRewritten, .acceptReplaced, .acceptEncapsulated, .sendEncapsulated, .sendReplaced: true
        }
    }
}
