import Foundation
import Glibc
import SystemPackage

/// What `nfqlb run --state-file` keeps across a restart (docs/ARCHITECTURE.md, "Restart"): the Swift path's
/// connections, the persistence templates, the flow hash's seed (a FULLNAT local port belongs to the lock
/// stripe its hash selects, so the new tracker must hash as the old one did), and the identity of every real
/// server they refer to (service, address, port, mode), since real-server numbers are handed out afresh.
///
/// Written on SIGTERM after the queues are unbound; read at start before they are bound, and deleted once read.
/// A file is ignored, with its reason, when it is of another format version, from another boot (expiry
/// times are the monotonic clock's), or of another table shape (`max-connections`, `fullnat-ports`: the
/// ``generation``). Connections to real servers the new configuration lacks are dropped.
public struct BalancerState: Equatable {
    static let magic = Array("NFQLBST1".utf8)
    static let version: UInt32 = 1

    var generation: UInt64
    var bootID: [UInt8]
    var hashSeed: UInt64
    var servers: [RealServerRegistry.Key]
    /// Each connection with the index of its server in ``servers``.
    var connections: [(saved: ConnectionTracker.Saved, server: UInt32)]
    var templates: [Template]

    struct Template: Equatable {
        var vip: IPAddress
        var port: UInt16
        var transport: TransportProtocol
        var slot: UInt32
        var server: UInt32
        var word: UInt64
    }

    public static func == (a: BalancerState, b: BalancerState) -> Bool {
        a.generation == b.generation && a.bootID == b.bootID && a.hashSeed == b.hashSeed && a.servers == b.servers
            && a.templates == b.templates && a.connections.elementsEqual(b.connections) { $0.saved == $1.saved && $0.server == $1.server }
    }

    /// What makes saved connections meaningless to another tracker: its capacity (stripes and their sizes)
    /// and the FULLNAT port range (the port pools). FNV-1a, so it is the same in every process.
    static func generation(of config: BalancerConfig) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "v\(version) capacity \(config.maxConnections) ports \(config.fullnatPorts)".utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3
        }
        return hash
    }

    /// This boot's identity (`/proc/sys/kernel/random/boot_id`): monotonic times mean nothing in another.
    static func currentBootID() -> [UInt8] {
        guard let file = try? FileDescriptor.open("/proc/sys/kernel/random/boot_id", .readOnly) else { return [] }
        defer { try? file.close() }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = (try? buffer.withUnsafeMutableBytes { try file.read(into: $0) }) ?? 0
        return Array(buffer.prefix(n)).filter { $0 != 0x0A }
    }

    // MARK: Bytes (little-endian; every read is bounds-checked)

    func encoded() -> [UInt8] {
        var out = ByteWriter()
        out.bytes(Self.magic)
        out.u32(Self.version)
        out.u64(generation)
        out.u32(UInt32(bootID.count)); out.bytes(bootID)
        out.u64(hashSeed)
        out.u32(UInt32(servers.count))
        for key in servers {
            out.address(key.vip); out.u16(key.port); out.u8(key.transport.rawValue)
            out.address(key.real.address); out.u16(key.real.port)
            out.u8(UInt8(ForwardingMode.allCases.firstIndex(of: key.mode)!))
        }
        out.u32(UInt32(connections.count))
        for (c, server) in connections {
            out.endpoint(c.inbound.source); out.endpoint(c.inbound.destination)
            out.endpoint(c.reply.source); out.endpoint(c.reply.destination)
            out.u8(c.inbound.transport.rawValue); out.u8(c.state.rawValue)
            out.u8((c.translated ? 1 : 0) | (c.inputOnly ? 2 : 0))
            out.u64(c.expires); out.u32(server)
        }
        out.u32(UInt32(templates.count))
        for t in templates {
            out.address(t.vip); out.u16(t.port); out.u8(t.transport.rawValue)
            out.u32(t.slot); out.u32(t.server); out.u64(t.word)
        }
        return out.bytes
    }

    /// Why a state file is not used.
    struct Unusable: Error, Equatable, CustomStringConvertible {
        var description: String
    }
}

extension BalancerState {
    init(decoding bytes: [UInt8]) throws(Unusable) {
        var r = ByteReader(bytes)
        guard try r.bytes(Self.magic.count) == Self.magic else { throw Unusable(description: "not an nfqlb state file") }
        let version = try r.u32()
        guard version == Self.version else { throw Unusable(description: "format version \(version), this nfqlb reads \(Self.version)") }
        generation = try r.u64()
        let bootLength = Int(try r.u32())
        guard bootLength <= 64 else { throw Unusable(description: "corrupt (boot id)") }
        bootID = try r.bytes(bootLength)
        hashSeed = try r.u64()
        let serverCount = Int(try r.u32())
        guard serverCount <= r.remaining / 38 else { throw Unusable(description: "corrupt (server count)") }
        servers = []
        for _ in 0..<serverCount {
            let vip = try r.address(), port = try r.u16()
            guard let transport = TransportProtocol(rawValue: try r.u8()) else { throw Unusable(description: "corrupt (protocol)") }
            let real = Endpoint(address: try r.address(), port: try r.u16())
            let mode = Int(try r.u8())
            guard mode < ForwardingMode.allCases.count else { throw Unusable(description: "corrupt (mode)") }
            servers.append(RealServerRegistry.Key(vip: vip, port: port, transport: transport, real: real,
                                                  mode: ForwardingMode.allCases[mode]))
        }
        let connectionCount = Int(try r.u32())
        guard connectionCount <= r.remaining / 87 else { throw Unusable(description: "corrupt (connection count)") }
        connections = []
        connections.reserveCapacity(connectionCount)
        for _ in 0..<connectionCount {
            let client = try r.endpoint(), vip = try r.endpoint(), real = try r.endpoint(), local = try r.endpoint()
            guard let transport = TransportProtocol(rawValue: try r.u8()),
                  let state = ConnectionState(rawValue: try r.u8()) else { throw Unusable(description: "corrupt (connection)") }
            let flags = try r.u8()
            let expires = try r.u64(), server = try r.u32()
            guard server < serverCount else { throw Unusable(description: "corrupt (server reference)") }
            connections.append((ConnectionTracker.Saved(
                inbound: FlowKey(source: client, destination: vip, transport: transport),
                reply: FlowKey(source: real, destination: local, transport: transport),
                state: state, expires: expires, real: RealServerID(rawValue: 0),
                translated: flags & 1 != 0, inputOnly: flags & 2 != 0), server))
        }
        let templateCount = Int(try r.u32())
        guard templateCount <= r.remaining / 35 else { throw Unusable(description: "corrupt (template count)") }
        templates = []
        for _ in 0..<templateCount {
            let vip = try r.address(), port = try r.u16()
            guard let transport = TransportProtocol(rawValue: try r.u8()) else { throw Unusable(description: "corrupt (protocol)") }
            let slot = try r.u32(), server = try r.u32(), word = try r.u64()
            guard server < serverCount else { throw Unusable(description: "corrupt (server reference)") }
            templates.append(Template(vip: vip, port: port, transport: transport, slot: slot, server: server, word: word))
        }
        guard r.remaining == 0 else { throw Unusable(description: "corrupt (trailing bytes)") }
    }
}

private struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func bytes(_ b: [UInt8]) { bytes += b }
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func address(_ a: IPAddress) { u64(a.high); u64(a.low) }
    mutating func endpoint(_ e: Endpoint) { address(e.address); u16(e.port) }
}

private struct ByteReader {
    let data: [UInt8]
    var offset = 0
    init(_ data: [UInt8]) { self.data = data }
    var remaining: Int { data.count - offset }
    mutating func bytes(_ n: Int) throws(BalancerState.Unusable) -> [UInt8] {
        guard n >= 0, n <= remaining else { throw BalancerState.Unusable(description: "truncated") }
        defer { offset += n }
        return Array(data[offset..<(offset + n)])
    }
    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(BalancerState.Unusable) -> T {
        let raw = try bytes(MemoryLayout<T>.size)
        return raw.reversed().reduce(T(0)) { $0 << 8 | T($1) }
    }
    mutating func u8() throws(BalancerState.Unusable) -> UInt8 { try integer(UInt8.self) }
    mutating func u16() throws(BalancerState.Unusable) -> UInt16 { try integer(UInt16.self) }
    mutating func u32() throws(BalancerState.Unusable) -> UInt32 { try integer(UInt32.self) }
    mutating func u64() throws(BalancerState.Unusable) -> UInt64 { try integer(UInt64.self) }
    mutating func address() throws(BalancerState.Unusable) -> IPAddress { IPAddress(high: try u64(), low: try u64()) }
    mutating func endpoint() throws(BalancerState.Unusable) -> Endpoint { Endpoint(address: try address(), port: try u16()) }
}

extension BalancerState {
    /// The default state file: in the directory `scripts/iptables-setup.sh` keeps for this network namespace
    /// (`down` removes it), so balancers in different namespaces never share one.
    public static var defaultPath: String {
        var info = stat()
        let namespace = stat("/proc/self/ns/net", &info) == 0 ? "\(info.st_ino)" : "unknown"
        return "/run/nfqlb/netns-\(namespace)/state"
    }

    /// Reads and deletes the state file at `path` (it is used once). Nil when there is none; throws why a file
    /// that exists cannot be used for `config`.
    static func take(from path: String, for config: BalancerConfig) throws(Unusable) -> BalancerState? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        unlink(path)
        let state = try BalancerState(decoding: [UInt8](data))
        guard state.bootID == currentBootID() else { throw Unusable(description: "written before the last boot") }
        guard state.generation == generation(of: config) else {
            throw Unusable(description: "written for another max-connections or fullnat-ports")
        }
        return state
    }

    /// Writes the file at `path` (root only, 0600), creating its directory (0700) when missing.
    func write(to path: String) throws(Errno) {
        let directory = (path as NSString).deletingLastPathComponent
        if !directory.isEmpty && !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            } catch {
                throw Errno(rawValue: errno)
            }
        }
        try replaceFileAtomically(path, with: encoded(), mode: 0o600)
    }
}
