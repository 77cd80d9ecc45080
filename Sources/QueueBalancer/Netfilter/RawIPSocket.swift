import CNFQueue
import Glibc
import SystemPackage

/// A raw IP socket that sends complete packets, headers included (`IPPROTO_RAW`, which implies
/// `IP_HDRINCL`/`IPV6_HDRINCL`): the way out for a packet whose family differs from the queue it came from,
/// which a verdict cannot produce (the kernel re-injects a verdict's payload into the stack it was queued
/// from). nfqlb uses it for TUN between families: IPv4 in IPv6 or IPv6 in IPv4 on the balancer, and on the
/// real server to deliver the decapsulated inner packet of the other family to the local VIP.
///
/// Packets are queued in a ``RawSendBatch`` while a queue batch is handled and leave with one `sendmmsg(2)` at
/// its end, like the verdicts.
final class RawIPSocket {
    let family: IPFamily
    private let fd: FileDescriptor

    /// Nil when the socket cannot be opened (no CAP_NET_RAW): packets for it are then counted as lost.
    init?(family: IPFamily) {
        let fd = socket(family == .v4 ? AF_INET : AF_INET6, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_RAW))
        guard fd >= 0 else { return nil }
        self.family = family
        self.fd = FileDescriptor(rawValue: fd)
    }

    deinit { try? fd.close() }

    /// Sends `count` prepared messages with one `sendmmsg(2)`; returns how many the kernel took before the
    /// first it refused (the caller skips that one and goes on).
    func send(_ messages: UnsafeMutablePointer<nfqlb_mmsghdr>, count: Int) -> Int {
        let sent = nfqlb_sendmmsg(fd.rawValue, messages, UInt32(count), 0)
        return sent < 0 ? 0 : Int(sent)
    }

    /// Writes the socket address of `destination` (of ``family``) into `storage`; returns its length.
    func address(_ destination: IPAddress, into storage: UnsafeMutablePointer<sockaddr_in6>) -> socklen_t {
        if family == .v4 {
            return UnsafeMutableRawPointer(storage).withMemoryRebound(to: sockaddr_in.self, capacity: 1) { address in
                address.pointee = sockaddr_in()
                address.pointee.sin_family = sa_family_t(AF_INET)
                address.pointee.sin_addr.s_addr = UInt32(truncatingIfNeeded: destination.low).bigEndian
                return socklen_t(MemoryLayout<sockaddr_in>.size)
            }
        }
        storage.pointee = sockaddr_in6()
        storage.pointee.sin6_family = sa_family_t(AF_INET6)
        withUnsafeMutableBytes(of: &storage.pointee.sin6_addr) { bytes in
            bytes.storeBytes(of: destination.high.bigEndian, toByteOffset: 0, as: UInt64.self)
            bytes.storeBytes(of: destination.low.bigEndian, toByteOffset: 8, as: UInt64.self)
        }
        return socklen_t(MemoryLayout<sockaddr_in6>.size)
    }
}

/// The packets one worker sends through one raw socket during a queue batch, sent together by ``flush()``.
///
/// Everything is allocated in `init`: an arena the packets are built in (room for four packets of the largest
/// size, usually dozens of ordinary ones), and one message header, iovec and socket address per packet. When a
/// packet does not fit, the batch is flushed first.
final class RawSendBatch {
    let socket: RawIPSocket?
    static let capacity = 64
    static let arenaSize = 4 * (65536 + 80)
    private let arena = UnsafeMutableRawPointer.allocate(byteCount: RawSendBatch.arenaSize, alignment: 8)
    private let messages = UnsafeMutablePointer<nfqlb_mmsghdr>.allocate(capacity: RawSendBatch.capacity)
    private let vectors = UnsafeMutablePointer<iovec>.allocate(capacity: RawSendBatch.capacity)
    private let addresses = UnsafeMutablePointer<sockaddr_in6>.allocate(capacity: RawSendBatch.capacity)
    private var used = 0
    private var count = 0

    init(family: IPFamily) {
        socket = RawIPSocket(family: family)
    }

    deinit {
        arena.deallocate()
        messages.deallocate()
        vectors.deallocate()
        addresses.deallocate()
    }

    /// Queues `prefix` (if any) followed by `packet` for `destination`, flushing the batch first when it is
    /// full. Returns how many packets are lost: those an intermediate flush could not send, and this one when
    /// there is no socket or it is larger than the arena.
    func enqueue(prefix: UnsafeRawBufferPointer?, packet: UnsafeRawBufferPointer, to destination: IPAddress) -> Int {
        let prefixLength = prefix?.count ?? 0
        let length = prefixLength + packet.count
        guard let socket, length <= RawSendBatch.arenaSize else { return 1 }
        var failed = 0
        if count == RawSendBatch.capacity || used + length > RawSendBatch.arenaSize { failed += flush() }
        let start = arena + used
        if let prefix, let base = prefix.baseAddress { start.copyMemory(from: base, byteCount: prefixLength) }
        if let base = packet.baseAddress { (start + prefixLength).copyMemory(from: base, byteCount: packet.count) }
        vectors[count] = iovec(iov_base: start, iov_len: length)
        let addressLength = socket.address(destination, into: addresses + count)
        messages[count] = nfqlb_mmsghdr(
            msg_hdr: msghdr(msg_name: UnsafeMutableRawPointer(addresses + count), msg_namelen: addressLength,
                            msg_iov: vectors + count, msg_iovlen: 1, msg_control: nil, msg_controllen: 0, msg_flags: 0),
            msg_len: 0)
        used += (length + 7) & ~7
        count += 1
        return failed
    }

    /// Sends every queued packet; returns how many the kernel refused.
    func flush() -> Int {
        defer { count = 0; used = 0 }
        guard let socket, count > 0 else { return 0 }
        var next = 0, failed = 0
        while next < count {
            let sent = socket.send(messages + next, count: count - next)
            next += sent
            if next < count {     // the kernel refused this one: skip it
                failed += 1
                next += 1
            }
        }
        return failed
    }
}
