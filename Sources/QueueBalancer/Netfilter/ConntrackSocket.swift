import CNFQueue
import Glibc
import SystemPackage

/// A ctnetlink operation that failed, with the kernel's errno.
public struct ConntrackError: Error, CustomStringConvertible {
    public enum Operation: Sendable, CustomStringConvertible {
        case opening
        case subscribing
        case dumping
        case deleting

        public var description: String {
            switch self {
            case .opening: "opening the conntrack netlink socket"
            case .subscribing: "subscribing to conntrack events"
            case .dumping: "reading the kernel's connections"
            case .deleting: "deleting kernel connections"
            }
        }
    }

    public var operation: Operation
    public var errno: Errno

    public var description: String {
        "\(operation): \(errno)" + (errno == .notPermitted ? " (nfqlb needs CAP_NET_ADMIN: run it as root)" : "")
    }
}

/// A netlink socket to the kernel's connection tracking (ctnetlink): the only place nfqlb calls libmnl for
/// conntrack. Either subscribed to the event groups (``events(bufferBytes:)``: every new, updated and
/// destroyed connection of the network namespace), or a request socket (``requests()``) for dumps and
/// deletions. Messages are parsed and built in Swift (``ConntrackEntry``, ``ConntrackRequest``).
///
/// errno policy as ``QueueSocket``: a receive timeout (200 ms) or an interrupt returns no message; ENOBUFS
/// (events lost because the receive buffer was full) is reported, and the socket stays usable.
final class ConntrackSocket {
    private let socket: OpaquePointer
    private let fd: FileDescriptor
    private var sequence: UInt32 = UInt32(truncatingIfNeeded: time(nil)) | 1

    private init(groups: UInt32, bufferBytes: Int) throws(ConntrackError) {
        guard let socket = mnl_socket_open(NETLINK_NETFILTER) else {
            throw ConntrackError(operation: .opening, errno: .current)
        }
        self.socket = socket
        fd = FileDescriptor(rawValue: mnl_socket_get_fd(socket))
        if bufferBytes > 0 {
            var size = Int32(clamping: bufferBytes)
            if setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                _ = setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
        }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        _ = setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard mnl_socket_bind(socket, groups, pid_t(MNL_SOCKET_AUTOPID)) >= 0 else {
            let errno = Errno.current
            mnl_socket_close(socket)
            throw ConntrackError(operation: groups == 0 ? .opening : .subscribing, errno: errno)
        }
    }

    deinit { mnl_socket_close(socket) }

    /// A socket that receives the kernel's connection events (new, update, destroy).
    static func events(bufferBytes: Int) throws(ConntrackError) -> ConntrackSocket {
        let groups = [ConntrackLayout.groupNew, ConntrackLayout.groupUpdate, ConntrackLayout.groupDestroy]
            .reduce(UInt32(0)) { $0 | 1 << ($1 - 1) }
        return try ConntrackSocket(groups: groups, bufferBytes: bufferBytes)
    }

    /// A socket for requests (dump, delete), subscribed to nothing.
    static func requests() throws(ConntrackError) -> ConntrackSocket {
        try ConntrackSocket(groups: 0, bufferBytes: 1 << 20)
    }

    /// Receives up to `batch.capacity` datagrams of event messages with one `recvmmsg(2)` (MSG_WAITFORONE: waits
    /// for the first, up to the 200 ms timeout, then takes what is already queued).
    func receive(into batch: ReceiveBatch) -> QueueSocket.ReceiveResult {
        let n = nfqlb_recvmmsg(fd.rawValue, batch.headers, UInt32(batch.capacity), Int32(MSG_WAITFORONE), nil)
        if n >= 0 { return .messages(Int(n)) }
        switch Errno.current {
        case .resourceTemporarilyUnavailable, .wouldBlock, .interrupted: return .messages(0)
        case .noBufferSpace: return .overrun
        case let errno: return .failed(errno)
        }
    }

    /// Calls `body` with each whole netlink message in `bytes`.
    static func forEachMessage(in bytes: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer) -> Void) {
        var offset = 0
        while offset + NetlinkLayout.headerLength <= bytes.count {
            let length = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
            guard length >= NetlinkLayout.headerLength, offset + length <= bytes.count else { return }
            body(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + length)]))
            offset += NetlinkLayout.align(length)
        }
    }

    /// Sends `request` (its sequence number replaced by this socket's next one) and reads the answer to the
    /// end: every message of a dump goes to `body`; the kernel's acknowledgement or NLMSG_DONE ends it.
    /// An error answer is thrown as its errno.
    func perform(_ request: ConntrackRequest, _ body: (UnsafeRawBufferPointer) -> Void = { _ in }) throws(Errno) {
        sequence &+= 1
        let sequence = self.sequence
        var bytes = request.bytes
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: sequence, toByteOffset: 8, as: UInt32.self) }
        let sent = bytes.withUnsafeBytes { mnl_socket_sendto(socket, $0.baseAddress, $0.count) }
        guard sent >= 0 else { throw Errno.current }
        let size = 1 << 16
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        var timeouts = 0
        while true {
            let n = mnl_socket_recvfrom(socket, buffer.baseAddress, size)
            if n < 0 {
                let errno = Errno.current
                if errno == .interrupted { continue }
                if errno == .resourceTemporarilyUnavailable && timeouts < 25 { timeouts += 1; continue }
                throw errno
            }
            var outcome: Errno?? = nil       // .some(nil): done; .some(errno): failed
            Self.forEachMessage(in: UnsafeRawBufferPointer(rebasing: buffer[0..<n])) { message in
                guard outcome == nil,
                      message.loadUnaligned(fromByteOffset: 8, as: UInt32.self) == sequence else { return }
                switch message.loadUnaligned(fromByteOffset: 4, as: UInt16.self) {
                case ConntrackLayout.done:
                    outcome = .some(nil)
                case ConntrackLayout.error:
                    let code = message.count >= NetlinkLayout.headerLength + 4
                        ? message.loadUnaligned(fromByteOffset: NetlinkLayout.headerLength, as: Int32.self) : 0
                    outcome = .some(code == 0 ? nil : Errno(rawValue: -code))
                default:
                    body(message)
                }
            }
            if let outcome {
                if let errno = outcome { throw errno }
                return
            }
        }
    }

    /// Every connection of the kernel, both families (each reported as ``ConntrackEntry/Kind/new``).
    func dump() throws(ConntrackError) -> [ConntrackEntry] {
        var entries: [ConntrackEntry] = []
        do {
            try perform(.dump(sequence: 0)) { message in
                if var entry = ConntrackEntry.parse(message) {
                    entry.kind = .new
                    entries.append(entry)
                }
            }
        } catch {
            throw ConntrackError(operation: .dumping, errno: error)
        }
        return entries
    }

    /// Deletes the kernel's connection whose original tuple is `original`; true when it was there.
    @discardableResult
    func delete(_ original: FlowKey) throws(ConntrackError) -> Bool {
        do {
            try perform(.delete(original, sequence: 0))
            return true
        } catch .noSuchFileOrDirectory {
            return false
        } catch {
            throw ConntrackError(operation: .deleting, errno: error)
        }
    }

    /// Sends `bytes` (one or more requests) to the kernel, which carries them out before this returns.
    func send(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        while mnl_socket_sendto(socket, bytes.baseAddress, bytes.count) < 0 {
            let errno = Errno.current
            if errno != .interrupted { throw errno }
        }
    }

    /// Reads, without waiting, the kernel's answers queued on this socket, into `buffer`: `body` gets each
    /// error report's sequence number and error (0: an acknowledgement).
    func drainReports(into buffer: UnsafeMutableRawBufferPointer, _ body: (UInt32, Int32) -> Void) {
        while true {
            let n = recv(fd.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
            if n < 0 {
                if Errno.current == .interrupted { continue }
                return                                                   // EAGAIN: nothing more (or ENOBUFS)
            }
            Self.forEachMessage(in: UnsafeRawBufferPointer(rebasing: buffer[0..<n])) { message in
                guard message.loadUnaligned(fromByteOffset: 4, as: UInt16.self) == ConntrackLayout.error,
                      message.count >= NetlinkLayout.headerLength + 4 else { return }
                body(message.loadUnaligned(fromByteOffset: 8, as: UInt32.self),
                     -message.loadUnaligned(fromByteOffset: NetlinkLayout.headerLength, as: Int32.self))
            }
        }
    }
}
