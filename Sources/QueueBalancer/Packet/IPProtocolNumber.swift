/// An IP protocol number (IANA "Assigned Internet Protocol Numbers"): the IPv4 header's protocol field and the
/// IPv6 next-header values, extension headers included.
public struct IPProtocolNumber: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt8

    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The transports nfqlb balances, and the ICMP of each family.
    public static let tcp = Self(rawValue: 6), udp = Self(rawValue: 17), icmp = Self(rawValue: 1), icmpv6 = Self(rawValue: 58)

    /// A packet inside another (TUN): IPv4 inside (IP-in-IP, RFC 2003), IPv6 inside (RFC 2473, RFC 4213).
    public static let ipv4 = Self(rawValue: 4), ipv6 = Self(rawValue: 41)

    /// IPv6 extension headers nfqlb walks (RFC 8200 section 4): hop-by-hop options (only directly after the
    /// fixed header), routing, fragment, destination options; and "no next header".
    public static let hopByHop = Self(rawValue: 0), routing = Self(rawValue: 43), fragment = Self(rawValue: 44)
    public static let destinationOptions = Self(rawValue: 60), noNextHeader = Self(rawValue: 59)

    /// IPsec ESP (RFC 4303) and AH (RFC 4302): nfqlb does not look past them.
    public static let esp = Self(rawValue: 50), authentication = Self(rawValue: 51)

    /// The protocol that carries a packet of `family` inside another IP packet (TUN's payload protocol).
    public static func encapsulating(_ family: IPFamily) -> IPProtocolNumber { family == .v4 ? .ipv4 : .ipv6 }

    public var description: String { String(rawValue) }
}
