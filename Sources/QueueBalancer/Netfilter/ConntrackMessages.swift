/// ctnetlink, the kernel's conntrack over netlink (NFNL_SUBSYS_CTNETLINK), as far as the conntrack fast path
/// needs it: the events of the kernel's connections (new, update, destroy), a dump of all of them, and the
/// deletion of one connection, and the creation of a DR connection by the datapath (``ConntrackWriter``). Parsed and built in Swift like the queue's messages
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
    static let timeout: UInt16 = 7
    static let countersOriginal: UInt16 = 9, countersReply: UInt16 = 10, id: UInt16 = 12
    // enum ctattr_tuple, ctattr_ip, ctattr_l4proto
    static let tupleIP: UInt16 = 1, tupleProto: UInt16 = 2
    static let ipv4Source: UInt16 = 1, ipv4Destination: UInt16 = 2, ipv6Source: UInt16 = 3, ipv6Destination: UInt16 = 4
    static let protoNumber: UInt16 = 1, protoSourcePort: UInt16 = 2, protoDestinationPort: UInt16 = 3
    // enum ctattr_protoinfo, ctattr_protoinfo_tcp, ctattr_counters
    static let protoInfoTCP: UInt16 = 1, tcpState: UInt16 = 1
    static let tcpFlagsOriginal: UInt16 = 4, tcpFlagsReply: UInt16 = 5
    /// IP_CT_TCP_FLAG_BE_LIBERAL: no window checks (struct nf_ct_tcp_flags: flags, then mask).
    static let tcpBeLiberal: UInt8 = 0x08
    static let counterPackets: UInt16 = 1, counterBytes: UInt16 = 2
    /// enum tcp_conntrack: the state in which a connection counts as active (ActiveConn).
    static let tcpEstablished: UInt8 = 3
    /// enum tcp_conntrack: the state nfqlb creates a DR connection in (the next packet, the client's ACK,
    /// makes it ESTABLISHED).
    static let tcpSynReceived: UInt8 = 2

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

/// Writes ctnetlink messages into a caller's buffer, allocation-free: a netlink header, the nfgenmsg header,
/// then attributes. The control path's requests (``ConntrackRequest``) and the datapath's (``ConntrackWriter``)
/// are both written with it. The caller leaves room: ``largestMessage`` bytes per message at most.
struct ConntrackMessageWriter {
    private let base: UnsafeMutableRawPointer
    let capacity: Int
    private(set) var used = 0
    private var start = 0

    /// The longest message nfqlb writes (an IPv6 connection: two tuples, protoinfo, timeout, mark).
    static let largestMessage = 256

    init(_ buffer: UnsafeMutableRawBufferPointer) {
        base = buffer.baseAddress!
        capacity = buffer.count
    }

    var remaining: Int { capacity - used }

    /// Starts a message of `message` type with `flags` for `family` (0: every family), sequence `sequence`.
    mutating func begin(_ message: UInt16, flags: UInt16, family: UInt8 = 0, sequence: UInt32) {
        start = used
        put32(0)                                                      // length, set by `end`
        put16(ConntrackLayout.messageType(message))
        put16(ConntrackLayout.flagRequest | flags)
        put32(sequence)
        put32(0)                                                      // port id: the kernel
        putBytes([family, 0, 0, 0])                                   // nfgenmsg: family, version 0, res_id 0
    }

    /// Ends the message begun last: its length.
    mutating func end() {
        base.storeBytes(of: UInt32(used - start).littleEndian, toByteOffset: start, as: UInt32.self)
    }

    mutating func attribute(_ type: UInt16, bigEndian32 value: UInt32) {
        header(type, 4)
        base.storeBytes(of: value.bigEndian, toByteOffset: used, as: UInt32.self)
        used += 4
    }

    mutating func attribute(_ type: UInt16, bigEndian64 value: UInt64) {
        header(type, 8)
        base.storeBytes(of: value.bigEndian, toByteOffset: used, as: UInt64.self)
        used += 8
    }

    mutating func attribute(_ type: UInt16, bigEndian16 value: UInt16) {
        header(type, 2)
        base.storeBytes(of: value.bigEndian, toByteOffset: used, as: UInt16.self)
        used += 2
        pad()
    }

    /// A two-byte attribute (struct nf_ct_tcp_flags).
    mutating func attribute(_ type: UInt16, byte first: UInt8, _ second: UInt8) {
        header(type, 2)
        base.storeBytes(of: first, toByteOffset: used, as: UInt8.self)
        base.storeBytes(of: second, toByteOffset: used + 1, as: UInt8.self)
        used += 2
        pad()
    }

    mutating func attribute(_ type: UInt16, byte value: UInt8) {
        header(type, 1)
        base.storeBytes(of: value, toByteOffset: used, as: UInt8.self)
        used += 1
        pad()
    }

    mutating func attribute(_ type: UInt16, address: IPAddress, family: IPFamily) {
        let length = family == .v4 ? 4 : 16
        header(type, length)
        UnsafeMutableRawBufferPointer(start: base + used, count: length).store(address, family: family, at: 0)
        used += length
    }

    /// A nested attribute holding what `body` writes.
    mutating func nest(_ type: UInt16, _ body: (inout ConntrackMessageWriter) -> Void) {
        let at = used
        header(type | ConntrackLayout.nested, 0)
        body(&self)
        base.storeBytes(of: UInt16(used - at).littleEndian, toByteOffset: at, as: UInt16.self)
    }

    /// A CTA_TUPLE_* attribute: addresses, protocol and ports of `key`.
    mutating func tuple(_ type: UInt16, _ key: FlowKey) {
        let family = IPFamily(of: key.source.address)
        nest(type) { writer in
            writer.nest(ConntrackLayout.tupleIP) { writer in
                let (source, destination) = family == .v4
                    ? (ConntrackLayout.ipv4Source, ConntrackLayout.ipv4Destination)
                    : (ConntrackLayout.ipv6Source, ConntrackLayout.ipv6Destination)
                writer.attribute(source, address: key.source.address, family: family)
                writer.attribute(destination, address: key.destination.address, family: family)
            }
            writer.nest(ConntrackLayout.tupleProto) { writer in
                writer.attribute(ConntrackLayout.protoNumber, byte: key.transport.rawValue)
                writer.attribute(ConntrackLayout.protoSourcePort, bigEndian16: key.source.port)
                writer.attribute(ConntrackLayout.protoDestinationPort, bigEndian16: key.destination.port)
            }
        }
    }

    /// Deletes the connection whose original tuple is `original`.
    mutating func delete(_ original: FlowKey, sequence: UInt32, flags: UInt16) {
        begin(ConntrackLayout.messageDelete, flags: flags, family: Self.family(original), sequence: sequence)
        tuple(ConntrackLayout.tupleOriginal, original)
        end()
    }

    /// Creates a TCP connection in state SYN_RECV for `original` (client -> VIP, replies VIP -> client) with
    /// `mark`, expiring after `timeout` seconds unless a packet moves it on (DR on the conntrack fast path:
    /// the client's ACK makes it ESTABLISHED). Both directions are "be liberal": the kernel sees neither the
    /// handshake's window scaling nor the real server's packets, so its window checks would call a bulk
    /// sender's segments invalid (as it does itself for a connection it picks up mid-stream).
    mutating func createHalfOpen(_ original: FlowKey, mark: Fwmark, timeout: UInt32, sequence: UInt32) {
        begin(ConntrackLayout.messageNew, flags: ConntrackLayout.flagCreate | ConntrackLayout.flagExclusive,
              family: Self.family(original), sequence: sequence)
        tuple(ConntrackLayout.tupleOriginal, original)
        tuple(ConntrackLayout.tupleReply, FlowKey(source: original.destination, destination: original.source,
                                                  transport: original.transport))
        nest(ConntrackLayout.protoInfo) { writer in
            writer.nest(ConntrackLayout.protoInfoTCP) { writer in
                writer.attribute(ConntrackLayout.tcpState, byte: ConntrackLayout.tcpSynReceived)
                writer.attribute(ConntrackLayout.tcpFlagsOriginal, byte: ConntrackLayout.tcpBeLiberal, ConntrackLayout.tcpBeLiberal)
                writer.attribute(ConntrackLayout.tcpFlagsReply, byte: ConntrackLayout.tcpBeLiberal, ConntrackLayout.tcpBeLiberal)
            }
        }
        attribute(ConntrackLayout.timeout, bigEndian32: timeout)
        attribute(ConntrackLayout.mark, bigEndian32: mark.rawValue)
        end()
    }

    private static func family(_ key: FlowKey) -> UInt8 {
        IPFamily(of: key.source.address) == .v4 ? 2 : 10              // AF_INET, AF_INET6
    }

    private mutating func header(_ type: UInt16, _ length: Int) {
        put16(UInt16(4 + length))
        put16(type)
    }

    private mutating func pad() {
        while used % 4 != 0 {
            base.storeBytes(of: UInt8(0), toByteOffset: used, as: UInt8.self)
            used += 1
        }
    }

    private mutating func put16(_ value: UInt16) {
        base.storeBytes(of: value.littleEndian, toByteOffset: used, as: UInt16.self)
        used += 2
    }

    private mutating func put32(_ value: UInt32) {
        base.storeBytes(of: value.littleEndian, toByteOffset: used, as: UInt32.self)
        used += 4
    }

    private mutating func putBytes(_ bytes: InlineArray<4, UInt8>) {
        for i in bytes.indices { base.storeBytes(of: bytes[i], toByteOffset: used + i, as: UInt8.self) }
        used += bytes.count
    }
}

/// One ctnetlink request of the control path, in a byte array: a dump, a deletion (a request now and then,
/// never per packet).
struct ConntrackRequest {
    let bytes: [UInt8]

    /// A message written by `body` (``ConntrackMessageWriter``: begin, attributes, end).
    init(_ body: (inout ConntrackMessageWriter) -> Void) {
        var storage = [UInt8](repeating: 0, count: 2 * ConntrackMessageWriter.largestMessage)
        let used = storage.withUnsafeMutableBytes { raw in
            var writer = ConntrackMessageWriter(raw)
            body(&writer)
            return writer.used
        }
        bytes = Array(storage[..<used])
    }

    /// Dump every connection of the kernel.
    static func dump(sequence: UInt32) -> ConntrackRequest {
        ConntrackRequest { writer in
            writer.begin(ConntrackLayout.messageGet, flags: ConntrackLayout.flagDump, sequence: sequence)
            writer.end()
        }
    }

    /// Delete the connection whose original tuple is `original`, with an acknowledgement.
    static func delete(_ original: FlowKey, sequence: UInt32) -> ConntrackRequest {
        ConntrackRequest { $0.delete(original, sequence: sequence, flags: ConntrackLayout.flagAck) }
    }
}
