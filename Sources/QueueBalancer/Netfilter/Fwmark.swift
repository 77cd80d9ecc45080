/// A netfilter packet mark (`skb->mark`): what a verdict sets with NFQA_MARK, what `ip rule fwmark` and
/// `iptables -m mark` match.
public struct Fwmark: RawRepresentable, Hashable, Sendable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public init(integerLiteral value: UInt32) { rawValue = value }

    /// The bit on every packet nfqlb rewrote or replaced (NAT, FULLNAT, TUN's "too big" answers, the real
    /// server's decapsulation). With bridge netfilter (a bridge on the balancer and
    /// `net.bridge.bridge-nf-call-iptables=1`, the kernel default) a queued packet passes PREROUTING twice:
    /// once at the bridge port, where it is queued and rewritten, and again at the bridge device with its new
    /// headers. The FULLNAT anti-spoof rules skip marked packets so that they do not drop the second pass of a
    /// translated packet (measured: FULLNAT downloads fell to 4 Mbit/s without this). DR marks (from
    /// `fwmark-base`, at most 0x00FF0000) stay below it.
    public static let translated: Fwmark = 0x0100_0000

    /// `0x1000`, as iptables and `ip rule` print marks.
    public var description: String { "0x\(String(rawValue, radix: 16))" }
}
