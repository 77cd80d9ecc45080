import COpenSSL

/// The connection-sync messages balancers send each other, in the spirit of IPVS's sync daemon: batches of
/// connection adds, updates and removals in UDP datagrams, each authenticated with HMAC-SHA256 under a shared key
/// and numbered, so that a balancer taking over a flow finds its connection (docs/ARCHITECTURE.md, "Several
/// balancers"). This file is the wire format and its checks; pure, no sockets.
///
/// A message (network byte order):
///
///     magic "NQSY" | version 1 | reserved (3) | sender (4) | epoch (8) | sequence (8) | count (2) | records |
///     HMAC-SHA256 of everything before it (32)
///
/// `epoch` is the sender's start time in ms (a restarted sender starts a newer epoch), `sequence` counts its
/// messages within the epoch. A record is ``SyncRecord/size`` bytes.
public struct SyncMessage: Sendable, Equatable {
    public var sender: UInt32
    public var epoch: UInt64
    public var sequence: UInt64
    public var records: [SyncRecord]

    public init(sender: UInt32, epoch: UInt64, sequence: UInt64, records: [SyncRecord]) {
        self.sender = sender
        self.epoch = epoch
        self.sequence = sequence
        self.records = records
    }

    static let magic: [UInt8] = Array("NQSY".utf8)
    static let version: UInt8 = 1
    static let headerSize = 4 + 4 + 4 + 8 + 8 + 2
    static let tagSize = 32
    /// Records per message: a datagram stays within 1,400 bytes (no fragmentation on a 1,500-byte path).
    public static let maximumRecords = (1400 - headerSize - tagSize) / SyncRecord.size

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case tooShort, notSync, version(UInt8), reserved, length, authentication, record(Int)

        public var description: String {
            switch self {
            case .tooShort: "too short"
            case .notSync: "not a sync message"
            case .version(let v): "version \(v) not understood"
            case .reserved: "reserved bytes are not zero"
            case .length: "its length does not match its record count"
            case .authentication: "authentication failed (another key, or altered)"
            case .record(let i): "record \(i) malformed"
            }
        }
    }

    /// The datagram, tagged with `key`. At most ``maximumRecords`` records.
    public func encoded(key: [UInt8]) -> [UInt8] {
        precondition(records.count <= Self.maximumRecords, "split records into messages of at most maximumRecords")
        var bytes = Self.magic + [Self.version, 0, 0, 0]
        bytes.appendBigEndian(sender)
        bytes.appendBigEndian(epoch)
        bytes.appendBigEndian(sequence)
        bytes.appendBigEndian(UInt16(records.count))
        for record in records { record.append(to: &bytes) }
        bytes += Self.tag(bytes[...], key: key)
        return bytes
    }

    /// The message in `bytes`, checked: its tag under `key` first (nothing else is read from an unauthenticated
    /// message), then its records.
    public static func decode(_ bytes: [UInt8], key: [UInt8]) -> Result<SyncMessage, Failure> {
        guard bytes.count >= headerSize + tagSize else { return .failure(.tooShort) }
        guard Array(bytes[0..<4]) == magic else { return .failure(.notSync) }
        let body = bytes[0..<(bytes.count - tagSize)]
        let expected = tag(body, key: key)
        let received = Array(bytes[(bytes.count - tagSize)...])
        guard expected.withUnsafeBytes({ e in received.withUnsafeBytes { r in CRYPTO_memcmp(e.baseAddress, r.baseAddress, tagSize) } }) == 0 else {
            return .failure(.authentication)
        }
        guard bytes[4] == version else { return .failure(.version(bytes[4])) }
        guard bytes[5] == 0, bytes[6] == 0, bytes[7] == 0 else { return .failure(.reserved) }
        var reader = SyncFieldReader(bytes: body, offset: 8)
        let sender = reader.uint32()!, epoch = reader.uint64()!, sequence = reader.uint64()!
        let count = Int(reader.uint16()!)
        guard body.count == headerSize + count * SyncRecord.size else { return .failure(.length) }
        var records: [SyncRecord] = []
        records.reserveCapacity(count)
        for index in 0..<count {
            guard let record = SyncRecord(&reader) else { return .failure(.record(index)) }
            records.append(record)
        }
        return .success(SyncMessage(sender: sender, epoch: epoch, sequence: sequence, records: records))
    }

    static func tag(_ data: ArraySlice<UInt8>, key: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        data.withUnsafeBytes { d in
            key.withUnsafeBytes { k in
                _ = HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress?.assumingMemoryBound(to: UInt8.self), d.count, &out, &length)
            }
        }
        return Array(out.prefix(Int(length)))
    }
}

/// One connection as the sync carries it: what a balancer needs to forward the flow's next packets exactly as
/// the sender did.
public struct SyncRecord: Sendable, Equatable {
    public enum Operation: UInt8, Sendable {
        /// A new connection, or a change of its state (and its lifetime from now).
        case update = 1
        /// The connection ended or was forgotten.
        case remove = 2
    }

    public var operation: Operation
    public var transport: TransportProtocol
    public var state: ConnectionState
    public var client: Endpoint
    public var virtual: Endpoint
    public var real: Endpoint
    /// FULLNAT: the local endpoint the real server sees; nil otherwise.
    public var local: Endpoint?
    /// How long the connection lives from when the message was sent, in ms.
    public var lifetime: UInt32

    public init(operation: Operation, transport: TransportProtocol, state: ConnectionState, client: Endpoint,
                virtual: Endpoint, real: Endpoint, local: Endpoint? = nil, lifetime: UInt32) {
        self.operation = operation
        self.transport = transport
        self.state = state
        self.client = client
        self.virtual = virtual
        self.real = real
        self.local = local
        self.lifetime = lifetime
    }

    /// op, protocol, state, flags (bit 0: has a local endpoint), four endpoints of 18 bytes, lifetime.
    public static let size = 4 + 4 * 18 + 4

    func append(to bytes: inout [UInt8]) {
        bytes += [operation.rawValue, transport == .tcp ? 6 : 17, state.rawValue, local == nil ? 0 : 1]
        for endpoint in [client, virtual, real, local ?? Endpoint(address: IPAddress(high: 0, low: 0), port: 0)] {
            bytes.appendBigEndian(endpoint.address.high)
            bytes.appendBigEndian(endpoint.address.low)
            bytes.appendBigEndian(endpoint.port)
        }
        bytes.appendBigEndian(lifetime)
    }

    init?(_ reader: inout SyncFieldReader) {
        guard let op = reader.uint8().flatMap(Operation.init(rawValue:)), let proto = reader.uint8(),
              let state = reader.uint8().flatMap(ConnectionState.init(rawValue:)), let flags = reader.uint8(),
              proto == 6 || proto == 17, flags <= 1 else { return nil }
        var endpoints: [Endpoint] = []
        for _ in 0..<4 {
            guard let high = reader.uint64(), let low = reader.uint64(), let port = reader.uint16() else { return nil }
            endpoints.append(Endpoint(address: IPAddress(high: high, low: low), port: port))
        }
        guard let lifetime = reader.uint32() else { return nil }
        let transport: TransportProtocol = proto == 6 ? .tcp : .udp
        // One family per connection, except the real server's (TUN may cross families); UDP has one state; no
        // local endpoint means zeros there (each message has exactly one encoding).
        guard endpoints[0].address.isIPv4 == endpoints[1].address.isIPv4, (transport == .udp) == (state == .udp),
              flags == 1 || endpoints[3] == Endpoint(address: IPAddress(high: 0, low: 0), port: 0) else { return nil }
        self.init(operation: op, transport: transport, state: state, client: endpoints[0], virtual: endpoints[1],
                  real: endpoints[2], local: flags == 1 ? endpoints[3] : nil, lifetime: lifetime)
    }
}

/// Which sync messages a receiver takes: per sender, only its newest epoch, and within it each sequence number
/// once, newer than the 64 before the highest seen (IPsec's anti-replay window). A recorded message sent again,
/// or one of an earlier run of the sender, is refused.
public struct SyncReplayWindow: Sendable {
    private var senders: [UInt32: (epoch: UInt64, highest: UInt64, seen: UInt64)] = [:]

    public init() {}

    /// Whether to take this message; when true it is recorded as seen.
    public mutating func accept(sender: UInt32, epoch: UInt64, sequence: UInt64) -> Bool {
        guard let known = senders[sender], epoch <= known.epoch else {
            // First message of this sender, or of a newer run of it.
            senders[sender] = (epoch, sequence, 1)
            return true
        }
        guard epoch == known.epoch else { return false }
        if sequence > known.highest {
            let shift = sequence - known.highest
            senders[sender] = (epoch, sequence, shift >= 64 ? 1 : (known.seen << shift) | 1)
            return true
        }
        let age = known.highest - sequence
        guard age < 64, known.seen & (1 << age) == 0 else { return false }
        senders[sender] = (epoch, known.highest, known.seen | (1 << age))
        return true
    }
}

/// Reads big-endian fields in order, bounds-checked (nil past the end).
struct SyncFieldReader {
    let bytes: ArraySlice<UInt8>
    var offset: Int

    init(bytes: ArraySlice<UInt8>, offset: Int = 0) {
        self.bytes = bytes
        self.offset = bytes.startIndex + offset
    }

    private mutating func read(_ count: Int) -> UInt64? {
        guard offset + count <= bytes.endIndex else { return nil }
        var value: UInt64 = 0
        for i in 0..<count { value = value << 8 | UInt64(bytes[offset + i]) }
        offset += count
        return value
    }

    mutating func uint8() -> UInt8? { read(1).map { UInt8($0) } }
    mutating func uint16() -> UInt16? { read(2).map { UInt16($0) } }
    mutating func uint32() -> UInt32? { read(4).map { UInt32($0) } }
    mutating func uint64() -> UInt64? { read(8) }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}
