import CNFQueue
import Glibc
import Synchronization
import SystemPackage

/// A number of an NFQUEUE (`iptables -j NFQUEUE --queue-num N`).
public struct QueueNumber: RawRepresentable, Hashable, Sendable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt16) { rawValue = value }
    public var description: String { String(rawValue) }
}

/// A queue operation that failed, with the kernel's errno, printed as one line (with a hint where the cause is
/// usually the same).
public struct QueueError: Error, CustomStringConvertible {
    public enum Operation: Sendable, CustomStringConvertible {
        case openingSocket
        case bindingSocket
        /// Binding the queue and configuring it (copy mode, length, flags).
        case binding(QueueNumber)

        public var description: String {
            switch self {
            case .openingSocket: "opening the netfilter netlink socket"
            case .bindingSocket: "binding the netlink socket"
            case .binding(let queue): "binding NFQUEUE \(queue)"
            }
        }
    }

    public var operation: Operation
    public var errno: Errno

    public var hint: String? {
        switch (operation, errno) {
        case (.binding, .notPermitted): "nfqlb needs CAP_NET_ADMIN: run it as root"
        case (.binding(let queue), .resourceBusy): "another process has bound queue \(queue)"
        default: nil
        }
    }

    public var description: String {
        "\(operation): \(errno)" + (hint.map { " (\($0))" } ?? "")
    }
}

/// The netlink socket of one NFQUEUE, bound and configured: the only place nfqlb calls libmnl and
/// libnetfilter_queue (``RawIPSocket`` is the other socket nfqlb opens).
///
/// Set-up goes through libmnl and libnetfilter_queue's `nfq_nlmsg_*` helpers (one message carrying the bind
/// command, copy mode, queue length and flags, acknowledged). The per-packet path does not use the libraries:
/// ``receive(into:)`` is one `recvmmsg(2)` and ``send(_:count:)`` one `sendto(2)`; messages are parsed and
/// built in Swift (``PacketMessage``, ``VerdictWriter``).
///
/// errno policy: EINTR and EAGAIN (the receive timeout that lets a worker notice a stop request) return 0
/// messages; ENOBUFS (the kernel dropped packets because the receive buffer was full) is reported as
/// ``ReceiveResult/overrun`` and the socket stays usable; a send is retried on EINTR.
public final class QueueSocket {
    public let queue: QueueNumber
    private let socket: OpaquePointer
    private let fd: FileDescriptor

    /// The copy range that brings every packet whole to user space (the most an IPv4 or IPv6 header can state
    /// without a jumbogram).
    public static let wholePackets: UInt32 = 0xFFFF

    /// NFQA_CFG_FLAGS a processor may ask for (``PacketProcessor/queueFlags``).
    public struct Flags: OptionSet, Sendable {
        public var rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Whole GSO super-packets, checksums unfinished (NFQA_CFG_F_GSO).
        public static let gso = Flags(rawValue: NFQLB_CFG_F_GSO)
        /// Accept packets unseen when the queue is full (NFQA_CFG_F_FAIL_OPEN): never set. An overloaded queue
        /// must drop, never pass un-NATed packets (docs/ARCHITECTURE.md, "Kernel facts").
        static let failOpen = Flags(rawValue: NFQLB_CFG_F_FAIL_OPEN)
        /// The flags nfqlb sets explicitly, on or off (the configuration message's mask).
        static let managed: Flags = [.failOpen, .gso]
    }

    /// Opens the socket, sizes its buffers and binds `queue`.
    /// - Parameters:
    ///   - bufferBytes: receive and send buffer size (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`).
    ///   - queueLength: kernel queue length (packets waiting for a verdict) before it drops.
    ///   - copyRange: bytes of each packet copied to user space.
    ///   - flags: the queue flags to set; every other flag nfqlb knows (fail-open among them) is cleared.
    public init(queue: QueueNumber, bufferBytes: Int, queueLength: UInt32, copyRange: UInt32 = QueueSocket.wholePackets,
                flags: Flags = []) throws(QueueError) {
        self.queue = queue
        guard let socket = mnl_socket_open(NETLINK_NETFILTER) else {
            throw QueueError(operation: .openingSocket, errno: .current)
        }
        self.socket = socket
        fd = FileDescriptor(rawValue: mnl_socket_get_fd(socket))
        guard mnl_socket_bind(socket, 0, pid_t(MNL_SOCKET_AUTOPID)) >= 0 else {
            let errno = Errno.current
            mnl_socket_close(socket)
            throw QueueError(operation: .bindingSocket, errno: errno)
        }
        var size = Int32(clamping: bufferBytes)
        // FORCE variants ignore net.core.rmem_max (needs CAP_NET_ADMIN, which binding a queue needs anyway).
        if setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        if setsockopt(fd.rawValue, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd.rawValue, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        // A receive timeout so that a worker blocked in recvmmsg notices a stop request.
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        _ = setsockopt(fd.rawValue, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        do {
            try configure { header in
                nfq_nlmsg_cfg_put_cmd(header, UInt16(AF_INET), UInt8(NFQNL_CFG_CMD_BIND.rawValue))
                nfq_nlmsg_cfg_put_params(header, UInt8(NFQNL_COPY_PACKET.rawValue), Int32(copyRange))
                nfq_nlmsg_cfg_put_qmaxlen(header, queueLength)
                mnl_attr_put_u32(header, UInt16(NFQA_CFG_FLAGS.rawValue), flags.subtracting(.failOpen).intersection(.managed).rawValue.bigEndian)
                mnl_attr_put_u32(header, UInt16(NFQA_CFG_MASK.rawValue), Flags.managed.rawValue.bigEndian)
            }
        } catch {
            mnl_socket_close(socket)
            throw QueueError(operation: .binding(queue), errno: error)
        }
    }

    /// Sends one config message built by `fill` with NLM_F_ACK and waits for the kernel's acknowledgement of
    /// that message (an NLMSG_ERROR with its sequence number: error 0 is success). Packets the kernel queues
    /// meanwhile (traffic already flowing when nfqlb starts) are answered NF_DROP, never left stranded.
    private func configure(_ fill: (UnsafeMutablePointer<nlmsghdr>) -> Void) throws(Errno) {
        let size = 8192 // MNL_SOCKET_BUFFER_SIZE (a function-like macro)
        let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: size)
        defer { buffer.deallocate() }
        guard let header = nfq_nlmsg_put(buffer, Int32(NFQNL_MSG_CONFIG.rawValue), UInt32(queue.rawValue)) else {
            throw Errno.invalidArgument
        }
        header.pointee.nlmsg_flags |= UInt16(NLM_F_ACK)
        let sequence = QueueSocket.nextSequence()
        header.pointee.nlmsg_seq = sequence
        fill(header)
        guard mnl_socket_sendto(socket, header, Int(header.pointee.nlmsg_len)) >= 0 else {
            throw Errno.current
        }
        let strayVerdicts = VerdictWriter(limit: 65536)
        defer {
            if strayVerdicts.count > 0 { try? send(strayVerdicts.bytes, count: strayVerdicts.used) }
        }
        var attempts = 0
        while true {
            let n = mnl_socket_recvfrom(socket, buffer, size)
            if n < 0 {
                let errno = Errno.current
                if errno == .interrupted { continue }
                // EAGAIN: the receive timeout passed; the kernel answers config messages at once, so give up
                // after a few.
                if errno == .resourceTemporarilyUnavailable && attempts < 10 { attempts += 1; continue }
                throw errno
            }
            var offset = 0
            let raw = UnsafeRawBufferPointer(start: buffer, count: n)
            while offset + NetlinkLayout.headerLength <= n {
                let length = Int(raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
                guard length >= NetlinkLayout.headerLength, offset + length <= n else { break }
                let type = raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self)
                let messageSequence = raw.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self)
                if type == UInt16(NLMSG_ERROR), messageSequence == sequence, length >= NetlinkLayout.headerLength + 4 {
                    let error = raw.loadUnaligned(fromByteOffset: offset + NetlinkLayout.headerLength, as: Int32.self)
                    if error == 0 { return }
                    throw Errno(rawValue: -error)
                }
                let message = UnsafeMutableRawBufferPointer(start: UnsafeMutableRawPointer(mutating: raw.baseAddress! + offset),
                                                            count: length)
                if let packet = PacketMessage.parse(message) {
                    strayVerdicts.append(queue: queue, packetID: packet.packetID, verdict: .drop)
                }
                offset += NetlinkLayout.align(length)
            }
        }
    }

    /// Sequence numbers of config messages (any non-zero value tells our acknowledgement apart). Queues are
    /// bound from several threads at once (one per queue), hence atomic.
    private static let sequence = Atomic<UInt32>(UInt32(truncatingIfNeeded: time(nil)) | 1)

    /// A sequence number no other config message of this process is using (never 0).
    static func nextSequence() -> UInt32 {
        while true {
            let value = sequence.wrappingAdd(1, ordering: .relaxed).newValue
            if value != 0 { return value }
        }
    }

    /// Unbinds the queue (the kernel then drops what it still holds for it) and closes the socket.
    public func close() {
        try? configure { header in
            nfq_nlmsg_cfg_put_cmd(header, UInt16(AF_INET), UInt8(NFQNL_CFG_CMD_UNBIND.rawValue))
        }
        mnl_socket_close(socket)
    }

    /// What a receive returned.
    public enum ReceiveResult {
        /// This many messages (0 after a timeout or an interrupt).
        case messages(Int)
        /// ENOBUFS: the kernel dropped packets for want of buffer space.
        case overrun
        /// Another error.
        case failed(Errno)
    }

    /// Receives up to `batch.capacity` messages with one `recvmmsg(2)` (MSG_WAITFORONE: blocks for the first,
    /// then takes what is already queued).
    public func receive(into batch: ReceiveBatch) -> ReceiveResult {
        let n = nfqlb_recvmmsg(fd.rawValue, batch.headers, UInt32(batch.capacity), Int32(MSG_WAITFORONE), nil)
        if n >= 0 { return .messages(Int(n)) }
        switch Errno.current {
        case .resourceTemporarilyUnavailable, .wouldBlock, .interrupted: return .messages(0)
        case .noBufferSpace: return .overrun
        case let errno: return .failed(errno)
        }
    }

    /// Sends `count` bytes of verdict messages to the kernel in one `sendto(2)`.
    public func send(_ bytes: UnsafeRawPointer, count: Int) throws(Errno) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        while true {
            let sent = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd.rawValue, bytes, count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
            if sent >= 0 { return }
            let errno = Errno.current
            if errno != .interrupted { throw errno }
        }
    }
}

/// Preallocated `recvmmsg` vectors: `capacity` message buffers of `messageSize` bytes each, owned for the
/// lifetime of a worker.
public final class ReceiveBatch {
    public let capacity: Int
    public let messageSize: Int
    let headers: UnsafeMutablePointer<nfqlb_mmsghdr>
    private let iovecs: UnsafeMutablePointer<iovec>
    private let storage: UnsafeMutableRawPointer

    public init(capacity: Int, messageSize: Int) {
        self.capacity = capacity
        self.messageSize = messageSize
        storage = .allocate(byteCount: capacity * messageSize, alignment: 16)
        iovecs = .allocate(capacity: capacity)
        headers = .allocate(capacity: capacity)
        for i in 0..<capacity {
            iovecs[i] = iovec(iov_base: storage + i * messageSize, iov_len: messageSize)
            var header = nfqlb_mmsghdr()
            header.msg_hdr.msg_iov = iovecs + i
            header.msg_hdr.msg_iovlen = 1
            headers[i] = header
        }
    }

    deinit {
        storage.deallocate()
        iovecs.deallocate()
        headers.deallocate()
    }

    /// The bytes of received message `index` (valid until the next receive).
    public func message(_ index: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: messageStart(index), count: messageLength(index))
    }

    func messageStart(_ index: Int) -> UnsafeMutableRawPointer { storage + index * messageSize }
    func messageLength(_ index: Int) -> Int { Int(headers[index].msg_len) }
}

extension Errno {
    /// The calling thread's errno (read through the shim: Swift cannot read the thread-local macro itself).
    static var current: Errno { Errno(rawValue: nfqlb_errno()) }
}
