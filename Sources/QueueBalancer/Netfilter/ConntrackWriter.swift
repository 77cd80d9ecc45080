/// The kernel connections one queue worker creates, collected per batch and sent in one go, before the batch's
/// verdicts: DR on the conntrack fast path. A DR SYN passes untracked (the kernel never sees the real server's
/// SYN-ACK, so it would call the client's ACK invalid), so for each one nfqlb creates the connection the
/// client's next packets will find: SYN_RECV, with the real server's mark. The client's ACK makes it
/// ESTABLISHED, and no packet after the SYN is queued (docs/ARCHITECTURE.md, "The conntrack fast path").
/// A stale connection of the same tuple (a client port reused while the kernel still holds the old one) is
/// deleted first, so the new connection cannot inherit its mark.
///
/// Everything is allocated in `init`; per connection it writes two messages into the buffer. The requests
/// ask for no acknowledgement; the kernel reports failures anyway, which ``flush(counters:)`` reads back and
/// counts (`offload_conntrack_failed`), a deletion that found nothing apart.
final class ConntrackWriter {
    private let socket: ConntrackSocket
    private let buffer: UnsafeMutableRawBufferPointer
    /// Where the kernel's reports are read into.
    private let reports: UnsafeMutableRawBufferPointer
    private var writer: ConntrackMessageWriter
    private var pending = 0
    /// How long a created connection waits for the client's ACK, in seconds.
    static let halfOpenTimeout: UInt32 = 60
    /// Sequence numbers that tell the kernel's error reports apart.
    private static let deleteSequence: UInt32 = 1, createSequence: UInt32 = 2

    init(socket: ConntrackSocket, capacity: Int = 64) {
        self.socket = socket
        buffer = .allocate(byteCount: 2 * capacity * ConntrackMessageWriter.largestMessage, alignment: 8)
        reports = .allocate(byteCount: 16384, alignment: 8)
        writer = ConntrackMessageWriter(buffer)
    }

    deinit {
        buffer.deallocate()
        reports.deallocate()
    }

    /// Adds the creation of `original`'s connection with `mark` (after the deletion of a stale one); sends
    /// what is collected first when the buffer is full.
    func create(_ original: FlowKey, mark: Fwmark, counters: inout CounterBatch) {
        if writer.remaining < 2 * ConntrackMessageWriter.largestMessage { flush(counters: &counters) }
        writer.delete(original, sequence: Self.deleteSequence, flags: 0)
        writer.createHalfOpen(original, mark: mark, timeout: Self.halfOpenTimeout, sequence: Self.createSequence)
        pending += 1
    }

    /// Sends the collected requests (the kernel carries them out before `sendto` returns), then reads back
    /// the kernel's failure reports.
    func flush(counters: inout CounterBatch) {
        guard pending > 0 else { return }
        let sent = (try? socket.send(UnsafeRawBufferPointer(rebasing: buffer[0..<writer.used]))) != nil
        var failed = sent ? 0 : pending
        if sent {
            socket.drainReports(into: reports) { sequence, error in
                if sequence == Self.createSequence && error != 0 { failed += 1 }
            }
        }
        counters.count(.offloadConntrackCreated, UInt64(pending - min(failed, pending)))
        if failed > 0 { counters.count(.offloadConntrackFailed, UInt64(failed)) }
        writer = ConntrackMessageWriter(buffer)
        pending = 0
    }
}
