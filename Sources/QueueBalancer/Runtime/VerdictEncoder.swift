/// Turns one queue's verdicts into what leaves the worker: NFQNL_MSG_VERDICT messages collected in one buffer
/// (sent with one `sendto`), and for packets that leave in the other family, raw-socket sends (one `sendmmsg`
/// per family). Encoding only: every decision was the processor's (``Verdict``).
///
/// Everything is allocated in `init`; per packet it copies bytes into preallocated buffers.
final class VerdictEncoder {
    let queue: QueueNumber
    let verdicts: VerdictWriter
    /// Packets that leave in the other family (TUN between families): one raw-socket batch per family.
    private let raw4 = RawSendBatch(family: .v4)
    private let raw6 = RawSendBatch(family: .v6)

    /// The kernel connections the verdicts ask for (sent before the verdicts); without it a DR SYN's
    /// connection is left to the kernel's pickup of the client's ACK.
    private let connections: ConntrackWriter?

    /// - Parameters:
    ///   - sendLimit: the most bytes of verdicts in one send (well below the socket's send buffer: an EMSGSIZE
    ///     send loses every verdict in it).
    ///   - connections: where ``Verdict/acceptMarkedCreatingConnection(_:_:)`` collects its kernel connections.
    init(queue: QueueNumber, sendLimit: Int, connections: ConntrackWriter? = nil) {
        self.queue = queue
        verdicts = VerdictWriter(limit: sendLimit)
        self.connections = connections
    }

    /// Appends the kernel message for `verdict` about packet `id`, whose bytes are `packet` (and queues a raw
    /// send). False when the verdict buffer is too full for it: then nothing was done, and the caller sends
    /// the batch so far (``flush(to:counters:)``) and tries again.
    @discardableResult
    func encode(_ verdict: Verdict, id: UInt32, packet: UnsafeRawBufferPointer, counters: inout CounterBatch) -> Bool {
        switch verdict {
        case .drop:
            return verdicts.append(queue: queue, packetID: id, verdict: .drop)
        case .accept:
            return verdicts.append(queue: queue, packetID: id, verdict: .accept)
        case .acceptMarked(let mark):
            return verdicts.append(queue: queue, packetID: id, verdict: .accept, mark: mark)
        case .repeatMarked(let mark):
            return verdicts.append(queue: queue, packetID: id, verdict: .repeat, mark: mark)
        case .acceptMarkedCreatingConnection(let mark, let flow):
            guard verdicts.append(queue: queue, packetID: id, verdict: .accept, mark: mark) else { return false }
            connections?.create(flow, mark: mark, counters: &counters)
            return true
        case .acceptRewritten:
            return verdicts.append(queue: queue, packetID: id, verdict: .accept, payload: packet, mark: .translated)
        case .acceptReplaced(let offset, let length):
            return verdicts.append(queue: queue, packetID: id, verdict: .accept,
                                   payload: UnsafeRawBufferPointer(rebasing: packet[offset..<(offset + length)]),
                                   mark: .translated)
        case .acceptEncapsulated(let header):
            return header.withUnsafeBytes { prefix in
                verdicts.append(queue: queue, packetID: id, verdict: .accept, prefix: prefix,
                                payload: UnsafeRawBufferPointer(rebasing: packet[0..<header.innerLength]))
            }
        case .sendEncapsulated(let header):
            // The drop verdict first: if it does not fit, the caller flushes and calls again, and the packet
            // must not have been queued already.
            guard verdicts.append(queue: queue, packetID: id, verdict: .drop) else { return false }
            let lost = header.withUnsafeBytes { prefix in
                raw(header.family).enqueue(prefix: prefix, packet: UnsafeRawBufferPointer(rebasing: packet[0..<header.innerLength]),
                                           to: header.destination)
            }
            if lost > 0 { counters.count(.droppedRawSend, UInt64(lost)) }
            return true
        case .sendReplaced(let offset, let length, let destination):
            guard verdicts.append(queue: queue, packetID: id, verdict: .drop) else { return false }
            let lost = raw(IPFamily(of: destination)).enqueue(
                prefix: nil, packet: UnsafeRawBufferPointer(rebasing: packet[offset..<(offset + length)]), to: destination)
            if lost > 0 { counters.count(.droppedRawSend, UInt64(lost)) }
            return true
        }
    }

    /// Appends `verdict`, first sending the batch so far through `send` when the buffer is too full for it. A
    /// verdict that fits no batch at all (a rewritten packet beyond the 16-bit netlink attribute length) is
    /// replaced by a drop, counted in `dropped_verdict_size` (the packet's own verdict counter stays as it
    /// was decided), rather than leaving the packet stranded in the kernel's queue.
    func add(_ verdict: Verdict, id: UInt32, packet: UnsafeRawBufferPointer, counters: inout CounterBatch,
             send: (inout CounterBatch) -> Void) {
        if encode(verdict, id: id, packet: packet, counters: &counters) { return }
        send(&counters)
        if encode(verdict, id: id, packet: packet, counters: &counters) { return }
        counters.count(.droppedVerdictSize)
        encode(.drop, id: id, packet: packet, counters: &counters)
    }

    private func raw(_ family: IPFamily) -> RawSendBatch { family == .v4 ? raw4 : raw6 }

    /// Sends what the batch produced: the raw packets, then the verdicts through `socket`.
    func flush(to socket: QueueSocket, counters: inout CounterBatch) {
        connections?.flush(counters: &counters)                     // the connections exist before the packets go on
        let lost = raw4.flush() + raw6.flush()
        if lost > 0 { counters.count(.droppedRawSend, UInt64(lost)) }
        guard verdicts.count > 0 else { return }
        do {
            try socket.send(verdicts.bytes, count: verdicts.used)
        } catch {
            // The kernel holds these packets until the queue is unbound; count them as lost.
            counters.count(.droppedVerdictSend, UInt64(verdicts.count))
        }
        verdicts.reset()
    }
}
