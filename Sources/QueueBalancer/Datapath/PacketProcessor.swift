/// Decides verdicts for one kind of queue: the balancer's ``PacketHandler`` or the real server's
/// ``Decapsulator``. A ``QueueRuntime`` binds its queues with what the processor declares and calls
/// ``handle(_:now:counters:)`` from one worker thread per queue.
public protocol PacketProcessor: Sendable {
    /// Bytes of each packet the kernel copies to user space (the queue's copy range).
    var copyRange: UInt32 { get }
    /// Queue flags the processor needs (``QueueSocket/Flags``); fail-open is never among them.
    var queueFlags: QueueSocket.Flags { get }
    /// The verdict for one packet, which may be rewritten in place in `bytes` (the kernel's buffer, or a
    /// prefix of the packet as long as ``copyRange``); `info` is what the kernel says about it (empty without
    /// GSO). Must not allocate, log or block; at most one lock.
    func handle(_ bytes: UnsafeMutableRawBufferPointer, info: PacketInfo, now: UInt64, counters: inout CounterBatch) -> Verdict
    /// Queue worker number `worker` starts handling a batch (see ``PacketHandler`` on config changes).
    func enterBatch(worker: Int)
    /// Queue worker number `worker` has finished its batch.
    func leaveBatch(worker: Int)
    /// The once-a-second work of the runtime's housekeeping thread (expiry, reclamation), at `now` (ms).
    func housekeeping(now: UInt64, counters: DatapathCounters)
    /// Gauges for the statistics, as `name value` pairs.
    var gauges: [(name: String, value: UInt64)] { get }
    /// What worker `worker` starts each batch's counts from: an empty ``CounterBatch``, with the worker's
    /// per-real-server counters where the processor keeps them. Called once per worker, before it runs.
    func counterBatch(worker: Int) -> CounterBatch
    /// Whether its verdicts may ask for kernel connections (``Verdict/acceptMarkedCreatingConnection(_:_:)``):
    /// each worker then has a ``ConntrackWriter``.
    var createsKernelConnections: Bool { get }
}

extension PacketProcessor {
    /// The verdict for a packet whose checksums are complete (a queue without GSO; tests).
    public func handle(_ bytes: UnsafeMutableRawBufferPointer, now: UInt64, counters: inout CounterBatch) -> Verdict {
        handle(bytes, info: [], now: now, counters: &counters)
    }

    public var queueFlags: QueueSocket.Flags { [] }
    public func enterBatch(worker: Int) {}
    public func leaveBatch(worker: Int) {}
    public func housekeeping(now: UInt64, counters: DatapathCounters) {}
    public var gauges: [(name: String, value: UInt64)] { [] }
    public var createsKernelConnections: Bool { false }
    public func counterBatch(worker: Int) -> CounterBatch { CounterBatch() }
}
