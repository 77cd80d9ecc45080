/// ctnetlink, the kernel's conntrack over netlink (NFNL_SUBSYS_CTNETLINK), as far as the conntrack fast path
/// needs it: the events of the kernel's connections (new, update, destroy), a dump of all of them, and the
/// deletion of one connection. Parsed and built in Swift like the queue's messages
/// (``NetlinkLayout``); the numbers are checked against the kernel's headers by the unit tests.
enum ConntrackLayout {
    static let subsystem: UInt16 = 1              // NFNL_SUBSYS_CTNETLINK
    static let messageNew: UInt16 = 0             // IPCTNL_MSG_CT_NEW: an event (new or update), a dumped entry
    static let messageGet: UInt16 = 1             // IPCTNL_MSG_CT_GET
    static let messageDelete: UInt16 = 2          // IPCTNL_MSG_CT_DELETE: a destroy event, or a deletion
    /// Multicast groups, as bits of the socket's group mask (group N is bit N - 1).
    static let groupNew: UInt32 = 1, groupUpdate: UInt32 = 2, groupDestroy: UInt32 = 3

    // enum ctattr_type
    static let tupleOriginal: UInt16 = 1, tupleReply: UInt16 = 2, protoInfo: UInt16 = 4, mark: UInt16 = 8
    static let countersOriginal: UInt16 = 9, countersReply: UInt16 = 10, id: UInt16 = 12
    // enum ctattr_tuple, ctattr_ip, ctattr_l4proto
    static let tupleIP: UInt16 = 1, tupleProto: UInt16 = 2
    static let ipv4Source: UInt16 = 1, ipv4Destination: UInt16 = 2, ipv6Source: UInt16 = 3, ipv6Destination: UInt16 = 4
    static let protoNumber: UInt16 = 1, protoSourcePort: UInt16 = 2, protoDestinationPort: UInt16 = 3
    // enum ctattr_protoinfo, ctattr_protoinfo_tcp, ctattr_counters
    static let protoInfoTCP: UInt16 = 1, tcpState: UInt16 = 1
    static let counterPackets: UInt16 = 1, counterBytes: UInt16 = 2
    /// enum tcp_conntrack: the state in which a connection counts as active (ActiveConn).
    static let tcpEstablished: UInt8 = 3

    static let flagRequest: UInt16 = 0x1, flagMulti: UInt16 = 0x2, flagAck: UInt16 = 0x4
    static let flagExclusive: UInt16 = 0x200, flagCreate: UInt16 = 0x400, flagDump: UInt16 = 0x300
    /// NLA_F_NESTED | NLA_F_NET_BYTEORDER: flag bits of an attribute's type.
    static let attributeTypeMask: UInt16 = 0x3FFF
    static let nested: UInt16 = 0x8000
    static let done: UInt16 = 3                   // NLMSG_DONE
    static let error: UInt16 = 2                  // NLMSG_ERROR

    static func messageType(_ message: UInt16) -> UInt16 { subsystem << 8 | message }
}

/// The netlink attributes in `bytes`: type (flags masked) and value, each checked against the buffer.
struct NetlinkAttributes: Sequence, IteratorProtocol {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Whether the attributes fill `bytes` exactly (each length within the buffer, the padding after the last
    /// one at most).
    static func isWellFormed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var offset = 0
        while offset + 4 <= bytes.count {
            let length = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            guard length >= 4, offset + length <= bytes.count else { return false }
            offset += NetlinkLayout.align(length)
        }
        return offset >= bytes.count
    }

    mutating func next() -> (type: UInt16, value: UnsafeRawBufferPointer)? {
        guard offset + 4 <= bytes.count else { return nil }
        let length = Int(bytes.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
        let type = bytes.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & ConntrackLayout.attributeTypeMask
        guard length >= 4, offset + length <= bytes.count else { return nil }
        let value = UnsafeRawBufferPointer(rebasing: bytes[(offset + 4)..<(offset + length)])
        offset += NetlinkLayout.align(length)
        return (type, value)
    }
}

/// One of the kernel's connections, as an event or a dump reports it.
struct ConntrackEntry: Equatable, Sendable {
    enum Kind: Sendable { case new, update, destroy }

    var kind: Kind
    /// The connection as its first packet went: client -> VIP.
    var original: FlowKey
    /// How the answers come: real server -> client (NAT), -> local address (FULLNAT), VIP -> client (DR).
    var reply: FlowKey
    var mark: Fwmark
    var id: UInt32
    /// TCP: the state (enum tcp_conntrack); nil for UDP, or when the message did not carry it.
    var tcpState: UInt8?
    /// With `nf_conntrack_acct`: packets and bytes each way, when the message carried them.
    var originalPackets: UInt64?, originalBytes: UInt64?, replyPackets: UInt64?, replyBytes: UInt64?

    /// A TCP connection in ESTABLISHED is active; every other one (handshake, closing, UDP) inactive.
    var isActive: Bool { tcpState == ConntrackLayout.tcpEstablished }

    /// The connection in one ctnetlink message (a whole netlink message, header included); nil for anything
    /// else, a protocol other than TCP and UDP, or a message cut short.
    static func parse(_ message: UnsafeRawBufferPointer) -> ConntrackEntry? {
        guard message.count >= NetlinkLayout.attributesOffset else { return nil }
        let length = Int(message.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let type = message.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        let flags = message.loadUnaligned(fromByteOffset: 6, as: UInt16.self)
        guard length >= NetlinkLayout.attributesOffset, length <= message.count else { return nil }
        let kind: Kind
        switch type {
        case ConntrackLayout.messageType(ConntrackLayout.messageNew):
            kind = flags & (ConntrackLayout.flagCreate | ConntrackLayout.flagExclusive) != 0 ? .new : .update
        case ConntrackLayout.messageType(ConntrackLayout.messageDelete):
            kind = .destroy
        default:
            return nil
        }
        var original: FlowKey?, reply: FlowKey?
        var entry = ConntrackEntry(kind: kind, original: .unspecified, reply: .unspecified, mark: 0, id: 0)
        let attributes = UnsafeRawBufferPointer(rebasing: message[NetlinkLayout.attributesOffset..<length])
        guard NetlinkAttributes.isWellFormed(attributes) else { return nil }
        for (attribute, value) in NetlinkAttributes(attributes) {
            switch attribute {
            case ConntrackLayout.tupleOriginal: original = tuple(value)
            case ConntrackLayout.tupleReply: reply = tuple(value)
            case ConntrackLayout.mark where value.count >= 4: entry.mark = Fwmark(rawValue: value.loadBigEndianUInt32(at: 0))
            case ConntrackLayout.id where value.count >= 4: entry.id = value.loadBigEndianUInt32(at: 0)
            case ConntrackLayout.protoInfo:
                for (info, tcp) in NetlinkAttributes(value) where info == ConntrackLayout.protoInfoTCP {
                    for (field, state) in NetlinkAttributes(tcp) where field == ConntrackLayout.tcpState && state.count >= 1 {
                        entry.tcpState = state[0]
                    }
                }
            case ConntrackLayout.countersOriginal:
                (entry.originalPackets, entry.originalBytes) = counters(value)
            case ConntrackLayout.countersReply:
                (entry.replyPackets, entry.replyBytes) = counters(value)
            default:
                break
            }
        }
        guard let original, let reply else { return nil }
        entry.original = original
        entry.reply = reply
        return entry
    }

    /// A CTA_TUPLE_* attribute's addresses, protocol and ports.
    private static func tuple(_ bytes: UnsafeRawBufferPointer) -> FlowKey? {
        var source: IPAddress?, destination: IPAddress?
        var transport: TransportProtocol?, sourcePort: UInt16?, destinationPort: UInt16?
        for (attribute, value) in NetlinkAttributes(bytes) {
            switch attribute {
            case ConntrackLayout.tupleIP:
                for (field, address) in NetlinkAttributes(value) {
                    switch (field, address.count) {
                    case (ConntrackLayout.ipv4Source, 4...): source = address.loadAddress(.v4, at: 0)
                    case (ConntrackLayout.ipv4Destination, 4...): destination = address.loadAddress(.v4, at: 0)
                    case (ConntrackLayout.ipv6Source, 16...): source = address.loadAddress(.v6, at: 0)
                    case (ConntrackLayout.ipv6Destination, 16...): destination = address.loadAddress(.v6, at: 0)
                    default: break
                    }
                }
            case ConntrackLayout.tupleProto:
                for (field, item) in NetlinkAttributes(value) {
                    switch (field, item.count) {
                    case (ConntrackLayout.protoNumber, 1...): transport = TransportProtocol(IPProtocolNumber(rawValue: item[0]))
                    case (ConntrackLayout.protoSourcePort, 2...): sourcePort = item.loadBigEndianUInt16(at: 0)
                    case (ConntrackLayout.protoDestinationPort, 2...): destinationPort = item.loadBigEndianUInt16(at: 0)
                    default: break
                    }
                }
            default:
                break
            }
        }
        guard let source, let destination, let transport, let sourcePort, let destinationPort else { return nil }
        return FlowKey(source: Endpoint(address: source, port: sourcePort),
                       destination: Endpoint(address: destination, port: destinationPort), transport: transport)
    }

    private static func counters(_ bytes: UnsafeRawBufferPointer) -> (UInt64?, UInt64?) {
        var packets: UInt64?, byteCount: UInt64?
        for (field, value) in NetlinkAttributes(bytes) where value.count >= 8 {
            if field == ConntrackLayout.counterPackets { packets = value.loadBigEndianUInt64(at: 0) }
            if field == ConntrackLayout.counterBytes { byteCount = value.loadBigEndianUInt64(at: 0) }
        }
        return (packets, byteCount)
    }
}

extension FlowKey {
    /// A placeholder while a message is read.
    static let unspecified = FlowKey(source: Endpoint(address: IPAddress(high: 0, low: 0), port: 0),
                                     destination: Endpoint(address: IPAddress(high: 0, low: 0), port: 0), transport: .tcp)
}

/// Builds ctnetlink requests: a netlink header, the nfgenmsg header, then attributes, in a byte array (the
/// control path: a request now and then, never per packet).
struct ConntrackRequest {
    private(set) var bytes: [UInt8] = []

    /// A request of `message` type with `flags` for `family` (0: every family), sequence `sequence`.
    init(_ message: UInt16, flags: UInt16, family: UInt8 = 0, sequence: UInt32) {
        append32(0)                                                   // length, set by `finish`
        append16(ConntrackLayout.messageType(message))
        append16(ConntrackLayout.flagRequest | flags)
        append32(sequence)
        append32(0)                                                   // port id: the kernel
        bytes += [family, 0, 0, 0]                                    // nfgenmsg: family, version 0, res_id 0
    }

    /// Dump every connection of the kernel.
    static func dump(sequence: UInt32) -> ConntrackRequest {
        var request = ConntrackRequest(ConntrackLayout.messageGet, flags: ConntrackLayout.flagDump, sequence: sequence)
        request.finish()
        return request
    }

    /// Delete the connection whose original tuple is `original`.
    static func delete(_ original: FlowKey, sequence: UInt32) -> ConntrackRequest {
        let family = IPFamily(of: original.source.address)
        var request = ConntrackRequest(ConntrackLayout.messageDelete, flags: ConntrackLayout.flagAck,
                                       family: family == .v4 ? 2 : 10, sequence: sequence)   // AF_INET, AF_INET6
        request.tuple(ConntrackLayout.tupleOriginal, original)
        request.finish()
        return request
    }

    private mutating func append16(_ value: UInt16) { bytes += withUnsafeBytes(of: value.littleEndian, Array.init) }
    private mutating func append32(_ value: UInt32) { bytes += withUnsafeBytes(of: value.littleEndian, Array.init) }
    static func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xFF)] }
    static func be32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.bigEndian, Array.init) }

    mutating func attribute(_ type: UInt16, _ value: [UInt8]) {
        append16(UInt16(4 + value.count))
        append16(type)
        bytes += value
        while bytes.count % 4 != 0 { bytes.append(0) }
    }

    mutating func attribute(_ type: UInt16, address: IPAddress, family: IPFamily) {
        var value = [UInt8](repeating: 0, count: family == .v4 ? 4 : 16)
        value.withUnsafeMutableBytes { $0.store(address, family: family, at: 0) }
        attribute(type, value)
    }

    /// A CTA_TUPLE_* attribute: addresses, protocol and ports of `key`.
    mutating func tuple(_ type: UInt16, _ key: FlowKey) {
        let family = IPFamily(of: key.source.address)
        nest(type) { request in
            request.nest(ConntrackLayout.tupleIP) { request in
                let (source, destination) = family == .v4
                    ? (ConntrackLayout.ipv4Source, ConntrackLayout.ipv4Destination)
                    : (ConntrackLayout.ipv6Source, ConntrackLayout.ipv6Destination)
                request.attribute(source, address: key.source.address, family: family)
                request.attribute(destination, address: key.destination.address, family: family)
            }
            request.nest(ConntrackLayout.tupleProto) { request in
                request.attribute(ConntrackLayout.protoNumber, [key.transport.rawValue])
                request.attribute(ConntrackLayout.protoSourcePort, Self.be16(key.source.port))
                request.attribute(ConntrackLayout.protoDestinationPort, Self.be16(key.destination.port))
            }
        }
    }

    mutating func nest(_ type: UInt16, _ body: (inout ConntrackRequest) -> Void) {
        let start = bytes.count
        append16(0)
        append16(type | ConntrackLayout.nested)
        body(&self)
        let length = UInt16(bytes.count - start)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: length.littleEndian, toByteOffset: start, as: UInt16.self) }
    }

    mutating func finish() {
        let length = UInt32(bytes.count)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: length.littleEndian, toByteOffset: 0, as: UInt32.self) }
    }
}
