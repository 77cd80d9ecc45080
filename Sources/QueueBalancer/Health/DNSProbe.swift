/// A `dns` probe's question and what counts as a good answer: by default a response with rcode NOERROR and at
/// least one record in its answer section; with `rcode`, a response with that rcode (records or not).
/// Defaults as keepalived's DNS_CHECK: the name `.` and the type SOA, so a probe of an authoritative or recursive
/// server needs nothing configured.
public struct DNSQuery: Sendable, Equatable, CustomStringConvertible {
    /// The name asked, absolute, without its final dot (`""` is the root).
    public var name: String = ""
    public var type: UInt16 = DNSQuery.types["SOA"]!
    /// The rcode a response must carry; nil: NOERROR with an answer.
    public var rcode: UInt8?
    /// Over TCP (two-byte length before the message) instead of UDP.
    public var overTCP = false

    public init() {}

    /// The record types known by name; others are given as numbers (`TYPE65` or `65`).
    public static let types: [String: UInt16] = [
        "A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33,
        "NAPTR": 35, "DS": 43, "DNSKEY": 48, "HTTPS": 65, "CAA": 257, "ANY": 255,
    ]
    public static let rcodes: [String: UInt8] = [
        "NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5,
    ]

    static func typeName(_ type: UInt16) -> String { types.first { $0.value == type }?.key ?? "TYPE\(type)" }
    static func rcodeName(_ rcode: UInt8) -> String { rcodes.first { $0.value == rcode }?.key ?? "RCODE\(rcode)" }

    /// A record type by name (any case) or number.
    public static func parseType(_ text: String) -> UInt16? {
        let upper = text.uppercased()
        if let known = types[upper] { return known }
        let digits = upper.hasPrefix("TYPE") ? String(upper.dropFirst(4)) : upper
        guard let n = UInt16(digits), n > 0 else { return nil }
        return n
    }

    /// An rcode by name (any case) or number (0-15).
    public static func parseRcode(_ text: String) -> UInt8? {
        if let known = rcodes[text.uppercased()] { return known }
        guard let n = UInt8(text), n < 16 else { return nil }
        return n
    }

    /// A name as the config writes it (`www.example`, `www.example.`, `.`), checked against DNS's limits:
    /// labels of 1-63 bytes, 255 bytes in all. Nil when it breaks them.
    public static func parseName(_ text: String) -> String? {
        let trimmed = text.hasSuffix(".") ? String(text.dropLast()) : text
        if trimmed.isEmpty { return text == "." ? "" : nil }
        let labels = trimmed.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.allSatisfy({ (1...63).contains($0.utf8.count) }), trimmed.utf8.count + 2 <= 255,
              !trimmed.contains(where: { $0 == " " || $0.isNewline }) else { return nil }
        return trimmed
    }

    public var description: String {
        "dns \(name.isEmpty ? "." : name) \(Self.typeName(type))" + (overTCP ? " over tcp" : "")
            + (rcode.map { " rcode \(Self.rcodeName($0))" } ?? ", an answer")
    }

    /// The query message (RFC 1035 4.1): header with `id` and recursion desired, one question, class IN.
    public func message(id: UInt16) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        bytes += Self.wireName(name)
        bytes += [UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
        return bytes
    }

    static func wireName(_ name: String) -> [UInt8] {
        var bytes: [UInt8] = []
        if !name.isEmpty {
            for label in name.split(separator: ".") {
                bytes.append(UInt8(label.utf8.count))
                bytes += label.utf8
            }
        }
        bytes.append(0)
        return bytes
    }

    /// What a message received means for a query with `id`: nil when it is not the response to it (another
    /// id, not a response, another question: keep waiting), else the probe's verdict.
    public func judge(response bytes: [UInt8], id: UInt16) -> ProbeResult? {
        guard bytes.count >= 12 else { return .failed("DNS response too short (\(bytes.count) bytes)") }
        guard UInt16(bytes[0]) << 8 | UInt16(bytes[1]) == id, bytes[2] & 0x80 != 0 else { return nil }
        let questions = Int(bytes[4]) << 8 | Int(bytes[5])
        let answers = Int(bytes[6]) << 8 | Int(bytes[7])
        let code = bytes[3] & 0x0F
        var reader = DNSReader(bytes: bytes, offset: 12)
        if questions > 0 {
            // The response repeats the question: it must be ours.
            guard let asked = reader.name(), let type = reader.uint16(), reader.uint16() != nil else {
                return .failed("DNS response malformed (question)")
            }
            guard asked.lowercased() == name.lowercased(), type == self.type else { return nil }
            for _ in 1..<questions {
                guard reader.name() != nil, reader.uint16() != nil, reader.uint16() != nil else {
                    return .failed("DNS response malformed (question)")
                }
            }
        }
        for _ in 0..<answers {
            guard reader.name() != nil, reader.skip(8), let length = reader.uint16(), reader.skip(Int(length)) else {
                return .failed("DNS response malformed (answer records)")
            }
        }
        if let rcode {
            return code == rcode ? .ok("DNS rcode \(Self.rcodeName(code))")
                : .failed("DNS rcode \(Self.rcodeName(code)), expected \(Self.rcodeName(rcode))")
        }
        guard code == 0 else { return .failed("DNS rcode \(Self.rcodeName(code))") }
        guard answers > 0 else { return .failed("DNS answer empty (NOERROR, no \(Self.typeName(type)) records)") }
        return .ok("DNS NOERROR, \(answers) answer\(answers == 1 ? "" : "s")")
    }
}

/// Reads a DNS message's fields in place, bounds-checked: any read past the end, or a compression pointer that
/// does not point back, gives nil.
struct DNSReader {
    let bytes: [UInt8]
    var offset: Int

    mutating func uint16() -> UInt16? {
        guard offset + 2 <= bytes.count else { return nil }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    mutating func skip(_ count: Int) -> Bool {
        guard offset + count <= bytes.count else { return false }
        offset += count
        return true
    }

    /// A name, following compression pointers (each must point before the one that led to it, so a loop is
    /// impossible); the reader moves past the name's bytes at this place.
    mutating func name() -> String? {
        var labels: [String] = []
        var position = offset
        var end: Int?
        var length = 0
        while true {
            guard position < bytes.count else { return nil }
            let byte = bytes[position]
            if byte == 0 {
                if end == nil { end = position + 1 }
                break
            }
            switch byte & 0xC0 {
            case 0xC0:
                guard position + 1 < bytes.count else { return nil }
                let target = Int(byte & 0x3F) << 8 | Int(bytes[position + 1])
                guard target < position else { return nil }
                if end == nil { end = position + 2 }
                position = target
            case 0x00:
                let count = Int(byte)
                guard position + 1 + count <= bytes.count else { return nil }
                length += count + 1
                guard length <= 255 else { return nil }
                labels.append(String(decoding: bytes[(position + 1)..<(position + 1 + count)], as: UTF8.self))
                position += 1 + count
            default:
                return nil  // 0x40 and 0x80: extended label types, not used in answers
            }
        }
        offset = end!
        return labels.joined(separator: ".")
    }
}
