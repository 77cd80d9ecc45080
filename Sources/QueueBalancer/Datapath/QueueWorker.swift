import Synchronization

/// One worker thread per NFQUEUE: receive a batch, hand every packet to the ``PacketHandler``, send all
/// verdicts of the batch in one go, add the batch's counts to the shared counters.
///
/// Everything the loop touches is allocated in ``init``; per batch it keeps its counts in a local
/// ``CounterBatch`` and reads the clock once.
final class QueueWorker: @unchecked Sendable {
    let socket: QueueSocket
    let handler: any PacketProcessor
    let counters: DatapathCounters
    let stop: StopSignal
    /// This worker's number among the handler's readers (``PacketProcessor/enterBatch(worker:)``).
    let index: Int
    private let batch: ReceiveBatch
    private let verdicts: VerdictWriter
    /// TUN between families: the packets for the raw socket of each family, sent once per batch.
    private let raw4 = RawSendBatch(family: .v4)
    private let raw6 = RawSendBatch(family: .v6)

    /// Messages per `recvmmsg`.
    static let batchSize = 64
    /// Bytes per message buffer: the largest IPv4 packet plus the netlink headers and metadata attributes.
    static let messageSize = 65536 + 1024

    init(socket: QueueSocket, handler: any PacketProcessor, counters: DatapathCounters, stop: StopSignal,
         sendLimit: Int, index: Int) {
        self.index = index
        self.socket = socket
        self.handler = handler
        self.counters = counters
        self.stop = stop
        batch = ReceiveBatch(capacity: QueueWorker.batchSize, messageSize: QueueWorker.messageSize)
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
                handler.enterBatch(worker: index)
                process(n, &local)
                handler.leaveBatch(worker: index)
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
        let queue = socket.queue
        verdicts.reset()
        for i in 0..<n {
            guard let message = PacketMessage.parse(batch.message(i)) else {
                local.count(.kernelMessages)
                continue
            }
            local.count(.received)
            let verdict = handler.handle(message.payload, now: now, counters: &local)
            if !write(verdict, message, &local) {
                flush(&local)
                if !write(verdict, message, &local) {
                    // Larger than a whole send: cannot happen with the limits set in init; drop rather than strand.
                    local.count(.droppedMalformed)
                    verdicts.append(queue: queue, packetID: message.packetID, verdict: .drop)
                }
            }
        }
        flush(&local)
    }

    /// Appends the kernel message for `verdict`; false when the verdict buffer is too full for it.
    private func write(_ verdict: Verdict, _ message: PacketMessage, _ local: inout CounterBatch) -> Bool {
        let queue = socket.queue
        let id = message.packetID
        switch verdict {
        case .drop:
            return verdicts.append(queue: queue, packetID: id, verdict: .drop)
        case .accept:
            return verdicts.append(queue: queue, packetID: id, verdict: .accept)
        case .acceptMarked(let mark):
            return verdicts.append(queue: queue, packetID: id, verdict: .accept, mark: mark)
        case .acceptRewritten:
            // Every packet nfqlb rewrote or replaced carries the translated mark, so that anti-spoof rules spare
            // its second PREROUTING pass under bridge netfilter, whatever mode produced it.
            return verdicts.append(queue: queue, packetID: id, verdict: .accept,
                                   payload: UnsafeRawBufferPointer(message.payload), mark: IptablesRules.translatedMark)
        case .acceptReplaced(let offset, let length):
            let slice = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(message.payload)[offset..<(offset + length)])
            return verdicts.append(queue: queue, packetID: id, verdict: .accept, payload: slice,
                                   mark: IptablesRules.translatedMark)
        case .acceptEncapsulated(let source, let destination):
            let inner = UnsafeRawBufferPointer(message.payload)
            let (family, innerLength) = TunnelEncapsulation.familyAndLength(inner)
            guard innerLength + TunnelEncapsulation.overhead(family) <= 0xFFFF - 4, innerLength <= inner.count else {
                local.count(.droppedMalformed)
                return verdicts.append(queue: queue, packetID: id, verdict: .drop)
            }
            return verdicts.appendEncapsulated(queue: queue, packetID: id, inner: inner, family: family,
                                               innerLength: innerLength, source: source, destination: destination)
        case .sendEncapsulated(let source, let destination):
            // The drop verdict first: if it does not fit, the caller flushes and calls again, and the packet
            // must not have been queued already.
            guard verdicts.append(queue: queue, packetID: id, verdict: .drop) else { return false }
            let inner = UnsafeRawBufferPointer(message.payload)
            let (family, innerLength) = TunnelEncapsulation.familyAndLength(inner)
            let outer: IPFamily = destination.isIPv4 ? .v4 : .v6
            let overhead = TunnelEncapsulation.overhead(outer)
            let batch = outer == .v4 ? raw4 : raw6
            var failed = 0
            // The outer length fields hold at most 65535 (IPv4: total length; IPv6: payload length).
            guard innerLength <= inner.count, (outer == .v4 ? innerLength + overhead : innerLength) <= 0xFFFF,
                  let base = batch.space(innerLength + overhead, failed: &failed) else {
                local.count(.droppedRawSend, UInt64(failed + 1))
                return true
            }
            TunnelEncapsulation.writeOuterHeader(base, inner: inner, family: family, outer: outer,
                                                 innerLength: innerLength, source: source, destination: destination)
            (base + overhead).copyMemory(from: inner.baseAddress!, byteCount: innerLength)
            batch.add(length: innerLength + overhead, destination: destination)
            if failed > 0 { local.count(.droppedRawSend, UInt64(failed)) }
            return true
        case .sendReplaced(let offset, let length):
            guard verdicts.append(queue: queue, packetID: id, verdict: .drop) else { return false }
            let packet = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(message.payload)[offset..<(offset + length)])
            let isIPv4 = packet[0] >> 4 == 4
            let destination = packet.loadAddress(isIPv4 ? .v4 : .v6, at: isIPv4 ? IPv4Header.destinationOffset : IPv6Header.destinationOffset)
            let batch = isIPv4 ? raw4 : raw6
            var failed = 0
            guard let base = batch.space(length, failed: &failed) else {
                local.count(.droppedRawSend, UInt64(failed + 1))
                return true
            }
            base.copyMemory(from: packet.baseAddress!, byteCount: length)
            batch.add(length: length, destination: destination)
            if failed > 0 { local.count(.droppedRawSend, UInt64(failed)) }
            return true
        }
    }

    private func flush(_ local: inout CounterBatch) {
        // Packets for the raw sockets (TUN between families) leave with the verdicts of their batch.
        let failed = raw4.flush() + raw6.flush()
        if failed > 0 { local.count(.droppedRawSend, UInt64(failed)) }
        guard verdicts.count > 0 else { return }
        if socket.send(verdicts.bytes, count: verdicts.used) != nil {
            // The kernel holds these packets until the queue is unbound; count them as lost.
            local.count(.droppedVerdictSend, UInt64(verdicts.count))
        }
        verdicts.reset()
    }
}

/// A flag a signal handler raises and loops poll: the stop request shared by the workers and the
/// housekeeping loop, or the CLI's reload request.
public final class StopSignal: Sendable {
    private let flag = Atomic<Bool>(false)
    public init() {}
    public func raise() { flag.store(true, ordering: .relaxed) }
    public func clear() { flag.store(false, ordering: .relaxed) }
    public var isRaised: Bool { flag.load(ordering: .relaxed) }
}
