import CNFQueue
import Glibc

/// The TUN device whose presence tells BIRD that nfqlb runs (``RoutingConfig/liveDevice``): created up when a
/// cluster balancer starts, never made persistent, so the kernel removes it when its descriptor closes — at a
/// clean stop, and just as well when nfqlb is killed or crashes — and BIRD's VIP routes through it (`check
/// link`) are withdrawn at once.
public final class LiveDevice {
    public let name: String
    private let fd: Int32

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Creates and sets up the device (needs CAP_NET_ADMIN).
    public init(name: String = RoutingConfig.liveDevice) throws(Failure) {
        self.name = name
        let fd = nfqlb_tun_open_up(name)
        guard fd >= 0 else {
            let code = nfqlb_errno()
            let reason = code == EBUSY ? "another process holds it (is another nfqlb running in this network namespace?)"
                : String(cString: strerror(code))
            throw Failure(description: "cannot create the cluster's live device \(name): \(reason)")
        }
        self.fd = fd
    }

    deinit { close(fd) }
}
