/// One worker thread per NFQUEUE: receive a batch, hand every packet to the processor, encode every verdict
/// of the batch, send them in one go, add the batch's counts to the shared counters.
///
/// Generic over the processor, so the per-packet call is a direct one. Everything the loop touches is
/// allocated in ``init``; per batch it keeps its counts in a local ``CounterBatch`` and reads the clock once.
final class QueueWorker<Processor: PacketProcessor>: @unchecked Sendable {
    let socket: QueueSocket
    let processor: Processor
    let counters: DatapathCounters
    let stop: StopSignal
    /// This worker's number among the processor's readers (``PacketProcessor/enterBatch(worker:)``).
    let index: Int
    private let batch: ReceiveBatch
    private let verdicts: VerdictWriter
    /// Packets that leave in the other family (TUN between families): one raw socket batch per family, sent
    /// once per queue batch.
    private let raw4 = RawSendBatch(family: .v4)
    private let raw6 = RawSendBatch(family: .v6)

    /// Messages per `recvmmsg`.
    static var batchSize: Int { 64 }
    /// Bytes per message buffer: the largest IPv4 packet plus the netlink headers and metadata attributes.
    static var messageSize: Int { 65536 + 1024 }

    init(socket: QueueSocket, processor: Processor, counters: DatapathCounters, stop: StopSignal, sendLimit: Int,
         index: Int) {
        self.index = index
        self.socket = socket
        self.processor = processor
        self.counters = counters
        self.stop = stop
        batch = ReceiveBatch(capacity: Self.batchSize, messageSize: Self.messageSize)
        verdicts = VerdictWriter(limit: sendLimit)
    }

    /// Runs until `stop` is raised (noticed within the socket's 200 ms receive timeout).
    func run() {
        while !stop.isRaised {
            var local = CounterBatch()
            switch socket.receive(into: batch) {
            case .messages(let n):
                if n == 0 { continue }
                local.count(.batches)
                processor.enterBatch(worker: index)
                process(n, &local)
                processor.leaveBatch(worker: index)
            case .overrun:
                local.count(.receiveOverruns)
            case .failed:
                local.count(.receiveErrors)
            }
            counters.add(local)
        }
    }

    private func process(_ n: Int, _ local: inout CounterBatch) {
        let now = monotonicMilliseconds()
        verdicts.reset()
        for i in 0..<n {
            guard let message = PacketMessage.parse(batch.message(i)) else {
                local.count(.kernelMessages)
                continue
            }
            local.count(.received)
            let verdict = processor.handle(message.payload, now: now, counters: &local)
            if !encode(verdict, message, &local) {
                flush(&local)
                if !encode(verdict, message, &local) {
                    // Larger than a whole send (the netlink attribute length is 16 bits): drop rather than strand.
                    local.count(.droppedMalformed)
                    verdicts.append(queue: socket.queue, packetID: message.packetID, verdict: .drop)
                }
            }
        }
        flush(&local)
    }

    /// Appends the kernel message for `verdict` (and queues a raw send); false when the verdict buffer is too
    /// full for it, and then nothing was done.
    private func encode(_ verdict: Verdict, _ message: PacketMessage, _ local: inout CounterBatch) -> Bool {
        let queue = socket.queue, id = message.packetID
        let packet = UnsafeRawBufferPointer(message.payload)
        switch verdict {
        case .drop:
            return verdicts.append(queue: queue, packetID: id, verdict: .drop)
        case .accept:
            return verdicts.append(queue: queue, packetID: id, verdict: .accept)
        case .acceptMarked(let mark):
            return verdicts.append(queue: queue, packetID: id, verdict: .accept, mark: mark)
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
            let failed = header.withUnsafeBytes { prefix in
                raw(header.family).enqueue(prefix: prefix, packet: UnsafeRawBufferPointer(rebasing: packet[0..<header.innerLength]),
                                           to: header.destination)
            }
            if failed > 0 { local.count(.droppedRawSend, UInt64(failed)) }
            return true
        case .sendReplaced(let offset, let length, let destination):
            guard verdicts.append(queue: queue, packetID: id, verdict: .drop) else { return false }
            let failed = raw(IPFamily(of: destination)).enqueue(
                prefix: nil, packet: UnsafeRawBufferPointer(rebasing: packet[offset..<(offset + length)]), to: destination)
            if failed > 0 { local.count(.droppedRawSend, UInt64(failed)) }
            return true
        }
    }

    private func raw(_ family: IPFamily) -> RawSendBatch { family == .v4 ? raw4 : raw6 }

    private func flush(_ local: inout CounterBatch) {
        // Packets for the raw sockets (TUN between families) leave with the verdicts of their batch.
        let failed = raw4.flush() + raw6.flush()
        if failed > 0 { local.count(.droppedRawSend, UInt64(failed)) }
        guard verdicts.count > 0 else { return }
        do {
            try socket.send(verdicts.bytes, count: verdicts.used)
        } catch {
            // The kernel holds these packets until the queue is unbound; count them as lost.
            local.count(.droppedVerdictSend, UInt64(verdicts.count))
        }
        verdicts.reset()
    }
}
