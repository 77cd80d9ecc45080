/// Parsing of the kernel's NFQNL_MSG_PACKET messages and building of NFQNL_MSG_VERDICT messages, in Swift over
/// raw buffers (a fifth to a quarter of the instructions of libmnl's callbacks, docs/ARCHITECTURE.md "Kernel
/// facts"). Layouts: `struct nlmsghdr` (16 bytes, host order), `struct nfgenmsg` (4 bytes), then netlink
/// attributes (`nla_len`, `nla_type`, value padded to 4 bytes); attribute values of nfnetlink_queue are
/// big-endian. The numbers are checked against the C headers by the unit tests (`NetlinkLayoutTests`).
enum NetlinkLayout {
    static let headerLength = 16
    static let nfgenLength = 4
    static let attributesOffset = headerLength + nfgenLength
    static let packetMessageType: UInt16 = 3 << 8 | 0   // NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
    static let verdictMessageType: UInt16 = 3 << 8 | 1  // NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT
    static let attributePacketHeader: UInt16 = 1        // NFQA_PACKET_HDR
    static let attributeVerdictHeader: UInt16 = 2       // NFQA_VERDICT_HDR
    static let attributeMark: UInt16 = 3                // NFQA_MARK
    static let attributePayload: UInt16 = 10            // NFQA_PAYLOAD
    static let attributeSKBInfo: UInt16 = 14            // NFQA_SKB_INFO
    static let requestFlag: UInt16 = 1                  // NLM_F_REQUEST

    static func align(_ n: Int) -> Int { (n + 3) & ~3 }
}

/// What the kernel says about a queued packet's buffer (NFQA_SKB_INFO), when the queue has NFQA_CFG_F_GSO.
public struct PacketInfo: OptionSet, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The transport checksum is not finished (CHECKSUM_PARTIAL): its field holds only the pseudo-header sum
    /// (NFQA_SKB_CSUMNOTREADY). Without F_GSO the kernel finishes it before queueing.
    public static let checksumNotReady = PacketInfo(rawValue: 1 << 0)
    /// A GSO super-packet: many segments in one, which the kernel splits (and checksums) on the way out
    /// (NFQA_SKB_GSO).
    public static let gso = PacketInfo(rawValue: 1 << 1)
}

/// One queued packet inside a received message: its id, its bytes (a slice of the receive buffer) and what
/// the kernel says about them.
public struct PacketMessage {
    public var packetID: UInt32
    public var payload: UnsafeMutableRawBufferPointer
    public var info: PacketInfo = []

    /// Reads the packet id and payload out of one netlink message; nil for anything else (errors, other
    /// message types, messages that are truncated). Lengths are validated before any load.
    public static func parse(_ message: UnsafeMutableRawBufferPointer) -> PacketMessage? {
        let total = message.count
        guard total >= NetlinkLayout.attributesOffset else { return nil }
        let raw = UnsafeRawBufferPointer(message)
        let length = Int(raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let type = raw.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
        guard type == NetlinkLayout.packetMessageType, length >= NetlinkLayout.attributesOffset, length <= total else {
            return nil
        }
        var offset = NetlinkLayout.attributesOffset
        var id: UInt32?
        var payload: UnsafeMutableRawBufferPointer?
        var info = PacketInfo()
        while offset + 4 <= length {
            let attributeLength = Int(raw.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
            let attributeType = raw.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3FFF
            guard attributeLength >= 4, offset + attributeLength <= length else { return nil }
            let valueStart = offset + 4
            let valueLength = attributeLength - 4
            switch attributeType {
            case NetlinkLayout.attributePacketHeader where valueLength >= 4:
                id = UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: valueStart, as: UInt32.self))
            case NetlinkLayout.attributePayload:
                payload = UnsafeMutableRawBufferPointer(rebasing: message[valueStart..<(valueStart + valueLength)])
            case NetlinkLayout.attributeSKBInfo where valueLength >= 4:
                info = PacketInfo(rawValue: UInt32(bigEndian: raw.loadUnaligned(fromByteOffset: valueStart, as: UInt32.self)))
            default:
                break
            }
            offset += NetlinkLayout.align(attributeLength)
        }
        guard let id else { return nil }
        return PacketMessage(packetID: id, payload: payload ?? UnsafeMutableRawBufferPointer(start: nil, count: 0),
                             info: info)
    }
}

/// Accumulates the verdicts of a batch in one preallocated buffer so they leave in a single `sendto(2)`.
///
/// Invariant: `used <= limit`; ``append(queue:packetID:verdict:payload:)`` reports `false` when the message
/// would not fit, and the caller sends what is there first. `limit` stays well below the socket's send
/// buffer: an oversized send fails with EMSGSIZE and loses every verdict in it (docs/ARCHITECTURE.md).
public final class VerdictWriter {
    public let limit: Int
    private let buffer: UnsafeMutableRawPointer
    public private(set) var used = 0
    /// Number of verdicts in the buffer.
    public private(set) var count = 0

    public init(limit: Int) {
        self.limit = limit
        buffer = .allocate(byteCount: limit, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// The bytes to send.
    public var bytes: UnsafeRawPointer { UnsafeRawPointer(buffer) }

    public func reset() {
        used = 0
        count = 0
    }

    /// The kernel verdict codes.
    public enum Code: UInt32 {
        case drop = 0    // NF_DROP
        case accept = 1  // NF_ACCEPT
        case `repeat` = 4  // NF_REPEAT: the packet goes through its hook again
    }

    /// Appends one NFQNL_MSG_VERDICT message; with a payload (`prefix` then `payload`) the kernel replaces the
    /// packet by it. Returns false (and appends nothing) when it would not fit.
    @discardableResult
    public func append(queue: QueueNumber, packetID: UInt32, verdict: Code, prefix: UnsafeRawBufferPointer? = nil,
                       payload: UnsafeRawBufferPointer? = nil, mark: Fwmark? = nil) -> Bool {
        let prefixLength = prefix?.count ?? 0
        let payloadLength = prefixLength + (payload?.count ?? 0)
        let hasPayload = prefix != nil || payload != nil
        guard payloadLength <= 0xFFFF - 4 else { return false }   // nla_len is 16 bits
        var length = NetlinkLayout.attributesOffset + 12
        if mark != nil { length += 8 }
        if hasPayload { length += NetlinkLayout.align(4 + payloadLength) }
        guard used + length <= limit else { return false }
        let p = buffer + used
        p.storeBytes(of: UInt32(length), toByteOffset: 0, as: UInt32.self)
        p.storeBytes(of: NetlinkLayout.verdictMessageType, toByteOffset: 4, as: UInt16.self)
        p.storeBytes(of: NetlinkLayout.requestFlag, toByteOffset: 6, as: UInt16.self)
        p.storeBytes(of: UInt32(0), toByteOffset: 8, as: UInt32.self)   // sequence
        p.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)  // port id: the kernel
        p.storeBytes(of: UInt8(0), toByteOffset: 16, as: UInt8.self)    // AF_UNSPEC
        p.storeBytes(of: UInt8(0), toByteOffset: 17, as: UInt8.self)    // NFNETLINK_V0
        p.storeBytes(of: queue.rawValue.bigEndian, toByteOffset: 18, as: UInt16.self)
        var offset = NetlinkLayout.attributesOffset
        p.storeBytes(of: UInt16(12), toByteOffset: offset, as: UInt16.self)
        p.storeBytes(of: NetlinkLayout.attributeVerdictHeader, toByteOffset: offset + 2, as: UInt16.self)
        p.storeBytes(of: verdict.rawValue.bigEndian, toByteOffset: offset + 4, as: UInt32.self)
        p.storeBytes(of: packetID.bigEndian, toByteOffset: offset + 8, as: UInt32.self)
        offset += 12
        if let mark {
            p.storeBytes(of: UInt16(8), toByteOffset: offset, as: UInt16.self)
            p.storeBytes(of: NetlinkLayout.attributeMark, toByteOffset: offset + 2, as: UInt16.self)
            p.storeBytes(of: mark.rawValue.bigEndian, toByteOffset: offset + 4, as: UInt32.self)
            offset += 8
        }
        if hasPayload {
            p.storeBytes(of: UInt16(4 + payloadLength), toByteOffset: offset, as: UInt16.self)
            p.storeBytes(of: NetlinkLayout.attributePayload, toByteOffset: offset + 2, as: UInt16.self)
            if let prefix, let base = prefix.baseAddress {
                (p + offset + 4).copyMemory(from: base, byteCount: prefixLength)
            }
            if let payload, let base = payload.baseAddress {
                (p + offset + 4 + prefixLength).copyMemory(from: base, byteCount: payload.count)
            }
            let padded = NetlinkLayout.align(4 + payloadLength)
            if padded > 4 + payloadLength {
                (p + offset + 4 + payloadLength).initializeMemory(as: UInt8.self, repeating: 0,
                                                                  count: padded - 4 - payloadLength)
            }
        }
        used += length
        count += 1
        return true
    }
}
