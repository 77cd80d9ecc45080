/// An IP protocol number (IANA "Assigned Internet Protocol Numbers"): the IPv4 header's protocol field and the
/// IPv6 next-header values, extension headers included.
public struct IPProtocolNumber: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8

    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// IPv6 hop-by-hop options (RFC 8200 4.3); only directly after the fixed header.
    public static let hopByHop = IPProtocolNumber(rawValue: 0)
    public static let icmp = IPProtocolNumber(rawValue: 1)
    /// IPv4 inside (IP-in-IP, RFC 2003): what TUN sends when the client's packet is IPv4.
    public static let ipv4 = IPProtocolNumber(rawValue: 4)
    public static let tcp = IPProtocolNumber(rawValue: 6)
    public static let udp = IPProtocolNumber(rawValue: 17)
    /// IPv6 inside (RFC 2473 in IPv6, RFC 4213 in IPv4): what TUN sends when the client's packet is IPv6.
    public static let ipv6 = IPProtocolNumber(rawValue: 41)
    /// IPv6 routing header (RFC 8200 4.4).
    public static let routing = IPProtocolNumber(rawValue: 43)
    /// IPv6 fragment header (RFC 8200 4.5).
    public static let fragment = IPProtocolNumber(rawValue: 44)
    /// IPsec ESP (RFC 4303) and AH (RFC 4302): nfqlb does not look past them.
    public static let esp = IPProtocolNumber(rawValue: 50)
    public static let authentication = IPProtocolNumber(rawValue: 51)
    public static let icmpv6 = IPProtocolNumber(rawValue: 58)
    /// IPv6 "no next header" (RFC 8200 4.7).
    public static let noNextHeader = IPProtocolNumber(rawValue: 59)
    /// IPv6 destination options (RFC 8200 4.6).
    public static let destinationOptions = IPProtocolNumber(rawValue: 60)

    /// The protocol that carries a packet of `family` inside another IP packet (TUN's payload protocol).
    public static func encapsulating(_ family: IPFamily) -> IPProtocolNumber { family == .v4 ? .ipv4 : .ipv6 }

    /// The ICMP protocol of `family` (ICMP for IPv4, ICMPv6 for IPv6).
    public static func icmp(_ family: IPFamily) -> IPProtocolNumber { family == .v4 ? .icmp : .icmpv6 }

    public var description: String { String(rawValue) }
}
