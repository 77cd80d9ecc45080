/// An IPv4 or IPv6 address held in 16 bytes, IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
///
/// One representation for both families lets the tracker, the schedulers and the config share one
/// implementation; the datapath converts at the edge with ``init(ipv4:)`` and ``ipv4``.
/// Invariant: `high` and `low` hold the address in network byte order read as big-endian integers.
public struct IPAddress: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The first 8 bytes of the address, big-endian.
    public var high: UInt64
    /// The last 8 bytes of the address, big-endian.
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// An IPv4 address given as the 32-bit value of its four bytes in network order (`a << 24 | b << 16 | ...`).
    public init(ipv4 value: UInt32) {
        high = 0
        low = 0x0000_FFFF_0000_0000 | UInt64(value)
    }

    /// Whether this is an IPv4 address (IPv4-mapped form).
    public var isIPv4: Bool { high == 0 && (low >> 32) == 0xFFFF }

    /// The IPv4 value (`a << 24 | ...`), or nil for an IPv6 address.
    public var ipv4: UInt32? { isIPv4 ? UInt32(truncatingIfNeeded: low) : nil }

    /// Parses dotted-quad IPv4 or RFC 4291 text IPv6 (with `::` and an embedded IPv4 tail). Nil when invalid.
    public init?(_ text: String) {
        if text.contains(":") {
            guard let parsed = IPAddress.parseIPv6(Substring(text)) else { return nil }
            self = parsed
        } else {
            guard let v4 = IPAddress.parseIPv4(Substring(text)) else { return nil }
            self.init(ipv4: v4)
        }
    }

    static func parseIPv4(_ text: Substring) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let byte = UInt8(part), !(part.count > 1 && part.first == "0") else { return nil }
            value = value << 8 | UInt32(byte)
        }
        return value
    }

    static func parseIPv6(_ text: Substring) -> IPAddress? {
        // Split at "::" at most once; each side is a list of 16-bit groups, the last may be IPv4.
        func groups(_ side: Substring, allowIPv4Tail: Bool) -> [UInt16]? {
            if side.isEmpty { return [] }
            var result: [UInt16] = []
            let parts = side.split(separator: ":", omittingEmptySubsequences: false)
            for (i, part) in parts.enumerated() {
                if i == parts.count - 1, allowIPv4Tail, part.contains(".") {
                    guard let v4 = parseIPv4(part) else { return nil }
                    result.append(UInt16(v4 >> 16))
                    result.append(UInt16(v4 & 0xFFFF))
                } else {
                    guard (1...4).contains(part.count), let g = UInt16(part, radix: 16) else { return nil }
                    result.append(g)
                }
            }
            return result
        }
        var all: [UInt16]
        if let range = text.range(of: "::") {
            let head = text[text.startIndex..<range.lowerBound]
            let tail = text[range.upperBound...]
            guard !tail.contains("::"), let h = groups(head, allowIPv4Tail: false),
                  let t = groups(tail, allowIPv4Tail: true), h.count + t.count <= 7 else { return nil }
            all = h + Array(repeating: 0, count: 8 - h.count - t.count) + t
        } else {
            guard let g = groups(text, allowIPv4Tail: true), g.count == 8 else { return nil }
            all = g
        }
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<4 { high = high << 16 | UInt64(all[i]) }
        for i in 4..<8 { low = low << 16 | UInt64(all[i]) }
        return IPAddress(high: high, low: low)
    }

    public var description: String {
        if let v4 = ipv4 {
            return "\(v4 >> 24).\(v4 >> 16 & 0xFF).\(v4 >> 8 & 0xFF).\(v4 & 0xFF)"
        }
        var g: [UInt16] = []
        for i in (0..<4).reversed() { g.append(UInt16(truncatingIfNeeded: high >> (16 * UInt64(i)))) }
        for i in (0..<4).reversed() { g.append(UInt16(truncatingIfNeeded: low >> (16 * UInt64(i)))) }
        // RFC 5952: compress the longest run (>= 2) of zero groups, the first one on a tie.
        var bestStart = -1, bestLen = 1, i = 0
        while i < 8 {
            if g[i] == 0 {
                var j = i
                while j < 8 && g[j] == 0 { j += 1 }
                if j - i > bestLen { bestStart = i; bestLen = j - i }
                i = j
            } else { i += 1 }
        }
        let hex = g.map { String($0, radix: 16) }
        if bestStart < 0 { return hex.joined(separator: ":") }
        let head = hex[0..<bestStart].joined(separator: ":")
        let tail = hex[(bestStart + bestLen)...].joined(separator: ":")
        return head + "::" + tail
    }

    public static func < (a: IPAddress, b: IPAddress) -> Bool {
        (a.high, a.low) < (b.high, b.low)
    }
}

/// An address and a port: one side of a flow.
public struct Endpoint: Hashable, Sendable, Comparable, CustomStringConvertible {
    public var address: IPAddress
    public var port: UInt16

    public static func < (a: Endpoint, b: Endpoint) -> Bool { (a.address, a.port) < (b.address, b.port) }

    public init(address: IPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    public var description: String {
        address.isIPv4 ? "\(address):\(port)" : "[\(address)]:\(port)"
    }

    /// `ADDRESS:PORT` or `[IPv6]:PORT` with a port in 1...65535.
    public init?(listenAddress text: String) {
        var host = Substring(text), port = Substring()
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[close...].hasPrefix("]:") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            port = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon else { return nil }
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        guard let address = IPAddress(String(host)), let number = UInt16(port), number > 0 else { return nil }
        self.init(address: address, port: number)
    }
}

/// The transport protocols nfqlb balances; raw values are IP protocol numbers.
public enum TransportProtocol: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case tcp = 6
    case udp = 17

    /// The transport protocol of `number`, nil for any other.
    init?(_ number: IPProtocolNumber) { self.init(rawValue: number.rawValue) }

    public var protocolNumber: IPProtocolNumber { IPProtocolNumber(rawValue: rawValue) }

    /// Offset of the checksum field in this protocol's header.
    var checksumOffset: Int { self == .tcp ? TCPHeader.Offset.checksum : UDPHeader.Offset.checksum }

    public var description: String { self == .tcp ? "tcp" : "udp" }
}

/// The IP version of a packet.
public enum IPFamily: UInt8, Sendable, CustomStringConvertible {
    case v4 = 4, v6 = 6

    public var description: String { self == .v4 ? "IPv4" : "IPv6" }

    /// Byte offsets of the source and destination addresses in the fixed header.
    var sourceOffset: Int { self == .v4 ? IPv4Header.Offset.source : IPv6Header.Offset.source }
    var destinationOffset: Int { self == .v4 ? IPv4Header.Offset.destination : IPv6Header.Offset.destination }
    /// The header nfqlb writes for this family: IPv4 without options (20 bytes), the IPv6 fixed header (40).
    var minimumHeaderLength: Int { self == .v4 ? IPv4Header.minimumLength : IPv6Header.minimumLength }
    /// The family of an address (IPv4-mapped addresses are IPv4).
    init(of address: IPAddress) { self = address.isIPv4 ? .v4 : .v6 }
}

extension IPAddress {
    /// Whether this address, read from a header of `family`, can be the source of a client's packet: not
    /// unspecified, loopback, multicast or reserved (IPv4 0/8, 127/8, 224/3; IPv6 ::, ::1, ff00::/8, and an
    /// IPv4-mapped address, which no IPv6 host sends from). The real server's decapsulator delivers inner
    /// packets without the kernel's martian checks, so it applies this rule itself.
    func isOrdinarySource(in family: IPFamily) -> Bool {
        if family == .v4 {
            let firstOctet = UInt8(truncatingIfNeeded: low >> 24)
            return isIPv4 && firstOctet != 0 && firstOctet != 127 && firstOctet < 224
        }
        return !(high == 0 && low <= 1) && high >> 56 != 0xFF && !isIPv4
    }
}

extension IPAddress {
    /// The address with all but the first `bits` of its 128 bits cleared (an IPv4 address counts from bit 96:
    /// pass 96 + its prefix length).
    func keepingFirst(_ bits: Int) -> IPAddress {
        func mask(_ n: Int) -> UInt64 { n <= 0 ? 0 : n >= 64 ? .max : ~(UInt64.max >> UInt64(n)) }
        return IPAddress(high: high & mask(bits), low: low & mask(bits - 64))
    }
}

/// An address prefix, `ADDRESS/LENGTH` (a bare address is the host itself: /32 or /128). An IPv4 prefix
/// contains IPv4 addresses only, an IPv6 prefix IPv6 addresses only.
public struct IPPrefix: Hashable, Sendable, CustomStringConvertible {
    /// The network address (host bits cleared).
    public let network: IPAddress
    /// The prefix length in the address's own family (0...32 or 0...128).
    public let length: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress(String(parts[0])) else { return nil }
        let maximum = address.isIPv4 ? 32 : 128
        var length = maximum
        if parts.count == 2 {
            guard let n = Int(parts[1]), (0...maximum).contains(n), parts[1].allSatisfy(\.isASCII) else { return nil }
            length = n
        }
        self.length = length
        network = address.keepingFirst(address.isIPv4 ? 96 + length : length)
    }

    /// Whether `address` lies in the prefix (and is of its family).
    public func contains(_ address: IPAddress) -> Bool {
        guard address.isIPv4 == network.isIPv4 else { return false }
        return address.keepingFirst(network.isIPv4 ? 96 + length : length) == network
    }

    public var description: String { "\(network)/\(length)" }
}
