import Glibc

/// A raw IP socket that sends complete packets, headers included (`IPPROTO_RAW`, which implies
/// `IP_HDRINCL`/`IPV6_HDRINCL`): the way out for a packet whose family differs from the queue it came from,
/// which a verdict cannot produce (the kernel re-injects a verdict's payload into the stack it was queued
/// from). nfqlb uses it for TUN between families: IPv4 in IPv6 or IPv6 in IPv4 on the balancer, and on the
/// real server to deliver the decapsulated inner packet of the other family to the local VIP.
///
/// The one place besides ``QueueSocket`` that calls socket syscalls. ``send(_:to:)`` is one `sendto(2)` with a
/// socket address built on the stack: allocation-free.
final class RawIPSocket {
    let family: IPFamily
    private let fd: Int32

    /// Nil when the socket cannot be opened (no CAP_NET_RAW).
    init?(family: IPFamily) {
        let fd = socket(family == .v4 ? AF_INET : AF_INET6, Int32(SOCK_RAW.rawValue), Int32(IPPROTO_RAW))
        guard fd >= 0 else { return nil }
        self.family = family
        self.fd = fd
    }

    deinit { close(fd) }

    /// Sends `packet` (a complete packet of ``family``) towards `destination`; false when the kernel refused.
    func send(_ packet: UnsafeRawBufferPointer, to destination: IPAddress) -> Bool {
        guard let base = packet.baseAddress else { return false }
        let sent: Int
        if family == .v4 {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(truncatingIfNeeded: destination.low).bigEndian
            sent = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, base, packet.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        } else {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            withUnsafeMutableBytes(of: &address.sin6_addr) { bytes in
                bytes.storeBytes(of: destination.high.bigEndian, toByteOffset: 0, as: UInt64.self)
                bytes.storeBytes(of: destination.low.bigEndian, toByteOffset: 8, as: UInt64.self)
            }
            sent = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, base, packet.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
        return sent == packet.count
    }
}
