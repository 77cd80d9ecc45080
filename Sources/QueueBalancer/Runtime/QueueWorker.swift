/// One worker thread per NFQUEUE: receive a batch with one `recvmmsg`, hand every packet to the processor,
/// encode every verdict of the batch (``VerdictEncoder``), send them in one go, add the batch's counts to the
/// shared counters.
///
/// Generic over the processor, so the per-packet call is a direct one. Everything the loop touches is
/// allocated in ``init``; per batch it keeps its counts in a local ``CounterBatch`` and reads the clock once.
final class QueueWorker<Processor: PacketProcessor>: @unchecked Sendable {
    private let socket: QueueSocket
    private let processor: Processor
    /// The runtime's counters, which each batch's counts are added to.
    private let counters: DatapathCounters
    /// This queue's own counters (the same counts).
    private let queueCounters: DatapathCounters?
    private let stop: StopSignal
    /// This worker's number among the processor's readers (``PacketProcessor/enterBatch(worker:)``).
    private let index: Int
    /// The receive vectors and message buffers, and what the verdicts are encoded into.
    private let batch: ReceiveBatch
    private let encoder: VerdictEncoder
    /// An empty batch with this worker's per-real-server counters: each batch's counts start from it.
    private let emptyBatch: CounterBatch

    /// Messages per `recvmmsg`.
    static var batchSize: Int { 64 }
    /// Bytes per message buffer: the largest IPv4 packet plus the netlink headers and metadata attributes.
    static var messageSize: Int { 65536 + 1024 }

    init(socket: QueueSocket, processor: Processor, counters: DatapathCounters, queueCounters: DatapathCounters? = nil,
         stop: StopSignal, sendLimit: Int, index: Int, connections: ConntrackWriter? = nil) {
        self.queueCounters = queueCounters
        self.index = index
        self.socket = socket
        self.processor = processor
        self.counters = counters
        self.stop = stop
        batch = ReceiveBatch(capacity: Self.batchSize, messageSize: Self.messageSize)
        encoder = VerdictEncoder(queue: socket.queue, sendLimit: sendLimit, connections: connections)
        emptyBatch = processor.counterBatch(worker: index)
    }

    /// Runs until `stop` is raised (noticed within the socket's 200 ms receive timeout).
    func run() {
        while !stop.isRaised {
            var local = emptyBatch
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
            queueCounters?.add(local)
        }
    }

    private func process(_ n: Int, _ local: inout CounterBatch) {
        let now = monotonicMilliseconds()
        for i in 0..<n {
            guard let message = PacketMessage.parse(batch.message(i)) else {
                local.count(.kernelMessages)
                continue
            }
            local.count(.received)
            let verdict = processor.handle(message.payload, info: message.info, now: now, counters: &local)
            let packet = UnsafeRawBufferPointer(message.payload)
            encoder.add(verdict, id: message.packetID, packet: packet, counters: &local) { counters in
                encoder.flush(to: socket, counters: &counters)
            }
        }
        encoder.flush(to: socket, counters: &local)
    }
}
