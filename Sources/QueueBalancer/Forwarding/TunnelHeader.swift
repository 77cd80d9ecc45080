/// The outer header TUN puts in front of a packet, computed by the ``TunnelForwarder`` and carried in the
/// ``Verdict``, so that the queue worker only copies it: IPv4 protocol 4 or 41 (RFC 2003, RFC 4213), or IPv6
/// next header 41 or 4 (RFC 2473).
///
/// IPv4 outer header: TOS (or the IPv6 traffic class), identification and DF copied from an IPv4 inner header,
/// so that the path treats the tunnel like the flow and a packet without DF may still be fragmented (an IPv6
/// inner packet gets DF); TTL 64. IPv6 outer header: traffic class (and an IPv6 inner packet's flow label)
/// copied, hop limit 64.
///
/// Invariant: the first ``length`` bytes of the storage hold a complete header (checksum included) for an
/// inner packet of ``innerLength`` bytes.
public struct TunnelHeader: Equatable, Sendable {
    /// The outer header's family: the real server's.
    public let family: IPFamily
    public let source: IPAddress
    public let destination: IPAddress
    /// The bytes of the packet behind the header.
    public let innerLength: Int
    /// Room for the longer (IPv6) header.
    private var storage: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)

    /// The header's length: 20 for IPv4, 40 for IPv6.
    public var length: Int { family.minimumHeaderLength }

    /// The outer header of `family` for `inner`, a packet of `innerFamily` whose first `innerLength` bytes are
    /// to be tunnelled; nil when the outer header's length field cannot count them (at most 65535).
    init?(encapsulating inner: UnsafeRawBufferPointer, innerFamily: IPFamily, innerLength: Int, outer family: IPFamily,
          source: IPAddress, destination: IPAddress) {
        let payloadLength = family == .v4 ? innerLength + IPv4Header.minimumLength : innerLength
        guard innerLength <= inner.count, payloadLength <= Int(UInt16.max) else { return nil }
        self.family = family
        self.source = source
        self.destination = destination
        self.innerLength = innerLength
        let payload = IPProtocolNumber.encapsulating(innerFamily)
        let innerIPv4 = innerFamily == .v4 ? IPv4Header(inner) : nil
        let innerIPv6 = innerFamily == .v6 ? IPv6Header(inner) : nil
        let trafficClass = innerIPv4?.typeOfService ?? innerIPv6?.trafficClass ?? 0
        withUnsafeMutableBytes(of: &storage) { out in
            if family == .v6 {
                IPv6Header.write(into: out, trafficClass: trafficClass, flowLabel: innerIPv6?.flowLabel ?? 0,
                                 payloadLength: payloadLength, nextHeader: payload, source: source,
                                 destination: destination)
            } else {
                IPv4Header.write(into: out, typeOfService: trafficClass, totalLength: payloadLength,
                                 identification: innerIPv4?.identification ?? 0,
                                 fragmentField: innerIPv4.map { $0.fragmentField & IPv4Header.dontFragment }
                                     ?? IPv4Header.dontFragment,
                                 protocolNumber: payload, source: source, destination: destination)
            }
        }
    }

    /// Calls `body` with the header's bytes.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try Swift.withUnsafeBytes(of: storage) { try body(UnsafeRawBufferPointer(rebasing: $0[0..<length])) }
    }

    public static func == (a: TunnelHeader, b: TunnelHeader) -> Bool {
        a.family == b.family && a.source == b.source && a.destination == b.destination
            && a.innerLength == b.innerLength && a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.elementsEqual(y) } }
    }
}
